"""The SQL schema: six tables under one prefix, and the engine settings they need."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, Engine, make_url

from jobhook._convert import dumps, loads
from jobhook._models import JobStatus

__all__ = ["Tables", "engine_options", "install_sqlite_pragmas", "sync_url"]

_NON_TERMINAL = tuple(s.value for s in JobStatus if not s.terminal)
_ID = sa.String(255)
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)
# INTEGER PRIMARY KEY is SQLite's rowid (autoincrementing); BIGINT identity elsewhere.
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


class Tables:
    """The jobhook tables, named ``{prefix}jobs``, ``{prefix}deliveries``,
    ``{prefix}events``, ``{prefix}dead_letters``, ``{prefix}consumers`` and
    ``{prefix}parked_events``, in their own `MetaData`."""

    def __init__(self, prefix: str = "jobhook_") -> None:
        if not prefix.replace("_", "").isalnum() and prefix:
            raise ValueError(f"table_prefix must be letters, digits and underscores: {prefix!r}")
        self.prefix = prefix
        self.metadata = sa.MetaData()
        non_terminal = sa.text("status IN ({})".format(", ".join(f"'{s}'" for s in _NON_TERMINAL)))
        self.jobs = sa.Table(
            f"{prefix}jobs",
            self.metadata,
            sa.Column("id", _ID, primary_key=True),
            sa.Column("kind", sa.String(255), nullable=False),
            sa.Column("owner_id", _ID, nullable=True),
            sa.Column("input", _JSON, nullable=True),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("progress", sa.Float, nullable=True),
            sa.Column("output", _JSON, nullable=True),
            sa.Column("error_code", sa.String(255), nullable=True),
            sa.Column("error_message", sa.Text, nullable=True),
            sa.Column("remote_id", sa.String(255), nullable=True),
            sa.Column("sequence", sa.BigInteger, nullable=True),
            sa.Column("metadata", _JSON, nullable=False),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("created_at", _TIMESTAMP, nullable=False),
            sa.Column("updated_at", _TIMESTAMP, nullable=False),
            sa.Column("completed_at", _TIMESTAMP, nullable=True),
            sa.CheckConstraint(
                "status IN ({})".format(", ".join(f"'{s.value}'" for s in JobStatus)),
                name=f"ck_{prefix}jobs_status",
            ),
            sa.CheckConstraint(
                "progress IS NULL OR (progress >= 0 AND progress <= 100)",
                name=f"ck_{prefix}jobs_progress",
            ),
        )
        jobs = self.jobs
        # list(owner_id=...) newest first, and list() without an owner.
        sa.Index(f"ix_{prefix}jobs_owner_created", jobs.c.owner_id, jobs.c.created_at, jobs.c.id)
        sa.Index(f"ix_{prefix}jobs_created", jobs.c.created_at, jobs.c.id)
        # stale(): only non-terminal jobs are ever looked for, so index only those.
        sa.Index(
            f"ix_{prefix}jobs_stale",
            jobs.c.updated_at,
            postgresql_where=non_terminal,
            sqlite_where=non_terminal,
        )
        # get_by_remote_id(): equality on remote_id, newest first among jobs that share
        # one. Only jobs with a remote id (hosted backends) are indexed.
        has_remote_id = jobs.c.remote_id.is_not(None)
        sa.Index(
            f"ix_{prefix}jobs_remote_id",
            jobs.c.remote_id,
            jobs.c.created_at,
            jobs.c.id,
            postgresql_where=has_remote_id,
            sqlite_where=has_remote_id,
        )
        self.deliveries = sa.Table(
            f"{prefix}deliveries",
            self.metadata,
            sa.Column("id", sa.String(255), primary_key=True),
            sa.Column("job_id", _ID, nullable=False),
            sa.Column("received_at", _TIMESTAMP, nullable=False),
        )
        self.events = sa.Table(
            f"{prefix}events",
            self.metadata,
            sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
            sa.Column("job_id", _ID, nullable=False),
            sa.Column("owner_id", _ID, nullable=True),
            sa.Column("kind", sa.String(255), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("progress", sa.Float, nullable=True),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("delivery_id", sa.String(255), nullable=True),
            sa.Column("created_at", _TIMESTAMP, nullable=False),
        )
        self.dead_letters = sa.Table(
            f"{prefix}dead_letters",
            self.metadata,
            sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
            sa.Column("job_id", _ID, nullable=False, index=True),
            sa.Column("delivery_id", sa.String(255), nullable=True),
            sa.Column("update", _JSON, nullable=False),
            sa.Column("body", sa.LargeBinary, nullable=False),
            sa.Column("reason", sa.String(255), nullable=False),
            sa.Column("received_at", _TIMESTAMP, nullable=False),
            sa.Column("replayed_at", _TIMESTAMP, nullable=True),
        )
        # One letter per delivery id: a sender retrying a 404 adds nothing (NULLs, for
        # letters kept without an id, do not collide).
        sa.Index(f"ux_{prefix}dead_letters_delivery", self.dead_letters.c.delivery_id, unique=True)
        # Durable outbox consumers: a position and a lease per name (OutboxConsumer).
        self.consumers = sa.Table(
            f"{prefix}consumers",
            self.metadata,
            sa.Column("name", sa.String(255), primary_key=True),
            sa.Column("position", sa.BigInteger, nullable=False),
            sa.Column("owner", sa.String(255), nullable=True),
            sa.Column("lease_expires_at", _TIMESTAMP, nullable=True),
            sa.Column("updated_at", _TIMESTAMP, nullable=False),
        )
        # Events a consumer's handler kept failing on, kept whole (pruning the outbox
        # leaves them), once per consumer and event.
        self.parked = sa.Table(
            f"{prefix}parked_events",
            self.metadata,
            sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
            sa.Column("consumer", sa.String(255), nullable=False),
            sa.Column("event_id", sa.BigInteger, nullable=False),
            sa.Column("event", _JSON, nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("error", sa.Text, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("parked_at", _TIMESTAMP, nullable=False),
        )
        sa.Index(
            f"ux_{prefix}parked_events_event",
            self.parked.c.consumer,
            self.parked.c.event_id,
            unique=True,
        )

    @property
    def notify_channel(self) -> str:
        """The PostgreSQL channel the events table's trigger notifies on each insert."""
        return f"{self.prefix}events"

    def create(self, conn: sa.Connection) -> None:
        """Create what does not exist yet: tables, and indexes added to existing tables
        since they were made (idempotent)."""
        self.metadata.create_all(conn, checkfirst=True)
        for table in self.metadata.sorted_tables:
            for index in table.indexes:
                index.create(conn, checkfirst=True)
        if conn.dialect.name == "postgresql":
            self._create_notify_trigger(conn)

    def _create_notify_trigger(self, conn: sa.Connection) -> None:
        """PostgreSQL: a statement-level trigger that wakes LISTENing consumers when
        events commit (NOTIFY is delivered at commit), so the apply statement itself
        stays as it is. One notification per inserting statement, coalesced by the
        server within a transaction; the payload is empty (consumers read the outbox)."""
        name = f"{self.prefix}events_notify"
        # Where the tables went: a schema_translate_map on the connection may move them.
        translate = conn.get_execution_options().get("schema_translate_map") or {}
        schema = translate.get(self.events.schema, self.events.schema)
        qualify = f'"{schema}".' if schema else ""
        conn.exec_driver_sql(
            f"CREATE OR REPLACE FUNCTION {qualify}{name}() RETURNS trigger LANGUAGE plpgsql "
            f"AS $$ BEGIN PERFORM pg_notify('{self.notify_channel}', ''); RETURN NULL; END $$"
        )
        exists = conn.execute(
            sa.text("SELECT 1 FROM pg_trigger WHERE tgname = :name AND tgrelid = to_regclass(:t)"),
            {"name": name, "t": f"{qualify}{self.events.name}"},
        ).first()
        if exists is None:
            conn.exec_driver_sql(
                f"CREATE TRIGGER {name} AFTER INSERT ON {qualify}{self.events.name} "
                f"FOR EACH STATEMENT EXECUTE FUNCTION {qualify}{name}()"
            )


