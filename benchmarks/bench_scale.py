"""``apply`` and ``list(owner_id=…)`` latency with 10k and with 1M jobs in the table.

Each size gets tables of its own, filled in bulk (``INSERT … SELECT`` from
``generate_series`` on PostgreSQL, ``executemany`` in large batches elsewhere): jobs
with 100 per owner (so that every listed page is full), and as many recorded delivery
ids. Then, alternating between the two sizes, single operations are timed one by one:
``apply`` of a ``running`` update with a delivery id to a random pending job, and the
first page (50) of a random owner's jobs, newest first. Run:

On MariaDB/MySQL (``--mysql`` or ``$JOBHOOK_TEST_MYSQL_URL``) the rows go in through
PyMySQL's multi-row ``executemany``. Run:

    python benchmarks/bench_scale.py            # 10k vs 1M (a few minutes, ~1 GB disk)
    python benchmarks/bench_scale.py --quick    # 1k vs 10k
    python benchmarks/bench_scale.py --large 200000
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from _common import Report, Target, machine, median, ms, parse_args, sqlalchemy_pg_url, summary

from jobhook import JobUpdate
from jobhook.stores.sql import SQLJobStore

PER_OWNER = 100
BATCH = 50_000
EPOCH = datetime(2024, 1, 1, tzinfo=timezone.utc)


def job_id(i: int) -> str:
    return f"job-{i:09d}"


def fill_sqlite(path: Path, prefix: str, n: int) -> None:
    """Bulk rows through the raw driver, in the text formats SQLAlchemy reads back."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN")
    for start in range(0, n, BATCH):
        jobs, deliveries = [], []
        for i in range(start, min(n, start + BATCH)):
            stamp = (EPOCH + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f")
            # Mostly finished jobs, as in a table that has been in use for a while.
            status = "pending" if i % 10 == 0 else "succeeded"
            jobs.append(
                (job_id(i), f"owner-{i // PER_OWNER}", f'{{"prompt": "job {i}"}}', status, stamp)
            )
            deliveries.append((f"seed-{i}", job_id(i), stamp))
        conn.executemany(
            f"INSERT INTO {prefix}jobs (id, kind, owner_id, input, status, metadata, version, "
            "created_at, updated_at) VALUES (?, 'image', ?, ?, ?, '{}', 1, ?, ?5)",
            jobs,
        )
        conn.executemany(
            f"INSERT INTO {prefix}deliveries (id, job_id, received_at) VALUES (?, ?, ?)",
            deliveries,
        )
    conn.execute("COMMIT")
    conn.execute("ANALYZE")
    conn.close()


def fill_postgres(engine: sa.Engine, prefix: str, n: int) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"INSERT INTO {prefix}jobs (id, kind, owner_id, input, status, metadata, version, "
            "created_at, updated_at) "
            "SELECT 'job-' || lpad(i::text, 9, '0'), 'image', 'owner-' || (i / %(per)s), "
            "jsonb_build_object('prompt', 'job ' || i), "
            "CASE WHEN i %% 10 = 0 THEN 'pending' ELSE 'succeeded' END, '{}'::jsonb, 1, "
            "%(epoch)s::timestamptz + i * interval '1 second', "
            "%(epoch)s::timestamptz + i * interval '1 second' "
            "FROM generate_series(0, %(last)s) AS i",
            {"per": PER_OWNER, "epoch": EPOCH, "last": n - 1},
        )
        conn.exec_driver_sql(
            f"INSERT INTO {prefix}deliveries (id, job_id, received_at) "
            "SELECT 'seed-' || i, 'job-' || lpad(i::text, 9, '0'), now() "
            "FROM generate_series(0, %(last)s) AS i",
            {"last": n - 1},
        )
    with engine.connect() as conn:
        conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql(
            f"VACUUM ANALYZE {prefix}jobs"
        )
        conn.exec_driver_sql(f"VACUUM ANALYZE {prefix}deliveries")


def fill_mysql(engine: sa.Engine, prefix: str, n: int) -> None:
    """Bulk rows through the raw driver (PyMySQL turns executemany into multi-row
    INSERTs), in the formats the store reads back: naive UTC ``DATETIME(6)``."""
    raw = engine.raw_connection()
    try:
        cursor = raw.cursor()
        for start in range(0, n, BATCH):
            jobs, deliveries = [], []
            for i in range(start, min(n, start + BATCH)):
                stamp = (EPOCH + timedelta(seconds=i)).strftime("%Y-%m-%d %H:%M:%S.%f")
                status = "pending" if i % 10 == 0 else "succeeded"
                owner = f"owner-{i // PER_OWNER}"
                jobs.append((job_id(i), owner, f'{{"prompt": "job {i}"}}', status, stamp, stamp))
                deliveries.append((f"seed-{i}", job_id(i), stamp))
            cursor.executemany(
                f"INSERT INTO {prefix}jobs (id, kind, owner_id, input, status, metadata, "
                "version, created_at, updated_at) "
                "VALUES (%s, 'image', %s, %s, %s, '{}', 1, %s, %s)",
                jobs,
            )
            cursor.executemany(
                f"INSERT INTO {prefix}deliveries (id, job_id, received_at) VALUES (%s, %s, %s)",
                deliveries,
            )
            raw.commit()
        cursor.execute(f"ANALYZE TABLE {prefix}jobs, {prefix}deliveries")
        cursor.fetchall()
    finally:
        raw.close()


