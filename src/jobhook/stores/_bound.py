"""`BoundSQLJobStore`: a `SQLJobStore`'s operations on the app's own connection, inside
the app's own transaction."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from jobhook._models import JSON, ApplyResult, DeadLetter, Job, JobEvent, JobUpdate
from jobhook.exceptions import ValidationError
from jobhook.stores._errors import DATABASE_ERRORS, store_error
from jobhook.stores._steps import Rollback as _Rollback
from jobhook.stores._steps import Rows, Steps, drive
from jobhook.stores.protocol import StatusFilter

if TYPE_CHECKING:
    from jobhook.stores.sql import SQLJobStore

__all__ = ["BoundSQLJobStore"]

T = TypeVar("T")
_APPLIED_IN = "jobhook_applied_in"


class BoundSQLJobStore:
    """A view of a `SQLJobStore` whose every operation runs on ``connection``, in the
    transaction the caller holds there (begun if none is), each in a ``SAVEPOINT``:
    nothing is committed or rolled back for the caller, so the job and the app's own
    rows commit together, or not at all.

    Made by `SQLJobStore.bind`; raises `ValidationError` for a connection in
    autocommit (such as those of the engine the store made itself on PostgreSQL). Use
    it only on the thread that owns the connection. On PostgreSQL an outbox event's id
    is its transaction's id, so one transaction applies at most one update through it
    (a second raises `ValidationError`); creating jobs and reading have no such limit.
    """

    def __init__(self, store: SQLJobStore, connection: sa.Connection) -> None:
        if _autocommit(connection):
            raise ValidationError(
                "store.bind() needs a connection that holds transactions; this one is in "
                "autocommit (each statement would commit on its own)"
            )
        self.store = store
        self.connection = connection

    def __repr__(self) -> str:
        return f"<BoundSQLJobStore of {self.store!r}>"

    def _run(self, steps: Steps[T]) -> T:
        conn = self.connection
        try:
            if conn.dialect.name == "sqlite":
                # The stdlib driver begins a transaction only before a write: begin it
                # now, or the SAVEPOINT would become the transaction and its RELEASE
                # would commit the app's work.
                driver = conn.connection.driver_connection
                if driver is not None and not driver.in_transaction:
                    conn.exec_driver_sql("BEGIN IMMEDIATE")
            with conn.begin_nested():
                return drive(
                    steps, lambda statement, params: _rows(conn.execute(statement, params))
                )
        except _Rollback as rollback:
            value: T = rollback.value
            return value
        except DATABASE_ERRORS as exc:
            raise store_error(exc, conn.engine.url) from exc

    def create(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job:
        """Create a ``pending`` job in the caller's transaction. See `JobStore.create`."""
        return self._run(self.store._ops.create(input, kind, owner_id, job_id, metadata))

    def get(self, job_id: str) -> Job:
        """Return the job as the caller's transaction sees it. Raises `JobNotFoundError`."""
        return self._run(self.store._ops.get(job_id))

    def get_by_remote_id(self, remote_id: str) -> Job:
        """The newest job carrying ``remote_id``. See `JobStore.get_by_remote_id`."""
        return self._run(self.store._ops.get_by_remote_id(remote_id))

    def list(
        self,
        *,
        owner_id: str | None = None,
        status: StatusFilter = None,
        kind: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first. See `JobStore.list`."""
        return self._run(self.store._ops.list(owner_id, status, kind, limit, before))

    def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult:
        """Judge and apply ``update`` in the caller's transaction. See `JobStore.apply`."""
        conn = self.connection
        if conn.dialect.name == "postgresql":
            transaction = conn.get_transaction()
            if transaction is not None and conn.info.get(_APPLIED_IN) is transaction:
                raise ValidationError(
                    "on PostgreSQL one transaction applies at most one update through "
                    "store.bind(connection): commit before the next"
                )
        result = self._run(self.store._ops.apply(job_id, update, delivery_id))
        if conn.dialect.name == "postgresql" and result.event is not None:
            conn.info[_APPLIED_IN] = conn.get_transaction()
        return result

    def stale(self, *, updated_before: datetime, limit: int = 100) -> builtins.list[Job]:
        """Non-terminal jobs last updated before ``updated_before``, oldest first."""
        return self._run(self.store._ops.stale(updated_before, limit))

    def events(self, *, after: int = 0, limit: int = 100) -> builtins.list[JobEvent]:
        """Outbox events with an id greater than ``after``, in order."""
        return self._run(self.store._ops.events(after, limit))

    def add_dead_letter(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        delivery_id: str | None = None,
        body: bytes = b"",
        reason: str = "not_found",
    ) -> DeadLetter:
        """Keep a delivery that named an unknown job. See `JobStore.add_dead_letter`."""
        steps = self.store._ops.add_dead_letter(job_id, update, delivery_id, body, reason)
        return self._run(steps)

    def dead_letters(
        self, *, job_id: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> builtins.list[DeadLetter]:
        """Kept deliveries, oldest first."""
        return self._run(self.store._ops.dead_letters(job_id, include_replayed, limit))

    def replay_dead_letter(self, dead_letter_id: int, *, job_id: str | None = None) -> ApplyResult:
        """Apply a kept delivery. See `JobStore.replay_dead_letter`."""
        return self._run(self.store._ops.replay_dead_letter(dead_letter_id, job_id))

    def close(self) -> None:
        """Nothing to release: the connection is the caller's."""


def _autocommit(conn: sa.Connection) -> bool:
    """Whether the driver connection commits each statement on its own."""
    driver = conn.connection.dbapi_connection
    if getattr(driver, "autocommit", None) is True:  # psycopg, sqlite3 (3.12+)
        return True
    # The stdlib sqlite3's autocommit before 3.12 (what SQLAlchemy's AUTOCOMMIT sets).
    return conn.dialect.name == "sqlite" and getattr(driver, "isolation_level", "") is None


def _rows(result: Any) -> Rows:
    if not result.returns_rows:
        return []
    keys = result.keys()
    return [dict(zip(keys, row, strict=True)) for row in result]
