"""asyncpg through pgcausal in transaction pooling, in front of a leader + followers cluster.

asyncpg uses named prepared statements (its statement cache) and binary format for every
parameter and result, so this suite exercises the proxy's statement tracking across server
connections. Run by tests/drivers.rs as:

    python3 asyncpg_suite.py HOST PORT USER PASSWORD DBNAME

Prints one line per check and a final "asyncpg suite ok" line; any failure raises (exit 1).
"""
import asyncio
import collections
import datetime
import decimal
import io
import ipaddress
import os
import sys
import time
import traceback
import uuid

import asyncpg

HOST, PORT, USER, PASSWORD, DBNAME = sys.argv[1:6]
PORT = int(PORT)
ROUNDS = 150
RYW_ROUNDS = 200


# Causal tokens of the connections whose writes later checks read on other connections. Each
# session is causally consistent on its own, but a NEW session is only promised what the followers
# have replayed (one of them replays 300 ms late) until it adopts the writers' tokens.
TOKENS: list = []


async def publish_token(conn: asyncpg.Connection):
    """Records a causal token covering conn's committed writes, for the sessions opened after.
    asyncpg prepares the SHOW (extended protocol, binary results): pgcausal answers it itself."""
    assert not conn.is_in_transaction(), "uncommitted writes"
    token = await conn.fetchval("SHOW pgcausal.lsn")
    assert token.count("/") == 2, f"not a causal token: {token!r}"
    if token not in TOKENS:
        TOKENS.append(token)


async def adopt_tokens(conn: asyncpg.Connection):
    """Makes conn's reads see everything the connections that published a token had written.
    Alternately as a simple query (execute) and prepared (fetch): pgcausal answers both."""
    for i, token in enumerate(list(TOKENS)):
        if i % 2:
            await conn.fetch(f"SET pgcausal.min_lsn = '{token}'")
        else:
            await conn.execute(f"SET pgcausal.min_lsn = '{token}'")


async def connect(**kw) -> asyncpg.Connection:
    """A new session that starts causally after every token published so far."""
    conn = await asyncpg.connect(host=HOST, port=PORT, user=USER, password=PASSWORD, database=DBNAME, timeout=10, **kw)
    try:
        await adopt_tokens(conn)
    except BaseException:
        await conn.close()
        raise
    return conn


CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


async def setup_schema():
    conn = await connect()
    try:
        await conn.execute(
            """
            DROP TABLE IF EXISTS items, kinds, copy_t, ryw, ryw_counter, evolving;
            DROP TYPE IF EXISTS mood CASCADE;
            CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
            CREATE TABLE items (id int PRIMARY KEY, worker int, name text, price numeric(12,2));
            CREATE TABLE kinds (id int PRIMARY KEY, i8 bigint, f8 float8, num numeric, b bytea, ts timestamptz,
                                d date, iv interval, u uuid, j jsonb, ints int[], texts text[], ip inet,
                                r int4range, m mood, flag bool);
            CREATE TABLE copy_t (id int PRIMARY KEY, name text, ts timestamptz, b bytea);
            CREATE TABLE ryw (id int PRIMARY KEY, v text);
            CREATE TABLE ryw_counter (id int PRIMARY KEY, n int);
            INSERT INTO ryw_counter VALUES (1, 0);
            CREATE TABLE evolving (id int PRIMARY KEY, a text);
            INSERT INTO evolving VALUES (1, 'a');
            """
        )
        await publish_token(conn)
    finally:
        await conn.close()


@check
async def scram_login_and_simple_query():
    conn = await connect()
    try:
        assert await conn.fetchval("SELECT current_user") == USER
        # No arguments: asyncpg's simple-protocol path (execute) with several statements.
        assert await conn.execute("SELECT 1; SELECT 2") == "SELECT 1"
        assert conn.get_server_version().major >= 10
        assert conn.get_settings().client_encoding == "UTF8"
    finally:
        await conn.close()


