"""Versioned migrations of jobhook's SQLAlchemy schema, as Alembic revisions shipped in
the package (``pip install 'jobhook[migrations]'``).

`upgrade` brings a database to the newest revision: it creates the tables in an empty
database, and upgrades one whose tables ``create_schema()`` (or jobhook 0.1) made,
which it first records as the baseline revision. The revision reached is kept in
``{prefix}alembic_version``, apart from the app's own Alembic history. ``jobhook db
upgrade`` runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, Engine

__all__ = ["BASELINE", "current", "upgrade"]

#: The revision of the schema jobhook 0.1's ``create_schema()`` makes.
BASELINE = "0001_baseline"
_HERE = Path(__file__).resolve().parent


def _config(connection: sa.Connection, table_prefix: str) -> Any:
    try:
        from alembic.config import Config
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "jobhook's migrations need Alembic: pip install 'jobhook[migrations]'",
            name=exc.name,
        ) from exc
    config = Config()
    config.set_main_option("script_location", str(_HERE))
    config.attributes["connection"] = connection
    config.attributes["table_prefix"] = table_prefix
    return config


def _engine(url_or_engine: str | URL | Engine) -> tuple[Engine, bool]:
    if isinstance(url_or_engine, Engine):
        return url_or_engine, False
    from jobhook.stores._schema import sync_url

    return sa.create_engine(sync_url(url_or_engine)), True


def upgrade(
    url_or_engine: str | URL | Engine, *, table_prefix: str = "jobhook_", revision: str = "head"
) -> str | None:
    """Upgrade the database to ``revision`` (the newest by default) in one transaction
    where the database allows it; return the revision reached. Idempotent."""
    from alembic import command

    engine, owned = _engine(url_or_engine)
    try:
        if engine.dialect.name in ("mysql", "mariadb"):
            raise ValueError(
                "jobhook's migrations cover SQLite and PostgreSQL (the schemas released "
                "before MariaDB/MySQL support); on MariaDB/MySQL, create the tables with "
                "create_schema() (or jobhook db init)"
            )
        with engine.begin() as conn:
            config = _config(conn, table_prefix)
            inspector = sa.inspect(conn)
            if not inspector.has_table(f"{table_prefix}alembic_version") and inspector.has_table(
                f"{table_prefix}jobs"
            ):
                # Tables made by create_schema() before revisions were kept: the baseline.
                command.stamp(config, BASELINE)
            command.upgrade(config, revision)
        return current(engine, table_prefix=table_prefix)
    finally:
        if owned:
            engine.dispose()


def current(url_or_engine: str | URL | Engine, *, table_prefix: str = "jobhook_") -> str | None:
    """The revision the database is at, or ``None`` when none is recorded."""
    from alembic.migration import MigrationContext

    engine, owned = _engine(url_or_engine)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"version_table": f"{table_prefix}alembic_version"}
            )
            revision: str | None = context.get_current_revision()
            return revision
    finally:
        if owned:
            engine.dispose()
