"""Group commit on PostgreSQL: ``SQLJobStore(url, group_commit=True)`` against one commit
per delivery (the same store without it), through the whole webhook path.

The same signed deliveries (a running update and a terminal one per job, shuffled, one
in ten sent twice: duplicates, and stale updates where the terminal one comes first)
go through ``WebhookHandler(store).handle`` from 32 threads at once (and from 32
asyncio tasks on ``AsyncSQLJobStore``), then from one. Both contestants use the same
tables and the same pool (``--pool`` connections); they take turns round after round.
A round's ratio is group commit's throughput over the other's in the same round; the
table shows the median and the range of those ratios, and p50/p99 latency. Run:

    python benchmarks/bench_group_commit.py [--quick] [--pool 15]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from _common import (
    SECRET,
    Report,
    Target,
    interleaved,
    machine,
    median,
    parse_args,
    sqlalchemy_pg_url,
    summary,
)
from bench_webhook import Delivery, check_done, plan, seed_jobs, sign
from sqlalchemy.ext.asyncio import create_async_engine

from jobhook import WebhookHandler
from jobhook.stores._schema import async_url, engine_options
from jobhook.stores.sql import AsyncSQLJobStore, SQLJobStore

#: (seconds for the whole stream, per-delivery latencies, this process's CPU seconds)
Round = tuple[float, list[float], float]


def threaded(handler: WebhookHandler, deliveries: list[Delivery], concurrency: int) -> Round:
    """Every delivery through ``handler`` from ``concurrency`` threads."""
    latencies: list[float] = []
    lock = threading.Lock()
    position = iter(deliveries)
    start = threading.Barrier(concurrency + 1)

    def worker() -> None:
        start.wait()
        while True:
            with lock:
                delivery = next(position, None)
            if delivery is None:
                return
            began = time.perf_counter()
            status = handler.handle(delivery[1], delivery[2], job_id=delivery[0]).status
            latencies.append(time.perf_counter() - began)
            if status != 200:
                raise SystemExit(f"a delivery was answered {status}")

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    start.wait()
    began, cpu = time.perf_counter(), time.process_time()
    for t in threads:
        t.join()
    return time.perf_counter() - began, latencies, time.process_time() - cpu


async def tasks(handler: WebhookHandler, deliveries: list[Delivery], concurrency: int) -> Round:
    """Every delivery through ``handler.ahandle`` from ``concurrency`` tasks."""
    latencies: list[float] = []
    position = iter(deliveries)

    async def worker() -> None:
        for delivery in position:
            began = time.perf_counter()
            answer = await handler.ahandle(delivery[1], delivery[2], job_id=delivery[0])
            latencies.append(time.perf_counter() - began)
            if answer.status != 200:
                raise SystemExit(f"a delivery was answered {answer.status}")

    began, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies, time.process_time() - cpu


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


class Contest:
    """One database's tables, and one round's stream per contestant and round."""

    def __init__(self, url: str, n_jobs: int, run_id: str) -> None:
        self.url = url
        self.n_jobs = n_jobs
        self.run_id = run_id
        self.template = plan(n_jobs)
        self.setup = SQLJobStore(url, table_prefix=f"gc_{run_id}_", create_schema=True)
        self.rounds: dict[str, list[Round]] = {}

    def stream(self, name: str, r: int) -> list[Delivery]:
        tag = f"{self.run_id}{name}{r}"
        seed_jobs(self.setup.engine, self.setup.tables.jobs, tag, self.n_jobs)
        # Statistics, as a table in service has: the plans then look rows up by index.
        with self.setup.engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT")
            for table in self.setup.metadata.sorted_tables:
                conn.exec_driver_sql(f"ANALYZE {table.name}")
        return sign(tag, self.template)

    def done(self, name: str, r: int, result: Round) -> float:
        check_done(
            self.setup.engine, self.setup.tables.jobs, f"{self.run_id}{name}{r}", self.n_jobs
        )
        self.rounds.setdefault(name, []).append(result)
        return result[0] / len(result[1])  # seconds per delivery

    def close(self) -> None:
        self.setup.metadata.drop_all(self.setup.engine)
        self.setup.close()


def sync_contestant(
    contest: Contest, name: str, store: SQLJobStore, concurrency: int
) -> Callable[[int], float]:
    handler = WebhookHandler(store, secret=SECRET)

    def one_round(r: int) -> float:
        deliveries = contest.stream(name, r)
        return contest.done(name, r, threaded(handler, deliveries, concurrency))

    return one_round


def async_contestant(
    contest: Contest, name: str, store: AsyncSQLJobStore, concurrency: int, runner: Any
) -> Callable[[int], float]:
    handler = WebhookHandler(store, secret=SECRET)

    def one_round(r: int) -> float:
        deliveries = contest.stream(name, r)
        return contest.done(name, r, runner.run(tasks(handler, deliveries, concurrency)))

    return one_round


def compare(contest: Contest, title: str, group: str, single: str, limit: float) -> Report:
    """The table and target of one pairing: group commit's throughput over the other's."""
    g, s = contest.rounds[group], contest.rounds[single]
    ratios = [
        (len(gl) / gt) / (len(sl) / st) for (gt, gl, _), (st, sl, _) in zip(g, s, strict=True)
    ]
    header = ["store", "deliveries/s (median)", "p50", "p99", "app CPU per delivery", "app cores"]
    report = Report(title, header)
    for label, rounds in (("group commit", g), ("one commit per delivery", s)):
        rate = median([len(lat) / t for t, lat, _ in rounds])
        lat = [x for _, lats, _ in rounds for x in lats]
        # The benchmark process's CPU time (the app's side: Python, under one GIL),
        # per delivery and per second of the stream.
        cpu = median([c / len(lats) for _, lats, c in rounds])
        cores = median([c / t for t, _, c in rounds])
        report.rows.append(
            [
                label,
                f"{rate:,.0f}",
                f"{percentile(lat, 50) * 1000:.2f} ms",
                f"{percentile(lat, 99) * 1000:.2f} ms",
                f"{cpu * 1000:.3f} ms",
                f"{cores:.2f}",
            ]
        )
    middle = statistics.median(ratios)
    report.rows.append(
        [
            "throughput ratio (per round)",
            f"median {middle:.2f}x",
            f"min {min(ratios):.2f}x",
            f"max {max(ratios):.2f}x",
            "",
            "",
        ]
    )
    report.targets = [
        Target(
            f"{title}: group / one commit per delivery (throughput)",
            middle,
            limit,
            low=min(ratios),
            high=max(ratios),
            higher_is_better=True,
        )
    ]
    return report


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        lambda p: p.add_argument("--pool", type=int, default=15, help="connections per store"),
    )
    if not args.postgres:
        print("PostgreSQL skipped: no URL (--postgres or $JOBHOOK_TEST_POSTGRES_URL)")
        summary([])
        return
    url = sqlalchemy_pg_url(args.postgres)
    n_jobs = 16 if args.quick else 300
    rounds = args.rounds or (1 if args.quick else 7)
    print(f"# bench_group_commit ({machine(args.postgres)}, pool of {args.pool})")
    contest = Contest(url, n_jobs, uuid.uuid4().hex[:6])
    prefix = contest.setup.tables.prefix
    pool = {"pool_size": args.pool, "max_overflow": 0}

    def sync_store(group: bool) -> SQLJobStore:
        made = sa.make_url(url)
        engine = sa.create_engine(made, **pool, **engine_options(made))
        return SQLJobStore(engine, table_prefix=prefix, group_commit=group)

    def async_store(group: bool) -> AsyncSQLJobStore:
        made = async_url(url)
        engine = create_async_engine(made, **pool, **engine_options(made))
        return AsyncSQLJobStore(engine, table_prefix=prefix, group_commit=group)

    stores = {"g": sync_store(True), "s": sync_store(False)}
    astores = {"ag": async_store(True), "as": async_store(False)}
    runner = asyncio.Runner()
    targets: list[Target] = []
    try:
        for concurrency, limit in ((32, 2.5), (1, 0.9)):
            contestants: dict[str, Callable[[int], float]] = {}
            for key, store in stores.items():
                name = f"{key}{concurrency}"
                contestants[name] = sync_contestant(contest, name, store, concurrency)
            for key, astore in astores.items():
                name = f"{key}{concurrency}"
                contestants[name] = async_contestant(contest, name, astore, concurrency, runner)
            interleaved(contestants, rounds)
            per_round = f"{len(contest.template)} deliveries per round, {rounds} rounds"
            for group, single, kind in (("g", "s", "threads"), ("ag", "as", "asyncio tasks")):
                report = compare(
                    contest,
                    f"{concurrency} concurrent ({kind}), {per_round}",
                    f"{group}{concurrency}",
                    f"{single}{concurrency}",
                    limit,
                )
                report.print()
                targets += report.targets
    finally:
        for store in stores.values():
            store.engine.dispose()
        for astore in astores.values():
            runner.run(astore.engine.dispose())
        runner.close()
        contest.close()
    summary(targets)


if __name__ == "__main__":
    sys.exit(main())
