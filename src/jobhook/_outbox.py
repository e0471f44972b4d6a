"""The values of the durable outbox consumers: their state, parked events, prune reports."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import attrs

from jobhook._models import JobEvent, JobStatus

__all__ = [
    "PARKED",
    "REPLAY",
    "REPLAYED",
    "ConsumerInfo",
    "ParkedEvent",
    "PruneReport",
    "check_consumer_name",
    "check_lease",
    "check_prune",
    "event_from_dict",
    "event_to_dict",
    "prune_plan",
    "prune_report",
]

#: The states of a parked event: kept, asked to be handled again, handled.
PARKED, REPLAY, REPLAYED = "parked", "replay", "replayed"


@attrs.frozen
class ConsumerInfo:
    """One named consumer as its store keeps it.

    ``position`` is the id of the last event it passed (handled or parked); ``owner``
    and ``lease_expires_at`` say which instance holds its lease, and until when;
    ``parked`` counts its parked events not yet replayed.
    """

    name: str
    position: int
    owner: str | None
    lease_expires_at: datetime | None
    parked: int


@attrs.frozen
class ParkedEvent:
    """An event a consumer's handler kept failing on, kept with the last error.

    ``state`` is ``"parked"``, ``"replay"`` (asked for with ``store.replay_parked``:
    the consumer hands it to its handler again on its next turn) or ``"replayed"``.
    """

    id: int
    consumer: str
    event: JobEvent
    attempts: int
    error: str
    state: str
    parked_at: datetime


@attrs.frozen
class PruneReport:
    """How many rows ``store.prune`` removed, per kind."""

    deliveries: int = 0
    events: int = 0
    jobs: int = 0

    def __add__(self, other: PruneReport) -> PruneReport:
        return PruneReport(
            self.deliveries + other.deliveries,
            self.events + other.events,
            self.jobs + other.jobs,
        )


def check_consumer_name(name: str) -> str:
    """Refuse a consumer name no store can keep (1 to 255 characters)."""
    from jobhook.exceptions import ValidationError

    if not isinstance(name, str) or not 0 < len(name) <= 255:
        raise ValidationError(f"a consumer name is 1 to 255 characters, got {name!r}")
    return name


def event_to_dict(event: JobEvent) -> dict[str, Any]:
    """The event as JSON values (how a parked event is kept)."""
    return {
        "id": event.id,
        "job_id": event.job_id,
        "owner_id": event.owner_id,
        "kind": event.kind,
        "status": event.status.value,
        "progress": event.progress,
        "version": event.version,
        "delivery_id": event.delivery_id,
        "created_at": event.created_at.isoformat(),
    }


def event_from_dict(data: dict[str, Any]) -> JobEvent:
    """The inverse of `event_to_dict`."""
    progress = data["progress"]
    return JobEvent(
        id=int(data["id"]),
        job_id=data["job_id"],
        owner_id=data["owner_id"],
        kind=data["kind"],
        status=JobStatus(data["status"]),
        progress=None if progress is None else float(progress),
        version=int(data["version"]),
        delivery_id=data["delivery_id"],
        created_at=datetime.fromisoformat(data["created_at"]),
    )


def check_lease(lease: float) -> timedelta:
    """A lease length in seconds, as a `timedelta` (refuses what is not positive)."""
    from jobhook.exceptions import ValidationError

    if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not lease > 0:
        raise ValidationError(f"lease must be a positive number of seconds, got {lease!r}")
    return timedelta(seconds=lease)


def check_prune(
    deliveries_older_than: timedelta, finished_jobs_older_than: timedelta | None, batch: int
) -> None:
    """Refuse retentions that are not durations of at least zero, or a bad batch."""
    from jobhook.exceptions import ValidationError

    for value in (deliveries_older_than, finished_jobs_older_than):
        if value is not None and (not isinstance(value, timedelta) or value < timedelta(0)):
            raise ValidationError(f"a retention is a timedelta of at least 0, got {value!r}")
    from jobhook.stores.protocol import check_limit

    check_limit(batch)


def prune_plan(
    deliveries_older_than: timedelta, finished_jobs_older_than: timedelta | None
) -> list[tuple[str, datetime]]:
    """What `prune` removes, in order, each kind with its cutoff. Events share the
    deliveries' retention: a reader that resumes from an id (a browser's
    ``Last-Event-ID``) finds recent events even when every consumer has passed them."""
    from jobhook._ids import utcnow

    now = utcnow()
    plan = [
        ("deliveries", now - deliveries_older_than),
        ("events", now - deliveries_older_than),
    ]
    if finished_jobs_older_than is not None:
        plan.append(("jobs", now - finished_jobs_older_than))
    return plan


def prune_report(kind: str, removed: int) -> PruneReport:
    """A report of ``removed`` rows of ``kind``."""
    return PruneReport(**{kind: removed})
