"""Successes held back until their files are kept: one row per job, in memory or SQL.

A hold is written when a ``succeeded`` update whose output names files reaches a store
guarded by an `jobhook.outputs.OutputKeeper`; the keeper fills in ``files`` one by one
as it keeps them, then applies the success and marks the hold ``kept`` (or ``failed``).
The row stays: it records the provider's original output and each kept file.
"""

from __future__ import annotations

import copy
import threading
from datetime import datetime, timezone
from typing import Any, Protocol

import attrs
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from jobhook._convert import normalize_json
from jobhook._models import JSON, JobError, JobStatus, JobUpdate
from jobhook.stores._errors import DATABASE_ERRORS, store_error

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

_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)

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


def _aware(value: datetime) -> datetime:
    # SQLite hands back naive datetimes; every store speaks UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


class _HoldsTable:
    """The ``{prefix}output_keeps`` table and its statements, each run on a connection
    the caller holds (shared by `SQLHolds` and `AsyncSQLHolds`)."""

    def __init__(self, prefix: str) -> None:
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            f"{prefix}output_keeps",
            self.metadata,
            sa.Column("job_id", sa.String(255), primary_key=True),
            sa.Column("delivery_id", sa.String(255), nullable=True),
            sa.Column("update", _JSON, nullable=False),
            sa.Column("files", _JSON, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("last_error", sa.Text, nullable=True),
            sa.Column("next_attempt_at", _TIMESTAMP, nullable=False),
            sa.Column("created_at", _TIMESTAMP, nullable=False),
            sa.Column("updated_at", _TIMESTAMP, nullable=False),
            sa.Column("dead_letter_id", sa.BigInteger, nullable=True),
            sa.Index(f"ix_{prefix}output_keeps_due", "state", "next_attempt_at"),
        )

    def create(self, conn: sa.Connection) -> None:
        self.metadata.create_all(conn, checkfirst=True)

    def _hold(self, row: Any) -> Hold:
        return Hold(
            job_id=row.job_id,
            delivery_id=row.delivery_id,
            update=update_from_json(row.update),
            files=list(row.files),
            state=row.state,
            attempts=row.attempts,
            last_error=row.last_error,
            next_attempt_at=_aware(row.next_attempt_at),
            created_at=_aware(row.created_at),
            updated_at=_aware(row.updated_at),
            dead_letter_id=row.dead_letter_id,
        )

    def add(
        self,
        conn: sa.Connection,
        job_id: str,
        delivery_id: str | None,
        update: JobUpdate,
        now: datetime,
        dead_letter_id: int | None,
    ) -> bool:
        table = self.table
        taken = conn.execute(sa.select(table.c.job_id).where(table.c.job_id == job_id)).first()
        if taken is not None:
            return False
        row: dict[str, Any] = {
            "job_id": job_id,
            "delivery_id": delivery_id,
            "update": update_to_json(update),
            "files": [],
            "state": KEEPING,
            "attempts": 0,
            "last_error": None,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
            "dead_letter_id": dead_letter_id,
        }
        conn.execute(table.insert(), row)
        return True

    def get(self, conn: sa.Connection, job_id: str) -> Hold | None:
        row = conn.execute(sa.select(self.table).where(self.table.c.job_id == job_id)).first()
        return None if row is None else self._hold(row)

    def due(self, conn: sa.Connection, now: datetime, limit: int) -> list[Hold]:
        table = self.table
        query = (
            sa.select(table)
            .where(table.c.state == KEEPING, table.c.next_attempt_at <= now)
            .order_by(table.c.created_at, table.c.job_id)
            .limit(limit)
        )
        return [self._hold(row) for row in conn.execute(query).all()]

    def save(self, conn: sa.Connection, job_id: str, changes: dict[str, Any]) -> None:
        conn.execute(self.table.update().where(self.table.c.job_id == job_id).values(**changes))


