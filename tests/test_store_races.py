"""Concurrent apply() on every SQL backend: 8 threads (or tasks) apply one shuffled stream
of updates, 20% of them delivered twice, to the same jobs."""

from __future__ import annotations

import asyncio
import random
import threading
from collections import Counter, defaultdict
from typing import Any

import pytest

from jobhook import (
    ApplyResult,
    JobError,
    JobStatus,
    JobUpdate,
    Outcome,
    WebhookHandler,
    sign_webhook,
)

from .conftest import SyncFacade
from .django_stores import ALIASES

DJANGO_KINDS = list(ALIASES)

JOBS = 12
WORKERS = 8


def build_stream(job_ids: list[str], rng: random.Random) -> list[tuple[str, str, JobUpdate]]:
    """Per job: submitted, running 10..90 with sequence 1..9, then one terminal update.
    Every fourth job fails. 20% of deliveries are sent twice (same delivery id)."""
    stream: list[tuple[str, str, JobUpdate]] = []
    for n, job_id in enumerate(job_ids):
        updates = [JobUpdate(JobStatus.SUBMITTED, remote_id=f"r-{n}")]
        updates += [JobUpdate(JobStatus.RUNNING, progress=10 * s, sequence=s) for s in range(1, 10)]
        if n % 4 == 3:
            updates.append(JobUpdate(JobStatus.FAILED, error=JobError("oom", "out of memory")))
        else:
            updates.append(JobUpdate(JobStatus.SUCCEEDED, output={"images": [f"{job_id}.png"]}))
        stream += [(job_id, f"{job_id}-d{i}", u) for i, u in enumerate(updates)]
    stream += rng.sample(stream, k=len(stream) // 5)
    rng.shuffle(stream)
    return stream


def check(store: Any, job_ids: list[str], results: list[tuple[str, str, ApplyResult]]) -> None:
    applied_by_delivery: Counter[str] = Counter()
    applied_by_job: defaultdict[str, int] = defaultdict(int)
    for job_id, delivery_id, result in results:
        assert result.outcome is not Outcome.NOT_FOUND
        if result.applied:
            applied_by_delivery[delivery_id] += 1
            applied_by_job[job_id] += 1
            assert result.event is not None
    # A delivery id applies at most once, however often it is sent.
    assert max(applied_by_delivery.values()) == 1
    events = store.events(limit=10_000)
    # Exactly one event per applied change, none lost, none doubled.
    assert len(events) == sum(applied_by_job.values())
    assert len({e.id for e in events}) == len(events)
    for n, job_id in enumerate(job_ids):
        job = store.get(job_id)
        mine = [e for e in events if e.job_id == job_id]
        assert [e.version for e in sorted(mine, key=lambda e: e.version)] == list(
            range(2, 2 + applied_by_job[job_id])
        )
        assert job.version == 1 + applied_by_job[job_id]
        # Progress never went backwards among applied running changes.
        running = [
            e.progress for e in sorted(mine, key=lambda e: e.version) if e.status == "running"
        ]
        assert running == sorted(running)
        # The final state is the one terminal update, whatever the order.
        if n % 4 == 3:
            assert job.status is JobStatus.FAILED
            assert job.error == JobError("oom", "out of memory")
        else:
            assert job.status is JobStatus.SUCCEEDED
            assert job.output == {"images": [f"{job_id}.png"]}
            assert job.progress == 100.0
        # The job's newest event says where it ended. (On PostgreSQL, outbox ids follow
        # the writing transactions' ids, so within one job it is the version, not the
        # id, that orders events.)
        assert max(mine, key=lambda e: e.version).status == job.status


@pytest.mark.parametrize(
    "kind",
    ["sqlite", "sqlite-lent", "postgres", "postgres-lent", *DJANGO_KINDS],
)
def test_threads_race_on_one_store(make_store: Any, kind: str) -> None:
    store = make_store(kind)
    job_ids = [store.create({"n": n}).id for n in range(JOBS)]
    stream = build_stream(job_ids, random.Random(7))
    results: list[tuple[str, str, ApplyResult]] = []
    errors: list[BaseException] = []
    lock = threading.Lock()
    barrier = threading.Barrier(WORKERS)

    def work(part: list[tuple[str, str, JobUpdate]]) -> None:
        barrier.wait()
        for job_id, delivery_id, update in part:
            try:
                result = store.apply(job_id, update, delivery_id=delivery_id)
            except BaseException as exc:  # collected: no "database is locked" may escape
                errors.append(exc)
                continue
            with lock:
                results.append((job_id, delivery_id, result))

    threads = [threading.Thread(target=work, args=(stream[i::WORKERS],)) for i in range(WORKERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == len(stream)
    check(store, job_ids, results)


@pytest.mark.parametrize("kind", ["async-sqlite", "async-postgres", "async-postgres-asyncpg"])
def test_tasks_race_on_one_async_store(make_store: Any, kind: str) -> None:
    facade: SyncFacade = make_store(kind)
    store = facade.inner
    job_ids = [facade.create({"n": n}).id for n in range(JOBS)]
    stream = build_stream(job_ids, random.Random(11))

    async def work(part: list[tuple[str, str, JobUpdate]]) -> list[tuple[str, str, ApplyResult]]:
        out = []
        for job_id, delivery_id, update in part:
            out.append(
                (job_id, delivery_id, await store.apply(job_id, update, delivery_id=delivery_id))
            )
        return out

    async def main() -> list[tuple[str, str, ApplyResult]]:
        parts = await asyncio.gather(*(work(stream[i::WORKERS]) for i in range(WORKERS)))
        return [r for part in parts for r in part]

    results = facade.runner.run(main())
    assert len(results) == len(stream)
    check(facade, job_ids, results)


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def _retries_of_one_404(rounds: int = WORKERS) -> list[tuple[dict[str, str], bytes]]:
    body = b'{"job_id": "not-yet", "status": "succeeded"}'
    # The sender re-signs each attempt (fresh timestamp), under the same webhook-id.
    return [
        (sign_webhook(SECRET, body, msg_id="msg_404", timestamp=1_700_000_000 + n), body)
        for n in range(rounds)
    ]


@pytest.mark.parametrize(
    "kind", ["memory", "sqlite", "sqlite-lent", "postgres", "postgres-lent", *DJANGO_KINDS]
)
def test_concurrent_retries_of_one_404_keep_one_dead_letter(make_store: Any, kind: str) -> None:
    store = make_store(kind)
    handler = WebhookHandler(store, secret=SECRET, clock=lambda: 1_700_000_000.0)
    barrier = threading.Barrier(WORKERS)
    statuses: list[int] = []

    def retry(headers: dict[str, str], body: bytes) -> None:
        barrier.wait()
        statuses.append(handler.handle(headers, body).status)

    threads = [threading.Thread(target=retry, args=d) for d in _retries_of_one_404()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == [404] * WORKERS
    [letter] = store.dead_letters()
    assert letter.delivery_id == "msg_404"


@pytest.mark.parametrize(
    "kind", ["async-memory", "async-sqlite", "async-postgres", "async-postgres-asyncpg"]
)
def test_concurrent_async_retries_of_one_404_keep_one_dead_letter(
    make_store: Any, kind: str
) -> None:
    facade: SyncFacade = make_store(kind)
    handler = WebhookHandler(facade.inner, secret=SECRET, clock=lambda: 1_700_000_000.0)

    async def main() -> list[int]:
        answers = await asyncio.gather(
            *(handler.ahandle(headers, body) for headers, body in _retries_of_one_404())
        )
        return [a.status for a in answers]

    assert facade.runner.run(main()) == [404] * WORKERS
    [letter] = facade.dead_letters()
    assert letter.delivery_id == "msg_404"
