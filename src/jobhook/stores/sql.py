"""SQL job stores on SQLAlchemy 2: SQLite (embedded default) and PostgreSQL.

The store is split by concern: `_statements` builds every statement once per store,
`_operations` writes each operation once as steps (it yields ``(statement,
parameters)`` and receives the rows), `_rows` maps rows to jobhook's values, `_errors`
maps database failures onto jobhook's errors, `_schema` holds the tables and the engine
set-up. This module holds the two thin shells, `SQLJobStore` and `AsyncSQLJobStore`,
which run those steps in one transaction on a sync or an async connection.

Every transition is decided inside the database by one guarded
``UPDATE … WHERE id = :id AND <lifecycle rules> RETURNING …``; the delivery id is
recorded with ``INSERT … ON CONFLICT DO NOTHING`` against a unique key; the outbox
event is written in the same transaction. Nothing reads a row in Python and writes it
back.
"""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, CursorResult, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from jobhook._models import (
    JSON,
    ApplyResult,
    DeadLetter,
    Job,
    JobEvent,
    JobUpdate,
)
from jobhook.stores._errors import DATABASE_ERRORS, create_engine_for, store_error
from jobhook.stores._group import (
    AsyncGroupCommit,
    GroupCommit,
    GroupStatements,
    check_group_commit,
)
from jobhook.stores._operations import Operations
from jobhook.stores._schema import (
    Tables,
    async_url,
    install_sqlite_pragmas,
    run_options,
    sync_url,
)
from jobhook.stores._sql_consumers import AsyncSQLConsumerMethods, SQLConsumerMethods
from jobhook.stores._steps import Counted, Rows, Steps, drive
from jobhook.stores._steps import Rollback as _Rollback
from jobhook.stores._threaded import SQLiteThreads, threads_for
from jobhook.stores.protocol import StatusFilter

__all__ = ["AsyncSQLJobStore", "SQLJobStore"]

if TYPE_CHECKING:
    from jobhook.stores._adopt import JobTable
    from jobhook.stores._bound import BoundSQLJobStore

T = TypeVar("T")


