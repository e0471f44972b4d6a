"""Successes held back until their files are kept: one row per job, in memory or SQL.

A hold is written when a ``succeeded`` update whose output names files reaches a store
guarded by an `jobhook.outputs.OutputKeeper`; the keeper fills in ``files`` one by one
as it keeps them, then applies the success and marks the hold ``kept`` (or ``failed``).
The row stays: it records the provider's original output and each kept file.

This module has the `Hold` value, the `Holds` and `AsyncHolds` protocols, the in-memory
holds and the JSON form of an update; the SQL table and the SQL holds are in
`jobhook.stores._sql_holds` (importable from here too, loaded when first used).
"""

from __future__ import annotations

import copy
import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

import attrs

from jobhook._convert import normalize_json
from jobhook._models import JSON, JobError, JobStatus, JobUpdate

if TYPE_CHECKING:
    from jobhook.stores._sql_holds import AsyncSQLHolds, SQLHolds

__all__ = [
    "AsyncHolds",
    "AsyncMemoryHolds",
    "AsyncSQLHolds",
    "Hold",
    "Holds",
    "MemoryHolds",
    "SQLHolds",
    "update_from_json",
    "update_to_json",
]

KEEPING, KEPT, FAILED, DROPPED = "keeping", "kept", "failed", "dropped"


def update_to_json(update: JobUpdate) -> dict[str, JSON]:
    """``update`` as a JSON object (the inverse of `update_from_json`)."""
    error = (
        None
        if update.error is None
        else {"code": update.error.code, "message": update.error.message}
    )
    return {
        "status": update.status.value,
        "progress": update.progress,
        "output": normalize_json(update.output, field="output"),
        "error": error,
        "remote_id": update.remote_id,
        "sequence": update.sequence,
    }


def update_from_json(value: dict[str, Any]) -> JobUpdate:
    """The `JobUpdate` a JSON object from `update_to_json` describes."""
    error = value.get("error")
    return JobUpdate(
        JobStatus(value["status"]),
        progress=value.get("progress"),
        output=value.get("output"),
        error=None if error is None else JobError(error["code"], error.get("message", "")),
        remote_id=value.get("remote_id"),
        sequence=value.get("sequence"),
    )


@attrs.frozen
class Hold:
    """A success held back until its files are kept.

    ``update`` is the success as the provider reported it (its output names the
    provider's files); ``files`` has one entry per file, ``None`` until it is kept, then
    a `jobhook.outputs.KeptFile` as JSON. ``state`` is ``keeping``, ``kept``, ``failed``
    (the job was failed with ``output_not_kept``) or ``dropped`` (the job had ended
    otherwise). ``dead_letter_id`` names the dead letter the success was replayed from,
    marked replayed once the keeper has applied it.
    """

    job_id: str
    delivery_id: str | None
    update: JobUpdate
    files: list[dict[str, JSON] | None]
    state: str
    attempts: int
    last_error: str | None
    next_attempt_at: datetime
    created_at: datetime
    updated_at: datetime
    dead_letter_id: int | None = None


