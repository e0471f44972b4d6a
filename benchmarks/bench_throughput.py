"""Webhook throughput with 1, 2 and 4 processes on one PostgreSQL.

Each process is an app server of its own: its own ``SQLJobStore`` and
``WebhookHandler``, answering its share of one stream of signed deliveries (a running
update and a terminal one per job, shuffled, one in ten sent twice). The processes
start together; throughput is every delivery over the time until the last process
is done. Each process count runs several times, taking turns; the table shows the
median. There is no target: how throughput grows with processes depends on the cores
the app processes and PostgreSQL share, not on jobhook (on 2 cores, two processes
already fill them). Run:

    python benchmarks/bench_throughput.py [--quick]
"""

from __future__ import annotations

import multiprocessing
import sys
import time
import uuid
from typing import Any

from _common import SECRET, Report, machine, median, parse_args, sqlalchemy_pg_url, summary
from bench_webhook import Delivery, plan, seed_jobs, sign

from jobhook import WebhookHandler
from jobhook.stores.sql import SQLJobStore

COUNTS = (1, 2, 4)


def serve(url: str, prefix: str, part: list[Delivery], start: Any, done: Any) -> None:
    store = SQLJobStore(url, table_prefix=prefix)
    handler = WebhookHandler(store, secret=SECRET)
    store.get(part[0][0])  # connect before the clock starts
    start.wait()
    for job_id, headers, body in part:
        if handler.handle(headers, body, job_id=job_id).status != 200:
            raise SystemExit("a delivery was refused")
    done.put(time.monotonic())
    store.close()


def one_run(url: str, store: SQLJobStore, processes: int, n_jobs: int, tag: str) -> float:
    """Deliveries per second with ``processes`` processes."""
    seed_jobs(store.engine, store.tables.jobs, tag, n_jobs)
    deliveries = sign(tag, plan(n_jobs, seed=len(tag)))
    ctx = multiprocessing.get_context("spawn")
    start, done = ctx.Barrier(processes + 1), ctx.Queue()
    workers = [
        ctx.Process(
            target=serve,
            args=(url, store.tables.prefix, deliveries[i::processes], start, done),
        )
        for i in range(processes)
    ]
    for w in workers:
        w.start()
    start.wait()
    started = time.monotonic()
    finished = max(done.get(timeout=600) for _ in workers)
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise SystemExit(f"a worker failed with exit code {w.exitcode}")
    return len(deliveries) / (finished - started)


def main() -> None:
    args = parse_args(__doc__.splitlines()[0])
    if not args.postgres:
        print("PostgreSQL skipped: no URL (--postgres or $JOBHOOK_TEST_POSTGRES_URL)")
        summary([])
        return
    url = sqlalchemy_pg_url(args.postgres)
    n_jobs = 20 if args.quick else 1500
    rounds = args.rounds or (1 if args.quick else 3)
    print(f"# bench_throughput ({machine(args.postgres)})")
    store = SQLJobStore(url, table_prefix=f"tp_{uuid.uuid4().hex[:6]}_", create_schema=True)
    results: dict[int, list[float]] = {p: [] for p in COUNTS}
    try:
        for r in range(rounds):
            for p in COUNTS if r % 2 == 0 else reversed(COUNTS):
                results[p].append(one_run(url, store, p, n_jobs, f"r{r}p{p}"))
    finally:
        store.metadata.drop_all(store.engine)
        store.close()
    rate = {p: median(v) for p, v in results.items()}
    report = Report(
        f"Webhook throughput on one PostgreSQL: {len(plan(n_jobs))} deliveries per run, "
        f"{rounds} runs per process count",
        ["processes", "deliveries/s (median)", "vs 1 process"],
    )
    report.rows = [[str(p), f"{rate[p]:,.0f}", f"{rate[p] / rate[1]:.2f}x"] for p in COUNTS]
    report.print()
    summary(report.targets)


if __name__ == "__main__":
    sys.exit(main())
