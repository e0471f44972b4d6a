"""Store fixtures: every test that takes ``store`` runs against every store.

``store`` always has the sync `JobStore` interface; async stores are wrapped in a
facade that runs each call on a private event loop, so one contract suite covers the
async twins too. PostgreSQL stores use ``JOBHOOK_TEST_POSTGRES_URL`` and a table prefix
of their own per test, dropped afterwards; ``async-postgres`` runs the async store on
psycopg 3, ``async-postgres-asyncpg`` on asyncpg (the same URL, its driver switched).
The ``-lent`` kinds run the store on an engine the app made and lends it, with
execution options (a tenant schema on PostgreSQL) and listeners.
``mariadb`` and ``async-mariadb`` (PyMySQL, asyncmy) do the same with
``JOBHOOK_TEST_MYSQL_URL``; on a MariaDB server the async kind connects with a
``mariadb://`` URL, so that both of the store's MySQL-family apply paths run.
The ``django-*`` kinds run `DjangoJobStore` on SQLite, PostgreSQL and MariaDB
(``JOBHOOK_TEST_MYSQL_URL``), Django being configured once per process (see
``tests/django_stores.py``).
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from jobhook import AsyncInMemoryJobStore, InMemoryJobStore

PG_URL = os.environ.get("JOBHOOK_TEST_POSTGRES_URL")
PG_SKIP_REASON = "PostgreSQL tests need JOBHOOK_TEST_POSTGRES_URL (e.g. postgresql://postgres@127.0.0.1:5432/test)"

MYSQL_URL = os.environ.get("JOBHOOK_TEST_MYSQL_URL")
MYSQL_SKIP_REASON = "MariaDB/MySQL tests need JOBHOOK_TEST_MYSQL_URL (e.g. mysql+pymysql://root@127.0.0.1:3306/test)"

STORE_KINDS = [
    "memory",
    "async-memory",
    "sqlite",
    "sqlite-lent",
    "async-sqlite",
    "postgres",
    "postgres-lent",
    "async-postgres",
    "async-postgres-asyncpg",
    "mariadb",
    "async-mariadb",
    "django-sqlite",
    "django-postgres",
    "django-mariadb",
]
SQL_KINDS = [kind for kind in STORE_KINDS if "memory" not in kind and "django" not in kind]


class SyncFacade:
    """Runs an async store's methods to completion, one event loop per store."""

    def __init__(self, store: Any) -> None:
        self.inner = store
        self.runner = asyncio.Runner()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if asyncio.iscoroutine(result):
                return self.runner.run(result)
            return result

        return call

    def close(self) -> None:
        self.runner.run(self.inner.close())
        self.runner.close()


