"""The lifecycle rules: the one pure decision on whether an update applies to a job.

An update applies when, and only when,

1. the job is not terminal, and
2. the update's rank is >= the job's rank, and
3. for a ``running`` update to a ``running`` job, progress does not go backwards and,
   where both carry a ``sequence``, the update's sequence is greater.

Anything else is ``stale``, except a different terminal status after a terminal one,
which is a ``conflict`` (the first terminal status wins). Skipping ranks is legal:
``succeeded`` may arrive before ``submitted``, which then lands as ``stale``.

The SQL store turns the same rules into the ``WHERE`` clause of one guarded ``UPDATE``
(see `allowed_from`); the in-memory store calls `decide`. Both share `changes`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import attrs

from jobhook._convert import normalize_json, storable_text
from jobhook._ids import check_new_job_id, new_job_id
from jobhook._models import JSON, Job, JobStatus, JobUpdate, Outcome
from jobhook.exceptions import ValidationError

__all__ = [
    "allowed_from",
    "changes",
    "check_id",
    "check_reason",
    "decide",
    "judge",
    "new_job",
    "transition",
]


def _check_name(value: object, field: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not isinstance(value, str) or not value or len(value) > 255 or not storable_text(value):
        raise ValidationError(
            f"{field} must be a non-empty string of at most 255 characters"
            f" without NUL characters or lone surrogates, got {value!r}"
        )


def check_id(value: object, field: str = "job_id") -> str:
    """Refuse an id no store can keep: not a string, empty, over 255 characters, or NUL."""
    _check_name(value, field)
    assert isinstance(value, str)
    return value


def check_reason(value: object) -> str:
    """Refuse a dead letter's ``reason`` no store can keep (as `check_id` does)."""
    _check_name(value, "reason")
    assert isinstance(value, str)
    return value


def new_job(
    input: JSON,
    *,
    kind: str,
    owner_id: str | None,
    job_id: str | None,
    metadata: dict[str, JSON] | None,
    now: datetime,
) -> Job:
    """A new ``pending`` job, as every store creates it.

    Raises `ValidationError` for an id outside the job-id alphabet (see `jobhook._ids`),
    a bad kind or owner, and for an input or metadata
    JSON cannot hold (the same way in every store, before anything is written).
    """
    job_id = new_job_id() if job_id is None else check_new_job_id(job_id)
    _check_name(kind, "kind")
    _check_name(owner_id, "owner_id", optional=True)
    input = normalize_json(input, field="input")
    metadata = {} if metadata is None else normalize_json(metadata, field="metadata")
    if not isinstance(metadata, dict):
        raise ValidationError(f"metadata must be a JSON object, got {metadata!r}")
    return Job(
        id=job_id,
        kind=kind,
        owner_id=owner_id,
        input=input,
        status=JobStatus.PENDING,
        progress=None,
        output=None,
        error=None,
        remote_id=None,
        sequence=None,
        metadata=metadata,
        version=1,
        created_at=now,
        updated_at=now,
        completed_at=None,
    )


def judge(job: Job, update: JobUpdate) -> Outcome:
    """Classify ``update`` against ``job``: ``applied``, ``stale`` or ``conflict``."""
    current = job.status
    if current.terminal:
        if update.status.terminal and update.status is not current:
            return Outcome.CONFLICT
        return Outcome.STALE
    if update.status.rank < current.rank:
        return Outcome.STALE
    if update.status is JobStatus.RUNNING and current is JobStatus.RUNNING:
        if (
            update.progress is not None
            and job.progress is not None
            and update.progress < job.progress
        ):
            return Outcome.STALE
        if (
            update.sequence is not None
            and job.sequence is not None
            and update.sequence <= job.sequence
        ):
            return Outcome.STALE
    return Outcome.APPLIED


def allowed_from(status: JobStatus) -> tuple[JobStatus, ...]:
    """The statuses a job may have for an update to ``status`` to apply (rules 1 and 2).

    Rule 3 (progress and sequence of running-after-running) is checked separately.
    """
    return tuple(s for s in JobStatus if not s.terminal and s.rank <= status.rank)


def changes(update: JobUpdate) -> dict[str, Any]:
    """The job fields an applied ``update`` sets, from the update alone.

    Fields the update leaves ``None`` keep their value; a ``succeeded`` update without
    progress sets progress to 100. ``sequence``, ``version`` and timestamps are handled
    by `transition` (and by the SQL store's statement).
    """
    values: dict[str, Any] = {"status": update.status}
    progress = update.progress
    if progress is None and update.status is JobStatus.SUCCEEDED:
        progress = 100.0
    if progress is not None:
        values["progress"] = progress
    if update.output is not None:
        values["output"] = update.output
    if update.error is not None:
        values["error"] = update.error
    if update.remote_id is not None:
        values["remote_id"] = update.remote_id
    return values


def transition(job: Job, update: JobUpdate, now: datetime) -> Job:
    """The job after ``update`` is applied at ``now`` (call only when `judge` says so)."""
    sequence = job.sequence
    if update.sequence is not None and (sequence is None or update.sequence > sequence):
        sequence = update.sequence
    return attrs.evolve(
        job,
        **changes(update),
        sequence=sequence,
        version=job.version + 1,
        updated_at=now,
        completed_at=now if update.status.terminal else job.completed_at,
    )


def decide(job: Job, update: JobUpdate, now: datetime) -> tuple[Outcome, Job]:
    """Judge ``update`` and return the outcome with the job as it would then be."""
    outcome = judge(job, update)
    if outcome is Outcome.APPLIED:
        return outcome, transition(job, update, now)
    return outcome, job
