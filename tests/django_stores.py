"""Django configured once per test process, for the ``django-*`` store kinds.

Three ``DATABASES`` aliases: ``default`` (a SQLite file), ``postgres`` (a database of
its own made on ``JOBHOOK_TEST_POSTGRES_URL``'s server) and ``mariadb`` (likewise on
``JOBHOOK_TEST_MYSQL_URL``'s, with a binary collation), each migrated from empty and
dropped when the process ends. Tests get a `DjangoJobStore` on one alias, its tables
emptied.
"""

from __future__ import annotations

import atexit
import os
import tempfile
import time
import uuid
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

PG_URL = os.environ.get("JOBHOOK_TEST_POSTGRES_URL")
MYSQL_URL = os.environ.get("JOBHOOK_TEST_MYSQL_URL")
MYSQL_SKIP_REASON = "MariaDB/MySQL tests need JOBHOOK_TEST_MYSQL_URL (e.g. mysql+pymysql://root@127.0.0.1:3306/test)"
ALIASES = {"django-sqlite": "default", "django-postgres": "postgres", "django-mariadb": "mariadb"}
_configured: dict[str, Any] = {}


def _create_postgres_database(name: str) -> None:
    assert PG_URL is not None
    url = make_url(PG_URL).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE {name}")

    def drop() -> None:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        engine.dispose()

    atexit.register(drop)


def _postgres_database() -> dict[str, Any]:
    assert PG_URL is not None
    url = make_url(PG_URL)
    name = f"jobhook_dj_{uuid.uuid4().hex[:10]}"
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": name,
        "USER": url.username or "",
        "PASSWORD": url.password or "",
        "HOST": url.host or "",
        "PORT": str(url.port or ""),
    }


def _mysql_connect() -> dict[str, Any]:
    assert MYSQL_URL is not None
    url = make_url(MYSQL_URL)
    connect: dict[str, Any] = {
        "host": url.host,
        "port": url.port or 3306,
        "user": url.username or "root",
    }
    if url.password:
        connect["password"] = url.password
    return connect


def _create_mariadb_database(name: str) -> None:
    import pymysql

    connect = _mysql_connect()
    with pymysql.connect(**connect) as conn, conn.cursor() as cursor:
        cursor.execute(f"CREATE DATABASE {name} CHARACTER SET utf8mb4 COLLATE utf8mb4_bin")

    def drop() -> None:
        with pymysql.connect(**connect) as conn, conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name}")

    atexit.register(drop)


def _mariadb_database() -> dict[str, Any]:
    import pymysql

    # Django asks for mysqlclient; PyMySQL speaks the same protocol and API.
    pymysql.version_info = (2, 2, 1, "final", 0)
    pymysql.install_as_MySQLdb()
    connect = _mysql_connect()
    return {
        "ENGINE": "django.db.backends.mysql",
        "NAME": f"jobhook_dj_{uuid.uuid4().hex[:10]}",
        "USER": connect["user"],
        "PASSWORD": connect.get("password", ""),
        "HOST": connect["host"],
        "PORT": str(connect["port"]),
        "OPTIONS": {"charset": "utf8mb4"},
    }


SETTINGS: dict[str, Any] = {
    "SECRET_KEY": "only-for-tests",
    "USE_TZ": True,
    "ALLOWED_HOSTS": ["testserver"],
    "INSTALLED_APPS": [
        "django.contrib.admin",
        "django.contrib.auth",
        "django.contrib.contenttypes",
        "django.contrib.sessions",
        "django.contrib.messages",
        "jobhook.django",
    ],
    "MIDDLEWARE": [
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
    ],
    "TEMPLATES": [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "APP_DIRS": True,
            "OPTIONS": {
                "context_processors": [
                    "django.template.context_processors.request",
                    "django.contrib.auth.context_processors.auth",
                    "django.contrib.messages.context_processors.messages",
                ]
            },
        }
    ],
}


def setup_django() -> None:
    """Configure Django for this process (once). Each alias's database is made and
    migrated from empty when a store first uses it (`prepare`)."""
    if _configured:
        return
    import django
    from django.conf import settings

    sqlite = os.path.join(tempfile.mkdtemp(prefix="jobhook-django-"), "db.sqlite3")
    databases: dict[str, Any] = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": sqlite,
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL;",
            },
        }
    }
    if PG_URL:
        databases["postgres"] = _postgres_database()
    if MYSQL_URL:
        databases["mariadb"] = _mariadb_database()
    if settings.configured:
        raise RuntimeError("Django was configured before the django-* store kinds")
    settings.configure(DATABASES=databases, **SETTINGS)
    django.setup()
    _configured["databases"] = databases
    _configured["prepared"] = set()


def prepare(using: str) -> None:
    """Make ``using``'s database (PostgreSQL, MariaDB) and migrate it, once."""
    from django.core.management import call_command

    setup_django()
    if using in _configured["prepared"]:
        return
    name = _configured["databases"][using]["NAME"]
    if using == "postgres":
        _create_postgres_database(name)
    elif using == "mariadb":
        _create_mariadb_database(name)
    call_command("migrate", database=using, verbosity=0, interactive=False)
    _configured["prepared"].add(using)


def empty(using: str) -> None:
    """Empty jobhook's tables on ``using`` (the outbox counter row stays)."""
    from jobhook.django import models as m

    models = (m.Job, m.Delivery, m.Event, m.DeadLetter, m.Consumer, m.ParkedEvent, m.OutputKeep)
    for model in models:
        model.objects.using(using).all().delete()


def _wait_for_outbox(store: Any) -> None:
    """PostgreSQL: make ``store.events`` wait until every committed event is visible
    (another session's open transaction hides newer events; see conftest)."""
    from django.db import connections

    events = store.events

    def visible_events(*args: Any, **kwargs: Any) -> Any:
        deadline = time.monotonic() + 10
        with connections[store.using].cursor() as cursor:
            while time.monotonic() < deadline:
                cursor.execute(
                    "SELECT coalesce(max(id), 0) < "
                    "txid_snapshot_xmin(txid_current_snapshot()) * 65536 FROM jobhook_event"
                )
                if cursor.fetchone()[0]:
                    break
                time.sleep(0.01)
        return events(*args, **kwargs)

    store.events = visible_events


def build_django_store(kind: str) -> tuple[Any, Any]:
    """A `DjangoJobStore` of ``kind`` on emptied tables, and its closer."""
    from .conftest import PG_SKIP_REASON

    if kind == "django-postgres" and not PG_URL:
        pytest.skip(PG_SKIP_REASON)
    if kind == "django-mariadb" and not MYSQL_URL:
        pytest.skip(MYSQL_SKIP_REASON)
    pytest.importorskip("django")
    using = ALIASES[kind]
    prepare(using)
    from jobhook.django import DjangoJobStore

    empty(using)
    store = DjangoJobStore(using=using)
    if kind == "django-postgres":
        _wait_for_outbox(store)

    def close() -> None:
        empty(using)
        store.close()

    return store, close
