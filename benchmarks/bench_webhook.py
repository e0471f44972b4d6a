"""Webhook path (verify, parse, apply, commit): jobhook against two hand-written handlers.

The same signed deliveries (a running update and a terminal one per job, shuffled, so
that some running updates come after the terminal one and are stale, and one in ten
sent twice) go through:

* jobhook: ``WebhookHandler(SQLJobStore(url), secret=…).handle(headers, body)``;
* the floor (``_floor.py``), the best hand-written code with the same guarantees on the
  raw driver (``sqlite3`` / ``psycopg``): stdlib ``hmac`` verify, ``json.loads``, and on
  PostgreSQL one data-modifying statement in autocommit (delivery id, guarded UPDATE,
  outbox event, previous status), on SQLite one ``BEGIN IMMEDIATE`` transaction;
* the usual ORM handler: ``standardwebhooks`` verify, ``Session.get``, check the status
  in Python, set the fields, commit (no delivery ids, no event, and it loses updates
  under concurrency).

All three use the same tables (jobhook's schema, so the same indexes) in the same
database, and take turns round after round. Run:

    python benchmarks/bench_webhook.py            # SQLite, and PostgreSQL if a URL is set
    python benchmarks/bench_webhook.py --quick    # seconds
"""

from __future__ import annotations

import json
import random
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa
from _common import (
    SECRET,
    Report,
    Target,
    interleaved,
    main_on_both_databases,
    median,
    ms,
    per_op,
)
from _floor import RANK, TERMINAL, SQLAlchemyFloor, SyncFloor
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from jobhook import sign_webhook
from jobhook._webhook import WebhookHandler
from jobhook.stores.sql import SQLJobStore

Delivery = tuple[str, dict[str, str], bytes]  # job id, headers, body


# -- the deliveries ------------------------------------------------------------------


