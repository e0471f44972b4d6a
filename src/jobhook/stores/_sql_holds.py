"""Holds in SQL: the ``{prefix}output_keeps`` table, its statements, and the sync and
async shells that run them (`SQLHolds`, `AsyncSQLHolds`).

`HoldsTable` has the table and every statement, each a function of a connection the
caller holds; the shells only open a connection (a transaction to write) and map
database errors onto jobhook's. The columns are those of the jobhook tables: JSON as
TEXT written by jobhook's own encoder on SQLite (JSONB on PostgreSQL), microsecond
``DATETIME(6)`` in UTC on MySQL and MariaDB, and there InnoDB, ``utf8mb4`` and a binary
collation, so that job ids compare as in the jobs table (``Job-1`` is not ``job-1``).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa

from jobhook._models import JSON, JobUpdate
from jobhook.stores._errors import DATABASE_ERRORS, store_error
from jobhook.stores._outputs import KEEPING, Hold, _changes, update_from_json, update_to_json
from jobhook.stores._rows import aware, utc
from jobhook.stores._schema import JSON_TYPE, MYSQL_TABLE_OPTIONS, TIMESTAMP_TYPE

if TYPE_CHECKING:  # the asyncio extension loads with the async store, not before
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["AsyncSQLHolds", "HoldsTable", "SQLHolds"]

T = TypeVar("T")

#: The hold fields `save` may change, as keyword arguments.
Changes = dict[str, Any]


def _at(value: datetime | None) -> datetime:
    # Reading: SQLite and MySQL hand back naive UTC, PostgreSQL the session's zone.
    found = aware(value)
    assert found is not None  # the timestamp columns are NOT NULL
    return found


class HoldsTable:
    """The ``{prefix}output_keeps`` table, in a `MetaData` of its own, and its
    statements, each run on a connection the caller holds."""

    def __init__(self, prefix: str) -> None:
        self.metadata = sa.MetaData()
        self.table = sa.Table(
            f"{prefix}output_keeps",
            self.metadata,
            sa.Column("job_id", sa.String(255), primary_key=True),
            sa.Column("delivery_id", sa.String(255), nullable=True),
            sa.Column("update", JSON_TYPE, nullable=False),
            sa.Column("files", JSON_TYPE, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("last_error", sa.Text, nullable=True),
            sa.Column("next_attempt_at", TIMESTAMP_TYPE, nullable=False),
            sa.Column("created_at", TIMESTAMP_TYPE, nullable=False),
            sa.Column("updated_at", TIMESTAMP_TYPE, nullable=False),
            sa.Column("dead_letter_id", sa.BigInteger, nullable=True),
            sa.Index(f"ix_{prefix}output_keeps_due", "state", "next_attempt_at"),
            **MYSQL_TABLE_OPTIONS,
        )
        table = self.table
        by_id = table.c.job_id == sa.bindparam("job_id")
        self._select = sa.select(table).where(by_id)
        self._taken = sa.select(table.c.job_id).where(by_id)
        self._insert = table.insert()
        self._due = (
            sa.select(table)
            .where(table.c.state == KEEPING, table.c.next_attempt_at <= sa.bindparam("now"))
            .order_by(table.c.created_at, table.c.job_id)
        )

    def create(self, conn: sa.Connection) -> None:
        self.metadata.create_all(conn, checkfirst=True)

    @staticmethod
    def _hold(row: Any) -> Hold:
        return Hold(
            job_id=row.job_id,
            delivery_id=row.delivery_id,
            update=update_from_json(row.update),
            files=list(row.files),
            state=row.state,
            attempts=row.attempts,
            last_error=row.last_error,
            next_attempt_at=_at(row.next_attempt_at),
            created_at=_at(row.created_at),
            updated_at=_at(row.updated_at),
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
        """Insert a hold; False when the job has one. A concurrent insert for the same
        job raises `IntegrityError` (the caller answers False as well)."""
        if conn.execute(self._taken, {"job_id": job_id}).first() is not None:
            return False
        now = utc(now)
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
        conn.execute(self._insert, row)
        return True

    def get(self, conn: sa.Connection, job_id: str) -> Hold | None:
        row = conn.execute(self._select, {"job_id": job_id}).first()
        return None if row is None else self._hold(row)

    def due(self, conn: sa.Connection, now: datetime, limit: int) -> list[Hold]:
        rows = conn.execute(self._due.limit(limit), {"now": utc(now)}).all()
        return [self._hold(row) for row in rows]

    def save(self, conn: sa.Connection, job_id: str, now: datetime, changes: Changes) -> None:
        values = dict(changes, updated_at=utc(now))
        if "next_attempt_at" in values:
            values["next_attempt_at"] = utc(values["next_attempt_at"])
        table = self.table
        conn.execute(table.update().where(table.c.job_id == job_id).values(**values))


class SQLHolds:
    """Holds in the ``{prefix}output_keeps`` table, on a `jobhook.SQLJobStore`'s engine.

    The table has its own `MetaData` (`metadata`), created by `create_schema`
    (idempotent); each method is one transaction through ``Connection.execute``.
    """

    def __init__(self, engine: sa.Engine, prefix: str = "jobhook_") -> None:
        self.engine = engine
        self._t = HoldsTable(prefix)
        self.metadata = self._t.metadata
        self.table = self._t.table

    def _connection(self, write: bool) -> AbstractContextManager[sa.Connection]:
        return self.engine.begin() if write else self.engine.connect()

    def _run(
        self, statements: Callable[[sa.Connection], T], *, write: bool, taken: T | None = None
    ) -> T:
        """Run ``statements`` on a connection (in a transaction to ``write``); a
        conflicting insert answers ``taken`` when given."""
        try:
            with self._connection(write) as conn:
                return statements(conn)
        except sa.exc.IntegrityError as exc:
            if taken is None:
                raise store_error(exc, self.engine.url) from exc
            return taken
        except DATABASE_ERRORS as exc:
            raise store_error(exc, self.engine.url) from exc

    def create_schema(self) -> None:
        """Create the table and its index when missing (idempotent)."""
        self._run(self._t.create, write=True)

    def add(
        self,
        job_id: str,
        delivery_id: str | None,
        update: JobUpdate,
        now: datetime,
        dead_letter_id: int | None = None,
    ) -> bool:
        return self._run(
            lambda conn: self._t.add(conn, job_id, delivery_id, update, now, dead_letter_id),
            write=True,
            taken=False,  # a concurrent hold for the same job won
        )

    def get(self, job_id: str) -> Hold | None:
        return self._run(lambda conn: self._t.get(conn, job_id), write=False)

    def due(self, now: datetime, limit: int) -> list[Hold]:
        return self._run(lambda conn: self._t.due(conn, now, limit), write=False)

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
        self._run(lambda conn: self._t.save(conn, job_id, now, changes), write=True)


class AsyncSQLHolds:
    """`SQLHolds` on a `jobhook.AsyncSQLJobStore`'s `AsyncEngine`: the same table and
    statements, each method one transaction (``AsyncConnection.run_sync``)."""

    def __init__(self, engine: AsyncEngine, prefix: str = "jobhook_") -> None:
        self.engine = engine
        self._t = HoldsTable(prefix)
        self.metadata = self._t.metadata
        self.table = self._t.table

    def _connection(self, write: bool) -> AbstractAsyncContextManager[AsyncConnection]:
        return self.engine.begin() if write else self.engine.connect()

    async def _run(
        self, statements: Callable[[sa.Connection], T], *, write: bool, taken: T | None = None
    ) -> T:
        """`SQLHolds._run`, awaited."""
        try:
            async with self._connection(write) as conn:
                result: T = await conn.run_sync(statements)
                return result
        except sa.exc.IntegrityError as exc:
            if taken is None:
                raise store_error(exc, self.engine.url) from exc
            return taken
        except DATABASE_ERRORS as exc:
            raise store_error(exc, self.engine.url) from exc

    async def create_schema(self) -> None:
        """Create the table and its index when missing (idempotent)."""
        await self._run(self._t.create, write=True)

    async def add(
        self,
        job_id: str,
        delivery_id: str | None,
        update: JobUpdate,
        now: datetime,
        dead_letter_id: int | None = None,
    ) -> bool:
        return await self._run(
            lambda conn: self._t.add(conn, job_id, delivery_id, update, now, dead_letter_id),
            write=True,
            taken=False,  # a concurrent hold for the same job won
        )

    async def get(self, job_id: str) -> Hold | None:
        return await self._run(lambda conn: self._t.get(conn, job_id), write=False)

    async def due(self, now: datetime, limit: int) -> list[Hold]:
        return await self._run(lambda conn: self._t.due(conn, now, limit), write=False)

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
        await self._run(lambda conn: self._t.save(conn, job_id, now, changes), write=True)
