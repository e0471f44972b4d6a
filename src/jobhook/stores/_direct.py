"""Running a sync store's statements straight on the pooled DBAPI connection.

SQLAlchemy compiles and caches every statement well, but each ``Connection.execute``
still costs tens of microseconds of bookkeeping (execution context, events, result
metadata), and opening a `Connection` and its transaction costs as much again. For
the few statements on jobhook's hot paths (create, apply, get) that is more than the
database itself takes on SQLite, so a sync store runs them here instead:

- `Prepared` compiles a Core statement once for the engine's dialect and keeps what
  ``execute`` would work out each time: the SQL string, the order of its parameters
  and the type processors for its parameters and result columns (the same
  processors SQLAlchemy uses, so values go in and come out exactly as they do there).
- `DirectRunner` checks a connection out of the engine's own pool, runs a
  transaction's statements on one cursor, commits, and hands the connection back.
  Steps whose every statement is atomic alone run in autocommit instead, without
  ``BEGIN`` and ``COMMIT`` (a round trip each on PostgreSQL).
  Driver errors are wrapped as SQLAlchemy would wrap them (``IntegrityError``,
  ``OperationalError``, ...), and a connection the driver reports lost is invalidated,
  so callers see the same exceptions on both paths.

`DirectRunner.usable` is false when the engine has cursor-execute listeners (tracing
instrumentation) or ``echo`` on: then the store goes through `Connection.execute`, so
that what users attached to their engine keeps seeing every statement.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from functools import partial
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine

from jobhook.stores._schema import JOBHOOK_LISTENERS

T = TypeVar("T")
#: What every statement hands back to the step that yielded it: its rows, as mappings.
Rows = list[Mapping[str, Any]]
Step = tuple[sa.Executable, Mapping[str, Any] | None]
Steps = Generator[Step, Rows, T]

#: The drivers whose connections `DirectRunner` knows how to drive.
DRIVERS = frozenset({("sqlite", "pysqlite"), ("postgresql", "psycopg")})


class Rollback(Exception):
    """Raised by steps to end the transaction with a rollback and still return a value."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


def drive(steps: Steps[T], execute: Callable[[sa.Executable, Any], Rows]) -> T:
    """Run ``steps`` to their end, each statement through ``execute``; a constraint
    violation (SQLAlchemy's ``IntegrityError``) is thrown into the steps."""
    try:
        statement, params = next(steps)
        while True:
            try:
                rows = execute(statement, params)
            except sa_exc.IntegrityError as exc:
                statement, params = steps.throw(exc)
            else:
                statement, params = steps.send(rows)
    except StopIteration as stop:
        value: T = stop.value
        return value