class SQLHolds:
    """Holds in the ``{prefix}output_keeps`` table, on a `jobhook.SQLJobStore`'s engine.

    The table has its own `MetaData` (`metadata`), created by `create_schema`
    (idempotent); each method is one transaction through ``Connection.execute``.
    """

    def __init__(self, engine: sa.Engine, prefix: str = "jobhook_") -> None:
        self.engine = engine
        self._t = _HoldsTable(prefix)
        self.metadata = self._t.metadata
        self.table = self._t.table

    def _error(self, exc: Exception) -> Exception:
        return store_error(exc, self.engine.url)

    def create_schema(self) -> None:
        """Create the table and its index when missing (idempotent)."""
        try:
            with self.engine.begin() as conn:
                self._t.create(conn)
        except DATABASE_ERRORS as exc:
            raise self._error(exc) from exc

    def add(
        self,
        job_id: str,
        delivery_id: str | None,
        update: JobUpdate,
        now: datetime,
        dead_letter_id: int | None = None,
    ) -> bool:
        try:
            with self.engine.begin() as conn:
                return self._t.add(conn, job_id, delivery_id, update, now, dead_letter_id)
        except sa.exc.IntegrityError:
            return False  # a concurrent hold for the same job won
        except DATABASE_ERRORS as exc:
            raise self._error(exc) from exc

    def get(self, job_id: str) -> Hold | None:
        try:
            with self.engine.connect() as conn:
                return self._t.get(conn, job_id)
        except DATABASE_ERRORS as exc:
            raise self._error(exc) from exc

    def due(self, now: datetime, limit: int) -> list[Hold]:
        try:
            with self.engine.connect() as conn:
                return self._t.due(conn, now, limit)
        except DATABASE_ERRORS as exc:
            raise self._error(exc) from exc

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
        try:
            with self.engine.begin() as conn:
                self._t.save(conn, job_id, changes)
        except DATABASE_ERRORS as exc:
            raise self._error(exc) from exc


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


class AsyncSQLHolds:
    """`SQLHolds` on a `jobhook.AsyncSQLJobStore`'s `AsyncEngine`: the same table and
    statements, each method one transaction (``AsyncConnection.run_sync``)."""

    def __init__(self, engine: Any, prefix: str = "jobhook_") -> None:
        self.engine = engine
        self._t = _HoldsTable(prefix)
        self.metadata = self._t.metadata
        self.table = self._t.table

    def _error(self, exc: Exception) -> Exception:
        return store_error(exc, self.engine.url)

    async def create_schema(self) -> None:
        """Create the table and its index when missing (idempotent)."""
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(self._t.create)
        except DATABASE_ERRORS as exc:
            raise self._error(exc) from exc

    async def add(
        self,
        job_id: str,
        delivery_id: str | None,
        update: JobUpdate,
        now: datetime,
        dead_letter_id: int | None = None,
    ) -> bool:
        try:
            async with self.engine.begin() as conn:
                added: bool = await conn.run_sync(
                    self._t.add, job_id, delivery_id, update, now, dead_letter_id
                )
                return added
        except sa.exc.IntegrityError:
            return False  # a concurrent hold for the same job won
        except DATABASE_ERRORS as exc:
            raise self._error(exc) from exc

    async def get(self, job_id: str) -> Hold | None:
        try:
            async with self.engine.connect() as conn:
                hold: Hold | None = await conn.run_sync(self._t.get, job_id)
                return hold
        except DATABASE_ERRORS as exc:
            raise self._error(exc) from exc

    async def due(self, now: datetime, limit: int) -> list[Hold]:
        try:
            async with self.engine.connect() as conn:
                holds: list[Hold] = await conn.run_sync(self._t.due, now, limit)
                return holds
        except DATABASE_ERRORS as exc:
            raise self._error(exc) from exc

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
    ) -> None:
        changes = _changes(files, state, attempts, last_error, next_attempt_at)
        changes["updated_at"] = now
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(self._t.save, job_id, changes)
        except DATABASE_ERRORS as exc:
            raise self._error(exc) from exc
