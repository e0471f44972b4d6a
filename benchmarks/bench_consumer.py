"""Commit-to-handler latency of an ``OutboxConsumer``: woken by LISTEN/NOTIFY on
PostgreSQL, against polling (on PostgreSQL and SQLite).

One writer commits an update (``store.apply``), then waits until the consumer, running
in a thread with ``run(stop)``, has handled its event; the latency is from ``apply``
returning (the commit is done) to ``handle`` being called (0 when the handler was called
first). Writes are spaced by a random pause, so a poller is caught at every phase of its
interval. Reported: median and p99 per mode; targets: LISTEN's median under half of
polling's at ``--poll`` seconds, and polling's median within its interval. On
PostgreSQL it also reports what the notify trigger costs ``apply``: two stores, one
with the trigger and one without, taking turns round after round (no target: the
number to watch). Run:

    python benchmarks/bench_consumer.py [--quick] [--poll 0.1]
"""

from __future__ import annotations

import random
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from _common import Report, Target, machine, parse_args, sqlalchemy_pg_url, summary

from jobhook import JobStatus, JobUpdate, OutboxConsumer
from jobhook.stores.sql import SQLJobStore


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(store: SQLJobStore, listen: bool, poll: float, n: int) -> list[float]:
    """Latencies of ``n`` events, one at a time, through a running consumer."""
    handled: dict[int, float] = {}
    arrived = threading.Condition()

    def handle(event: Any) -> None:
        with arrived:
            handled[event.id] = time.perf_counter()
            arrived.notify_all()

    name = f"bench-{uuid.uuid4().hex[:8]}"
    # With LISTEN, the poll interval is only the longest sleep: make it long, so that
    # every wake-up measured is a notification.
    consumer = OutboxConsumer(
        store, name, handle, listen=listen, poll_interval=5.0 if listen else poll
    )
    stop = threading.Event()
    worker = threading.Thread(target=consumer.run, args=(stop,))
    worker.start()
    while not store.consumers() or all(c.name != name for c in store.consumers()):
        time.sleep(0.01)
    time.sleep(0.2)  # the consumer reaches its wait
    latencies = []
    rng = random.Random(7)
    try:
        for _ in range(n):
            job = store.create({"bench": True})
            result = store.apply(job.id, JobUpdate(JobStatus.SUCCEEDED))
            committed = time.perf_counter()
            assert result.event is not None
            event_id = result.event.id
            with arrived:
                if not arrived.wait_for(lambda: event_id in handled, timeout=30):  # noqa: B023
                    raise RuntimeError("the consumer never handled an event")
            latencies.append(max(0.0, handled[event_id] - committed))
            time.sleep(rng.uniform(0, poll))
    finally:
        stop.set()
        worker.join()
    return latencies


def trigger_cost(url: str, args: Any) -> None:
    """Median ``apply`` time with the notify trigger over the same without it."""
    import statistics

    rounds = 3 if args.quick else (args.rounds or 20)
    per_round = 20 if args.quick else 100
    stores = {
        "with trigger": SQLJobStore(url, table_prefix=f"b{uuid.uuid4().hex[:8]}_"),
        "without": SQLJobStore(url, table_prefix=f"b{uuid.uuid4().hex[:8]}_"),
    }
    for store in stores.values():
        store.create_schema()
    bare = stores["without"]
    with bare.engine.begin() as conn:
        conn.exec_driver_sql(
            f"DROP TRIGGER {bare.tables.prefix}events_notify ON {bare.tables.events.name}"
        )
    times: dict[str, list[float]] = {name: [] for name in stores}
    try:
        for r in range(rounds):
            order = list(stores.items())
            for name, store in order if r % 2 else reversed(order):
                ids = [store.create({"bench": True}).id for _ in range(per_round)]
                started = time.perf_counter()
                for i, job_id in enumerate(ids):
                    update = JobUpdate(JobStatus.RUNNING, progress=10)
                    store.apply(job_id, update, delivery_id=f"{r}-{i}")
                times[name].append((time.perf_counter() - started) / per_round)
    finally:
        for store in stores.values():
            store.metadata.drop_all(store.engine)
            store.close()
    medians = {name: statistics.median(values) for name, values in times.items()}
    report = Report(
        f"apply on PostgreSQL with and without the notify trigger: {per_round} applies per "
        f"round, {rounds} rounds, interleaved",
        ["with trigger (median)", "without (median)", "ratio"],
    )
    ratio = medians["with trigger"] / medians["without"]
    report.rows.append(
        [
            f"{medians['with trigger'] * 1000:.3f} ms",
            f"{medians['without'] * 1000:.3f} ms",
            f"{ratio:.2f}x",
        ]
    )
    report.print()


def run(db: str, url: str, args: Any) -> list[Target]:
    n = 10 if args.quick else (args.rounds or 200)
    prefix = f"b{uuid.uuid4().hex[:8]}_"
    store = SQLJobStore(url, table_prefix=prefix, create_schema=True)
    modes = [("polling", False)]
    if db == "PostgreSQL":
        modes.insert(0, ("LISTEN/NOTIFY", True))
    results: dict[str, list[float]] = {}
    try:
        for mode, listen in modes:
            results[mode] = measure(store, listen, args.poll, n)
    finally:
        if db == "PostgreSQL":
            store.metadata.drop_all(store.engine)
        store.close()
    report = Report(
        f"commit to handler on {db}: {n} events, one at a time, polling every {args.poll:g} s",
        ["mode", "median", "p99", "max"],
    )
    for mode, values in results.items():
        report.rows.append(
            [
                mode,
                f"{percentile(values, 0.5) * 1000:.2f} ms",
                f"{percentile(values, 0.99) * 1000:.2f} ms",
                f"{max(values) * 1000:.2f} ms",
            ]
        )
    polling = percentile(results["polling"], 0.5)
    report.targets.append(Target(f"{db}: polling median / interval", polling / args.poll, 1.0))
    if "LISTEN/NOTIFY" in results:
        listen = percentile(results["LISTEN/NOTIFY"], 0.5)
        report.targets.append(
            Target(f"{db}: LISTEN median / polling median", listen / polling, 0.5, strict=True)
        )
    report.print()
    return report.targets


def main() -> None:
    args = parse_args(
        (__doc__ or "bench_consumer").splitlines()[0],
        lambda p: p.add_argument(
            "--poll", type=float, default=0.1, help="polling interval in seconds (0.1)"
        ),
    )
    print(f"# bench_consumer ({machine(args.postgres)})")
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        targets += run("SQLite", f"sqlite:///{Path(tmp) / 'bench.db'}", args)
    if args.postgres:
        targets += run("PostgreSQL", sqlalchemy_pg_url(args.postgres), args)
        trigger_cost(sqlalchemy_pg_url(args.postgres), args)
    summary(targets)


if __name__ == "__main__":
    sys.exit(main())