def _wait_for_outbox(store: Any, url: str, prefix: str) -> Callable[[], None]:
    """Make ``store.events`` wait until every committed event is visible; return the
    function that releases what this needs.

    PostgreSQL readers see no outbox event newer than the oldest write transaction still
    open anywhere in the database (the events query in `jobhook.stores.sql`), so another
    session (another test run, a fuzz run) can hide an event a test has just written.
    Waiting until the newest committed event is below the oldest open transaction keeps
    the tests exact: nothing is waited for that has not committed.
    """
    engine = sa.create_engine(make_url(url).set(drivername="postgresql+psycopg"))
    caught_up = (
        f"SELECT coalesce(max(id), 0) < txid_snapshot_xmin(txid_current_snapshot()) * 1024 "
        f"FROM {prefix}events"
    )
    events = store.events

    def visible_events(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with engine.connect() as conn:
                # exec_driver_sql: tests that forbid Connection.execute may read events.
                if conn.exec_driver_sql(caught_up).scalar():
                    break
            time.sleep(0.01)
        return events(*args, **kwargs)

    store.events = visible_events
    return engine.dispose


def _drop_tables(url: str, prefix: str) -> None:
    from jobhook.stores.sql import SQLJobStore

    store = SQLJobStore(url, table_prefix=prefix)
    store.metadata.drop_all(store.engine)
    store.close()


def drop_holds(store: Any) -> None:
    """Drop the output keeper's ``{prefix}output_keeps`` table beside ``store``, on a
    database server (the store's own close drops only its tables; SQLite files go with
    ``tmp_path``)."""
    inner = getattr(store, "inner", store)
    tables = getattr(inner, "tables", None)
    backend = inner.engine.url.get_backend_name() if tables is not None else "sqlite"
    if backend == "sqlite":
        return
    driver = "psycopg" if backend == "postgresql" else "pymysql"
    engine = sa.create_engine(inner.engine.url.set(drivername=f"{backend}+{driver}"))
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {tables.prefix}output_keeps")
    engine.dispose()


def build_store(kind: str, tmp_path: Any) -> tuple[Any, Callable[[], None]]:
    """A fresh store of ``kind`` and a function that closes and removes it."""
    if kind == "memory":
        store: Any = InMemoryJobStore()
        return store, store.close
    if kind == "async-memory":
        facade = SyncFacade(AsyncInMemoryJobStore())
        return facade, facade.close
    if kind.startswith("django-"):
        from .django_stores import build_django_store

        return build_django_store(kind)
    if "postgres" in kind and not PG_URL:
        pytest.skip(PG_SKIP_REASON)
    if "mariadb" in kind:
        return _build_mysql_store(kind)
    from jobhook.stores.sql import AsyncSQLJobStore, SQLJobStore

    if "sqlite" in kind:
        url = f"sqlite:///{tmp_path / f'jobs-{uuid.uuid4().hex[:8]}.db'}"
        prefix = "jobhook_"
    else:
        assert PG_URL is not None
        url = PG_URL
        prefix = f"t{uuid.uuid4().hex[:10]}_"
    if kind.startswith("async-"):
        async_url: str | URL = url
        if kind.endswith("-asyncpg"):
            async_url = make_url(url).set(drivername="postgresql+asyncpg")
        facade = SyncFacade(AsyncSQLJobStore(async_url, table_prefix=prefix))
        facade.create_schema()
        release = _wait_for_outbox(facade, url, prefix) if "postgres" in kind else None

        def close_async() -> None:
            facade.close()
            if release is not None:
                release()
                # Dropped through the sync driver (psycopg), whatever the async one was.
                _drop_tables(url, prefix)

        return facade, close_async
    if kind.endswith("-lent"):
        return _lent_engine_store(kind, url, prefix)
    sync_store = SQLJobStore(url, table_prefix=prefix, create_schema=True)
    release_sync = _wait_for_outbox(sync_store, url, prefix) if "postgres" in kind else None

    def close_sync() -> None:
        sync_store.close()
        if release_sync is not None:
            release_sync()
            _drop_tables(url, prefix)

    return sync_store, close_sync


def _lent_engine_store(kind: str, url: str, prefix: str) -> tuple[Any, Callable[[], None]]:
    """A store on an engine the app made and lends, configured as apps configure theirs:
    execution options (on PostgreSQL, SQLAlchemy's multi-tenant ``schema_translate_map``
    into a schema of its own), a cursor listener (as tracing instrumentation adds), and
    transaction listeners."""
    from jobhook.stores.sql import SQLJobStore

    base = sa.create_engine(sa.engine.make_url(url).set(drivername=_sync_driver(url)))
    schema = None
    options: dict[str, Any] = {"logging_token": "app"}
    if "postgres" in kind:
        schema = f"s{uuid.uuid4().hex[:10]}"
        with base.begin() as conn:
            conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
        options["schema_translate_map"] = {None: schema}
    engine = base.execution_options(**options)
    seen: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda *args: None)
    sa.event.listen(engine, "begin", lambda conn: seen.append("begin"))
    sa.event.listen(engine, "commit", lambda conn: seen.append("commit"))
    store = SQLJobStore(engine, table_prefix=prefix, create_schema=True)
    release = None
    if schema is not None:
        release = _wait_for_outbox(store, url, f"{schema}.{prefix}")

    def close() -> None:
        store.close()
        if release is not None:
            release()
        if schema is not None:
            with base.begin() as conn:
                conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        base.dispose()

    return store, close


@functools.cache
def _mysql_server_is_mariadb() -> bool:
    from jobhook.stores._schema import sync_url

    assert MYSQL_URL is not None
    engine = sa.create_engine(sync_url(MYSQL_URL))
    with engine.connect() as conn:
        version = str(conn.exec_driver_sql("SELECT VERSION()").scalar())
    engine.dispose()
    return "mariadb" in version.lower()


def _build_mysql_store(kind: str) -> tuple[Any, Callable[[], None]]:
    """A MariaDB/MySQL store under a table prefix of its own, dropped when closed."""
    if not MYSQL_URL:
        pytest.skip(MYSQL_SKIP_REASON)
    from jobhook.stores._schema import sync_url
    from jobhook.stores.sql import AsyncSQLJobStore, SQLJobStore

    prefix = f"t{uuid.uuid4().hex[:10]}_"
    store: Any
    if kind.startswith("async-"):
        # On a MariaDB server, as a mariadb:// URL: MariaDB's own apply (INSERT …
        # RETURNING) runs here, the portable MySQL one in the sync kind.
        url = make_url(MYSQL_URL)
        if _mysql_server_is_mariadb():
            url = url.set(drivername="mariadb+asyncmy")
        store = SyncFacade(AsyncSQLJobStore(url, table_prefix=prefix))
    else:
        store = SQLJobStore(MYSQL_URL, table_prefix=prefix)
    store.create_schema()

    def close() -> None:
        store.close()
        engine = sa.create_engine(sync_url(MYSQL_URL))
        with engine.begin() as conn:
            store.tables.drop(conn)
        engine.dispose()

    return store, close


def _sync_driver(url: str) -> str:
    return "postgresql+psycopg" if "postgres" in url else sa.engine.make_url(url).drivername


@pytest.fixture(params=STORE_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(store_kind: str, tmp_path: Any) -> Iterator[Any]:
    """A fresh, empty store of every kind (sync interface)."""
    built, close = build_store(store_kind, tmp_path)
    yield built
    close()


@pytest.fixture
def make_store(tmp_path: Any) -> Iterator[Callable[[str], Any]]:
    """Build extra stores by kind; all are closed at teardown."""
    closers: list[Callable[[], None]] = []

    def make(kind: str) -> Any:
        built, close = build_store(kind, tmp_path)
        closers.append(close)
        return built

    yield make
    for close in reversed(closers):
        close()
