"""Four processes, one PostgreSQL: signed deliveries through `WebhookHandler`, racing.

2,000 updates for 200 jobs (submitted, eight running steps, one terminal status each),
20% of them delivered a second time, all shuffled and dealt to four processes that
start together. Afterwards: no update lost, no event doubled, every job where the
rules say it must end.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import time
import uuid
from collections import Counter, defaultdict
from typing import Any

import pytest

from jobhook import JobError, JobStatus, WebhookHandler, sign_webhook
from jobhook.stores.sql import SQLJobStore

from .conftest import PG_SKIP_REASON, PG_URL

pytestmark = [pytest.mark.postgres, pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)]

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PROCESSES = 4
JOBS = 200
RETRIES = 5  # as a sender would retry a 503

Delivery = tuple[str, dict[str, str], bytes]


def payloads(n: int, job_id: str) -> list[dict[str, Any]]:
    """One job's ten updates, in the order the backend sent them."""
    updates: list[dict[str, Any]] = [{"status": "submitted", "remote_id": f"r-{n}"}]
    updates += [{"status": "running", "progress": 10 * s, "sequence": s} for s in range(1, 9)]
    if n % 5 == 4:
        updates.append({"status": "failed", "error": {"code": "oom", "message": "no memory"}})
    else:
        updates.append({"status": "succeeded", "output": {"images": [f"{job_id}.png"]}})
    return [{"job_id": job_id, **u} for u in updates]


def deliver(url: str, prefix: str, part: list[Delivery], start: Any, results: Any) -> None:
    """One app process: its own store and handler, answering its share of deliveries."""
    store = SQLJobStore(url, table_prefix=prefix)
    handler = WebhookHandler(store, secret=SECRET)
    answers = []
    start.wait()
    for job_id, headers, body in part:
        for _ in range(RETRIES):
            response = handler.handle(headers, body, job_id=job_id)
            if response.status != 503:
                break
        answers.append((headers["webhook-id"], response.status, response.json()["outcome"]))
    store.close()
    results.put(answers)


def test_four_processes_lose_nothing_and_double_nothing() -> None:
    assert PG_URL is not None
    prefix = f"mp{uuid.uuid4().hex[:8]}_"
    store = SQLJobStore(PG_URL, table_prefix=prefix, create_schema=True)
    try:
        job_ids = [store.create({"n": n}, job_id=f"job-{n:03d}").id for n in range(JOBS)]
        rng = random.Random(2024)
        stream: list[Delivery] = []
        for n, job_id in enumerate(job_ids):
            for k, payload in enumerate(payloads(n, job_id)):
                body = json.dumps(payload).encode()
                stream.append((job_id, sign_webhook(SECRET, body, msg_id=f"{job_id}-{k}"), body))
        assert len(stream) == 2000
        stream += rng.sample(stream, k=len(stream) // 5)
        rng.shuffle(stream)

        ctx = multiprocessing.get_context("spawn")
        start, results = ctx.Barrier(PROCESSES), ctx.Queue()
        workers = [
            ctx.Process(target=deliver, args=(PG_URL, prefix, stream[i::PROCESSES], start, results))
            for i in range(PROCESSES)
        ]
        for w in workers:
            w.start()
        answers = [a for _ in workers for a in results.get(timeout=300)]
        for w in workers:
            w.join(timeout=60)
            assert w.exitcode == 0

        # Every delivery was answered, and with a final 200 (a 503 is retried).
        assert len(answers) == len(stream)
        assert {status for _, status, _ in answers} == {200}
        applied = Counter(d for d, _, outcome in answers if outcome == "applied")
        assert max(applied.values()) == 1, "a delivery id applied twice"
        # Each of the 400 repeats, and each late update, was recognised, not applied.
        outcomes = Counter(outcome for _, _, outcome in answers)
        assert outcomes["duplicate"] >= 400
        assert sum(outcomes.values()) == 2400

        events = read_events(store, expected=len(applied))
        assert len(events) == len(applied), "lost or extra events"
        assert len({(e.job_id, e.version) for e in events}) == len(events), "doubled event"
        assert {e.delivery_id for e in events} == set(applied)
        by_job: defaultdict[str, list[Any]] = defaultdict(list)
        for e in events:
            by_job[e.job_id].append(e)

        for n, job_id in enumerate(job_ids):
            job = store.get(job_id)
            mine = sorted(by_job[job_id], key=lambda e: e.version)
            # No lost update: every applied change is in the job's version and outbox.
            assert [e.version for e in mine] == list(range(2, job.version + 1))
            assert mine[-1].status is job.status
            running = [e.progress for e in mine if e.status is JobStatus.RUNNING]
            assert running == sorted(running), "progress went backwards"
            # The terminal update always wins, whatever arrived before or after it.
            if n % 5 == 4:
                assert job.status is JobStatus.FAILED
                assert job.error == JobError("oom", "no memory")
            else:
                assert job.status is JobStatus.SUCCEEDED
                assert job.output == {"images": [f"{job_id}.png"]}
                assert job.progress == 100.0
            assert job.completed_at is not None
            assert sum(e.status.terminal for e in mine) == 1
    finally:
        store.metadata.drop_all(store.engine)
        store.close()


def read_events(store: SQLJobStore, *, expected: int) -> list[Any]:
    """Every event, paging; waits while another session's older, still open transaction
    keeps the newest ones back (readers only see events older than all of those)."""
    deadline = time.monotonic() + 30
    while True:
        events: list[Any] = []
        after = 0
        while page := store.events(after=after, limit=1000):
            events += page
            after = page[-1].id
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.05)
