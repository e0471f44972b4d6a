"""The store protocols: what every job store does, sync and async."""

from __future__ import annotations

import builtins
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Protocol, runtime_checkable

from jobhook._models import JSON, ApplyResult, DeadLetter, Job, JobEvent, JobStatus, JobUpdate
from jobhook._outbox import ConsumerInfo, ParkedEvent, PruneReport

__all__ = ["AsyncConsumerStore", "AsyncJobStore", "ConsumerStore", "JobStore"]

StatusFilter = JobStatus | str | Sequence[JobStatus | str] | None


@runtime_checkable
class JobStore(Protocol):
    """A place jobs live. Every method is thread-safe and atomic.

    Implementations: `InMemoryJobStore`, `SQLJobStore`. All behave the same; one
    contract test suite checks it.
    """

    def create(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job:
        """Create and commit a ``pending`` job and return it.

        Raises `JobExistsError` for a taken ``job_id``, and `ValidationError` for a
        ``job_id`` outside the job-id alphabet (1 to 255 of ``A-Z a-z 0-9 - . _ ~``,
        not ``.`` or ``..``: it must survive a URL path) or an input or metadata that
        JSON cannot hold. Nothing is written on error.
        """
        ...

    def get(self, job_id: str) -> Job:
        """Return the job. Raises `JobNotFoundError`."""
        ...

    def get_by_remote_id(self, remote_id: str) -> Job:
        """Return the job that carries ``remote_id``, the id a hosted backend gave it.

        A job carries the ``remote_id`` of the last applied update that set one: an
        update that does not apply records none, and a job whose remote id changed
        (a resubmission) is found by the new id only. When several jobs carry the same
        remote id (two backends' ids can collide), the newest job is returned, in the
        order `list` uses (greatest ``created_at``, then id). Indexed in every store.

        Raises `JobNotFoundError` (its ``remote_id`` set) when no job carries it, and
        `ValidationError` for a ``remote_id`` no store could hold (as `get` does).
        """
        ...

    def list(
        self,
        *,
        owner_id: str | None = None,
        status: StatusFilter = None,
        kind: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first. ``before`` is the id of the last job of the previous page."""
        ...

    def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult:
        """Judge and apply ``update`` in one transaction.

        Records ``delivery_id`` (a second delivery with it is a ``duplicate``), writes
        the change and appends its `JobEvent`. A ``not_found`` outcome records nothing,
        so the same delivery applies once the job exists.
        """
        ...

    def stale(self, *, updated_before: datetime, limit: int = 100) -> builtins.list[Job]:
        """Jobs that are not terminal and were last updated before ``updated_before``,
        least recently updated first."""
        ...

    def events(
        self, *, after: int = 0, limit: int = 100, job_id: str | None = None
    ) -> builtins.list[JobEvent]:
        """Outbox events with an id greater than ``after``, in order; with ``job_id``,
        only that job's (what a live stream resuming after an event id reads)."""
        ...

    def add_dead_letter(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        delivery_id: str | None = None,
        body: bytes = b"",
        reason: str = "not_found",
    ) -> DeadLetter:
        """Keep a delivery that named an unknown job, once per ``delivery_id``.

        Atomic and idempotent: when a letter with this ``delivery_id`` is kept already
        (a sender retrying its 404), that letter is returned and nothing is written.
        Letters without a delivery id are each kept.
        """
        ...

    def dead_letters(
        self, *, job_id: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> builtins.list[DeadLetter]:
        """Kept deliveries, oldest first."""
        ...

    def replay_dead_letter(self, dead_letter_id: int, *, job_id: str | None = None) -> ApplyResult:
        """Apply a kept delivery under its original delivery id, to its job, or to
        ``job_id`` when given (a letter kept under a remote id not yet recorded,
        ``remote:<id>``, once its job is known).

        Marks it replayed unless the job is still unknown. Raises
        `DeadLetterNotFoundError`.
        """
        ...

    def close(self) -> None:
        """Release connections. The store is not used afterwards."""
        ...


@runtime_checkable
class AsyncJobStore(Protocol):
    """The async twin of `JobStore`: the same methods, awaited."""

    async def create(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job: ...

    async def get(self, job_id: str) -> Job: ...

    async def get_by_remote_id(self, remote_id: str) -> Job: ...

    async def list(
        self,
        *,
        owner_id: str | None = None,
        status: StatusFilter = None,
        kind: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]: ...

    async def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult: ...

    async def stale(self, *, updated_before: datetime, limit: int = 100) -> builtins.list[Job]: ...

    async def events(
        self, *, after: int = 0, limit: int = 100, job_id: str | None = None
    ) -> builtins.list[JobEvent]: ...

    async def add_dead_letter(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        delivery_id: str | None = None,
        body: bytes = b"",
        reason: str = "not_found",
    ) -> DeadLetter: ...

    async def dead_letters(
        self, *, job_id: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> builtins.list[DeadLetter]: ...

    async def replay_dead_letter(
        self, dead_letter_id: int, *, job_id: str | None = None
    ) -> ApplyResult: ...

    async def close(self) -> None: ...


@runtime_checkable
class ConsumerStore(JobStore, Protocol):
    """A `JobStore` that also keeps durable outbox consumers and prunes itself: every
    store jobhook ships. `OutboxConsumer` uses these methods; apps rarely call them.

    A consumer's lease is held by one ``owner`` until it expires (``lease`` seconds
    after it was last claimed or renewed); a write by an owner that no longer holds it
    changes nothing and answers False. Clocks of the processes sharing a store are
    assumed to agree to well within a lease.
    """

    def claim_consumer(self, name: str, owner: str, *, lease: float) -> int | None:
        """Take or renew the lease of ``name`` and return its position (a new name
        starts at 0); None when another owner holds an unexpired lease."""
        ...

    def advance_consumer(self, name: str, owner: str, position: int, *, lease: float) -> bool:
        """Move the position forward to ``position`` and renew the lease."""
        ...

    def release_consumer(self, name: str, owner: str) -> None:
        """Give the lease up when ``owner`` holds it."""
        ...

    def park_event(
        self, name: str, owner: str, event: JobEvent, *, error: str, attempts: int, lease: float
    ) -> bool:
        """Keep ``event`` as parked and move the position past it, atomically."""
        ...

    def consumers(self) -> builtins.list[ConsumerInfo]:
        """Every registered consumer, by name."""
        ...

    def parked_events(
        self, *, consumer: str | None = None, state: str | None = None, limit: int = 100
    ) -> builtins.list[ParkedEvent]:
        """Parked events, oldest first."""
        ...

    def replay_parked(self, parked_id: int) -> ParkedEvent:
        """Ask for a parked event to be handled again. Raises `ParkedEventNotFoundError`."""
        ...

    def settle_parked(self, parked_id: int, *, handled: bool, error: str | None = None) -> None:
        """Record how a replay went."""
        ...

    def prune(
        self,
        *,
        deliveries_older_than: timedelta,
        finished_jobs_older_than: timedelta | None = None,
        batch: int = 1000,
    ) -> PruneReport:
        """Remove delivery ids received before the retention, events older than it that
        every registered consumer has passed (none while no consumer is registered), and
        terminal jobs finished before ``finished_jobs_older_than`` when given; ``batch``
        rows per transaction, so live traffic waits for one short batch at most.

        A delivery id removed is forgotten: a sender retrying after the retention would
        be applied again (the lifecycle rules still refuse what goes backwards).
        """
        ...


@runtime_checkable
class AsyncConsumerStore(AsyncJobStore, Protocol):
    """The async twin of `ConsumerStore`."""

    async def claim_consumer(self, name: str, owner: str, *, lease: float) -> int | None: ...

    async def advance_consumer(
        self, name: str, owner: str, position: int, *, lease: float
    ) -> bool: ...

    async def release_consumer(self, name: str, owner: str) -> None: ...

    async def park_event(
        self, name: str, owner: str, event: JobEvent, *, error: str, attempts: int, lease: float
    ) -> bool: ...

    async def consumers(self) -> builtins.list[ConsumerInfo]: ...

    async def parked_events(
        self, *, consumer: str | None = None, state: str | None = None, limit: int = 100
    ) -> builtins.list[ParkedEvent]: ...

    async def replay_parked(self, parked_id: int) -> ParkedEvent: ...

    async def settle_parked(
        self, parked_id: int, *, handled: bool, error: str | None = None
    ) -> None: ...

    async def prune(
        self,
        *,
        deliveries_older_than: timedelta,
        finished_jobs_older_than: timedelta | None = None,
        batch: int = 1000,
    ) -> PruneReport: ...


def status_values(status: StatusFilter) -> tuple[str, ...] | None:
    """Normalise a status filter to a tuple of status strings (``None``: no filter)."""
    if status is None:
        return None
    if isinstance(status, (JobStatus, str)):
        return (JobStatus(status).value,)
    return tuple(JobStatus(s).value for s in status)


def check_limit(limit: int) -> int:
    """Refuse a page size that is not a positive integer."""
    from jobhook.exceptions import ValidationError

    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValidationError(f"limit must be a positive integer, got {limit!r}")
    return limit