async def prepared_worker(k: int):
    conn = await connect()
    try:
        insert = await conn.prepare("INSERT INTO items (id, worker, name, price) VALUES ($1, $2, $3, $4)")
        count = await conn.prepare("SELECT count(*), max(id) FROM items WHERE worker = $1")
        for i in range(ROUNDS):
            pk = k * 100_000 + i
            async with conn.transaction():
                await insert.fetch(pk, k, f"item {i}", decimal.Decimal(i) / 4)
                row = await count.fetchrow(k)
                assert tuple(row) == (i + 1, pk), (k, i, row)
            # Outside a transaction: a read through the statement cache (named statement).
            row = await conn.fetchrow("SELECT name, price FROM items WHERE id = $1", pk)
            assert tuple(row) == (f"item {i}", decimal.Decimal(i) / 4), (k, i, row)
            # The same SQL as every other worker.
            assert await conn.fetchval("SELECT $1::int * 2 + $2::int", i, k) == i * 2 + k
            # The explicit statement outside a transaction too.
            assert tuple(await count.fetchrow(k)) == (i + 1, pk)
        await publish_token(conn)  # the count below runs on another connection
    finally:
        await conn.close()


@check
async def prepared_statements_and_cache_across_transactions():
    # Six clients over four server connections per node: statements move between backends.
    await asyncio.gather(*(prepared_worker(k) for k in range(6)))
    conn = await connect()
    try:
        assert await conn.fetchval("SELECT count(*) FROM items") == 6 * ROUNDS
        # A tiny statement cache: asyncpg closes evicted statements (Close) and re-prepares.
        small = await connect(statement_cache_size=3)
        try:
            for i in range(120):
                sql = f"SELECT $1::int + {i % 7}"
                assert await small.fetchval(sql, i) == i + i % 7
        finally:
            await small.close()
        # No statement cache at all (what PgBouncer users configure): unnamed statements.
        nocache = await connect(statement_cache_size=0)
        try:
            for i in range(120):
                async with nocache.transaction():
                    assert await nocache.fetchval("SELECT $1::text || 'x'", str(i)) == f"{i}x"
        finally:
            await nocache.close()
    finally:
        await conn.close()


@check
async def binary_types_round_trip():
    conn = await connect()
    try:
        ts = datetime.datetime(2024, 2, 29, 12, 34, 56, 789123, tzinfo=datetime.timezone.utc)
        values = [
            9_000_000_000,
            1.5,
            decimal.Decimal("12345678901234567890.123456789"),
            bytes(range(256)) * 40,
            ts,
            datetime.date(1999, 12, 31),
            datetime.timedelta(days=3, seconds=7, microseconds=11),
            uuid.UUID("12345678-1234-5678-1234-567812345678"),
            '{"a": [1, 2, {"b": null}], "s": "\u00fc"}',
            [1, None, 3],
            ["x", "\u00fcn\u00efcode", None],
            ipaddress.ip_interface("10.1.2.3/24"),
            asyncpg.Range(1, 10),
            "happy",  # an enum: asyncpg introspects the type with its own prepared query
            True,
        ]
        ins = await conn.prepare("INSERT INTO kinds VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16)")
        sel = await conn.prepare("SELECT * FROM kinds WHERE id = $1")
        for i in range(100):
            await ins.fetch(i, *values)
            row = await sel.fetchrow(i)
            got = list(row)[1:]
            got[8] = None if got[8] is None else got[8].replace(" ", "")
            want = list(values)
            want[8] = want[8].replace(" ", "")
            assert got == want, (got, want)
        # Records and arrays of composite in results.
        row = await conn.fetchrow("SELECT ROW(1, 'a'::text) AS r, ARRAY[ROW(2, 'b'::text)] AS rs, $1::mood[] AS ms", ["sad", "ok"])
        assert tuple(row["r"]) == (1, "a") and tuple(row["rs"][0]) == (2, "b") and row["ms"] == ["sad", "ok"], row
        # executemany pipelines many Bind/Execute pairs.
        await conn.executemany("UPDATE kinds SET flag = $2 WHERE id = $1", [(i, i % 2 == 0) for i in range(100)])
        assert await conn.fetchval("SELECT count(*) FROM kinds WHERE flag") == 50
        # A portal read in chunks (Execute with a row limit, PortalSuspended).
        async with conn.transaction():
            total = 0
            async for r in conn.cursor("SELECT g, repeat('x', g % 100) FROM generate_series(1, 2000) g", prefetch=64):
                total += r[0]
            assert total == sum(range(1, 2001)), total
            cur = await conn.cursor("SELECT g FROM generate_series(1, 1000) g")
            first = await cur.fetch(10)
            await cur.forward(500)
            nxt = await cur.fetchrow()
            assert [r[0] for r in first] == list(range(1, 11)) and nxt[0] == 511, (first, nxt)
    finally:
        await conn.close()


