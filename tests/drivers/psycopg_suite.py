"""psycopg 3 through pgcausal in transaction pooling, in front of a leader + followers cluster.

Run by tests/drivers.rs as: python3 psycopg_suite.py HOST PORT USER PASSWORD DBNAME
Prints one line per check and a final "psycopg suite ok" line; any failure raises (exit 1).
"""
import collections
import datetime
import decimal
import os
import sys
import threading
import time
import traceback
import uuid

import psycopg
from psycopg import errors, sql
from psycopg.types.json import Jsonb

HOST, PORT, USER, PASSWORD, DBNAME = sys.argv[1:6]
PORT = int(PORT)
ROUNDS = 150  # prepared/parameterised statements reused across this many transactions
RYW_ROUNDS = 200


# Causal tokens of the connections whose writes later checks read on other connections. Each
# session is causally consistent on its own, but a NEW session is only promised what the followers
# have replayed (one of them replays 300 ms late) until it adopts the writers' tokens.
TOKENS: list = []
TOKENS_LOCK = threading.Lock()


def publish_token(conn: psycopg.Connection):
    """Records conn's causal token (covering its committed writes) for the sessions opened after.
    The SHOW is server-side prepared (extended protocol): pgcausal answers it itself."""
    assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE, "uncommitted writes"
    autocommit = conn.autocommit
    conn.autocommit = True  # no BEGIN before the SHOW
    try:
        token = conn.execute("SHOW pgcausal.lsn", prepare=True).fetchone()[0]
    finally:
        conn.autocommit = autocommit
    with TOKENS_LOCK:
        if token not in TOKENS:
            TOKENS.append(token)


def adopt_tokens(conn: psycopg.Connection):
    """Makes conn's reads see everything the connections that published a token had written."""
    with TOKENS_LOCK:
        tokens = list(TOKENS)
    autocommit = conn.autocommit
    conn.autocommit = True
    try:
        for token in tokens:
            conn.execute(f"SET pgcausal.min_lsn = '{token}'", prepare=False)
    finally:
        conn.autocommit = autocommit


def connect(**kw) -> psycopg.Connection:
    """A new session that starts causally after every token published so far."""
    autocommit = kw.pop("autocommit", False)
    conn = psycopg.connect(
        host=HOST, port=PORT, user=USER, password=PASSWORD, dbname=DBNAME, connect_timeout=10, autocommit=True, **kw
    )
    try:
        adopt_tokens(conn)
        conn.autocommit = autocommit
    except BaseException:
        conn.close()
        raise
    return conn


CHECKS = []


def check(fn):
    CHECKS.append(fn)
    return fn


@check
def scram_login_and_simple_query():
    with connect(autocommit=True) as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
        row = conn.execute("SELECT current_user, 1 + 1").fetchone()
        assert row == (USER, 2), row
        # The proxy's ParameterStatus messages reach the driver.
        assert conn.info.parameter_status("server_version"), "no server_version"
        assert conn.info.encoding == "utf-8", conn.info.encoding
        # A multi-statement simple query.
        cur = conn.cursor()
        cur.execute("SELECT 1; SELECT 2")
        assert cur.fetchone() == (1,)
        assert cur.nextset() and cur.fetchone() == (2,)


def setup_schema():
    with connect(autocommit=True) as conn:
        conn.execute(
            """
            DROP TABLE IF EXISTS items, kinds, copy_t, ryw, ryw_counter, pipe_t;
            CREATE TABLE items (id int PRIMARY KEY, worker int, name text, price numeric(12,2));
            CREATE TABLE kinds (id int PRIMARY KEY, i8 bigint, f8 float8, num numeric, b bytea, ts timestamptz,
                                d date, u uuid, j jsonb, arr text[], flag bool);
            CREATE TABLE copy_t (id int PRIMARY KEY, name text, ts timestamptz, b bytea);
            CREATE TABLE ryw (id int PRIMARY KEY, v text);
            CREATE TABLE ryw_counter (id int PRIMARY KEY, n int);
            INSERT INTO ryw_counter VALUES (1, 0);
            CREATE TABLE pipe_t (id int PRIMARY KEY, v text);
            """
        )
        publish_token(conn)


