"""A process for the multi-process consumer tests (``python -m tests.consumer_worker``).

``consume URL PREFIX NAME BATCH LEASE``: runs an `OutboxConsumer` until SIGTERM; its
handler records each call (event id, owner, start, end) in ``<prefix>log`` and the
event id once in ``<prefix>handled`` (an idempotent handler: a unique key).
``write URL PREFIX N``: creates and applies N jobs.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any

import sqlalchemy as sa

from jobhook import JobStatus, JobUpdate, OutboxConsumer, SQLJobStore


def side_tables(engine: sa.Engine, prefix: str) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {prefix}handled (event_id BIGINT PRIMARY KEY)"
        )
        conn.exec_driver_sql(
            f"CREATE TABLE IF NOT EXISTS {prefix}log (event_id BIGINT, owner VARCHAR(255), "
            "started DOUBLE PRECISION, ended DOUBLE PRECISION)"
        )


def consume(url: str, prefix: str, name: str, batch: int, lease: float) -> None:
    store = SQLJobStore(url, table_prefix=prefix)
    consumer = OutboxConsumer(store, name, lambda e: None, batch=batch, lease=lease)
    owner = consumer.owner
    if store.engine.dialect.name in ("mysql", "mariadb"):
        mark = sa.text(f"INSERT IGNORE INTO {prefix}handled (event_id) VALUES (:id)")
    else:
        mark = sa.text(
            f"INSERT INTO {prefix}handled (event_id) VALUES (:id) ON CONFLICT (event_id) DO NOTHING"
        )
    log = sa.text(f"INSERT INTO {prefix}log VALUES (:id, :owner, :started, :ended)")

    def handle(event: Any) -> None:
        started = time.time()
        time.sleep(0.002)  # widen the window a concurrent instance would need
        with store.engine.begin() as conn:
            conn.execute(mark, {"id": event.id})
            conn.execute(
                log, {"id": event.id, "owner": owner, "started": started, "ended": time.time()}
            )

    consumer.handle = handle
    consumer.poll_interval = 0.05
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    consumer.run(stop)
    store.close()


def write(url: str, prefix: str, n: int) -> None:
    store = SQLJobStore(url, table_prefix=prefix)
    for _ in range(n):
        job = store.create({"p": 1})
        store.apply(job.id, JobUpdate(JobStatus.SUBMITTED))
        store.apply(job.id, JobUpdate(JobStatus.SUCCEEDED))
    store.close()


if __name__ == "__main__":
    mode, url, prefix, *rest = sys.argv[1:]
    if mode == "consume":
        consume(url, prefix, rest[0], int(rest[1]), float(rest[2]))
    else:
        write(url, prefix, int(rest[0]))