class Prepared:
    """One Core statement compiled for one dialect, ready to run on a DBAPI cursor."""

    __slots__ = ("_binds", "_defaults", "_keys", "_positional", "_processors", "_types", "sql")

    def __init__(self, statement: sa.Executable, dialect: sa.Dialect) -> None:
        compiled: Any = statement.compile(dialect=dialect)  # type: ignore[attr-defined]
        if (
            compiled.literal_execute_params
            or compiled.post_compile_params
            or compiled.insert_prefetch
            or compiled.update_prefetch
        ):
            raise ValueError("statements with expanding or prefetched parameters can't be prepared")
        self.sql: str = compiled.string
        self._positional: bool = compiled.positional
        processors = compiled._bind_processors
        escaped = compiled.escaped_bind_names
        by_name = {name: bind for bind, name in compiled.bind_names.items()}
        # Values the statement carries itself (``version + 1``), under the names the
        # caller's parameters use.
        self._defaults = {
            bind.key: bind.effective_value for bind in by_name.values() if not bind.required
        }
        order = compiled.positiontup if self._positional else list(by_name)
        #: (caller's key, the name the driver wants, bind processor) in driver order.
        self._binds: list[tuple[str, str, Callable[[Any], Any] | None]] = [
            (by_name[name].key, escaped.get(name, name), processors.get(name)) for name in order
        ]
        self._keys = [entry.keyname for entry in compiled._result_columns]
        self._types = [entry.type for entry in compiled._result_columns]
        self._processors: list[tuple[int, Callable[[Any], Any]]] | None = None

    def parameters(self, params: Mapping[str, Any] | None) -> Any:
        """The parameters in the form the driver takes: a list or a dict."""
        values = {**self._defaults, **params} if params else self._defaults
        try:
            if self._positional:
                return [
                    process(values[key]) if process else values[key]
                    for key, _, process in self._binds
                ]
            return {
                name: process(values[key]) if process else values[key]
                for key, name, process in self._binds
            }
        except KeyError as missing:
            raise sa_exc.InvalidRequestError(
                f"A value is required for bind parameter {missing.args[0]!r}"
            ) from None

    def rows(self, cursor: Any, dialect: sa.Dialect) -> Rows:
        """The cursor's rows as mappings, through the result columns' processors."""
        if not self._keys:
            return []  # neither a SELECT nor RETURNING
        processors = self._processors
        if processors is None:
            # As SQLAlchemy does: a processor may depend on the driver's column type.
            # (Read the description once: psycopg builds it anew on every access.)
            description = cursor.description
            processors = self._processors = [
                (i, process)
                for i, (type_, column) in enumerate(zip(self._types, description, strict=True))
                if (process := type_._cached_result_processor(dialect, column[1])) is not None
            ]
        keys = self._keys
        rows: Rows = []
        for row in cursor.fetchall():
            values = list(row)
            for i, process in processors:
                values[i] = process(values[i])
            rows.append(dict(zip(keys, values, strict=True)))
        return rows