def prepared_worker(k: int, errors_out: list):
    try:
        with connect() as conn:  # autocommit off: every block below is one transaction
            conn.prepare_threshold = 0  # server-side prepare from the first execution
            cur = conn.cursor()
            for i in range(ROUNDS):
                pk = k * 100_000 + i
                with conn.transaction():
                    cur.execute(
                        "INSERT INTO items (id, worker, name, price) VALUES (%s, %s, %s, %s)",
                        (pk, k, f"item {i}", decimal.Decimal(i) / 4),
                    )
                    cur.execute("SELECT count(*), max(id) FROM items WHERE worker = %s", (k,))
                    assert cur.fetchone() == (i + 1, pk), (k, i)
                conn.commit()
                # Explicit prepare=True on a read outside the write transaction.
                cur.execute("SELECT name, price FROM items WHERE id = %s", (pk,), prepare=True)
                assert cur.fetchone() == (f"item {i}", decimal.Decimal(i) / 4), (k, i)
                conn.commit()
                # The same SQL text prepared by every worker, with different values.
                cur.execute("SELECT %s::int * 2 + %s::int", (i, k), prepare=True)
                assert cur.fetchone() == (i * 2 + k,)
                conn.commit()
            # psycopg really prepared them on the server (it counts executions per query).
            assert len(conn._prepared._names) >= 3, conn._prepared._names
            publish_token(conn)  # the count below runs on another connection
    except BaseException:
        errors_out.append(f"worker {k}: {traceback.format_exc()}")