@check
async def prepared_read_then_write():
    """asyncpg's prepare() sends Parse/Describe/Flush and no Sync; the next statement may be a
    write (extended or simple protocol). The write must run on the leader like any other."""
    conn = await connect()
    try:
        for i in range(20):
            sel = await conn.prepare(f"SELECT count(*) FROM items WHERE worker = {-100 - i}")
            if i % 2:
                await conn.execute("INSERT INTO items (id, worker, name) VALUES ($1, $2, 'after prepare')", -100 - i, -100 - i)
            else:
                await conn.execute(f"INSERT INTO items (id, worker, name) VALUES ({-100 - i}, {-100 - i}, 'after prepare')")
            assert await sel.fetchval() == 1, i
    finally:
        await conn.close()


@check
async def same_sql_after_another_client_recreated_a_type():
    """Client A prepares an INSERT with an enum parameter; client B drops and recreates the enum
    (a migration); client C, connecting afterwards, prepares the same SQL. On PostgreSQL C's
    statement is new and resolves the new type; through a proxy that shares server-side
    statements by SQL text it must not inherit A's statement with the dropped type's OID."""

    async def insert_on_busy_connections(tag: str):
        # Four clients inside transactions at once: four different server connections.
        conns = [await connect() for _ in range(4)]
        try:
            trs = [c.transaction() for c in conns]
            for t in trs:
                await t.start()
            for k, c in enumerate(conns):
                await c.execute("INSERT INTO moods (tag, m) VALUES ($1, $2)", f"{tag}{k}", "ok")
            for t in trs:
                await t.commit()
            for c in conns:
                await publish_token(c)  # admin counts these rows below
        finally:
            for c in conns:
                await c.close()

    admin = await connect()
    try:
        await admin.execute("DROP TABLE IF EXISTS moods; DROP TYPE IF EXISTS mood2; "
                            "CREATE TYPE mood2 AS ENUM ('sad', 'ok'); CREATE TABLE moods (tag text, m mood2)")
        # asyncpg introspects the new type on the other connections, possibly on a follower:
        # they start after admin's token.
        await publish_token(admin)
        await insert_on_busy_connections("before")
        await admin.execute("DROP TYPE mood2 CASCADE; CREATE TYPE mood2 AS ENUM ('ok', 'great'); "
                            "ALTER TABLE moods ADD COLUMN m mood2")
        await publish_token(admin)
        await insert_on_busy_connections("after")
        # The inserts ran in other sessions: admin adopts their tokens before counting.
        await adopt_tokens(admin)
        assert await admin.fetchval("SELECT count(*) FROM moods WHERE m = 'ok'") == 4
    finally:
        await admin.close()


@check
async def transaction_rollback():
    conn = await connect()
    try:
        async with conn.transaction():
            await conn.execute("INSERT INTO items (id, worker, name) VALUES ($1, -1, 'kept')", -1)
        try:
            async with conn.transaction():
                await conn.execute("INSERT INTO items (id, worker, name) VALUES ($1, -1, 'gone')", -2)
                assert await conn.fetchval("SELECT count(*) FROM items WHERE id = -2") == 1
                raise RuntimeError("roll back")
        except RuntimeError:
            pass
        tr = conn.transaction()
        await tr.start()
        await conn.execute("INSERT INTO items (id, worker, name) VALUES (-3, -1, 'gone too')")
        await tr.rollback()
        # A savepoint rolled back inside a committed transaction.
        async with conn.transaction():
            await conn.execute("INSERT INTO items (id, worker, name) VALUES (-4, -1, 'outer')")
            try:
                async with conn.transaction():
                    await conn.execute("INSERT INTO items (id, worker, name) VALUES (-5, -1, 'inner')")
                    raise RuntimeError("inner")
            except RuntimeError:
                pass
        ids = [r[0] for r in await conn.fetch("SELECT id FROM items WHERE worker = $1 ORDER BY id", -1)]
        assert ids == [-4, -1], ids
        # A read-only, repeatable read transaction.
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            assert await conn.fetchval("SELECT count(*) FROM items WHERE worker = -1") == 2
    finally:
        await conn.close()