def plan(n_jobs: int, seed: int = 7) -> list[tuple[int, int, dict[str, Any]]]:
    """(job number, delivery number, payload without job id), shuffled, 10% sent twice."""
    stream: list[tuple[int, int, dict[str, Any]]] = []
    for i in range(n_jobs):
        stream.append((i, 2 * i, {"status": "running", "progress": 50, "sequence": 1}))
        output = {"images": [f"https://cdn.example/{i}.png"], "seed": i}
        stream.append((i, 2 * i + 1, {"status": "succeeded", "output": output}))
    rng = random.Random(seed)
    stream += rng.sample(stream, k=len(stream) // 10)
    rng.shuffle(stream)
    return stream


def sign(tag: str, template: list[tuple[int, int, dict[str, Any]]]) -> list[Delivery]:
    """The stream for one contestant's round: its own job ids, signed now."""
    out = []
    for i, d, payload in template:
        job_id = f"{tag}-{i}"
        body = json.dumps({"job_id": job_id, **payload}, separators=(",", ":")).encode()
        out.append((job_id, sign_webhook(SECRET, body, msg_id=f"{tag}-d{d}"), body))
    return out


def seed_jobs(engine: sa.Engine, jobs: sa.Table, tag: str, n_jobs: int) -> None:
    now = datetime.now(timezone.utc)
    rows = [
        {
            "id": f"{tag}-{i}",
            "kind": "image",
            "owner_id": f"user-{i % 50}",
            "input": {"prompt": f"a red fox, take {i}"},
            "status": "pending",
            "metadata": {},
            "version": 1,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(n_jobs)
    ]
    with engine.begin() as conn:
        conn.execute(jobs.insert(), rows)


def check_done(engine: sa.Engine, jobs: sa.Table, tag: str, n_jobs: int) -> None:
    """Every contestant must end with every job succeeded, or it did not do the work."""
    with engine.connect() as conn:
        done = conn.execute(
            sa.select(sa.func.count())
            .select_from(jobs)
            .where(jobs.c.id.like(f"{tag}-%"), jobs.c.status == "succeeded")
        ).scalar_one()
    if done != n_jobs:
        raise SystemExit(f"{tag}: {done} of {n_jobs} jobs succeeded; the contestant is wrong")


# -- baseline (b): the usual ORM handler ----------------------------------------------


class Base(DeclarativeBase):
    pass


class OrmHandler:
    """Baseline (b): load the row, check its status, set fields, commit."""

    def __init__(self, engine: sa.Engine, jobs: sa.Table) -> None:
        self.model: Any = type(f"Job_{uuid.uuid4().hex[:6]}", (Base,), {"__table__": jobs})
        self.session = sessionmaker(engine)
        self.webhook = Webhook(SECRET)

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        try:
            data = self.webhook.verify(body, headers)
        except WebhookVerificationError:
            return 401
        status = data["status"]
        with self.session() as session:
            job = session.get(self.model, data["job_id"])
            if job is None:
                return 404
            if job.status in TERMINAL or RANK[status] < RANK[job.status]:
                return 200
            progress = data.get("progress")
            if (
                status == job.status == "running"
                and progress is not None
                and job.progress is not None
                and progress < job.progress
            ):
                return 200
            now = datetime.now(timezone.utc)
            job.status = status
            if progress is not None:
                job.progress = float(progress)
            elif status == "succeeded":
                job.progress = 100.0
            if data.get("output") is not None:
                job.output = data["output"]
            job.version += 1
            job.updated_at = now
            if status in TERMINAL:
                job.completed_at = now
            session.commit()
        return 200


# -- the run ---------------------------------------------------------------------------


def contestant(
    name: str,
    handle: Callable[[Delivery], int],
    engine: sa.Engine,
    jobs: sa.Table,
    template: list[tuple[int, int, dict[str, Any]]],
    n_jobs: int,
    run_id: str,
) -> Callable[[int], float]:
    def one_round(r: int) -> float:
        tag = f"{run_id}{name}{r}"
        seed_jobs(engine, jobs, tag, n_jobs)
        deliveries = sign(tag, template)
        started = time.perf_counter()
        for delivery in deliveries:
            if handle(delivery) != 200:
                raise SystemExit(f"{name}: a delivery was refused")
        elapsed = per_op(started, len(deliveries))
        check_done(engine, jobs, tag, n_jobs)
        return elapsed

    return one_round


def run(db: str, url: str, raw_connect: Callable[[], Any], args: Any) -> list[Target]:
    # Many short rounds, taking turns: a burst of load from elsewhere on the machine
    # lands in a few rounds of every contestant, and the medians ignore it.
    n_jobs = 30 if args.quick else 200
    rounds = args.rounds or (2 if args.quick else 15)
    run_id = uuid.uuid4().hex[:6]
    prefix = "bench_" if db == "SQLite" else f"bench_{run_id}_"
    store = SQLJobStore(url, table_prefix=prefix, create_schema=True)
    handler = WebhookHandler(store, secret=SECRET)
    jobs = store.tables.jobs
    raw_conn = raw_connect()
    floor = SyncFloor(raw_conn, prefix, SECRET, sqlite=db == "SQLite")
    sa_floor = SQLAlchemyFloor(store.engine, prefix, SECRET, sqlite=db == "SQLite")
    orm_engine = sa.create_engine(url)
    orm = OrmHandler(orm_engine, jobs)
    template = plan(n_jobs)

    def lib(d: Delivery) -> int:
        return handler.handle(d[1], d[2], job_id=d[0]).status

    def turn(name: str, handle: Callable[[Delivery], int]) -> Callable[[int], float]:
        return contestant(name, handle, store.engine, jobs, template, n_jobs, run_id)

    try:
        results = interleaved(
            {
                "jobhook": turn("j", lib),
                "floor": turn("f", lambda d: floor.handle(d[1], d[2])),
                "sa-floor": turn("s", lambda d: sa_floor.handle(d[1], d[2])),
                "orm": turn("o", lambda d: orm.handle(d[1], d[2])),
            },
            rounds,
        )
    finally:
        raw_conn.close()
        orm_engine.dispose()
        if db != "SQLite":
            store.metadata.drop_all(store.engine)
        store.close()
    lib_t, floor_t, sa_t, orm_t = (
        median(results[k]) for k in ("jobhook", "floor", "sa-floor", "orm")
    )
    report = Report(
        f"Webhook path on {db}: {len(template)} deliveries per round, {rounds} rounds",
        ["implementation", "per delivery (median)", "deliveries/s"],
    )
    for name, value in (
        ("jobhook WebhookHandler + SQLJobStore", lib_t),
        ("the floor: raw driver, same guarantees", floor_t),
        ("the floor's statements on SQLAlchemy's Connection.execute", sa_t),
        ("the usual ORM handler", orm_t),
    ):
        report.rows.append([name, ms(value), f"{1 / value:,.0f}"])
    report.targets = [
        Target.of_rounds(
            f"{db}: jobhook / floor",
            results["jobhook"],
            results["floor"],
            1.5 if db == "SQLite" else 1.2,
        ),
        Target.of_rounds(
            f"{db}: floor on SQLAlchemy / floor (no target: what SQLAlchemy costs)",
            results["sa-floor"],
            results["floor"],
            None,
        ),
        Target.of_rounds(
            f"{db}: jobhook / floor on SQLAlchemy (no target)",
            results["jobhook"],
            results["sa-floor"],
            None,
        ),
        Target.of_rounds(
            f"{db}: jobhook / ORM handler", results["jobhook"], results["orm"], 1.0, strict=True
        ),
    ]
    report.print()
    return report.targets


def main() -> None:
    main_on_both_databases("bench_webhook", __doc__ or "bench_webhook", run)


if __name__ == "__main__":
    sys.exit(main())
