"""Group commit (``group_commit=True``) on PostgreSQL: concurrent deliveries share one
statement and one commit, and give exactly what applying them one by one gives.

Streams of 32 threads (sync) and 32 tasks (async), with duplicates, stale and reordered
updates over many jobs: final states equal a sequential reference, no event is lost or
doubled, versions have no gaps, batches really form. A batch whose connection dies
answers the error to every caller in it and writes nothing; a server killed mid-stream
keeps every delivery it acknowledged.
"""

from __future__ import annotations

import asyncio
import random
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from jobhook import (
    ApplyResult,
    AsyncSQLJobStore,
    InMemoryJobStore,
    JobError,
    JobStatus,
    JobUpdate,
    Outcome,
    SQLJobStore,
)
from jobhook.exceptions import StoreUnavailableError, ValidationError
from jobhook.stores._group import (
    MAX_IN_FLIGHT,
    GroupCommit,
    GroupQueue,
    GroupStatements,
    Pending,
)
from jobhook.stores._schema import Tables

from .conftest import PG_SKIP_REASON, PG_URL

needs_postgres = pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)

JOBS = 60
WORKERS = 32

#: (job id, update, delivery id)
Delivery = tuple[str, JobUpdate, str]


def stream(seed: int = 7) -> list[Delivery]:
    """Per job: submitted, two running steps and a terminal status; a quarter sent
    twice, a few for jobs that do not exist; all shuffled."""
    out: list[Delivery] = []
    for n in range(JOBS):
        job_id = f"job-{n:03d}"
        updates = [
            JobUpdate(JobStatus.SUBMITTED, remote_id=f"r-{n}"),
            JobUpdate(JobStatus.RUNNING, progress=10.0, sequence=1),
            JobUpdate(JobStatus.RUNNING, progress=50.0, sequence=2),
            JobUpdate(JobStatus.FAILED, error=JobError("oom", "no memory"))
            if n % 5 == 4
            else JobUpdate(JobStatus.SUCCEEDED, output={"images": [f"{job_id}.png"], "n": n}),
        ]
        out += [(job_id, u, f"{job_id}-d{k}") for k, u in enumerate(updates)]
    out += [(f"ghost-{k}", JobUpdate(JobStatus.RUNNING), f"ghost-d{k}") for k in range(5)]
    rng = random.Random(seed)
    out += rng.sample(out, k=len(out) // 4)
    rng.shuffle(out)
    return out


@pytest.fixture
def prefix() -> Iterator[str]:
    assert PG_URL is not None
    name = f"gc{uuid.uuid4().hex[:8]}_"
    yield name
    cleanup = SQLJobStore(PG_URL, table_prefix=name)
    cleanup.metadata.drop_all(cleanup.engine)
    cleanup.close()


def make_jobs(store: SQLJobStore) -> None:
    for n in range(JOBS):
        store.create({"n": n}, job_id=f"job-{n:03d}")


class Commits:
    """Counts the statements ``apply`` sends: each runs in autocommit, one commit each."""

    def __init__(self, engine: sa.Engine) -> None:
        self.batches: list[int] = []
        self.single = 0
        sa.event.listen(engine, "before_cursor_execute", self._count)

    def _count(
        self, conn: Any, cursor: Any, statement: str, params: Any, context: Any, many: bool
    ) -> None:
        if "unnest" in statement and "FOR UPDATE" in statement:
            self.batches.append(len(context.compiled_parameters[0]["slots"]))
        elif "INSERT INTO" in statement and "_events" in statement:
            self.single += 1

    @property
    def commits(self) -> int:
        return self.single + len(self.batches)


def check_stream(
    engine: sa.Engine, prefix: str, deliveries: list[Delivery], answers: list[ApplyResult]
) -> None:
    """What applying ``deliveries`` one by one gives, and nothing lost or doubled."""
    assert len(answers) == len(deliveries)
    # The sequential reference: the same stream, in order, on the in-memory store.
    reference = InMemoryJobStore()
    for n in range(JOBS):
        reference.create({"n": n}, job_id=f"job-{n:03d}")
    for job_id, update, delivery_id in deliveries:
        reference.apply(job_id, update, delivery_id=delivery_id)

    applied = Counter(d for (_, _, d), a in zip(deliveries, answers, strict=True) if a.applied)
    assert applied
    assert max(applied.values()) == 1, "a delivery applied twice"
    for (job_id, _, delivery_id), answer in zip(deliveries, answers, strict=True):
        if job_id.startswith("ghost"):
            assert answer.outcome is Outcome.NOT_FOUND
        else:
            assert answer.outcome is not Outcome.NOT_FOUND
            assert answer.job is not None
            assert answer.job.id == job_id
        if answer.applied:
            assert answer.event is not None
            assert answer.event.delivery_id == delivery_id

    with engine.connect() as conn:
        events = conn.execute(
            sa.text(f"SELECT id, job_id, version, delivery_id, status FROM {prefix}events")
        ).all()
        rows = {
            r.id: r
            for r in conn.execute(
                sa.text(f"SELECT id, status, version, output, error_code FROM {prefix}jobs")
            )
        }
        recorded = {r[0] for r in conn.execute(sa.text(f"SELECT id FROM {prefix}deliveries"))}
    # No event lost or doubled: one per applied delivery, ids unique.
    assert len(events) == len(applied)
    assert len({e.id for e in events}) == len(events)
    assert {e.delivery_id for e in events} == set(applied)
    answered = {a.event.id for a in answers if a.event is not None}
    assert answered == {e.id for e in events}
    # Every delivery for a job that exists was recorded; none for ghosts.
    assert recorded == {d for j, _, d in deliveries if not j.startswith("ghost")}

    by_job: defaultdict[str, list[Any]] = defaultdict(list)
    for e in events:
        by_job[e.job_id].append(e)
    for n in range(JOBS):
        job_id = f"job-{n:03d}"
        mine = sorted(by_job[job_id], key=lambda e: e.version)
        row = rows[job_id]
        # Versions without gaps. (Per job, the version orders events: a transaction
        # takes its id at its first write, before it may wait for the job's row.)
        assert [e.version for e in mine] == list(range(2, row.version + 1))
        expected = reference.get(job_id)
        assert row.status == expected.status.value
        assert row.output == expected.output
        assert row.error_code == (expected.error.code if expected.error else None)
        # The applied deliveries, replayed in version order, each apply and end there.
        replay = InMemoryJobStore()
        replay.create({"n": n}, job_id=job_id)
        updates = {d: u for j, u, d in deliveries if j == job_id}
        for e in mine:
            assert replay.apply(job_id, updates[e.delivery_id], delivery_id=e.delivery_id).applied
        final = replay.get(job_id)
        assert (final.status.value, final.version) == (row.status, row.version)


@pytest.mark.postgres
@needs_postgres
def test_32_threads_give_the_sequential_result(prefix: str) -> None:
    assert PG_URL is not None
    store = SQLJobStore(PG_URL, table_prefix=prefix, create_schema=True, group_commit=True)
    make_jobs(store)
    commits = Commits(store.engine)
    deliveries = stream()
    answers: list[ApplyResult | None] = [None] * len(deliveries)
    position = iter(range(len(deliveries)))
    lock = threading.Lock()

    def worker() -> None:
        while True:
            with lock:
                k = next(position, None)
            if k is None:
                return
            job_id, update, delivery_id = deliveries[k]
            answers[k] = store.apply(job_id, update, delivery_id=delivery_id)

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
        assert not t.is_alive(), "a deadlock, or a caller never answered"
    try:
        done = [a for a in answers if a is not None]
        check_stream(store.engine, prefix, deliveries, done)
        # Batches formed: fewer commits than deliveries.
        assert commits.batches
        assert max(commits.batches) > 1
        assert commits.commits < len(deliveries)
    finally:
        store.close()


@pytest.mark.postgres
@needs_postgres
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_32_tasks_give_the_sequential_result(prefix: str, driver: str) -> None:
    assert PG_URL is not None
    setup = SQLJobStore(PG_URL, table_prefix=prefix, create_schema=True)
    make_jobs(setup)
    deliveries = stream(seed=11)

    async def run() -> tuple[list[ApplyResult], Commits]:
        url = sa.make_url(PG_URL).set(drivername=f"postgresql+{driver}")
        store = AsyncSQLJobStore(url, table_prefix=prefix, group_commit=True)
        commits = Commits(store.engine.sync_engine)
        answers: list[ApplyResult | None] = [None] * len(deliveries)
        position = iter(range(len(deliveries)))

        async def worker() -> None:
            for k in position:
                job_id, update, delivery_id = deliveries[k]
                answers[k] = await store.apply(job_id, update, delivery_id=delivery_id)

        try:
            await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(WORKERS))), 120)
        finally:
            await store.close()
        return [a for a in answers if a is not None], commits

    answers, commits = asyncio.run(run())
    try:
        check_stream(setup.engine, prefix, deliveries, answers)
        assert commits.batches
        assert max(commits.batches) > 1
        assert commits.commits < len(deliveries)
    finally:
        setup.close()