class Holds(Protocol):
    """Where holds live. Every method is atomic and thread-safe."""

    def create_schema(self) -> None: ...

    def add(
        self,
        job_id: str,
        delivery_id: str | None,
        update: JobUpdate,
        now: datetime,
        dead_letter_id: int | None = None,
    ) -> bool:
        """Hold ``update`` for ``job_id``; False (and nothing written) when the job has
        a hold already."""
        ...

    def get(self, job_id: str) -> Hold | None: ...

    def due(self, now: datetime, limit: int) -> list[Hold]:
        """Holds still ``keeping`` whose next attempt is due, oldest first."""
        ...

    def save(
        self,
        job_id: str,
        *,
        now: datetime,
        files: list[dict[str, JSON] | None] | None = None,
        state: str | None = None,
        attempts: int | None = None,
        last_error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Change the given fields of ``job_id``'s hold."""
        ...


class MemoryHolds:
    """Holds in this process's memory, for `jobhook.InMemoryJobStore`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._holds: dict[str, Hold] = {}

    def create_schema(self) -> None:
        """Nothing to create."""

    def add(
        self,
        job_id: str,
        delivery_id: str | None,
        update: JobUpdate,
        now: datetime,
        dead_letter_id: int | None = None,
    ) -> bool:
        held = update_from_json(update_to_json(update))  # the same round-trip as SQL
        with self._lock:
            if job_id in self._holds:
                return False
            self._holds[job_id] = Hold(
                job_id, delivery_id, held, [], KEEPING, 0, None, now, now, now, dead_letter_id
            )
            return True

    def get(self, job_id: str) -> Hold | None:
        with self._lock:
            hold = self._holds.get(job_id)
            return None if hold is None else attrs.evolve(hold, files=copy.deepcopy(hold.files))

    def due(self, now: datetime, limit: int) -> list[Hold]:
        with self._lock:
            holds = [
                attrs.evolve(h, files=copy.deepcopy(h.files))
                for h in self._holds.values()
                if h.state == KEEPING and h.next_attempt_at <= now
            ]
        return sorted(holds, key=lambda h: (h.created_at, h.job_id))[:limit]

    def save(
        self,
        job_id: str,
        *,
        now: datetime,
        files: list[dict[str, JSON] | None] | None = None,
        state: str | None = None,
        attempts: int | None = None,
        last_error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        changes = _changes(files, state, attempts, last_error, next_attempt_at)
        changes["updated_at"] = now
        if "files" in changes:
            changes["files"] = copy.deepcopy(changes["files"])
        with self._lock:
            self._holds[job_id] = attrs.evolve(self._holds[job_id], **changes)


def _changes(
    files: list[dict[str, JSON] | None] | None,
    state: str | None,
    attempts: int | None,
    last_error: str | None,
    next_attempt_at: datetime | None,
) -> dict[str, Any]:
    given = {
        "files": files,
        "state": state,
        "attempts": attempts,
        "last_error": last_error,
        "next_attempt_at": next_attempt_at,
    }
    return {name: value for name, value in given.items() if value is not None}


class AsyncHolds(Protocol):
    """`Holds` for an async store: the same methods, awaited."""

    async def create_schema(self) -> None: ...

    async def add(
        self,
        job_id: str,
        delivery_id: str | None,
        update: JobUpdate,
        now: datetime,
        dead_letter_id: int | None = None,
    ) -> bool: ...

    async def get(self, job_id: str) -> Hold | None: ...

    async def due(self, now: datetime, limit: int) -> list[Hold]: ...

    async def save(
        self,
        job_id: str,
        *,
        now: datetime,
        files: list[dict[str, JSON] | None] | None = None,
        state: str | None = None,
        attempts: int | None = None,
        last_error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None: ...


class AsyncMemoryHolds:
    """`MemoryHolds` behind async methods, for `jobhook.AsyncInMemoryJobStore`."""

    def __init__(self) -> None:
        self._holds = MemoryHolds()

    async def create_schema(self) -> None:
        """Nothing to create."""

    async def add(
        self,
        job_id: str,
        delivery_id: str | None,
        update: JobUpdate,
        now: datetime,
        dead_letter_id: int | None = None,
    ) -> bool:
        return self._holds.add(job_id, delivery_id, update, now, dead_letter_id)

    async def get(self, job_id: str) -> Hold | None:
        return self._holds.get(job_id)

    async def due(self, now: datetime, limit: int) -> list[Hold]:
        return self._holds.due(now, limit)

    async def save(self, job_id: str, *, now: datetime, **fields: Any) -> None:
        self._holds.save(job_id, now=now, **fields)


def __getattr__(name: str) -> Any:
    # The SQL holds need SQLAlchemy: loaded when first asked for (PEP 562).
    if name in ("SQLHolds", "AsyncSQLHolds"):
        from jobhook.stores import _sql_holds

        return getattr(_sql_holds, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
