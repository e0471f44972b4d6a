"""Rows to jobhook's values and back, the same for every SQL dialect."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from jobhook._convert import dumps, update_from_dict
from jobhook._models import (
    ApplyResult,
    DeadLetter,
    Job,
    JobError,
    JobEvent,
    JobStatus,
    JobUpdate,
    Outcome,
)
from jobhook.exceptions import (
    ValidationError,
)
from jobhook.stores._steps import Rows

__all__ = [
    "applied",
    "as_float",
    "aware",
    "bound",
    "check_output",
    "dead_letter_from_row",
    "event_from_row",
    "event_row",
    "first",
    "job_from_json",
    "job_from_row",
    "utc",
]


def aware(value: datetime | None) -> datetime | None:
    # SQLite and MySQL's DATETIME keep no time zone; everything jobhook writes is UTC.
    # PostgreSQL answers in the session's zone: convert, so that every store returns the
    # same values.
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def as_float(value: float | None) -> float | None:
    # SQLite's RETURNING hands back 40.0 as 40.
    return None if value is None else float(value)


def utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValidationError(f"timestamps must be timezone-aware, got {value!r}")
    return value.astimezone(timezone.utc)


def first(rows: Rows) -> Mapping[str, Any] | None:
    return rows[0] if rows else None


def job_from_row(m: Mapping[str, Any]) -> Job:
    error = None
    if m["error_code"] is not None:
        error = JobError(m["error_code"], m["error_message"] or "")
    created_at = aware(m["created_at"])
    updated_at = aware(m["updated_at"])
    assert created_at is not None
    assert updated_at is not None
    return Job(
        id=m["id"],
        kind=m["kind"],
        owner_id=m["owner_id"],
        input=m["input"],
        status=JobStatus(m["status"]),
        progress=as_float(m["progress"]),
        output=m["output"],
        error=error,
        remote_id=m["remote_id"],
        sequence=m["sequence"],
        metadata=m["metadata"],
        version=m["version"],
        created_at=created_at,
        updated_at=updated_at,
        completed_at=aware(m["completed_at"]),
    )


#: The timestamp columns of a job row, which JSON carries as ISO 8601 text.
_TIMESTAMPS = ("created_at", "updated_at", "completed_at")


def job_from_json(m: Mapping[str, Any]) -> Job:
    """A job from its row as a JSON object (PostgreSQL's ``row_to_json``, MySQL's
    ``JSON_OBJECT``): JSON columns nested as JSON, timestamps as ISO 8601 text, with
    their offset or, from MySQL's ``DATETIME``, in UTC without one."""
    row = dict(m)
    for name in _TIMESTAMPS:
        value = row[name]
        if value is not None:
            row[name] = datetime.fromisoformat(value)
    return job_from_row(row)


def event_from_row(m: Mapping[str, Any]) -> JobEvent:
    created_at = aware(m["created_at"])
    assert created_at is not None
    return JobEvent(
        id=m["id"],
        job_id=m["job_id"],
        owner_id=m["owner_id"],
        kind=m["kind"],
        status=JobStatus(m["status"]),
        progress=as_float(m["progress"]),
        version=m["version"],
        delivery_id=m["delivery_id"],
        created_at=created_at,
    )


def dead_letter_from_row(m: Mapping[str, Any]) -> DeadLetter:
    received_at = aware(m["received_at"])
    assert received_at is not None
    return DeadLetter(
        id=m["id"],
        job_id=m["job_id"],
        delivery_id=m["delivery_id"],
        update=update_from_dict(m["update"]),
        body=bytes(m["body"]),
        reason=m["reason"],
        received_at=received_at,
        replayed_at=aware(m["replayed_at"]),
    )


def event_row(job: Job, delivery_id: str | None, now: datetime) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "owner_id": job.owner_id,
        "kind": job.kind,
        "status": job.status.value,
        "progress": job.progress,
        "version": job.version,
        "delivery_id": delivery_id,
        "created_at": now,
    }


def applied(job: Job, delivery_id: str | None, now: datetime, event_id: int) -> ApplyResult:
    event = event_row(job, delivery_id, now)
    return ApplyResult(
        Outcome.APPLIED, job, JobEvent(**{**event, "id": event_id, "status": job.status})
    )


def check_output(update: JobUpdate) -> None:
    """Refuse an output no store can keep, before anything is written."""
    if update.output is not None:
        dumps(update.output, field="output")


def bound(table: sa.Table, **fixed: Any) -> dict[str, Any]:
    """VALUES for an INSERT of every column: a bound parameter named after each column's
    key (its name, unless an adopted table maps it),
    except those in ``fixed`` (a SQL expression, or ``None`` to leave it out). The
    statement then compiles the same whatever parameters it is given."""
    values: dict[str, Any] = {}
    for column in table.c:
        value = fixed.get(column.key, column)
        if value is column:
            values[column.key] = sa.bindparam(column.key, type_=column.type)
        elif value is not None:
            values[column.key] = value
    return values