@check
def prepared_statements_reused_across_transactions():
    # Six clients over four server connections per node: statements move between backends.
    errs: list = []
    threads = [threading.Thread(target=prepared_worker, args=(k, errs)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errs, "\n".join(errs)
    with connect(autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM items").fetchone() == (6 * ROUNDS,)


@check
def prepare_true_without_threshold_and_statement_cache_eviction():
    with connect(autocommit=True) as conn:
        conn.prepare_threshold = None  # never prepare unless asked
        conn.prepared_max = 5  # small cache: psycopg DEALLOCATEs (Close) older statements
        for i in range(120):
            q = sql.SQL("SELECT %s::int + {}").format(sql.Literal(i % 10))
            assert conn.execute(q, (i,), prepare=True).fetchone() == (i + i % 10,)
        # Unprepared parameterised queries on the same connection.
        for i in range(100):
            assert conn.execute("SELECT %s::text || %s::text", ("a", str(i))).fetchone() == (f"a{i}",)


@check
def binary_parameters_and_results():
    values = (
        1,
        9_000_000_000,
        1.5,
        decimal.Decimal("12345678901234567890.123456789"),
        bytes(range(256)) * 40,
        datetime.datetime(2024, 2, 29, 12, 34, 56, 789000, tzinfo=datetime.timezone.utc),
        datetime.date(1999, 12, 31),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Jsonb({"a": [1, 2, {"b": None}], "s": "ü"}),
        ["x", "y", None, "ünïcode"],
        True,
    )
    with connect(autocommit=True) as conn:
        conn.prepare_threshold = 0
        cur = conn.cursor(binary=True)
        for round_ in range(100):
            pk = 1000 + round_
            row = (pk,) + values[1:]
            cur.execute("INSERT INTO kinds VALUES (%b, %b, %b, %b, %b, %b, %b, %b, %b, %b, %b)", row)
            cur.execute("SELECT * FROM kinds WHERE id = %b", (pk,), binary=True)
            got = cur.fetchone()
            assert got[:8] == row[:8], (got, row)
            assert got[8] == values[8].obj and got[9] == values[9] and got[10] is True, got
        # Binary results from a text cursor request (binary=True per execute).
        got = conn.execute("SELECT 42::int8, 'bytes'::bytea", binary=True).fetchone()
        assert got == (42, b"bytes"), got


@check
def transaction_rollback():
    with connect() as conn:
        with conn.transaction():
            conn.execute("INSERT INTO items (id, worker, name) VALUES (-1, -1, 'kept')")
        with conn.transaction() as tx:
            conn.execute("INSERT INTO items (id, worker, name) VALUES (-2, -1, 'rolled back')")
            assert conn.execute("SELECT count(*) FROM items WHERE id = -2").fetchone() == (1,)
            raise psycopg.Rollback(tx)
        conn.execute("INSERT INTO items (id, worker, name) VALUES (-3, -1, 'rolled back too')")
        conn.rollback()
        # A savepoint rolled back inside a committed transaction.
        with conn.transaction():
            conn.execute("INSERT INTO items (id, worker, name) VALUES (-4, -1, 'outer')")
            try:
                with conn.transaction():
                    conn.execute("INSERT INTO items (id, worker, name) VALUES (-5, -1, 'inner')")
                    raise RuntimeError("boom")
            except RuntimeError:
                pass
        rows = conn.execute("SELECT id FROM items WHERE worker = -1 ORDER BY id").fetchall()
        conn.commit()
        assert rows == [(-4,), (-1,)], rows


@check
def errors_leave_the_connection_usable():
    with connect(autocommit=True) as conn:
        conn.prepare_threshold = 0
        for _ in range(3):
            try:
                conn.execute("SELECT 1 / %s::int", (0,))
                raise AssertionError("no error")
            except errors.DivisionByZero:
                pass
            assert conn.execute("SELECT %s::int", (7,)).fetchone() == (7,)
        conn.execute("INSERT INTO items (id, worker, name) VALUES (-10, -2, 'unique')")
        try:
            conn.execute("INSERT INTO items (id, worker, name) VALUES (%s, %s, %s)", (-10, -2, "dup"))
            raise AssertionError("no error")
        except errors.UniqueViolation as e:
            assert e.diag.constraint_name == "items_pkey", e.diag.constraint_name
        assert conn.execute("SELECT name FROM items WHERE id = -10").fetchone() == ("unique",)
        try:
            conn.execute("SELECT * FROM no_such_table")
            raise AssertionError("no error")
        except errors.UndefinedTable:
            pass
        assert conn.execute("SELECT 'after errors'").fetchone() == ("after errors",)
    # An error inside a transaction: aborted until rollback, then fine.
    with connect() as conn:
        conn.execute("SELECT 1")
        try:
            conn.execute("SELECT 1/0")
        except errors.DivisionByZero:
            pass
        try:
            conn.execute("SELECT 1")
            raise AssertionError("no error")
        except errors.InFailedSqlTransaction:
            pass
        conn.rollback()
        assert conn.execute("SELECT 'recovered'").fetchone() == ("recovered",)
        conn.commit()


@check
def pipeline_mode():
    with connect(autocommit=True) as conn:
        conn.prepare_threshold = 0
        # Autocommit pipeline: many statements in flight, results in order.
        with conn.pipeline():
            cur = conn.cursor()
            curs = []
            for i in range(200):
                c = conn.cursor()
                c.execute("INSERT INTO pipe_t (id, v) VALUES (%s, %s) RETURNING id", (i, f"v{i}"))
                curs.append(c)
            for i, c in enumerate(curs):
                assert c.fetchone() == (i,)
            cur.execute("SELECT count(*) FROM pipe_t")
            assert cur.fetchone() == (200,)
        # A pipeline inside a transaction that rolls back.
        with conn.pipeline():
            with conn.transaction() as tx:
                for i in range(200, 250):
                    conn.execute("INSERT INTO pipe_t (id, v) VALUES (%s, %s)", (i, "gone"))
                raise psycopg.Rollback(tx)
        assert conn.execute("SELECT count(*) FROM pipe_t").fetchone() == (200,)
        # A pipeline with prepared statements across many transactions (executemany pipelines too).
        with conn.pipeline() as p:
            for i in range(120):
                with conn.transaction():
                    conn.execute("UPDATE pipe_t SET v = %s WHERE id = %s", (f"w{i}", i))
                    conn.execute("SELECT v FROM pipe_t WHERE id = %s", (i,))
            p.sync()
        conn.cursor().executemany("INSERT INTO pipe_t (id, v) VALUES (%s, %s)", [(1000 + i, "many") for i in range(100)])
        assert conn.execute("SELECT count(*) FROM pipe_t WHERE v LIKE 'w%' OR v = 'many'").fetchone() == (220,)
        # An error in a pipeline: the failed statement raises, the pipeline and connection go on.
        try:
            with conn.pipeline():
                conn.execute("INSERT INTO pipe_t (id, v) VALUES (%s, %s)", (5000, "ok"))
                conn.execute("INSERT INTO pipe_t (id, v) VALUES (%s, %s)", (0, "duplicate"))
                conn.execute("SELECT 1")
            raise AssertionError("no error")
        except errors.UniqueViolation:
            pass
        with conn.pipeline():
            c = conn.execute("SELECT count(*) FROM pipe_t WHERE id = 5000")
        # The statements before the next Sync form one implicit transaction: 5000 is gone too.
        assert c.fetchone() == (0,)
        assert conn.execute("SELECT 'after pipeline'").fetchone() == ("after pipeline",)


@check
def copy_in_and_out():
    n = 10_000
    ts = datetime.datetime(2020, 1, 1, tzinfo=datetime.timezone.utc)
    rows = [(i, f"name {i}\t\\ \n", ts + datetime.timedelta(seconds=i), bytes([i % 256]) * (i % 7)) for i in range(n)]
    with connect(autocommit=True) as conn:
        cur = conn.cursor()
        with cur.copy("COPY copy_t (id, name, ts, b) FROM STDIN") as copy:
            for r in rows[: n // 2]:
                copy.write_row(r)
        assert cur.rowcount == n // 2, cur.rowcount
        # Binary COPY in.
        with cur.copy("COPY copy_t (id, name, ts, b) FROM STDIN (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "timestamptz", "bytea"])
            for r in rows[n // 2 :]:
                copy.write_row(r)
        assert conn.execute("SELECT count(*) FROM copy_t").fetchone() == (n,)
        # Text COPY out, and binary COPY out.
        with cur.copy("COPY (SELECT id, name, ts, b FROM copy_t ORDER BY id) TO STDOUT") as copy:
            copy.set_types(["int4", "text", "timestamptz", "bytea"])
            got = list(copy.rows())
        assert got == rows, "text COPY out differs"
        with cur.copy("COPY (SELECT id, name, ts, b FROM copy_t ORDER BY id) TO STDOUT (FORMAT BINARY)") as copy:
            copy.set_types(["int4", "text", "timestamptz", "bytea"])
            got = list(copy.rows())
        assert got == rows, "binary COPY out differs"
        # A COPY the server rejects midway; the connection goes on.
        try:
            with cur.copy("COPY copy_t (id, name) FROM STDIN") as copy:
                copy.write_row((n + 1, "ok"))
                copy.write_row((0, "duplicate key"))
            raise AssertionError("no error")
        except errors.UniqueViolation:
            pass
        # A COPY the client aborts.
        try:
            with cur.copy("COPY copy_t (id, name) FROM STDIN") as copy:
                copy.write_row((n + 2, "aborted"))
                raise RuntimeError("client gives up")
        except RuntimeError:
            pass
        except errors.QueryCanceled:
            pass
        assert conn.execute("SELECT count(*) FROM copy_t").fetchone() == (n,)


def run_and_cancel(conn: psycopg.Connection, canceller) -> float:
    """Runs a long sleep on conn in a thread and cancels it with canceller(conn) until it stops."""
    outcome = {}

    def sleeper():
        t0 = time.monotonic()
        try:
            conn.execute("SELECT pg_sleep(30)")
            outcome["result"] = "finished"
        except errors.QueryCanceled as e:
            outcome["result"] = "canceled"
            outcome["message"] = str(e)
        except BaseException as e:  # noqa: BLE001
            outcome["result"] = repr(e)
        outcome["elapsed"] = time.monotonic() - t0

    t = threading.Thread(target=sleeper)
    t.start()
    time.sleep(1.0)
    # A cancel that reaches the proxy before the query reaches a server is (correctly) dropped:
    # repeat until the sleep stops, a bounded number of times.
    for _ in range(10):
        canceller(conn)
        t.join(2.0)
        if not t.is_alive():
            break
    t.join(40)
    assert outcome.get("result") == "canceled", outcome
    assert "canceling statement due to user request" in outcome["message"], outcome
    assert outcome["elapsed"] < 20, outcome
    return outcome["elapsed"]


@check
def cancel():
    with connect(autocommit=True) as conn:
        run_and_cancel(conn, lambda c: c.cancel())
        assert conn.execute("SELECT 'after cancel'").fetchone() == ("after cancel",)
        run_and_cancel(conn, lambda c: c.cancel_safe(timeout=10))
        assert conn.execute("SELECT 'after cancel_safe'").fetchone() == ("after cancel_safe",)
    # Inside a transaction: the cancel aborts it, rollback recovers.
    with connect() as conn:
        conn.execute("SELECT 1")
        run_and_cancel(conn, lambda c: c.cancel_safe(timeout=10))
        conn.rollback()
        assert conn.execute("SELECT 'after rollback'").fetchone() == ("after rollback",)
        conn.commit()


@check
def listen_notify():
    with connect(autocommit=True) as listener, connect(autocommit=True) as notifier:
        listener.execute("LISTEN drv_events")
        for i in range(20):
            if i % 2:
                notifier.execute("NOTIFY drv_events, 'n%s'" % i)
            else:
                with notifier.transaction():
                    notifier.execute("SELECT pg_notify('drv_events', %s)", (f"n{i}",))
            got = [n.payload for n in listener.notifies(timeout=10, stop_after=1)]
            assert got == [f"n{i}"], (i, got)
            # The listener stays usable between notifications.
            assert listener.execute("SELECT %s::int", (i,)).fetchone() == (i,)
        # Notifications raised while the listener is busy arrive with its next result.
        seen = []
        listener.add_notify_handler(lambda n: seen.append(n.payload))
        notifier.execute("NOTIFY drv_events, 'during'")
        deadline = time.monotonic() + 10
        while "during" not in seen and time.monotonic() < deadline:
            listener.execute("SELECT pg_sleep(0.05)")
        assert "during" in seen, seen
        listener.execute("UNLISTEN *")


@check
def read_your_writes():
    ports = collections.Counter()
    with connect(autocommit=True) as conn:
        for i in range(RYW_ROUNDS):
            mode = i % 4
            if mode == 0:  # autocommit, unprepared
                conn.execute("INSERT INTO ryw (id, v) VALUES (%s, %s)", (i, f"v{i}"))
                row = conn.execute("SELECT v, inet_server_port() FROM ryw WHERE id = %s", (i,)).fetchone()
                assert row is not None and row[0] == f"v{i}", f"stale read at {i}: {row}"
            elif mode == 1:  # autocommit, server-side prepared
                conn.execute("INSERT INTO ryw (id, v) VALUES (%s, %s)", (i, f"v{i}"), prepare=True)
                row = conn.execute("SELECT v, inet_server_port() FROM ryw WHERE id = %s", (i,), prepare=True).fetchone()
                assert row is not None and row[0] == f"v{i}", f"stale read at {i}: {row}"
            elif mode == 2:  # an explicit transaction, then a read
                with conn.transaction():
                    conn.execute("INSERT INTO ryw (id, v) VALUES (%s, %s)", (i, f"v{i}"))
                    conn.execute("UPDATE ryw_counter SET n = %s WHERE id = 1", (i,))
                row = conn.execute("SELECT n, inet_server_port() FROM ryw_counter WHERE id = 1").fetchone()
                assert row[0] == i, f"stale read at {i}: {row}"
            else:  # simple protocol update, binary read
                conn.execute(sql.SQL("UPDATE ryw_counter SET n = {} WHERE id = 1").format(sql.Literal(i)))
                row = conn.execute("SELECT n, inet_server_port() FROM ryw_counter WHERE id = 1", binary=True).fetchone()
                assert row[0] == i, f"stale read at {i}: {row}"
            ports[row[1]] += 1
    print(f"  read-your-writes: {RYW_ROUNDS} reads by server port {dict(sorted(ports.items()))}")


def main():
    setup_schema()
    failed = []
    only = [n for n in os.environ.get("DRIVER_CHECKS", "").split(",") if n]  # for debugging
    selected = [f for f in CHECKS if not only or f.__name__ in only]
    for fn in selected:
        t0 = time.monotonic()
        try:
            fn()
            print(f"ok {fn.__name__} ({time.monotonic() - t0:.1f}s)", flush=True)
        except BaseException:  # noqa: BLE001 - report every check, then fail
            failed.append(fn.__name__)
            print(f"FAILED {fn.__name__} ({time.monotonic() - t0:.1f}s)\n{traceback.format_exc()}", flush=True)
    print(f"psycopg {psycopg.__version__} (libpq {psycopg.pq.version()}): {len(selected) - len(failed)} of {len(selected)} checks ok")
    if failed:
        print("psycopg suite FAILED: " + ", ".join(failed))
        sys.exit(1)
    print("psycopg suite ok")


if __name__ == "__main__":
    main()
