"""The SQL schema: six tables under one prefix, and the engine settings they need."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.dialects import mysql
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import URL, Engine, make_url

from jobhook._convert import dumps, loads
from jobhook._models import JobStatus

__all__ = [
    "JSON_TYPE",
    "MYSQL_DIALECTS",
    "MYSQL_TABLE_OPTIONS",
    "TIMESTAMP_TYPE",
    "Tables",
    "engine_options",
    "install_sqlite_pragmas",
    "sync_url",
]

_NON_TERMINAL = tuple(s.value for s in JobStatus if not s.terminal)
_ID = sa.String(255)


class _SQLiteJSON(sa.TypeDecorator[Any]):
    """SQLite's JSON column: JSON text in a ``TEXT`` column, written and read by
    jobhook's own encoder and decoder.

    SQLite gives a column declared ``JSON`` NUMERIC affinity, which turns a stored JSON
    text that is a bare number (``0``, ``1.5``, ``12345678901234567890``) into an
    INTEGER or REAL: the JSON text is lost and a large number loses digits. TEXT
    affinity keeps the text exactly as written, and the engine's own
    ``json_serializer`` (an engine the app lends may have its own) plays no part, so
    every store reads values back alike.
    """

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Any) -> str:
        return dumps(value)

    def process_result_value(self, value: Any, dialect: Any) -> Any:
        return None if value is None else loads(value)


_JSON = sa.JSON().with_variant(JSONB(), "postgresql").with_variant(_SQLiteJSON(), "sqlite")
#: The dialect names SQLAlchemy gives MySQL and MariaDB (``mariadb://`` URLs).
MYSQL_DIALECTS = ("mysql", "mariadb")
# MySQL's DATETIME keeps whole seconds unless told otherwise; no zone (UTC is written,
# and `_rows.aware` marks it UTC on the way back, as on SQLite).
_TIMESTAMP = sa.DateTime(timezone=True).with_variant(mysql.DATETIME(fsp=6), *MYSQL_DIALECTS)
# MySQL's FLOAT is single precision: 40.1 would come back as 40.099998.
_FLOAT = sa.Float().with_variant(mysql.DOUBLE(), *MYSQL_DIALECTS)
# MySQL's BLOB holds 64 KiB; a kept webhook body may be larger.
_BODY = sa.LargeBinary().with_variant(mysql.LONGBLOB(), *MYSQL_DIALECTS)
# INTEGER PRIMARY KEY is SQLite's rowid (autoincrementing); BIGINT identity elsewhere.
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# MySQL tables: InnoDB, utf8mb4 (every character a JSON string can hold), and a binary
# collation, so that ids compare as they do elsewhere ("Job-1" is not "job-1").
_MYSQL_TABLE: dict[str, Any] = {
    f"{dialect}_{key}": value
    for dialect in MYSQL_DIALECTS
    for key, value in (("engine", "InnoDB"), ("charset", "utf8mb4"), ("collate", "utf8mb4_bin"))
}

#: The column types and MySQL table options of every jobhook table, for the tables
#: kept beside them (the output keeper's holds, `jobhook.stores._sql_holds`).
JSON_TYPE, TIMESTAMP_TYPE, MYSQL_TABLE_OPTIONS = _JSON, _TIMESTAMP, _MYSQL_TABLE


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
            sa.Column("progress", _FLOAT, nullable=True),
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
            **_MYSQL_TABLE,
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
            **_MYSQL_TABLE,
        )
        self.events = sa.Table(
            f"{prefix}events",
            self.metadata,
            sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
            sa.Column("job_id", _ID, nullable=False),
            sa.Column("owner_id", _ID, nullable=True),
            sa.Column("kind", sa.String(255), nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("progress", _FLOAT, nullable=True),
            sa.Column("version", sa.Integer, nullable=False),
            sa.Column("delivery_id", sa.String(255), nullable=True),
            sa.Column("created_at", _TIMESTAMP, nullable=False),
            **_MYSQL_TABLE,
        )
        self.dead_letters = sa.Table(
            f"{prefix}dead_letters",
            self.metadata,
            sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
            sa.Column("job_id", _ID, nullable=False, index=True),
            sa.Column("delivery_id", sa.String(255), nullable=True),
            sa.Column("update", _JSON, nullable=False),
            sa.Column("body", _BODY, nullable=False),
            sa.Column("reason", sa.String(255), nullable=False),
            sa.Column("received_at", _TIMESTAMP, nullable=False),
            sa.Column("replayed_at", _TIMESTAMP, nullable=True),
            **_MYSQL_TABLE,
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
            **_MYSQL_TABLE,
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
            **_MYSQL_TABLE,
        )
        sa.Index(
            f"ux_{prefix}parked_events_event",
            self.parked.c.consumer,
            self.parked.c.event_id,
            unique=True,
        )
        # MySQL/MariaDB only: the one-row counter that hands out outbox event ids in
        # commit order (see `jobhook.stores._mysql`). Kept out of `metadata`: the other
        # databases order their outbox without it.
        self.event_ids = sa.Table(
            f"{prefix}event_ids",
            sa.MetaData(),
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
            sa.Column("last_id", sa.BigInteger, nullable=False),
            **_MYSQL_TABLE,
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
        if conn.dialect.name in MYSQL_DIALECTS:
            self.event_ids.create(conn, checkfirst=True)
            # Its one row, seeded past any event already written; kept if it exists.
            seed = sa.select(sa.literal(1), sa.func.coalesce(sa.func.max(self.events.c.id), 0))
            conn.execute(
                sa.insert(self.event_ids).prefix_with("IGNORE").from_select(["id", "last_id"], seed)
            )
        if conn.dialect.name == "postgresql":
            self._create_notify_trigger(conn)

    def drop(self, conn: sa.Connection) -> None:
        """Drop every jobhook table under this prefix that exists (for tests and tools)."""
        self.event_ids.drop(conn, checkfirst=True)
        self.metadata.drop_all(conn, checkfirst=True)

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
    """The URL with a driver jobhook installs: ``postgresql://`` means psycopg 3,
    ``mysql://`` and ``mariadb://`` mean PyMySQL."""
    url = make_url(url)
    if url.drivername in ("postgresql", "postgres"):
        url = url.set(drivername="postgresql+psycopg")
    elif url.drivername in MYSQL_DIALECTS:
        url = url.set(drivername=f"{url.drivername}+pymysql")
    return url


