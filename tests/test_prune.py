"""`store.prune` beside live traffic: nothing still needed is lost."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from jobhook import JobStatus, JobUpdate, OutboxConsumer, Outcome
from jobhook._ids import utcnow


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgres"])
def test_prune_under_traffic_keeps_retained_duplicates_and_consumers_whole(
    make_store: Any, kind: str
) -> None:
    store = make_store(kind)
    jobs = [store.create({"n": n}).id for n in range(20)]
    event_ids: list[int] = []
    for n, job_id in enumerate(jobs):  # old traffic, received before the boundary
        result = store.apply(job_id, JobUpdate(JobStatus.SUBMITTED), delivery_id=f"old-{n}")
        event_ids.append(result.event.id)
    boundary = utcnow()
    # A registered consumer that has not moved: no event it needs may go.
    store.claim_consumer("audit", "idle", lease=3600)
    seen: list[int] = []
    consumer = OutboxConsumer(store, "mail", lambda e: seen.append(e.id), poll_interval=0.01)
    stop = threading.Event()
    consuming = threading.Thread(target=consumer.run, args=(stop,))
    pruned = []
    pruning_done = threading.Event()

    def prune_loop() -> None:
        while not pruning_done.is_set():
            pruned.append(store.prune(deliveries_older_than=utcnow() - boundary, batch=3))

    pruning = threading.Thread(target=prune_loop)
    consuming.start()
    pruning.start()
    outcomes = []
    try:
        for step in range(1, 9):  # new traffic, each delivery sent twice
            for n, job_id in enumerate(jobs):
                update = JobUpdate(JobStatus.RUNNING, progress=10 * step)
                first = store.apply(job_id, update, delivery_id=f"new-{n}-{step}")
                event_ids.append(first.event.id)
                again = store.apply(job_id, update, delivery_id=f"new-{n}-{step}")
                outcomes.append(again.outcome)
    finally:
        pruning_done.set()
        pruning.join()
    pruned.append(store.prune(deliveries_older_than=utcnow() - boundary, batch=3))
    deadline_ok = threading.Event()

    def all_seen() -> bool:
        return sorted(seen) == sorted(event_ids)

    for _ in range(3000):
        if all_seen():
            deadline_ok.set()
            break
        stop.wait(0.01)
    stop.set()
    consuming.join()
    assert deadline_ok.is_set(), "the consumer missed events"
    assert seen == sorted(event_ids)  # in order, none missed
    assert set(outcomes) == {Outcome.DUPLICATE}  # retained delivery ids still count
    assert sum(r.deliveries for r in pruned) == len(jobs)  # exactly the old ones
    assert sum(r.events for r in pruned) == 0  # "audit" still needs every event
    assert [e.id for e in store.events(limit=1000)] == sorted(event_ids)
    # Old delivery ids are forgotten: a late retry is judged by the rules again.
    replay = store.apply(jobs[0], JobUpdate(JobStatus.SUBMITTED), delivery_id="old-0")
    assert replay.outcome is Outcome.STALE
    # Once "audit" has passed them, old events can go.
    store.advance_consumer("audit", "idle", event_ids[19], lease=3600)
    report = store.prune(deliveries_older_than=utcnow() - boundary)
    assert report.events == 20
    assert store.events()[0].id == event_ids[20]
