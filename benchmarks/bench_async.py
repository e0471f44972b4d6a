"""Async webhook path: ``await handler.ahandle(...)`` against the floor on the raw async driver.

The same signed deliveries as ``bench_webhook.py`` (running and terminal updates,
shuffled so that some are stale, one in ten sent twice), one at a time, through:

* jobhook: ``WebhookHandler(AsyncSQLJobStore(url), secret=…).ahandle(headers, body)``;
* the floor (``_floor.AsyncFloor``) on the same driver: stdlib ``hmac``, ``json.loads``,
  and on PostgreSQL one data-modifying statement in autocommit, on SQLite one
  ``BEGIN IMMEDIATE`` transaction.

Drivers: aiosqlite for SQLite; psycopg 3 (async) and asyncpg for PostgreSQL. Run:

    python benchmarks/bench_async.py            # SQLite, and PostgreSQL if a URL is set
    python benchmarks/bench_async.py --quick    # seconds
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import (
    SECRET,
    Report,
    Target,
    machine,
    median,
    ms,
    parse_args,
    per_op,
    psycopg_url,
    summary,
)
from _floor import AsyncFloor, AsyncSQLAlchemyFloor
from bench_webhook import Delivery, check_done, plan, seed_jobs, sign

from jobhook._webhook import WebhookHandler
from jobhook.stores.sql import AsyncSQLJobStore, SQLJobStore

Round = Callable[[int], Awaitable[float]]


async def interleaved(contestants: dict[str, Round], rounds: int) -> dict[str, list[float]]:
    """`_common.interleaved` for coroutines: turns, alternating the order each round."""
    names = list(contestants)
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            results[name].append(await contestants[name](r))
    return results


async def connect_raw(driver: str, url: str) -> Any:
    if driver == "aiosqlite":
        import aiosqlite

        return await aiosqlite.connect(sa.make_url(url).database, isolation_level=None)
    if driver == "asyncpg":
        import asyncpg

        return await asyncpg.connect(psycopg_url(url))
    import psycopg

    return await psycopg.AsyncConnection.connect(psycopg_url(url), autocommit=True)


async def run(db: str, driver: str, url: str, args: Any) -> list[Target]:
    n_jobs = 30 if args.quick else 200
    rounds = args.rounds or (2 if args.quick else 15)
    run_id = uuid.uuid4().hex[:6]
    prefix = "abench_" if driver == "aiosqlite" else f"abench_{run_id}_"
    async_url = sa.make_url(url).set(drivername=f"{sa.make_url(url).get_backend_name()}+{driver}")
    # Seeding and checks go through a sync store on the same tables.
    sync_url = (
        url if driver == "aiosqlite" else sa.make_url(url).set(drivername="postgresql+psycopg")
    )
    seeder = SQLJobStore(sync_url, table_prefix=prefix, create_schema=True)
    store = AsyncSQLJobStore(async_url, table_prefix=prefix)
    handler = WebhookHandler(store, secret=SECRET)
    raw = await connect_raw(driver, url)
    floor = AsyncFloor(raw, prefix, SECRET, driver=driver)
    # PostgreSQL: the floor's statement on SQLAlchemy's async engine, as jobhook's is set
    # up (SQLite's async store runs the sync engine in threads; see _threaded.py).
    sa_floor = None if driver == "aiosqlite" else AsyncSQLAlchemyFloor(store.engine, prefix, SECRET)
    template = plan(n_jobs)
    jobs = seeder.tables.jobs

    def turn(tag: str, handle: Callable[[Delivery], Awaitable[int]]) -> Round:
        async def one_round(r: int) -> float:
            name = f"{run_id}{tag}{r}"
            seed_jobs(seeder.engine, jobs, name, n_jobs)
            deliveries = sign(name, template)
            started = time.perf_counter()
            for delivery in deliveries:
                if await handle(delivery) != 200:
                    raise SystemExit(f"{tag}: a delivery was refused")
            elapsed = per_op(started, len(deliveries))
            check_done(seeder.engine, jobs, name, n_jobs)
            return elapsed

        return one_round

    async def lib(d: Delivery) -> int:
        return (await handler.ahandle(d[1], d[2], job_id=d[0])).status

    async def raw_handle(d: Delivery) -> int:
        return await floor.handle(d[1], d[2])

    contestants = {"jobhook": turn("j", lib), "floor": turn("f", raw_handle)}
    if sa_floor is not None:
        contestants["sa-floor"] = turn("s", lambda d: sa_floor.handle(d[1], d[2]))
    try:
        results = await interleaved(contestants, rounds)
    finally:
        await raw.close()
        await store.close()
        if driver != "aiosqlite":
            seeder.metadata.drop_all(seeder.engine)
        seeder.close()
    report = Report(
        f"Async webhook path on {db} ({driver}): {len(template)} deliveries per round, "
        f"{rounds} rounds",
        ["implementation", "per delivery (median)", "deliveries/s"],
    )
    for name, key in (
        ("jobhook ahandle + AsyncSQLJobStore", "jobhook"),
        ("the floor", "floor"),
        ("the floor's statement on SQLAlchemy's AsyncConnection.execute", "sa-floor"),
    ):
        if key not in results:
            continue
        value = median(results[key])
        report.rows.append([name, ms(value), f"{1 / value:,.0f}"])
    report.targets = [
        Target.of_rounds(
            f"{db} ({driver}): jobhook / floor",
            results["jobhook"],
            results["floor"],
            2.0 if db == "SQLite" else 1.5,
        )
    ]
    if "sa-floor" in results:
        report.targets += [
            Target.of_rounds(
                f"{db} ({driver}): floor on SQLAlchemy / floor (no target)",
                results["sa-floor"],
                results["floor"],
                None,
            ),
            Target.of_rounds(
                f"{db} ({driver}): jobhook / floor on SQLAlchemy (no target)",
                results["jobhook"],
                results["sa-floor"],
                None,
            ),
        ]
    report.print()
    return report.targets


async def main_async(args: Any) -> list[Target]:
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        targets += await run("SQLite", "aiosqlite", url, args)
    if args.postgres:
        for driver in ("psycopg", "asyncpg"):
            targets += await run("PostgreSQL", driver, args.postgres, args)
    else:
        print("\nPostgreSQL skipped: no URL (--postgres or $JOBHOOK_TEST_POSTGRES_URL)")
    return targets


def main() -> None:
    args = parse_args((__doc__ or "bench_async").splitlines()[0])
    print(f"# bench_async ({machine(args.postgres)})")
    summary(asyncio.run(main_async(args)))


if __name__ == "__main__":
    sys.exit(main())