def async_url(url: str | URL) -> URL:
    """The URL with an async driver: aiosqlite for SQLite, psycopg 3 for PostgreSQL,
    asyncmy for MySQL and MariaDB."""
    url = make_url(url)
    if url.drivername in ("sqlite", "sqlite+pysqlite"):
        url = url.set(drivername="sqlite+aiosqlite")
    elif url.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
        url = url.set(drivername="postgresql+psycopg")
    elif url.get_backend_name() in MYSQL_DIALECTS and url.get_driver_name() in (
        "pymysql",
        "mysqldb",
    ):
        # The sync default (PyMySQL), or no driver named: its async twin is asyncmy.
        url = url.set(drivername=f"{url.get_backend_name()}+asyncmy")
    return url


__all__ += ["async_url"]


def engine_options(url: URL) -> dict[str, Any]:
    """Keyword arguments for ``create_engine`` / ``create_async_engine``."""
    options: dict[str, Any] = {"json_serializer": dumps, "json_deserializer": loads}
    if url.get_backend_name() == "postgresql":
        # Most operations are one statement, atomic alone: the pool's connections stay
        # in autocommit, and the few multi-statement ones ask for a transaction.
        options["isolation_level"] = "AUTOCOMMIT"
    if url.get_backend_name() == "sqlite":
        if url.database in (None, "", ":memory:"):
            # One shared connection, or every connection would see its own empty database.
            options["poolclass"] = sa.pool.StaticPool
            options["connect_args"] = {"check_same_thread": False}
        else:
            # The busy timeout: how long a writer waits for the lock before giving up.
            options["connect_args"] = {"timeout": 30}
    elif url.get_backend_name() in MYSQL_DIALECTS:
        if "charset" not in url.query:
            options["connect_args"] = {"charset": "utf8mb4"}
        # The store ends every transaction it opens (commit, or rollback on error)
        # before it returns a connection, so the pool's own ROLLBACK on return would
        # only cost a round trip per operation. Only on engines the store creates.
        options["pool_reset_on_return"] = None
    return options


_CONFIGURED = "jobhook_sqlite"


def _sqlite_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
    """Configure each SQLite connection once, the first time it is checked out."""
    # The record's ``info`` lives as long as its driver connection: a new connection
    # after an invalidation is configured again.
    if record.info.get(_CONFIGURED):
        return
    # The stdlib driver opens a transaction itself before the first INSERT, UPDATE or
    # DELETE of a transaction (never for a SELECT). IMMEDIATE makes that transaction
    # take the write lock at once: a DEFERRED one that reads and then writes must
    # upgrade its lock, and two of them doing so at once deadlock (one gets SQLITE_BUSY
    # at once, whatever the timeout). Begun inside the statement's own execute, so a
    # writer blocked past the busy timeout gets SQLAlchemy's OperationalError, mapped
    # like any other, and no extra statement is sent.
    dbapi_connection.isolation_level = "IMMEDIATE"
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA busy_timeout=30000")
    finally:
        cursor.close()
    record.info[_CONFIGURED] = True


def install_sqlite_pragmas(engine: Engine) -> None:
    """Make a SQLite engine safe for concurrent writers: one ``checkout`` listener,
    installed once per engine and pool, that configures each connection the first time
    it is used: WAL (readers never block the writer), a busy timeout of 30 s, and write
    transactions that begin ``IMMEDIATE`` (the driver's ``isolation_level``).

    Connections the pool made before are configured as they are next checked out, so the
    pool is never disposed. An engine made with ``engine.execution_options(...)`` shares
    its parent's pool and listeners: what the parent has is not installed again.
    """
    if engine.dialect.name != "sqlite":
        return
    # The dispatch collection includes what the parent engine and its pool carry.
    if _sqlite_checkout not in tuple(engine.pool.dispatch.checkout):
        event.listen(engine, "checkout", _sqlite_checkout)


def run_options(dialect: str, *, owned: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """The execution options of a store's connections: for steps whose statements are
    each atomic alone, and for steps that need one transaction.

    On PostgreSQL, single statements (``create``, ``get``, the one-statement ``apply``)
    run in autocommit: no ``BEGIN`` and no ``COMMIT``, a network round trip each. An
    engine the store made is in autocommit already (`engine_options`), so nothing is
    switched per call; a lent engine's connection is switched through SQLAlchemy's
    public ``isolation_level`` and reset when it goes back to the pool. Transactions
    run at READ COMMITTED, the level the store's statements are written for, whatever
    the engine's default. SQLite needs neither (its driver begins a transaction only
    before a statement that writes).
    """
    if dialect != "postgresql":
        return {}, {}
    standalone = {} if owned else {"isolation_level": "AUTOCOMMIT"}
    return standalone, {"isolation_level": "READ COMMITTED"}


__all__ += ["run_options"]
