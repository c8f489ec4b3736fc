"""asyncpg through pgcausal in transaction pooling: named prepared statements and binary
format everywhere, its statement cache reused across 1000 transactions by several connections."""
import asyncio
import sys

import asyncpg


async def worker(dsn: str, k: int, rounds: int) -> int:
    conn = await asyncpg.connect(dsn)
    done = 0
    try:
        for i in range(rounds):
            async with conn.transaction():
                await conn.execute("INSERT INTO asyncpg_items (worker, n, payload) VALUES ($1, $2, $3)", k, i, b"\x00\x01" * i)
                row = await conn.fetchrow("SELECT count(*) AS c, max(n) AS m FROM asyncpg_items WHERE worker = $1", k)
                assert row["c"] == i + 1 and row["m"] == i, (k, i, row)
            value = await conn.fetchval("SELECT $1::numeric * 2", i)
            assert value == i * 2, value
            done += 1
    finally:
        await conn.close()
    return done


async def main(dsn: str) -> None:
    setup = await asyncpg.connect(dsn)
    await setup.execute("DROP TABLE IF EXISTS asyncpg_items; CREATE TABLE asyncpg_items (worker int, n int, payload bytea)")
    await setup.close()
    workers, rounds = 4, 250
    done = await asyncio.gather(*(worker(dsn, k, rounds) for k in range(workers)))
    assert sum(done) == workers * rounds, done
    print(f"asyncpg ok: {sum(done)} transactions")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
