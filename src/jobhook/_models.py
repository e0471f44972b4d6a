"""The value types: jobs, updates, events and the answers of a store."""

from __future__ import annotations

import enum
import math
from datetime import datetime
from typing import Any

import attrs

from jobhook.exceptions import ValidationError

__all__ = [
    "ApplyResult",
    "DeadLetter",
    "Job",
    "JobError",
    "JobEvent",
    "JobStatus",
    "JobUpdate",
    "Outcome",
]

#: A JSON value: what ``input``, ``output`` and ``metadata`` hold.
JSON = Any


class JobStatus(str, enum.Enum):
    """Where a job is in its life. ``rank`` orders them; rank 3 is terminal."""

    PENDING = "pending"
    SUBMITTED = "submitted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"

    @property
    def rank(self) -> int:
        """0 pending, 1 submitted, 2 running, 3 terminal."""
        return _RANKS[self]

    @property
    def terminal(self) -> bool:
        """True for ``succeeded``, ``failed`` and ``canceled``: nothing changes after."""
        return _RANKS[self] == 3

    def __str__(self) -> str:
        return self.value


_RANKS = {
    JobStatus.PENDING: 0,
    JobStatus.SUBMITTED: 1,
    JobStatus.RUNNING: 2,
    JobStatus.SUCCEEDED: 3,
    JobStatus.FAILED: 3,
    JobStatus.CANCELED: 3,
}


class Outcome(str, enum.Enum):
    """What ``apply`` did with an update. Only ``applied`` changed anything."""

    APPLIED = "applied"
    DUPLICATE = "duplicate"
    STALE = "stale"
    CONFLICT = "conflict"
    NOT_FOUND = "not_found"

    def __str__(self) -> str:
        return self.value


def _check_progress(_: object, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValidationError(f"progress must be a number from 0 to 100, got {value!r}")
    if math.isnan(value) or not 0 <= value <= 100:
        raise ValidationError(f"progress must be a number from 0 to 100, got {value!r}")


#: The largest ``sequence`` every store keeps (a signed 64-bit column).
MAX_SEQUENCE = 2**63 - 1
#: The longest ``remote_id`` and ``JobError.code`` every store keeps (VARCHAR(255)).
MAX_NAME = 255


def _check_sequence(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEQUENCE:
        raise ValidationError(f"sequence must be an integer from 0 to 2**63-1, got {value!r:.80}")


def _to_status(value: object) -> JobStatus:
    if isinstance(value, JobStatus):
        return value
    try:
        return JobStatus(value)
    except ValueError:
        names = ", ".join(s.value for s in JobStatus)
        raise ValidationError(f"status must be one of {names}; got {value!r:.80}") from None


def _to_float(value: Any) -> Any:
    # ints are fine on the wire ("progress": 40); store them as floats so that
    # every store returns the same type.
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _storable_text(value: str) -> bool:
    # The same test as jobhook._convert.storable_text (which imports this module).
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _check_str(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if not isinstance(value, str):
        raise ValidationError(f"{attribute.name} must be a string, got {value!r}")
    if not _storable_text(value):
        # PostgreSQL cannot store these in text; refuse them in every store alike.
        raise ValidationError(
            f"{attribute.name} must not contain NUL characters or lone surrogates"
        )


def _check_name(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    _check_str(_, attribute, value)
    assert isinstance(value, str)
    if not value or len(value) > MAX_NAME:
        raise ValidationError(
            f"{attribute.name} must be 1 to {MAX_NAME} characters, got {len(value)}"
        )


def _check_optional_name(_: object, attribute: attrs.Attribute[Any], value: object) -> None:
    if value is not None:
        _check_name(_, attribute, value)


@attrs.frozen
class JobError:
    """Why a job failed: a short machine-readable ``code`` (1 to 255 characters) and a
    human ``message``."""

    code: str = attrs.field(validator=_check_name)
    message: str = attrs.field(default="", validator=_check_str)


@attrs.frozen
class JobUpdate:
    """A change a backend reports for a job.

    ``progress`` is from 0 to 100; ``sequence`` orders ``running`` updates where the
    backend numbers them. Fields left ``None`` keep the job's current value.
    Raises `ValidationError` for an unknown status, a progress outside 0..100 (or
    NaN), a sequence outside 0..2**63-1, or a ``remote_id`` that is empty or longer
    than 255 characters: what no store can keep is refused before anything is written.
    """

    status: JobStatus = attrs.field(converter=_to_status)
    progress: float | None = attrs.field(
        default=None, converter=_to_float, validator=_check_progress
    )
    output: JSON = None
    error: JobError | None = None
    remote_id: str | None = attrs.field(default=None, validator=_check_optional_name)
    sequence: int | None = attrs.field(default=None, validator=_check_sequence)


@attrs.frozen
class Job:
    """A job as stored. Timestamps are timezone-aware UTC.

    ``version`` counts applied changes (1 when created); ``remote_id`` is the
    backend's own id, when it reports one.
    """

    id: str
    kind: str
    owner_id: str | None
    input: JSON
    status: JobStatus
    progress: float | None
    output: JSON
    error: JobError | None
    remote_id: str | None
    sequence: int | None
    metadata: dict[str, JSON]
    version: int
    created_at: datetime
    updated_at: datetime
    completed_at: datetime | None

    @property
    def terminal(self) -> bool:
        """True once the job has succeeded, failed or been canceled."""
        return self.status.terminal


@attrs.frozen
class JobEvent:
    """One applied change, as written to the store's outbox in the same transaction.

    ``id`` increases with every event of a store; read them with
    ``store.events(after=last_seen_id)`` to send notifications. Within one job,
    ``version`` orders events (on PostgreSQL, racing changes to one job may come out of
    ``events()`` in the other order).
    """

    id: int
    job_id: str
    owner_id: str | None
    kind: str
    status: JobStatus
    progress: float | None
    version: int
    delivery_id: str | None
    created_at: datetime


@attrs.frozen
class ApplyResult:
    """What ``store.apply`` did: the ``outcome``, the job as it now is (``None`` when
    not found) and the event written (only when ``applied``)."""

    outcome: Outcome
    job: Job | None
    event: JobEvent | None = None

    @property
    def applied(self) -> bool:
        """True when the update changed the job."""
        return self.outcome is Outcome.APPLIED


@attrs.frozen
class DeadLetter:
    """A delivery that named a job the store did not have, kept for a later replay.

    ``body`` is the raw request body as received; ``update`` is what it parsed to.
    ``replayed_at`` is set once a replay found the job.
    """

    id: int
    job_id: str
    delivery_id: str | None
    update: JobUpdate
    body: bytes
    reason: str
    received_at: datetime
    replayed_at: datetime | None
