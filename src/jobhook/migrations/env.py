"""Alembic's environment for jobhook's revisions: always run by `jobhook.migrations`,
on the connection it passes, with the table prefix it passes."""

from __future__ import annotations

from alembic import context

config = context.config
prefix = config.attributes.get("table_prefix", "jobhook_")
context.configure(
    connection=config.attributes["connection"],
    version_table=f"{prefix}alembic_version",
    target_metadata=None,
)
with context.begin_transaction():
    context.run_migrations()