class SQLJobStore(SQLConsumerMethods):
    """A `JobStore` in a SQL database: SQLite (a file, WAL) or PostgreSQL (JSONB).

    ``url_or_engine`` is a URL (``sqlite:///jobs.db``, ``postgresql://…``; plain
    ``postgresql://`` uses psycopg 3) or an `Engine`. Thread-safe; every method is one
    transaction. Raises `StoreUnavailableError` when the database cannot be reached.
    Call `create_schema` once (idempotent), or manage `metadata` with Alembic.

    ``group_commit=True`` (PostgreSQL only, else `ValueError`): deliveries that arrive
    while another one commits are applied together, in one transaction and one commit
    (see the "Group commit" section of the stores documentation).
    ``job_table`` adopts the app's own table as the job table (see `JobTable`; sync
    store only): jobhook then adds only its side tables. Raises `ValidationError`
    naming the job fields that table has no column for.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        table_prefix: str = "jobhook_",
        create_schema: bool = False,
        group_commit: bool = False,
        job_table: JobTable | None = None,
    ) -> None:
        if isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
            self._owns_engine = False
        else:
            url = sync_url(url_or_engine)
            extra = "postgres" if url.get_backend_name() == "postgresql" else "all"
            self.engine = create_engine_for(sa.create_engine, url, extra)
            self._owns_engine = True
        install_sqlite_pragmas(self.engine)
        self._ops: Operations
        if job_table is None:
            self.tables = Tables(table_prefix)
            self._ops = Operations(self.tables, self.engine.dialect.name)
        else:
            from jobhook.stores._adopt import adopt

            try:
                self.tables, self._ops = adopt(self.engine, table_prefix, job_table)
            except DATABASE_ERRORS as exc:
                raise store_error(exc, self.engine.url) from exc
        self._standalone, self._transaction = run_options(
            self.engine.dialect.name, owned=self._owns_engine
        )
        self._group: GroupCommit | None = None
        if group_commit:
            check_group_commit(self.engine.dialect.name)
            self._group = GroupCommit(
                GroupStatements(self.tables),
                self._apply_alone,
                lambda steps: self._run(steps, standalone=True),
            )
        if create_schema:
            self.create_schema()

    def __repr__(self) -> str:
        return f"<SQLJobStore {self.engine.url.render_as_string(hide_password=True)!s}>"

    @property
    def metadata(self) -> sa.MetaData:
        """The tables' `MetaData`, for the app's own Alembic migrations."""
        return self.tables.metadata

    def bind(self, connection: sa.Connection) -> BoundSQLJobStore:
        """This store's operations on ``connection``, in the transaction the caller
        holds there: a job created through it commits or rolls back with the app's own
        rows. See `BoundSQLJobStore`; with an ORM ``Session``, pass
        ``session.connection()``."""
        from jobhook.stores._bound import BoundSQLJobStore

        return BoundSQLJobStore(self, connection)

    def create_schema(self) -> None:
        """Create the tables and indexes that do not exist yet (idempotent)."""
        try:
            with self.engine.begin() as conn:
                self.tables.create(conn)
        except DATABASE_ERRORS as exc:
            raise store_error(exc, self.engine.url) from exc

    def _run(self, steps: Steps[T], *, standalone: bool = False) -> T:
        """Run ``steps`` on a pooled connection (see `_run_on`)."""
        options = self._standalone if standalone else self._transaction
        try:
            with self.engine.connect() as conn:
                return _run_on(conn, steps, standalone, options)
        except DATABASE_ERRORS as exc:
            raise store_error(exc, self.engine.url) from exc

    def create(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job:
        """Create and commit a ``pending`` job. See `JobStore.create`."""
        steps = self._ops.create(input, kind, owner_id, job_id, metadata)
        return self._run(steps, standalone=True)

    def get(self, job_id: str) -> Job:
        """Return the job. Raises `JobNotFoundError`."""
        return self._run(self._ops.get(job_id), standalone=True)

    def get_by_remote_id(self, remote_id: str) -> Job:
        """The newest job carrying ``remote_id``. See `JobStore.get_by_remote_id`."""
        steps = self._ops.get_by_remote_id(remote_id)
        return self._run(steps, standalone=True)

    def list(
        self,
        *,
        owner_id: str | None = None,
        status: StatusFilter = None,
        kind: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first, ``limit`` at a time; ``before`` is the previous page's last id."""
        steps = self._ops.list(owner_id, status, kind, limit, before)
        return self._run(steps)

    def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult:
        """Judge and apply ``update`` in one transaction. See `JobStore.apply`."""
        if self._group is not None:
            return self._group.apply(job_id, update, delivery_id)
        return self._apply_alone(job_id, update, delivery_id)

    def _apply_alone(self, job_id: str, update: JobUpdate, delivery_id: str | None) -> ApplyResult:
        steps = self._ops.apply(job_id, update, delivery_id)
        return self._run(steps, standalone=self._ops.apply_stands_alone)

    def stale(self, *, updated_before: datetime, limit: int = 100) -> builtins.list[Job]:
        """Non-terminal jobs last updated before ``updated_before``, oldest first."""
        return self._run(self._ops.stale(updated_before, limit), standalone=True)

    def events(
        self, *, after: int = 0, limit: int = 100, job_id: str | None = None
    ) -> builtins.list[JobEvent]:
        """Outbox events with an id greater than ``after``, in order (only ``job_id``'s
        when given)."""
        steps = self._ops.events(after, limit, job_id)
        return self._run(steps, standalone=True)

    def add_dead_letter(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        delivery_id: str | None = None,
        body: bytes = b"",
        reason: str = "not_found",
    ) -> DeadLetter:
        """Keep a delivery that named an unknown job."""
        steps = self._ops.add_dead_letter(job_id, update, delivery_id, body, reason)
        return self._run(steps, standalone=True)

    def dead_letters(
        self, *, job_id: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> builtins.list[DeadLetter]:
        """Kept deliveries, oldest first (not yet replayed ones unless asked)."""
        steps = self._ops.dead_letters(job_id, include_replayed, limit)
        return self._run(steps)

    def replay_dead_letter(self, dead_letter_id: int, *, job_id: str | None = None) -> ApplyResult:
        """Apply a kept delivery under its delivery id (to ``job_id`` when given).
        Raises `DeadLetterNotFoundError`."""
        return self._run(self._ops.replay_dead_letter(dead_letter_id, job_id))

    def close(self) -> None:
        """Close the engine's connections (only if this store created the engine)."""
        if self._owns_engine:
            self.engine.dispose()


def _rows(result: CursorResult[Any]) -> Rows:
    if not result.returns_rows:
        return Counted(result)
    keys = result.keys()
    return [dict(zip(keys, row, strict=True)) for row in result]


def _drive(conn: sa.Connection, steps: Steps[T]) -> T:
    """Drive ``steps`` on a `Connection` (the caller owns the transaction)."""
    return drive(steps, lambda statement, params: _rows(conn.execute(statement, params)))


def _run_on(conn: sa.Connection, steps: Steps[T], standalone: bool, options: dict[str, Any]) -> T:
    """Run ``steps`` on ``conn`` through SQLAlchemy's `Connection.execute`, for the sync
    store and, inside ``AsyncConnection.run_sync``, the async one.

    ``standalone``: every statement the steps yield is atomic on its own, so they run
    without ``BEGIN`` and ``COMMIT`` (see `run_options`, which gives ``options``); a
    `_Rollback` they raise then comes before anything was written. Otherwise they run
    in one transaction (on SQLite, one that takes the write lock at its first write).
    """
    if options:
        conn.execution_options(**options)
    if standalone:
        try:
            value = _drive(conn, steps)
        except _Rollback as rollback:
            skipped: T = rollback.value
            return skipped
        conn.commit()  # SQLite: its write; autocommit: sends nothing
        return value
    try:
        with conn.begin():
            return _drive(conn, steps)
    except _Rollback as rollback:
        result: T = rollback.value
        return result


class AsyncSQLJobStore(AsyncSQLConsumerMethods):
    """The async twin of `SQLJobStore`: aiosqlite for SQLite, psycopg 3 (or asyncpg, if
    the URL says ``postgresql+asyncpg``) for PostgreSQL. Same tables, same statements.

    ``group_commit=True`` as in `SQLJobStore`, for the tasks of one event loop."""

    def __init__(
        self,
        url_or_engine: str | URL | AsyncEngine,
        *,
        table_prefix: str = "jobhook_",
        group_commit: bool = False,
    ) -> None:
        self._threads: SQLiteThreads | None = None
        if isinstance(url_or_engine, AsyncEngine):
            self.engine = url_or_engine
            self._owns_engine = False
        else:
            url = async_url(url_or_engine)
            self.engine = create_engine_for(create_async_engine, url, "async")
            self._owns_engine = True
            self._threads = threads_for(url, self._sync_engine)
        install_sqlite_pragmas(self.engine.sync_engine)
        self.tables = Tables(table_prefix)
        self._ops = Operations(self.tables, self.engine.dialect.name)
        self._standalone, self._transaction = run_options(
            self.engine.dialect.name, owned=self._owns_engine
        )
        self._group: AsyncGroupCommit | None = None
        if group_commit:
            check_group_commit(self.engine.dialect.name)
            self._group = AsyncGroupCommit(
                GroupStatements(self.tables),
                self._apply_alone,
                lambda steps: self._run(steps, standalone=True),
            )

    def __repr__(self) -> str:
        return f"<AsyncSQLJobStore {self.engine.url.render_as_string(hide_password=True)!s}>"

    @property
    def metadata(self) -> sa.MetaData:
        """The tables' `MetaData`, for the app's own Alembic migrations."""
        return self.tables.metadata

    async def create_schema(self) -> None:
        """Create the tables and indexes that do not exist yet (idempotent)."""
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(self.tables.create)
        except DATABASE_ERRORS as exc:
            raise store_error(exc, self.engine.url) from exc

    @staticmethod
    def _sync_engine(url: URL) -> sa.Engine:
        engine = create_engine_for(sa.create_engine, url, "all")
        install_sqlite_pragmas(engine)
        return engine

    async def _run(self, steps: Steps[T], *, standalone: bool = False) -> T:
        """Run ``steps`` on a pooled connection: the sync store's `_run_on`, in one
        ``run_sync`` (one switch into SQLAlchemy's greenlet, not one per statement), or,
        for a SQLite file on the store's own engine, in a worker thread on the stdlib
        driver (see `jobhook.stores._threaded`)."""
        options = self._standalone if standalone else self._transaction
        try:
            if self._threads is not None:
                return await self._threads.run(_run_on, steps, standalone, options)
            async with self.engine.connect() as conn:
                result: T = await conn.run_sync(_run_on, steps, standalone, options)
                return result
        except DATABASE_ERRORS as exc:
            raise store_error(exc, self.engine.url) from exc

    async def create(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job:
        """Create and commit a ``pending`` job. See `JobStore.create`."""
        steps = self._ops.create(input, kind, owner_id, job_id, metadata)
        return await self._run(steps, standalone=True)

    async def get(self, job_id: str) -> Job:
        """Return the job. Raises `JobNotFoundError`."""
        return await self._run(self._ops.get(job_id), standalone=True)

    async def get_by_remote_id(self, remote_id: str) -> Job:
        """The newest job carrying ``remote_id``. See `JobStore.get_by_remote_id`."""
        steps = self._ops.get_by_remote_id(remote_id)
        return await self._run(steps, standalone=True)

    async def list(
        self,
        *,
        owner_id: str | None = None,
        status: StatusFilter = None,
        kind: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first, ``limit`` at a time; ``before`` is the previous page's last id."""
        steps = self._ops.list(owner_id, status, kind, limit, before)
        return await self._run(steps)

    async def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult:
        """Judge and apply ``update`` in one transaction. See `JobStore.apply`."""
        if self._group is not None:
            return await self._group.apply(job_id, update, delivery_id)
        return await self._apply_alone(job_id, update, delivery_id)

    async def _apply_alone(
        self, job_id: str, update: JobUpdate, delivery_id: str | None
    ) -> ApplyResult:
        steps = self._ops.apply(job_id, update, delivery_id)
        return await self._run(steps, standalone=self._ops.apply_stands_alone)

    async def stale(self, *, updated_before: datetime, limit: int = 100) -> builtins.list[Job]:
        """Non-terminal jobs last updated before ``updated_before``, oldest first."""
        steps = self._ops.stale(updated_before, limit)
        return await self._run(steps, standalone=True)

    async def events(
        self, *, after: int = 0, limit: int = 100, job_id: str | None = None
    ) -> builtins.list[JobEvent]:
        """Outbox events with an id greater than ``after``, in order (only ``job_id``'s
        when given)."""
        steps = self._ops.events(after, limit, job_id)
        return await self._run(steps, standalone=True)

    async def add_dead_letter(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        delivery_id: str | None = None,
        body: bytes = b"",
        reason: str = "not_found",
    ) -> DeadLetter:
        """Keep a delivery that named an unknown job."""
        steps = self._ops.add_dead_letter(job_id, update, delivery_id, body, reason)
        return await self._run(steps, standalone=True)

    async def dead_letters(
        self, *, job_id: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> builtins.list[DeadLetter]:
        """Kept deliveries, oldest first (not yet replayed ones unless asked)."""
        steps = self._ops.dead_letters(job_id, include_replayed, limit)
        return await self._run(steps)

    async def replay_dead_letter(
        self, dead_letter_id: int, *, job_id: str | None = None
    ) -> ApplyResult:
        """Apply a kept delivery under its delivery id (to ``job_id`` when given).
        Raises `DeadLetterNotFoundError`."""
        steps = self._ops.replay_dead_letter(dead_letter_id, job_id)
        return await self._run(steps)

    async def close(self) -> None:
        """Close the engine's connections (only if this store created the engine)."""
        if self._threads is not None:
            await self._threads.close()
        if self._owns_engine:
            await self.engine.dispose()