@pytest.mark.postgres
@needs_postgres
def test_a_lone_delivery_runs_at_once_as_one_statement(prefix: str) -> None:
    assert PG_URL is not None
    store = SQLJobStore(PG_URL, table_prefix=prefix, create_schema=True, group_commit=True)
    try:
        job = store.create({})
        commits = Commits(store.engine)
        result = store.apply(job.id, JobUpdate(JobStatus.RUNNING, progress=5.0), delivery_id="d1")
        again = store.apply(job.id, JobUpdate(JobStatus.RUNNING, progress=5.0), delivery_id="d1")
        assert (result.outcome, again.outcome) == (Outcome.APPLIED, Outcome.DUPLICATE)
        assert (commits.single, commits.batches) == (2, [])  # one statement each
    finally:
        store.close()


def waiting(job_id: str, delivery_id: str | None) -> Pending[None]:
    update = JobUpdate(JobStatus.RUNNING)
    return Pending(job_id, update, delivery_id, datetime.now(timezone.utc), None)


def test_a_batch_takes_one_delivery_per_job_and_per_delivery_id_oldest_first() -> None:
    queue: GroupQueue[None] = GroupQueue(max_batch=3, max_in_flight=1)
    assert queue.arrive(waiting("a", "a1"))  # nothing in flight: runs alone, at once
    entries = [
        waiting("a", "a2"),
        waiting("b", "b1"),
        waiting("a", "a3"),
        waiting("c", "b1"),  # a delivery id already in the batch
        waiting("d", None),
        waiting("e", "e1"),  # over max_batch
    ]
    assert not any(queue.arrive(e) for e in entries)
    first = queue.finish()
    assert first is not None
    assert [(e.job_id, e.delivery_id) for e in first] == [("a", "a2"), ("b", "b1"), ("d", None)]
    second = queue.finish()
    assert second is not None
    assert [(e.job_id, e.delivery_id) for e in second] == [("a", "a3"), ("c", "b1"), ("e", "e1")]
    assert queue.finish() is None
    assert queue.in_flight == 0
    assert queue.arrive(waiting("f", "f1"))


