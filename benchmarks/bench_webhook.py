"""Webhook path (verify, parse, apply, commit): jobhook against two hand-written handlers.

The same signed deliveries (a running update and a terminal one per job, shuffled, one
in ten sent twice) go through:

* jobhook: ``WebhookHandler(SQLJobStore(url), secret=…).handle(headers, body)``;
* baseline (a), the minimal correct path on the raw driver (``sqlite3`` / ``psycopg``):
  stdlib ``hmac`` verify, ``json.loads``, one transaction with an INSERT of the delivery
  id and one guarded UPDATE (no outbox event, no answer naming the outcome);
* baseline (b), the usual ORM handler: ``standardwebhooks`` verify, ``Session.get``,
  check the status in Python, set the fields, commit (no delivery ids, no event).

All three use the same tables (jobhook's schema, so the same indexes) in the same
database, and take turns round after round. Run:

    python benchmarks/bench_webhook.py            # SQLite, and PostgreSQL if a URL is set
    python benchmarks/bench_webhook.py --quick    # seconds
"""

from __future__ import annotations

import base64
import hashlib
import hmac
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
from sqlalchemy.orm import DeclarativeBase, sessionmaker
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from jobhook import sign_webhook
from jobhook._webhook import WebhookHandler
from jobhook.stores.sql import SQLJobStore

RANK = {"pending": 0, "submitted": 1, "running": 2, "succeeded": 3, "failed": 3, "canceled": 3}
TERMINAL = ("succeeded", "failed", "canceled")

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


# -- baseline (a): the minimal correct path on the raw driver --------------------------


def verify(key: bytes, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """Standard Webhooks v1 with the standard library."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures) or not timestamp.isdigit():
        return False
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac)
    for signature in signatures.split():
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


def guarded_update(table: str, param: str, cast_json: str) -> tuple[str, str]:
    """The two UPDATEs a careful hand-writer ends up with: any status, and running
    (whose progress must not go backwards)."""
    p = param
    base = (
        f"UPDATE {table} SET status = {p}, progress = COALESCE({p}, progress), "
        f"output = COALESCE({p}{cast_json}, output), version = version + 1, "
        f"updated_at = {p}, completed_at = CASE WHEN {p} THEN {p} ELSE completed_at END "
        f"WHERE id = {p} AND status NOT IN ('succeeded', 'failed', 'canceled') "
        f"AND CASE status WHEN 'pending' THEN 0 WHEN 'submitted' THEN 1 ELSE 2 END <= {p}"
    )
    running = base + f" AND (status <> 'running' OR progress IS NULL OR progress <= {p})"
    return base, running


class RawHandler:
    """Baseline (a) over a DB-API connection (``sqlite3`` or ``psycopg``)."""

    def __init__(self, conn: Any, prefix: str, *, sqlite: bool) -> None:
        self.conn = conn
        self.sqlite = sqlite
        self.key = base64.b64decode(SECRET.removeprefix("whsec_"))
        p = "?" if sqlite else "%s"
        self.insert_delivery = (
            f"INSERT INTO {prefix}deliveries (id, job_id, received_at) "
            f"VALUES ({p}, {p}, {p}) ON CONFLICT (id) DO NOTHING"
        )
        self.update, self.update_running = guarded_update(
            f"{prefix}jobs", p, "" if sqlite else "::jsonb"
        )

    def now(self) -> Any:
        now = datetime.now(timezone.utc)
        # SQLite has no timestamp type: store the text SQLAlchemy would.
        return now.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else now

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        if not verify(self.key, headers, body):
            return 401
        try:
            data = json.loads(body)
            job_id, status = data["job_id"], data["status"]
            rank = RANK[status]
        except (ValueError, KeyError, TypeError):
            return 400
        progress = data.get("progress")
        if progress is None and status == "succeeded":
            progress = 100.0
        output = data.get("output")
        now = self.now()
        terminal = status in TERMINAL
        params = [status, progress, None if output is None else json.dumps(output), now]
        params += [terminal, now, job_id, rank]
        statement = self.update
        if status == "running":
            statement = self.update_running
            params.append(progress)
        conn = self.conn
        if self.sqlite:
            conn.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
        try:
            cur = conn.execute(self.insert_delivery, (headers["webhook-id"], job_id, now))
            if cur.rowcount == 0:  # seen before: nothing to do
                conn.execute("ROLLBACK") if self.sqlite else conn.rollback()
                return 200
            conn.execute(statement, params)
        except BaseException:
            conn.execute("ROLLBACK") if self.sqlite else conn.rollback()
            raise
        conn.execute("COMMIT") if self.sqlite else conn.commit()
        return 200


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
    raw = RawHandler(raw_conn, prefix, sqlite=db == "SQLite")
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
                "a": turn("a", lambda d: raw.handle(d[1], d[2])),
                "b": turn("b", lambda d: orm.handle(d[1], d[2])),
            },
            rounds,
        )
    finally:
        raw_conn.close()
        orm_engine.dispose()
        if db != "SQLite":
            store.metadata.drop_all(store.engine)
        store.close()
    lib_t, a_t, b_t = (median(results[k]) for k in ("jobhook", "a", "b"))
    report = Report(
        f"Webhook path on {db}: {len(template)} deliveries per round, {rounds} rounds",
        ["implementation", "per delivery (median)", "deliveries/s"],
    )
    for name, value in (
        ("jobhook WebhookHandler + SQLJobStore", lib_t),
        ("baseline (a): raw driver, hmac, 2 statements", a_t),
        ("baseline (b): usual ORM handler", b_t),
    ):
        report.rows.append([name, ms(value), f"{1 / value:,.0f}"])
    limit_a = 3.0 if db == "SQLite" else 1.5
    report.targets = [
        Target(f"{db}: jobhook / baseline (a)", lib_t / a_t, limit_a),
        Target(f"{db}: jobhook / baseline (b)", lib_t / b_t, 1.0, strict=True),
    ]
    report.print()
    return report.targets


def main() -> None:
    main_on_both_databases("bench_webhook", __doc__ or "bench_webhook", run)


if __name__ == "__main__":
    sys.exit(main())