def sync_url(url: str | URL) -> URL:
    """The URL with a driver jobhook installs: ``postgresql://`` means psycopg 3."""
    url = make_url(url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    return url


def async_url(url: str | URL) -> URL:
    """The URL with an async driver: aiosqlite for SQLite, psycopg 3 for PostgreSQL."""
    url = make_url(url)
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        url = url.set(drivername="sqlite+aiosqlite")
    elif url.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
    return url


__all__ += ["async_url"]


def engine_options(url: URL) -> dict[str, Any]:
    """Keyword arguments for ``create_engine`` / ``create_async_engine``."""
    options: dict[str, Any] = {"json_serializer": dumps, "json_deserializer": loads}
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            # One shared connection, or every connection would see its own empty database.
            options["poolclass"] = sa.pool.StaticPool
            options["connect_args"] = {"check_same_thread": False}
        else:
            # The busy timeout: how long a writer waits for the lock before giving up.
            options["connect_args"] = {"timeout": 30}
    return options


def _sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    # Hand transaction control to SQLAlchemy's "begin" event below: the stdlib driver
    # would otherwise start transactions lazily, as DEFERRED.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()


def _sqlite_begin(conn: sa.Connection) -> None:
    # Write transactions take the write lock up front (BEGIN IMMEDIATE). A DEFERRED
    # transaction that reads and then writes must upgrade its lock, and two of them
    # doing so at once deadlock: one gets SQLITE_BUSY at once, whatever the timeout.
    statement = "BEGIN IMMEDIATE" if conn.get_execution_options().get("jobhook_write") else "BEGIN"
    # Through SQLAlchemy (its pysqlite recipe), so that a writer blocked past the busy
    # timeout gets SQLAlchemy's OperationalError, which the store maps like any other.
    conn.exec_driver_sql(statement)


def install_sqlite_pragmas(engine: Engine) -> bool:
    """Make a SQLite engine safe for concurrent writers, once per engine and pool.

    WAL (readers never block the writer), a busy timeout, and explicit
    ``BEGIN IMMEDIATE`` for write transactions. An engine made with
    ``engine.execution_options(...)`` shares its parent's pool and listeners: what the
    parent has is not installed again (twice, every transaction would BEGIN twice).
    Returns whether anything was installed now.
    """
    if engine.dialect.name != "sqlite":
        return False
    installed = False
    # The dispatch collections include what the parent engine and its pool carry.
    if _sqlite_connect not in tuple(engine.pool.dispatch.connect):
        event.listen(engine, "connect", _sqlite_connect)
        installed = True
    if _sqlite_begin not in tuple(engine.dispatch.begin):
        event.listen(engine, "begin", _sqlite_begin)
        installed = True
    return installed


#: The listeners jobhook itself installs (the driver path may run beside them).
JOBHOOK_LISTENERS = (_sqlite_connect, _sqlite_begin)
__all__ += ["JOBHOOK_LISTENERS"]
