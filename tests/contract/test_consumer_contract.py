"""The consumer and prune operations every store keeps (runs once per store kind)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from jobhook import JobStatus, JobUpdate, ParkedEventNotFoundError, ValidationError
from tests.conftest import STORE_KINDS

#: `DjangoJobStore` keeps its consumers in its own models and runs them with
#: ``manage.py jobhook_consume`` (tests/test_django_app.py); `OutboxConsumer` runs on
#: every other store.
CONSUMER_KINDS = [kind for kind in STORE_KINDS if not kind.startswith("django-")]


@pytest.fixture(params=CONSUMER_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _events(store: Any, n: int) -> list[Any]:
    out = []
    for _ in range(n):
        job = store.create({"p": 1})
        out.append(store.apply(job.id, JobUpdate(JobStatus.SUBMITTED)).event)
    return out


def test_a_new_consumer_starts_at_zero_and_its_lease_excludes_others(store: Any) -> None:
    assert store.claim_consumer("mail", "a", lease=60) == 0
    assert store.claim_consumer("mail", "b", lease=60) is None
    # The holder renews its own lease.
    assert store.claim_consumer("mail", "a", lease=60) == 0


def test_an_expired_lease_is_taken_over_and_the_old_owner_cannot_write(store: Any) -> None:
    store.claim_consumer("mail", "a", lease=0.000001)
    events = _events(store, 1)
    # The lease above has expired by now (it lasted a microsecond).
    assert store.claim_consumer("mail", "b", lease=60) == 0
    assert not store.advance_consumer("mail", "a", events[0].id, lease=60)
    assert not store.park_event("mail", "a", events[0], error="x", attempts=1, lease=60)
    assert store.consumers()[0].position == 0
    assert store.parked_events() == []


def test_advance_moves_forward_only_and_is_kept(store: Any) -> None:
    store.claim_consumer("mail", "a", lease=60)
    assert store.advance_consumer("mail", "a", 7, lease=60)
    assert store.advance_consumer("mail", "a", 3, lease=60)
    (info,) = store.consumers()
    assert (info.name, info.position, info.owner, info.parked) == ("mail", 7, "a", 0)
    store.release_consumer("mail", "a")
    assert store.claim_consumer("mail", "b", lease=60) == 7


def test_release_by_another_owner_changes_nothing(store: Any) -> None:
    store.claim_consumer("mail", "a", lease=60)
    store.release_consumer("mail", "b")
    assert store.claim_consumer("mail", "b", lease=60) is None


def test_a_parked_event_is_kept_whole_moves_the_position_and_can_be_replayed(
    store: Any,
) -> None:
    (event,) = _events(store, 1)
    store.claim_consumer("mail", "a", lease=60)
    assert store.park_event("mail", "a", event, error="boom", attempts=5, lease=60)
    # Parking twice (a retry after a crash) keeps one.
    assert store.park_event("mail", "a", event, error="boom", attempts=5, lease=60)
    (parked,) = store.parked_events(consumer="mail")
    assert (parked.event, parked.attempts, parked.error, parked.state) == (
        event,
        5,
        "boom",
        "parked",
    )
    assert store.consumers()[0].position == event.id
    assert store.consumers()[0].parked == 1
    assert store.replay_parked(parked.id).state == "replay"
    assert [p.id for p in store.parked_events(state="replay")] == [parked.id]
    store.settle_parked(parked.id, handled=False, error="still")
    again = store.parked_events()[0]
    assert (again.state, again.attempts, again.error) == ("parked", 6, "still")
    store.replay_parked(parked.id)
    store.settle_parked(parked.id, handled=True)
    assert store.parked_events()[0].state == "replayed"
    assert store.consumers()[0].parked == 0
    with pytest.raises(ParkedEventNotFoundError):
        store.replay_parked(parked.id + 100)


def test_bad_names_and_leases_are_refused(store: Any) -> None:
    with pytest.raises(ValidationError):
        store.claim_consumer("", "a", lease=60)
    with pytest.raises(ValidationError):
        store.claim_consumer("mail", "a", lease=0)
    with pytest.raises(ValidationError):
        store.prune(deliveries_older_than=timedelta(-1))


def test_prune_keeps_what_is_within_retention(store: Any) -> None:
    job = store.create({"p": 1})
    store.apply(job.id, JobUpdate(JobStatus.SUBMITTED), delivery_id="d1")
    store.apply(job.id, JobUpdate(JobStatus.SUCCEEDED), delivery_id="d2")
    report = store.prune(
        deliveries_older_than=timedelta(hours=1), finished_jobs_older_than=timedelta(days=1)
    )
    assert (report.deliveries, report.events, report.jobs) == (0, 0, 0)
    # A retried delivery within retention is still a duplicate.
    assert store.apply(job.id, JobUpdate(JobStatus.SUBMITTED), delivery_id="d1").outcome.value == (
        "duplicate"
    )


def test_prune_removes_old_rows_in_batches_but_no_event_a_consumer_needs(store: Any) -> None:
    events = _events(store, 5)
    done = store.create({"p": 2})
    store.apply(done.id, JobUpdate(JobStatus.SUCCEEDED), delivery_id="old")
    store.claim_consumer("slow", "a", lease=60)
    store.advance_consumer("slow", "a", events[2].id, lease=60)
    store.claim_consumer("fast", "b", lease=60)
    store.advance_consumer("fast", "b", events[4].id, lease=60)
    report = store.prune(
        deliveries_older_than=timedelta(0), finished_jobs_older_than=timedelta(0), batch=2
    )
    assert (report.deliveries, report.events, report.jobs) == (1, 3, 1)
    # The slow consumer still finds every event after its position.
    assert [e.id for e in store.events(after=events[2].id)][:2] == [events[3].id, events[4].id]
    assert [e.id for e in store.events()][:2] == [events[3].id, events[4].id]
    # The delivery id is forgotten; the finished job is gone.
    assert store.apply(
        done.id, JobUpdate(JobStatus.SUCCEEDED), delivery_id="old"
    ).outcome.value == ("not_found")
    # A new event still gets a greater id than any before it.
    (later,) = _events(store, 1)
    assert later.id > events[4].id


def test_prune_without_consumers_removes_no_event(store: Any) -> None:
    _events(store, 2)
    assert store.prune(deliveries_older_than=timedelta(0)).events == 0
    assert len(store.events()) == 2