@check
async def errors_leave_the_connection_usable():
    conn = await connect()
    try:
        for _ in range(3):
            try:
                await conn.fetchval("SELECT 1 / $1::int", 0)
                raise AssertionError("no error")
            except asyncpg.DivisionByZeroError:
                pass
            assert await conn.fetchval("SELECT $1::int", 7) == 7
        await conn.execute("INSERT INTO items (id, worker, name) VALUES (-10, -2, 'unique')")
        try:
            await conn.execute("INSERT INTO items (id, worker, name) VALUES ($1, $2, $3)", -10, -2, "dup")
            raise AssertionError("no error")
        except asyncpg.UniqueViolationError as e:
            assert e.constraint_name == "items_pkey", e.constraint_name
        assert await conn.fetchval("SELECT name FROM items WHERE id = $1", -10) == "unique"
        try:
            await conn.prepare("SELECT * FROM no_such_table")
            raise AssertionError("no error")
        except asyncpg.UndefinedTableError:
            pass
        # An error inside a transaction: aborted until rollback.
        tr = conn.transaction()
        await tr.start()
        try:
            await conn.execute("SELECT 1/0")
        except asyncpg.DivisionByZeroError:
            pass
        try:
            await conn.fetchval("SELECT 1")
            raise AssertionError("no error")
        except asyncpg.InFailedSQLTransactionError:
            pass
        await tr.rollback()
        assert await conn.fetchval("SELECT 'after errors'") == "after errors"
        # A cached statement whose result type changes under it: asyncpg sees the server's
        # "cached plan must not change result type", drops the statement and retries.
        for i in range(5):
            assert len(await conn.fetchrow("SELECT * FROM evolving WHERE id = $1", 1)) == 2 + i, i
            await conn.execute(f"ALTER TABLE evolving ADD COLUMN c{i} int")
    finally:
        await conn.close()