def test_deliveries_run_alone_while_a_commit_slot_is_free() -> None:
    queue: GroupQueue[None] = GroupQueue(max_in_flight=2)
    assert queue.arrive(waiting("a", "1"))
    assert queue.arrive(waiting("b", "2"))
    assert not queue.arrive(waiting("c", "3"))  # both slots busy: waits
    batch = queue.finish()  # a commit ended: the waiting one goes in its slot
    assert batch is not None
    assert [e.job_id for e in batch] == ["c"]
    assert queue.in_flight == 2
    assert not queue.arrive(waiting("d", "4"))
    assert queue.finish() is not None
    assert queue.finish() is None  # nobody waits: the slot is free again
    assert queue.in_flight == 1
    assert queue.arrive(waiting("e", "5"))


class FakeStore:
    """`GroupCommit`'s two callables without a database: the first delivery blocks until
    released (so that the others queue up behind it), batches fail as told."""

    def __init__(self, batch_error: Exception) -> None:
        self.release = threading.Event()
        self.batch_error = batch_error
        self.alone: list[str] = []
        self.batches = 0

    def single(self, job_id: str, update: JobUpdate, delivery_id: str | None) -> ApplyResult:
        if not self.alone:
            self.release.wait()
        self.alone.append(job_id)
        if job_id == "bad":
            raise ValidationError("the database refused a value")
        return ApplyResult(Outcome.STALE, None)

    def run_batch(self, steps: Any) -> list[ApplyResult]:
        self.batches += 1
        raise self.batch_error


