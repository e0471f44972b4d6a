"""In-memory stores: the same rules as the SQL store, for tests and single processes."""

from __future__ import annotations

import bisect
import builtins
import itertools
import threading
from datetime import datetime, timedelta
from typing import Any

import attrs

from jobhook._convert import normalize_json
from jobhook._ids import check_delivery_id, utcnow
from jobhook._lifecycle import check_id, check_reason, decide, new_job
from jobhook._models import (
    JSON,
    ApplyResult,
    DeadLetter,
    Job,
    JobEvent,
    JobUpdate,
    Outcome,
)
from jobhook._outbox import ParkedEvent, PruneReport, check_prune, prune_plan, prune_report
from jobhook.exceptions import (
    DeadLetterNotFoundError,
    JobExistsError,
    JobNotFoundError,
)
from jobhook.stores._memory_consumers import AsyncMemoryConsumerMethods, MemoryConsumerMethods
from jobhook.stores.protocol import StatusFilter, check_limit, status_values

__all__ = ["AsyncInMemoryJobStore", "InMemoryJobStore"]


def _detached(job: Job) -> Job:
    # Jobs are frozen, but input/output/metadata are mutable JSON: hand out copies so
    # that a caller's mutation never reaches the store (as with a database).
    return attrs.evolve(
        job,
        input=normalize_json(job.input),
        output=normalize_json(job.output),
        metadata=normalize_json(job.metadata),
    )


def _sort_key(job: Job) -> tuple[datetime, str]:
    return (job.created_at, job.id)


