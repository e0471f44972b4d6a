"""jobhook's Alembic revisions: a new database, and one made by ``create_schema()``
(the 0.1 schema, the baseline) with data in it, reach the same schema."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import sqlalchemy as sa

pytest.importorskip("alembic")

from jobhook import JobError, JobStatus, JobUpdate
from jobhook.migrations import BASELINE, current, upgrade
from jobhook.stores.sql import SQLJobStore

from .conftest import PG_SKIP_REASON, PG_URL, _drop_tables

KINDS = ["sqlite", "postgres"]


def _url(kind: str, tmp_path: Any) -> str:
    if kind == "postgres":
        if not PG_URL:
            pytest.skip(PG_SKIP_REASON)
        return PG_URL
    return f"sqlite:///{tmp_path / f'm-{uuid.uuid4().hex[:6]}.db'}"


def shape(url: str, prefix: str) -> dict[str, Any]:
    """Tables, columns, indexes and check constraints of ``prefix``'s tables."""
    engine = sa.create_engine(SQLJobStore(url).engine.url)
    inspector = sa.inspect(engine)
    found: dict[str, Any] = {}
    for table in sorted(inspector.get_table_names()):
        if not table.startswith(prefix) or table.endswith("alembic_version"):
            continue
        found[table] = (
            sorted(
                (c["name"], str(c["type"]), c["nullable"]) for c in inspector.get_columns(table)
            ),
            sorted(
                (
                    i["name"],
                    tuple(i["column_names"]),
                    bool(i["unique"]),
                    sorted((k, str(v)) for k, v in i.get("dialect_options", {}).items()),
                )
                for i in inspector.get_indexes(table)
            ),
            sorted(str(c["sqltext"]) for c in inspector.get_check_constraints(table)),
        )
    engine.dispose()
    return found


@pytest.fixture(params=KINDS)
def url(request: pytest.FixtureRequest, tmp_path: Any) -> Any:
    return _url(request.param, tmp_path)


def test_a_new_database_gets_what_create_schema_makes(url: str) -> None:
    made, migrated = f"c{uuid.uuid4().hex[:8]}_", f"m{uuid.uuid4().hex[:8]}_"
    try:
        SQLJobStore(url, table_prefix=made, create_schema=True).close()
        assert upgrade(url, table_prefix=migrated) is not None
        expected, got = shape(url, made), shape(url, migrated)
        assert len(got) == 6
        # Names carry the prefix; compare them with it swapped.
        assert repr(got).replace(migrated, "P") == repr(expected).replace(made, "P")
        # Run again: nothing to do.
        assert upgrade(url, table_prefix=migrated) == current(url, table_prefix=migrated)
    finally:
        _drop_tables(url, made)
        _drop_tables(url, migrated)
        _drop_version_table(url, migrated)


def test_the_0_1_schema_with_data_upgrades_and_keeps_working(url: str) -> None:
    prefix = f"o{uuid.uuid4().hex[:8]}_"
    old = SQLJobStore(url, table_prefix=prefix, create_schema=True)  # as 0.1 made it
    try:
        job = old.create({"prompt": "a red fox"}, kind="image", owner_id="u1")
        old.apply(job.id, JobUpdate("running", progress=40, sequence=2), delivery_id="d1")
        failed = old.create({"prompt": "an owl"})
        old.apply(failed.id, JobUpdate("failed", error=JobError("nsfw", "refused")))
        old.add_dead_letter("later", JobUpdate("succeeded"), delivery_id="d2")
        before = (old.list(limit=10), old.events(), old.dead_letters())
        old.close()

        assert current(url, table_prefix=prefix) is None
        reached = upgrade(url, table_prefix=prefix)
        assert reached is not None
        assert current(url, table_prefix=prefix) == reached

        store = SQLJobStore(url, table_prefix=prefix)
        assert (store.list(limit=10), store.events(), store.dead_letters()) == before
        # The upgraded schema still keeps every rule.
        assert store.apply(job.id, JobUpdate("running", progress=40), delivery_id="d1").outcome == (
            "duplicate"
        )
        assert store.apply(job.id, JobUpdate("succeeded")).applied
        assert store.get(job.id).status is JobStatus.SUCCEEDED
        store.create({}, job_id="later")
        assert store.replay_dead_letter(before[2][0].id).applied
        store.close()
    finally:
        _drop_tables(url, prefix)
        _drop_version_table(url, prefix)


def test_the_baseline_is_recorded_before_later_revisions(url: str) -> None:
    prefix = f"b{uuid.uuid4().hex[:8]}_"
    SQLJobStore(url, table_prefix=prefix, create_schema=True).close()
    try:
        assert upgrade(url, table_prefix=prefix, revision=BASELINE) == BASELINE
    finally:
        _drop_tables(url, prefix)
        _drop_version_table(url, prefix)


def _drop_version_table(url: str, prefix: str) -> None:
    engine = SQLJobStore(url).engine
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE IF EXISTS {prefix}alembic_version")
    engine.dispose()


def test_jobhook_db_upgrade_from_the_command_line(tmp_path: Any) -> None:
    from jobhook.cli import main

    url = f"sqlite:///{tmp_path / 'cli.db'}"
    old = SQLJobStore(url, create_schema=True)
    job = old.create({"prompt": "kept"})
    old.close()
    for _ in range(2):
        assert main(["db", "upgrade", "--db", url]) == 0
    assert current(url) is not None
    store = SQLJobStore(url)
    assert store.get(job.id).input == {"prompt": "kept"}
    store.close()