def run_behind_a_blocked_delivery(fake: FakeStore, job_ids: list[str]) -> dict[str, Any]:
    group = GroupCommit(GroupStatements(Tables()), fake.single, fake.run_batch, max_in_flight=1)
    results: dict[str, Any] = {}

    def deliver(job_id: str) -> None:
        try:
            results[job_id] = group.apply(job_id, JobUpdate(JobStatus.RUNNING), f"{job_id}-d")
        except Exception as exc:
            results[job_id] = exc

    first = threading.Thread(target=deliver, args=("first",))
    first.start()
    wait_for(lambda: group._queue.in_flight == 1, "the first delivery in flight")
    threads = [threading.Thread(target=deliver, args=(j,)) for j in job_ids]
    for t in threads:
        t.start()
    wait_for(lambda: len(group._queue.waiting) == len(job_ids), "the others queued")
    fake.release.set()
    for t in [first, *threads]:
        t.join(timeout=60)
    return results


def test_a_failed_batch_answers_its_error_to_every_caller_in_it() -> None:
    fake = FakeStore(StoreUnavailableError("the database went away"))
    results = run_behind_a_blocked_delivery(fake, ["a", "b", "c"])
    assert fake.batches == 1
    assert results["first"].outcome is Outcome.STALE
    for job_id in ("a", "b", "c"):
        assert isinstance(results[job_id], StoreUnavailableError)


def test_a_value_the_database_refuses_fails_only_its_own_delivery() -> None:
    fake = FakeStore(ValidationError("the database refused a value"))
    results = run_behind_a_blocked_delivery(fake, ["a", "bad", "c"])
    # The batch was refused as a whole; its deliveries went again, one by one.
    assert fake.batches == 1
    assert sorted(fake.alone) == ["a", "bad", "c", "first"]
    assert isinstance(results["bad"], ValidationError)
    assert results["a"].outcome is Outcome.STALE
    assert results["c"].outcome is Outcome.STALE


def test_group_commit_needs_postgresql(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="PostgreSQL"):
        SQLJobStore(f"sqlite:///{tmp_path / 'a.db'}", group_commit=True)
    with pytest.raises(ValueError, match="PostgreSQL"):
        AsyncSQLJobStore(f"sqlite:///{tmp_path / 'b.db'}", group_commit=True)


def wait_for(condition: Any, what: str) -> None:
    """Poll ``condition`` until true (a generous deadline only keeps a bug from hanging)."""
    deadline = time.monotonic() + 60
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


@pytest.mark.postgres
@needs_postgres
def test_a_batch_that_fails_answers_the_error_to_every_caller_and_writes_nothing(
    prefix: str,
) -> None:
    assert PG_URL is not None
    store = SQLJobStore(PG_URL, table_prefix=prefix, create_schema=True, group_commit=True)
    make_jobs(store)
    admin = sa.create_engine(sa.make_url(PG_URL), isolation_level="AUTOCOMMIT")
    jobs = store.tables.jobs
    # The first deliveries fill every commit slot (each alone); nine more queue up.
    alone = [f"job-{n:03d}" for n in range(MAX_IN_FLIGHT)]
    batched = [f"job-{n:03d}" for n in range(MAX_IN_FLIGHT, MAX_IN_FLIGHT + 9)]
    results: dict[str, ApplyResult | BaseException] = {}

    def deliver(job_id: str) -> None:
        try:
            update = JobUpdate(JobStatus.RUNNING, progress=20.0)
            results[job_id] = store.apply(job_id, update, delivery_id=f"{job_id}-x")
        except BaseException as exc:
            results[job_id] = exc

    try:
        with admin.connect() as hold_first, admin.connect() as hold_last:
            # Another session locks the first jobs, so that their deliveries wait, in
            # flight, while nine more queue up; a third one locks the last of those.
            hold_first.exec_driver_sql("BEGIN")
            hold_first.execute(sa.select(jobs).where(jobs.c.id.in_(alone)).with_for_update())
            hold_last.exec_driver_sql("BEGIN")
            hold_last.execute(sa.select(jobs).where(jobs.c.id == batched[-1]).with_for_update())
            lone = [threading.Thread(target=deliver, args=(j,)) for j in alone]
            for t in lone:
                t.start()
            queue = store._group._queue  # type: ignore[union-attr]
            wait_for(lambda: queue.in_flight == MAX_IN_FLIGHT, "every commit slot in flight")
            threads = [threading.Thread(target=deliver, args=(j,)) for j in batched]
            for t in threads:
                t.start()
            wait_for(lambda: len(queue.waiting) == len(batched), "nine deliveries queued")
            # The first ones commit; the nine go as one batch, which waits for the last.
            hold_first.exec_driver_sql("ROLLBACK")
            for t in lone:
                t.join(timeout=60)
            blocked = (
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND strpos(query, 'unnest') > 0"
            )
            wait_for(lambda: hold_first.exec_driver_sql(blocked).first(), "the batch waiting")
            # Its connection dies before it can commit.
            hold_first.exec_driver_sql(f"SELECT pg_terminate_backend(({blocked} LIMIT 1))")
            for t in threads:
                t.join(timeout=60)
            hold_last.exec_driver_sql("ROLLBACK")
        for job_id in alone:
            assert isinstance(results[job_id], ApplyResult)
            assert results[job_id].applied  # type: ignore[union-attr]
        # Every caller in the batch got the error (a 503: the sender retries) ...
        for job_id in batched:
            assert isinstance(results[job_id], StoreUnavailableError), results[job_id]
        # ... and nothing of the batch was written: no delivery id, no update, no event.
        with store.engine.connect() as conn:
            written = conn.execute(
                sa.select(store.tables.deliveries.c.id).where(
                    store.tables.deliveries.c.job_id.in_(batched)
                )
            ).all()
            events = conn.execute(
                sa.select(sa.func.count()).where(store.tables.events.c.job_id.in_(batched))
            ).scalar_one()
        assert (written, events) == ([], 0)
        assert {store.get(j).status for j in batched} == {JobStatus.PENDING}
        # The retries apply.
        for job_id in batched:
            retry = store.apply(
                job_id, JobUpdate(JobStatus.RUNNING, progress=20.0), delivery_id=f"{job_id}-x"
            )
            assert retry.applied
    finally:
        admin.dispose()
        store.close()