class DirectRunner:
    """Runs steps on a pooled DBAPI connection of ``engine``: in one transaction, or
    statement by statement in autocommit when each statement is atomic alone."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect = engine.dialect
        self._sqlite = engine.dialect.name == "sqlite"
        self._prepared: dict[int, tuple[sa.Executable, Prepared]] = {}
        self._supported = (engine.dialect.name, engine.dialect.driver) in DRIVERS
        dbapi = engine.dialect.loaded_dbapi
        self._error: type[Exception] = dbapi.Error
        self._integrity_error: type[Exception] = dbapi.IntegrityError

    @property
    def usable(self) -> bool:
        """Whether statements may bypass `Connection.execute` right now: only when that
        changes nothing an app could see. Execution options that reshape statements
        (``schema_translate_map``), statement or transaction listeners the app added
        (tracing, ``begin``/``commit`` hooks) and ``echo`` send everything through
        SQLAlchemy instead."""
        dispatch = self.engine.dispatch
        return (
            self._supported
            and not self.engine.echo
            and not dispatch.before_cursor_execute
            and not dispatch.after_cursor_execute
            and not dispatch.before_execute
            and not dispatch.after_execute
            and all(fn in JOBHOOK_LISTENERS for fn in dispatch.begin)
            and not dispatch.commit
            and not dispatch.rollback
            and not self.engine.get_execution_options().get("schema_translate_map")
        )

    def prepared(self, statement: sa.Executable) -> Prepared:
        """The statement compiled for this engine, once. Only for statements a store
        builds once and keeps: the cache is keyed by the statement object."""
        entry = self._prepared.get(id(statement))
        if entry is None or entry[0] is not statement:
            entry = self._prepared[id(statement)] = (statement, Prepared(statement, self.dialect))
        return entry[1]

    def run(self, steps: Steps[T], *, write: bool, standalone: bool = False) -> T:
        """Drive ``steps`` in one transaction; raise SQLAlchemy's exceptions on failure.

        ``standalone``: every statement the steps yield is atomic on its own and they
        need no transaction around them (a single INSERT, or PostgreSQL's one-statement
        apply). They then run in the driver's autocommit mode: no BEGIN and no COMMIT,
        which on PostgreSQL are a network round trip each. A `Rollback` the steps
        raise in this mode must come before they wrote anything.
        """
        dbapi_error = self._error
        connection: Any = None
        cursor: Any = None
        sql: str | None = None
        ended = False  # no transaction is left open on the connection
        autocommit = False
        try:
            connection = self.engine.raw_connection()
            cursor = _cursor(connection)
            if standalone:
                if not self._sqlite:  # SQLite's driver is in autocommit mode already
                    connection.dbapi_connection.autocommit = autocommit = True
            elif self._sqlite:
                # Write transactions take the write lock up front (see _schema).
                sql = "BEGIN IMMEDIATE" if write else "BEGIN"
                cursor.execute(sql)
            try:
                value = drive(steps, partial(self._execute, cursor))
            except Rollback as rollback:
                sql = None
                if not standalone:
                    connection.rollback()
                ended = True
                result: T = rollback.value
                return result
            sql = None
            if not standalone:
                connection.commit()
            ended = True
            return value
        except dbapi_error as exc:
            lost = self._lost(exc, connection, cursor)
            raise sa_exc.DBAPIError.instance(
                sql, None, exc, dbapi_error, connection_invalidated=lost, dialect=self.dialect
            ) from exc
        except BaseException:
            self._abandon(connection)
            raise
        finally:
            if connection is not None:
                if autocommit:
                    ended = _end_autocommit(connection) and ended
                _check_in(connection, ended)

    def _execute(self, cursor: Any, statement: sa.Executable, params: Any) -> Rows:
        prepared = self.prepared(statement)
        try:
            cursor.execute(prepared.sql, prepared.parameters(params))
            return prepared.rows(cursor, self.dialect)
        except self._integrity_error as exc:
            # Wrapped as on the Core path: the step decides what it means (a duplicate
            # job id is JobExistsError).
            raise sa_exc.DBAPIError.instance(
                prepared.sql, None, exc, self._error, dialect=self.dialect
            ) from exc

    def _lost(self, exc: Exception, connection: Any, cursor: Any) -> bool:
        """Roll back after ``exc``; invalidate the connection if the driver lost it."""
        if connection is None:
            return False
        lost = self.dialect.is_disconnect(exc, connection.dbapi_connection, cursor)  # type: ignore[arg-type]
        if lost:
            # As `Connection` does on a disconnect: invalidate the whole pool, since
            # its other connections are most likely just as gone (a database restart),
            # so that one disconnect costs one failure, not one per pooled connection.
            self.engine.pool._invalidate(connection, exc)
        else:
            self._abandon(connection)
        return bool(lost)

    @staticmethod
    def _abandon(connection: Any) -> None:
        """Roll back what the transaction did; a connection that can't is invalidated."""
        if connection is None or not connection.is_valid:
            return
        try:
            connection.rollback()
        except Exception as exc:
            connection.invalidate(exc)


def _cursor(connection: Any) -> Any:
    """The pooled connection's cursor, made once and kept with it (a psycopg cursor
    costs tens of microseconds to make)."""
    dbapi_connection = connection.dbapi_connection
    kept = connection.info.get("jobhook_cursor")
    if kept is None or kept[0] is not dbapi_connection:
        kept = connection.info["jobhook_cursor"] = (dbapi_connection, connection.cursor())
    return kept[1]


def _check_in(connection: Any, ended: bool) -> None:
    """Hand the connection back to the pool. When this transaction already ended, tell
    the pool so, as `Connection` does, and it skips its reset-on-return rollback."""
    close_special = getattr(connection, "_close_special", None)
    if ended and close_special is not None:
        close_special(transaction_reset=True)
    else:
        connection.close()


def _end_autocommit(connection: Any) -> bool:
    """Put the connection back in transaction mode, as the pool hands it out; a
    connection that can't be is invalidated. Returns whether it could."""
    if not connection.is_valid:
        return False
    try:
        connection.dbapi_connection.autocommit = False
    except Exception as exc:
        connection.invalidate(exc)
        return False
    return True