@check
async def copy_in_and_out():
    n = 10_000
    ts = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    rows = [(i, f"name {i}\t\\ \n", ts + datetime.timedelta(seconds=i), bytes([i % 256]) * (i % 7)) for i in range(n)]
    conn = await connect()
    try:
        # Binary COPY FROM STDIN.
        res = await conn.copy_records_to_table("copy_t", records=rows[: n // 2], columns=["id", "name", "ts", "b"])
        assert res == f"COPY {n // 2}", res
        # Text COPY FROM STDIN from a file-like source.
        text = io.BytesIO()
        out = await conn.copy_from_query(
            "SELECT id + $1, name, ts, b FROM copy_t ORDER BY id", n // 2, output=text, format="csv"
        )
        assert out == f"COPY {n // 2}", out
        text.seek(0)
        res = await conn.copy_to_table("copy_t", source=text, columns=["id", "name", "ts", "b"], format="csv")
        assert res == f"COPY {n // 2}", res
        # COPY TO STDOUT, binary and text, compared with a query.
        buf = io.BytesIO()
        await conn.copy_from_table("copy_t", output=buf, format="binary")
        assert buf.getvalue().startswith(b"PGCOPY\n\xff\r\n\x00"), buf.getvalue()[:12]
        assert await conn.fetchval("SELECT count(*) FROM copy_t") == n
        want = await conn.fetch("SELECT id, name, ts, b FROM copy_t WHERE id < $1 ORDER BY id", n // 2)
        assert [tuple(r) for r in want] == rows[: n // 2]
        # A COPY the server rejects midway; the connection goes on.
        try:
            await conn.copy_records_to_table("copy_t", records=[(n + 1, "x", ts, b""), (0, "dup", ts, b"")])
            raise AssertionError("no error")
        except asyncpg.UniqueViolationError:
            pass
        assert await conn.fetchval("SELECT count(*) FROM copy_t") == n
    finally:
        await conn.close()


async def cancel_by_timeout(conn, in_tx: bool):
    t0 = time.monotonic()
    try:
        await conn.fetchval("SELECT pg_sleep(30)", timeout=1.0)
        raise AssertionError("no timeout")
    except asyncio.TimeoutError:
        pass
    # asyncpg sent a CancelRequest; the connection is usable at once (not after 30 s).
    if in_tx:
        try:
            await conn.fetchval("SELECT 1")
        except asyncpg.InFailedSQLTransactionError:
            pass
        return
    assert await conn.fetchval("SELECT 'after cancel'", timeout=10) == "after cancel"
    elapsed = time.monotonic() - t0
    assert elapsed < 10, elapsed


@check
async def cancel():
    conn = await connect()
    try:
        for _ in range(3):
            await cancel_by_timeout(conn, in_tx=False)
        # With arguments (a named prepared statement) too.
        t0 = time.monotonic()
        try:
            await conn.fetchval("SELECT pg_sleep($1)", 30.0, timeout=1.0)
            raise AssertionError("no timeout")
        except asyncio.TimeoutError:
            pass
        assert await conn.fetchval("SELECT $1::int", 5, timeout=10) == 5
        assert time.monotonic() - t0 < 10
        # Inside a transaction: the transaction is aborted, then rolled back.
        t0 = time.monotonic()
        tr = conn.transaction()
        await tr.start()
        await cancel_by_timeout(conn, in_tx=True)
        await tr.rollback()
        assert await conn.fetchval("SELECT 'after rollback'", timeout=10) == "after rollback"
        assert time.monotonic() - t0 < 10
        # The server really stopped sleeping: nothing of ours still runs pg_sleep. pg_sleep is
        # routed to the leader (a volatile function) and pg_stat_activity shows only the backends
        # of the node it is read on, so this read must run on the leader.
        n = await conn.fetchval(
            "/* pgcausal:leader */ SELECT count(*) FROM pg_stat_activity "
            "WHERE query LIKE 'SELECT pg_sleep(%' AND state = 'active' AND pid <> pg_backend_pid()"
        )
        assert n == 0, n
    finally:
        await conn.close()


@check
async def listen_notify():
    listener = await connect()
    notifier = await connect()
    try:
        queue: asyncio.Queue = asyncio.Queue()
        def on_notify(_conn, _pid, _channel, payload):
            queue.put_nowait(payload)

        await listener.add_listener("drv_events", on_notify)
        for i in range(20):
            if i % 2:
                await notifier.execute(f"NOTIFY drv_events, 'n{i}'")
            else:
                async with notifier.transaction():
                    await notifier.execute("SELECT pg_notify('drv_events', $1)", f"n{i}")
            got = await asyncio.wait_for(queue.get(), 10)
            assert got == f"n{i}", (i, got)
            assert await listener.fetchval("SELECT $1::int", i) == i
        await listener.remove_listener("drv_events", on_notify)  # UNLISTEN
        assert await listener.fetchval("SELECT 'unlistened'") == "unlistened"
    finally:
        await listener.close()
        await notifier.close()


@check
async def read_your_writes():
    ports = collections.Counter()
    conn = await connect()
    try:
        upd = await conn.prepare("UPDATE ryw_counter SET n = $1 WHERE id = 1")
        sel = await conn.prepare("SELECT n, inet_server_port() FROM ryw_counter WHERE id = 1")
        for i in range(RYW_ROUNDS):
            mode = i % 3
            if mode == 0:  # statement cache (named statements), autocommit
                await conn.execute("INSERT INTO ryw (id, v) VALUES ($1, $2)", i, f"v{i}")
                row = await conn.fetchrow("SELECT v, inet_server_port() FROM ryw WHERE id = $1", i)
                assert row is not None and row[0] == f"v{i}", f"stale read at {i}: {row}"
            elif mode == 1:  # explicit prepared statements
                await upd.fetch(i)
                row = await sel.fetchrow()
                assert row[0] == i, f"stale read at {i}: {row}"
            else:  # a committed transaction, then a read
                async with conn.transaction():
                    await conn.execute("INSERT INTO ryw (id, v) VALUES ($1, $2)", i, f"v{i}")
                    await upd.fetch(i)
                row = await conn.fetchrow("SELECT v, inet_server_port() FROM ryw WHERE id = $1", i)
                assert row is not None and row[0] == f"v{i}", f"stale read at {i}: {row}"
            ports[row[1]] += 1
    finally:
        await conn.close()
    print(f"  read-your-writes: {RYW_ROUNDS} reads by server port {dict(sorted(ports.items()))}")


async def main():
    await setup_schema()
    failed = []
    only = [n for n in os.environ.get("DRIVER_CHECKS", "").split(",") if n]  # for debugging
    selected = [f for f in CHECKS if not only or f.__name__ in only]
    for fn in selected:
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(fn(), 300)
            print(f"ok {fn.__name__} ({time.monotonic() - t0:.1f}s)", flush=True)
        except BaseException:  # noqa: BLE001 - report every check, then fail
            failed.append(fn.__name__)
            print(f"FAILED {fn.__name__} ({time.monotonic() - t0:.1f}s)\n{traceback.format_exc()}", flush=True)
    print(f"asyncpg {asyncpg.__version__}: {len(selected) - len(failed)} of {len(selected)} checks ok")
    if failed:
        print("asyncpg suite FAILED: " + ", ".join(failed))
        sys.exit(1)
    print("asyncpg suite ok")


if __name__ == "__main__":
    asyncio.run(main())
