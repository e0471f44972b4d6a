"""Outbox consumers and parked events; SQLite's JSON columns as TEXT; the PostgreSQL
trigger that wakes LISTENing consumers.

Revision ID: 0002_consumers
Revises: 0001_baseline

Every step skips what is already there: a database whose tables ``create_schema()``
made after these tables existed is stamped at the baseline and then upgraded here.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0002_consumers"
down_revision = "0001_baseline"
branch_labels = None
depends_on = None

_TIMESTAMP = sa.DateTime(timezone=True)
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
# SQLite gives a column declared JSON NUMERIC affinity (a bare JSON number would be
# stored as a number): JSON text goes in TEXT columns there.
_JSON = sa.JSON().with_variant(JSONB(), "postgresql").with_variant(sa.Text(), "sqlite")
_JSON_COLUMNS = {"jobs": ("input", "output", "metadata"), "dead_letters": ("update",)}


def upgrade() -> None:
    p = context.config.attributes.get("table_prefix", "jobhook_")
    bind = op.get_bind()
    inspector = sa.inspect(bind)
    if not inspector.has_table(f"{p}consumers"):
        op.create_table(
            f"{p}consumers",
            sa.Column("name", sa.String(255), primary_key=True),
            sa.Column("position", sa.BigInteger, nullable=False),
            sa.Column("owner", sa.String(255), nullable=True),
            sa.Column("lease_expires_at", _TIMESTAMP, nullable=True),
            sa.Column("updated_at", _TIMESTAMP, nullable=False),
        )
    if not inspector.has_table(f"{p}parked_events"):
        op.create_table(
            f"{p}parked_events",
            sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
            sa.Column("consumer", sa.String(255), nullable=False),
            sa.Column("event_id", sa.BigInteger, nullable=False),
            sa.Column("event", _JSON, nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("error", sa.Text, nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("parked_at", _TIMESTAMP, nullable=False),
        )
        op.create_index(
            f"ux_{p}parked_events_event",
            f"{p}parked_events",
            ["consumer", "event_id"],
            unique=True,
        )
    if bind.dialect.name == "sqlite":
        _sqlite_json_as_text(p, inspector)
    if bind.dialect.name == "postgresql":
        name = f"{p}events_notify"
        op.execute(
            f"CREATE OR REPLACE FUNCTION {name}() RETURNS trigger LANGUAGE plpgsql "
            f"AS $$ BEGIN PERFORM pg_notify('{p}events', ''); RETURN NULL; END $$"
        )
        op.execute(f"DROP TRIGGER IF EXISTS {name} ON {p}events")
        op.execute(
            f"CREATE TRIGGER {name} AFTER INSERT ON {p}events "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {name}()"
        )


def _sqlite_json_as_text(p: str, inspector: sa.Inspector) -> None:
    """Rebuild the tables whose JSON columns are still declared ``JSON`` (SQLite alters a
    column's type only by copying the table). A bare number SQLite already stored as a
    number becomes its JSON text again on the way."""
    for table, columns in _JSON_COLUMNS.items():
        declared = {c["name"]: str(c["type"]) for c in inspector.get_columns(f"{p}{table}")}
        if all(declared.get(column) == "TEXT" for column in columns):
            continue
        with op.batch_alter_table(f"{p}{table}", recreate="always") as batch:
            for column in columns:
                batch.alter_column(column, type_=sa.Text(), existing_nullable=True)


def downgrade() -> None:
    p = context.config.attributes.get("table_prefix", "jobhook_")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP TRIGGER IF EXISTS {p}events_notify ON {p}events")
        op.execute(f"DROP FUNCTION IF EXISTS {p}events_notify()")
    op.drop_table(f"{p}parked_events")
    op.drop_table(f"{p}consumers")