SERVER = """
import sys, threading
from jobhook import JobStatus, JobUpdate, SQLJobStore

url, prefix, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])
store = SQLJobStore(url, table_prefix=prefix, group_commit=True)
work = [(f"job-{n:03d}", k) for k in range(1, 60) for n in range(jobs)]
lock = threading.Lock()
position = iter(work)

def worker():
    while True:
        with lock:
            item = next(position, None)
        if item is None:
            return
        job_id, k = item
        update = JobUpdate(JobStatus.RUNNING, progress=float(k), sequence=k)
        result = store.apply(job_id, update, delivery_id=f"{job_id}-{k}")
        with lock:
            sys.stdout.write(f"{job_id}-{k} {result.outcome.value}\\n")
            sys.stdout.flush()

threads = [threading.Thread(target=worker) for _ in range(16)]
for t in threads:
    t.start()
for t in threads:
    t.join()
"""


@pytest.mark.postgres
@needs_postgres
def test_a_server_killed_mid_stream_keeps_every_acknowledged_delivery(prefix: str) -> None:
    assert PG_URL is not None
    store = SQLJobStore(PG_URL, table_prefix=prefix, create_schema=True)
    make_jobs(store)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, PG_URL, prefix, str(JOBS)],
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[tuple[str, str]] = []
    try:
        assert server.stdout is not None
        for line in server.stdout:
            acknowledged.append(tuple(line.split()))  # type: ignore[arg-type]
            if len(acknowledged) == 300:
                server.kill()  # SIGKILL: no cleanup, batches cut off mid-flight
                break
        # What it wrote to the pipe before it died was acknowledged too.
        acknowledged += [tuple(line.split()) for line in server.stdout]  # type: ignore[misc]
        server.wait(timeout=60)
        assert server.returncode == -9, "the server finished before it was killed"
        # One snapshot: the killed server's last statements may still be finishing.
        with store.engine.connect() as conn:
            conn.execution_options(isolation_level="REPEATABLE READ")
            t = store.tables
            recorded = {r[0] for r in conn.execute(sa.select(t.deliveries.c.id))}
            evented = {r[0] for r in conn.execute(sa.select(t.events.c.delivery_id))}
            versions = dict(conn.execute(sa.select(t.jobs.c.id, t.jobs.c.version)).all())
        for delivery_id, outcome in acknowledged:
            assert delivery_id in recorded, f"{delivery_id} answered {outcome}, not durable"
            if outcome == "applied":
                assert delivery_id in evented
        # Each job's version agrees with its events: no half-written batch.
        for job_id, version in versions.items():
            assert version == 1 + sum(d.startswith(f"{job_id}-") for d in evented)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
        store.close()
