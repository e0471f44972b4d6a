"""The baseline: jobhook 0.1's four tables, as ``create_schema()`` made them.

Revision ID: 0001_baseline
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001_baseline"
down_revision = None
branch_labels = None
depends_on = None

_STATUSES = ("pending", "submitted", "running", "succeeded", "failed", "canceled")
_NON_TERMINAL = sa.text("status IN ('pending', 'submitted', 'running')")
_ID = sa.String(255)
_JSON = sa.JSON().with_variant(JSONB(), "postgresql")
_TIMESTAMP = sa.DateTime(timezone=True)
_SERIAL = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    p = context.config.attributes.get("table_prefix", "jobhook_")
    op.create_table(
        f"{p}jobs",
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
            "status IN ({})".format(", ".join(f"'{s}'" for s in _STATUSES)),
            name=f"ck_{p}jobs_status",
        ),
        sa.CheckConstraint(
            "progress IS NULL OR (progress >= 0 AND progress <= 100)",
            name=f"ck_{p}jobs_progress",
        ),
    )
    op.create_index(f"ix_{p}jobs_owner_created", f"{p}jobs", ["owner_id", "created_at", "id"])
    op.create_index(f"ix_{p}jobs_created", f"{p}jobs", ["created_at", "id"])
    op.create_index(
        f"ix_{p}jobs_stale",
        f"{p}jobs",
        ["updated_at"],
        postgresql_where=_NON_TERMINAL,
        sqlite_where=_NON_TERMINAL,
    )
    has_remote_id = sa.text("remote_id IS NOT NULL")
    op.create_index(
        f"ix_{p}jobs_remote_id",
        f"{p}jobs",
        ["remote_id", "created_at", "id"],
        postgresql_where=has_remote_id,
        sqlite_where=has_remote_id,
    )
    op.create_table(
        f"{p}deliveries",
        sa.Column("id", sa.String(255), primary_key=True),
        sa.Column("job_id", _ID, nullable=False),
        sa.Column("received_at", _TIMESTAMP, nullable=False),
    )
    op.create_table(
        f"{p}events",
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
    op.create_table(
        f"{p}dead_letters",
        sa.Column("id", _SERIAL, primary_key=True, autoincrement=True),
        sa.Column("job_id", _ID, nullable=False),
        sa.Column("delivery_id", sa.String(255), nullable=True),
        sa.Column("update", _JSON, nullable=False),
        sa.Column("body", sa.LargeBinary, nullable=False),
        sa.Column("reason", sa.String(255), nullable=False),
        sa.Column("received_at", _TIMESTAMP, nullable=False),
        sa.Column("replayed_at", _TIMESTAMP, nullable=True),
    )
    op.create_index(f"ix_{p}dead_letters_job_id", f"{p}dead_letters", ["job_id"])
    op.create_index(
        f"ux_{p}dead_letters_delivery", f"{p}dead_letters", ["delivery_id"], unique=True
    )


def downgrade() -> None:
    p = context.config.attributes.get("table_prefix", "jobhook_")
    for table in ("dead_letters", "events", "deliveries", "jobs"):
        op.drop_table(f"{p}{table}")