class InMemoryJobStore(MemoryConsumerMethods):
    """A `JobStore` held in this process's memory, behind one lock.

    JSON values go through the same round-trip as in the SQL store, so what fails
    there fails here, and returned jobs never share state with the store.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: dict[str, Job] = {}
        # delivery id -> when it was received (prune forgets the old ones).
        self._deliveries: dict[str, datetime] = {}
        # In id order; ids keep growing after prune removes the oldest.
        self._events: list[JobEvent] = []
        self._last_event_id = 0
        # name -> [position, owner, lease expiry]
        self._consumers: dict[str, list[Any]] = {}
        self._parked: list[ParkedEvent] = []
        self._dead_letters: list[DeadLetter] = []
        self._letters_by_delivery: dict[str, int] = {}
        # remote_id -> ids of the jobs carrying it now: a set, since two backends' ids can
        # collide (get_by_remote_id then picks the newest). Kept in step with _jobs.
        self._by_remote_id: dict[str, set[str]] = {}

    def __repr__(self) -> str:
        return f"<InMemoryJobStore jobs={len(self._jobs)}>"

    def create(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job:
        job = new_job(
            input, kind=kind, owner_id=owner_id, job_id=job_id, metadata=metadata, now=utcnow()
        )
        with self._lock:
            if job.id in self._jobs:
                raise JobExistsError(job.id)
            self._jobs[job.id] = job
        return _detached(job)

    def get(self, job_id: str) -> Job:
        check_id(job_id)
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            raise JobNotFoundError(job_id)
        return _detached(job)

    def get_by_remote_id(self, remote_id: str) -> Job:
        check_id(remote_id, "remote_id")
        with self._lock:
            holders = self._by_remote_id.get(remote_id)
            job = max((self._jobs[i] for i in holders), key=_sort_key) if holders else None
        if job is None:
            raise JobNotFoundError(remote_id=remote_id)
        return _detached(job)

    def list(
        self,
        *,
        owner_id: str | None = None,
        status: StatusFilter = None,
        kind: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        check_limit(limit)
        statuses = status_values(status)
        with self._lock:
            jobs = builtins.list(self._jobs.values())
            cursor = None
            if before is not None:
                anchor = self._jobs.get(before)
                if anchor is None:
                    raise JobNotFoundError(before)
                cursor = _sort_key(anchor)
        selected = [
            job
            for job in jobs
            if (owner_id is None or job.owner_id == owner_id)
            and (statuses is None or job.status.value in statuses)
            and (kind is None or job.kind == kind)
            and (cursor is None or _sort_key(job) < cursor)
        ]
        selected.sort(key=_sort_key, reverse=True)
        return [_detached(job) for job in selected[:limit]]

    def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult:
        check_id(job_id)
        if delivery_id is not None:
            check_delivery_id(delivery_id)
        output = normalize_json(update.output, field="output")
        if output is not update.output:
            update = attrs.evolve(update, output=output)
        with self._lock:
            return self._apply_locked(job_id, update, delivery_id)

    def _apply_locked(self, job_id: str, update: JobUpdate, delivery_id: str | None) -> ApplyResult:
        if delivery_id is not None and delivery_id in self._deliveries:
            job = self._jobs.get(job_id)
            return ApplyResult(Outcome.DUPLICATE, job and _detached(job))
        job = self._jobs.get(job_id)
        if job is None:
            return ApplyResult(Outcome.NOT_FOUND, None)
        if delivery_id is not None:
            self._deliveries[delivery_id] = utcnow()
        outcome, new = decide(job, update, utcnow())
        if outcome is not Outcome.APPLIED:
            return ApplyResult(outcome, _detached(job))
        self._jobs[job_id] = new
        if new.remote_id != job.remote_id:
            self._reindex_remote_id(job, new)
        self._last_event_id += 1
        event = JobEvent(
            id=self._last_event_id,
            job_id=new.id,
            owner_id=new.owner_id,
            kind=new.kind,
            status=new.status,
            progress=new.progress,
            version=new.version,
            delivery_id=delivery_id,
            created_at=new.updated_at,
        )
        self._events.append(event)
        return ApplyResult(outcome, _detached(new), event)

    def _reindex_remote_id(self, old: Job, new: Job) -> None:
        """Move the job in the remote id index (under the lock): it is found by its
        current remote id only."""
        if old.remote_id is not None:
            holders = self._by_remote_id[old.remote_id]
            holders.discard(old.id)
            if not holders:
                del self._by_remote_id[old.remote_id]
        if new.remote_id is not None:
            self._by_remote_id.setdefault(new.remote_id, set()).add(new.id)

    def stale(self, *, updated_before: datetime, limit: int = 100) -> builtins.list[Job]:
        check_limit(limit)
        with self._lock:
            jobs = [
                j for j in self._jobs.values() if not j.terminal and j.updated_at < updated_before
            ]
        jobs.sort(key=lambda j: (j.updated_at, j.id))
        return [_detached(j) for j in jobs[:limit]]

    def events(
        self, *, after: int = 0, limit: int = 100, job_id: str | None = None
    ) -> builtins.list[JobEvent]:
        check_limit(limit)
        with self._lock:
            start = bisect.bisect_right(self._events, after, key=lambda e: e.id)
            if job_id is None:
                return self._events[start : start + limit]
            later = (e for e in self._events[start:] if e.job_id == job_id)
            return list(itertools.islice(later, limit))

    def add_dead_letter(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        delivery_id: str | None = None,
        body: bytes = b"",
        reason: str = "not_found",
    ) -> DeadLetter:
        check_id(job_id)
        if delivery_id is not None:
            check_delivery_id(delivery_id)
        check_reason(reason)
        update = attrs.evolve(update, output=normalize_json(update.output, field="output"))
        with self._lock:
            if delivery_id is not None:
                kept = self._letters_by_delivery.get(delivery_id)
                if kept is not None:
                    # One letter per delivery: a sender retrying a 404 adds nothing.
                    return self._dead_letters[kept - 1]
                self._letters_by_delivery[delivery_id] = len(self._dead_letters) + 1
            letter = DeadLetter(
                id=len(self._dead_letters) + 1,
                job_id=job_id,
                delivery_id=delivery_id,
                update=update,
                body=bytes(body),
                reason=reason,
                received_at=utcnow(),
                replayed_at=None,
            )
            self._dead_letters.append(letter)
        return letter

    def dead_letters(
        self, *, job_id: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> builtins.list[DeadLetter]:
        check_limit(limit)
        with self._lock:
            letters = [
                d
                for d in self._dead_letters
                if (job_id is None or d.job_id == job_id)
                and (include_replayed or d.replayed_at is None)
            ]
        return letters[:limit]

    def replay_dead_letter(self, dead_letter_id: int, *, job_id: str | None = None) -> ApplyResult:
        with self._lock:
            index = dead_letter_id - 1
            if not 0 <= index < len(self._dead_letters):
                raise DeadLetterNotFoundError(dead_letter_id)
            letter = self._dead_letters[index]
            target = letter.job_id if job_id is None else check_id(job_id)
            result = self._apply_locked(target, letter.update, letter.delivery_id)
            if result.outcome is not Outcome.NOT_FOUND and letter.replayed_at is None:
                self._dead_letters[index] = attrs.evolve(letter, replayed_at=utcnow())
            return result

    def prune(
        self,
        *,
        deliveries_older_than: timedelta,
        finished_jobs_older_than: timedelta | None = None,
        batch: int = 1000,
    ) -> PruneReport:
        check_prune(deliveries_older_than, finished_jobs_older_than, batch)
        report = PruneReport()
        for kind, cutoff in prune_plan(deliveries_older_than, finished_jobs_older_than):
            with self._lock:
                if kind == "deliveries":
                    old = [d for d, at in self._deliveries.items() if at < cutoff]
                    for delivery_id in old:
                        del self._deliveries[delivery_id]
                    removed = len(old)
                elif kind == "events":
                    positions = [state[0] for state in self._consumers.values()]
                    passed = min(positions) if positions else 0
                    keep = [e for e in self._events if e.id > passed or e.created_at >= cutoff]
                    removed = len(self._events) - len(keep)
                    self._events = keep
                else:
                    old = [
                        j.id
                        for j in self._jobs.values()
                        if j.terminal and j.completed_at is not None and j.completed_at < cutoff
                    ]
                    for job_id in old:
                        job = self._jobs.pop(job_id)
                        if job.remote_id is not None:
                            self._reindex_remote_id(job, attrs.evolve(job, remote_id=None))
                    removed = len(old)
            report += prune_report(kind, removed)
        return report

    def close(self) -> None:
        """Nothing to release; here for the protocol."""


class AsyncInMemoryJobStore(AsyncMemoryConsumerMethods):
    """The async twin of `InMemoryJobStore` (same state model; nothing blocks)."""

    _store: InMemoryJobStore

    def __init__(self) -> None:
        self._store = InMemoryJobStore()

    def __repr__(self) -> str:
        return f"<AsyncInMemoryJobStore jobs={len(self._store._jobs)}>"

    async def create(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job:
        return self._store.create(
            input, kind=kind, owner_id=owner_id, job_id=job_id, metadata=metadata
        )

    async def get(self, job_id: str) -> Job:
        return self._store.get(job_id)

    async def get_by_remote_id(self, remote_id: str) -> Job:
        return self._store.get_by_remote_id(remote_id)

    async def list(
        self,
        *,
        owner_id: str | None = None,
        status: StatusFilter = None,
        kind: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        return self._store.list(
            owner_id=owner_id, status=status, kind=kind, limit=limit, before=before
        )

    async def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult:
        return self._store.apply(job_id, update, delivery_id=delivery_id)

    async def stale(self, *, updated_before: datetime, limit: int = 100) -> builtins.list[Job]:
        return self._store.stale(updated_before=updated_before, limit=limit)

    async def events(
        self, *, after: int = 0, limit: int = 100, job_id: str | None = None
    ) -> builtins.list[JobEvent]:
        return self._store.events(after=after, limit=limit, job_id=job_id)

    async def add_dead_letter(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        delivery_id: str | None = None,
        body: bytes = b"",
        reason: str = "not_found",
    ) -> DeadLetter:
        return self._store.add_dead_letter(
            job_id, update, delivery_id=delivery_id, body=body, reason=reason
        )

    async def dead_letters(
        self, *, job_id: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> builtins.list[DeadLetter]:
        return self._store.dead_letters(
            job_id=job_id, include_replayed=include_replayed, limit=limit
        )

    async def replay_dead_letter(
        self, dead_letter_id: int, *, job_id: str | None = None
    ) -> ApplyResult:
        return self._store.replay_dead_letter(dead_letter_id, job_id=job_id)

    async def prune(
        self,
        *,
        deliveries_older_than: timedelta,
        finished_jobs_older_than: timedelta | None = None,
        batch: int = 1000,
    ) -> PruneReport:
        return self._store.prune(
            deliveries_older_than=deliveries_older_than,
            finished_jobs_older_than=finished_jobs_older_than,
            batch=batch,
        )

    async def close(self) -> None:
        """Nothing to release; here for the protocol."""