class Sized:
    """A store with ``n`` jobs, and a random stream of jobs to apply to / owners to list."""

    def __init__(self, store: SQLJobStore, n: int, seed: int) -> None:
        self.store, self.n = store, n
        self.rng = random.Random(seed)
        # Pending jobs (every tenth), each used once, so every apply really applies.
        self.pending = [job_id(i) for i in range(0, n, 10)]
        self.rng.shuffle(self.pending)
        self.owners = n // PER_OWNER
        self.apply_times: list[float] = []
        self.list_times: list[float] = []

    def step(self, k: int) -> None:
        target = self.pending.pop()
        update = JobUpdate("running", progress=10)
        started = time.perf_counter()
        result = self.store.apply(target, update, delivery_id=f"bench-{uuid.uuid4().hex}")
        self.apply_times.append(time.perf_counter() - started)
        if not result.applied:
            raise SystemExit(f"apply to {target} did not apply: {result.outcome}")
        owner = f"owner-{self.rng.randrange(self.owners)}"
        started = time.perf_counter()
        page = self.store.list(owner_id=owner, limit=50)
        self.list_times.append(time.perf_counter() - started)
        if len(page) != 50:
            raise SystemExit(f"{owner} has {len(page)} jobs listed, not 50")


def run(
    db: str, small: SQLJobStore, large: SQLJobStore, sizes: tuple[int, int], args: Any
) -> list[Target]:
    a, b = Sized(small, sizes[0], 1), Sized(large, sizes[1], 2)
    # Each sample applies to a pending job of its own: the small table has sizes[0] / 10.
    samples = min(100 if args.quick else 1000, len(a.pending))
    for k in range(samples):
        # Alternate which size goes first, so neither always follows the other.
        for sized in (a, b) if k % 2 == 0 else (b, a):
            sized.step(k)
    report = Report(
        f"Latency on {db} by table size: {samples} single operations each",
        ["operation", f"{sizes[0]:,} jobs (median)", f"{sizes[1]:,} jobs (median)", "ratio"],
    )
    targets = []
    for short, name, x, y in (
        ("apply", "apply (running, with delivery id)", a.apply_times, b.apply_times),
        ("list", "list(owner_id=…, limit=50)", a.list_times, b.list_times),
    ):
        ratio = median(y) / median(x)
        report.rows.append([name, ms(median(x)), ms(median(y)), f"{ratio:.2f}x"])
        targets.append(Target(f"{db}: {short} at {sizes[1]:,} / {sizes[0]:,}", ratio, 1.5))
    report.targets = targets
    report.print()
    return targets


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument("--small", type=int, default=None, help="jobs in the small table")
        parser.add_argument("--large", type=int, default=None, help="jobs in the large table")
        parser.add_argument(
            "--mysql",
            default=os.environ.get("JOBHOOK_BENCH_MYSQL_URL")
            or os.environ.get("JOBHOOK_TEST_MYSQL_URL"),
            help="MariaDB/MySQL URL (default: $JOBHOOK_BENCH_MYSQL_URL, then "
            "$JOBHOOK_TEST_MYSQL_URL); skipped without one",
        )

    args = parse_args(__doc__.splitlines()[0], extra)
    sizes = (
        args.small or (1_000 if args.quick else 10_000),
        args.large or (10_000 if args.quick else 1_000_000),
    )
    print(f"# bench_scale ({machine(args.postgres)})")
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        stores = []
        for n in sizes:
            path = Path(tmp) / f"jobs-{n}.db"
            store = SQLJobStore(f"sqlite:///{path}", create_schema=True)
            started = time.perf_counter()
            fill_sqlite(path, "jobhook_", n)
            print(f"SQLite: {n:,} jobs filled in {time.perf_counter() - started:.1f} s")
            stores.append(store)
        targets += run("SQLite", stores[0], stores[1], sizes, args)
        for store in stores:
            store.close()
    if args.postgres:
        url = sqlalchemy_pg_url(args.postgres)
        stores = []
        try:
            for n in sizes:
                store = SQLJobStore(
                    url, table_prefix=f"scale_{uuid.uuid4().hex[:6]}_", create_schema=True
                )
                stores.append(store)
                started = time.perf_counter()
                fill_postgres(store.engine, store.tables.prefix, n)
                print(f"PostgreSQL: {n:,} jobs filled in {time.perf_counter() - started:.1f} s")
            targets += run("PostgreSQL", stores[0], stores[1], sizes, args)
        finally:
            for store in stores:
                store.metadata.drop_all(store.engine)
                store.close()
    else:
        print("\nPostgreSQL skipped: no URL (--postgres or $JOBHOOK_TEST_POSTGRES_URL)")
    if args.mysql:
        targets += run_sql("MariaDB/MySQL", args.mysql, fill_mysql, sizes, args)
    else:
        print("\nMariaDB/MySQL skipped: no URL (--mysql or $JOBHOOK_TEST_MYSQL_URL)")
    summary(targets)


def run_sql(db: str, url: str, fill: Any, sizes: tuple[int, int], args: Any) -> list[Target]:
    """Fill a table of each size on a database server, run, drop them."""
    stores: list[SQLJobStore] = []
    try:
        for n in sizes:
            prefix = f"scale_{uuid.uuid4().hex[:6]}_"
            store = SQLJobStore(url, table_prefix=prefix, create_schema=True)
            stores.append(store)
            started = time.perf_counter()
            fill(store.engine, prefix, n)
            print(f"{db}: {n:,} jobs filled in {time.perf_counter() - started:.1f} s")
        return run(db, stores[0], stores[1], sizes, args)
    finally:
        for store in stores:
            with store.engine.begin() as conn:
                store.tables.drop(conn)
            store.close()


if __name__ == "__main__":
    sys.exit(main())
