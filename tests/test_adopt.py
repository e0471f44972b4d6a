"""Adopting an app's own job table: the story's ``image_generations``, made by plain
SQL with rows of its own, becomes jobhook's job table through a `JobTable` mapping."""

from __future__ import annotations

import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from jobhook import (
    GeneratorClient,
    JobNotFoundError,
    JobStatus,
    JobTable,
    JobUpdate,
    Outcome,
    SQLJobStore,
    ValidationError,
    WebhookHandler,
)
from jobhook.testing import Chaos, FakeGenerator, Scripts

from .conftest import PG_SKIP_REASON, PG_URL, _drop_tables

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

# The app's table, as its own ORM made it, with rows from before jobhook.
CREATE = """
CREATE TABLE {t} (
    id VARCHAR(64) PRIMARY KEY,
    prompt TEXT NOT NULL,
    status VARCHAR(16) NOT NULL,
    progress REAL,
    image_url TEXT,
    author_id VARCHAR(64) NOT NULL,
    created_at TIMESTAMP NOT NULL
)"""
OLD_ROWS = [
    ("gen-1", "a red fox", "completed", 100.0, "https://cdn/1.png", "7", "2024-03-01 10:00:00"),
    ("gen-2", "an owl", "processing", 40.0, None, "7", "2024-03-02 11:00:00"),
    ("gen-3", "a whale", "pending", None, None, "9", "2024-03-03 12:00:00"),
]


def added_columns(dialect: str) -> list[tuple[str, str]]:
    """The columns the app's migration adds for jobhook's fields (all nullable: the old
    rows keep NULL there, which is how jobhook tells they are not its jobs)."""
    json = "JSONB" if dialect == "postgresql" else "JSON"
    stamp = "TIMESTAMP WITH TIME ZONE" if dialect == "postgresql" else "TIMESTAMP"
    return [
        ("kind", "VARCHAR(255)"),
        ("input", json),
        ("output", json),
        ("error_code", "VARCHAR(255)"),
        ("error_message", "TEXT"),
        ("remote_id", "VARCHAR(255)"),
        ("sequence", "BIGINT"),
        ("metadata", json),
        ("version", "INTEGER"),
        ("updated_at", stamp),
        ("completed_at", stamp),
    ]


@pytest.fixture(params=["sqlite", "postgres"])
def app_db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[tuple[str, str, str]]:
    """A database with the app's table (its name unique on PostgreSQL) and old rows;
    the URL, the table's name and the side tables' prefix."""
    if request.param == "postgres":
        if not PG_URL:
            pytest.skip(PG_SKIP_REASON)
        url = PG_URL
    else:
        url = f"sqlite:///{tmp_path / 'app.db'}"
    table = f"image_generations_{uuid.uuid4().hex[:6]}"
    prefix = f"a{uuid.uuid4().hex[:6]}_"
    engine = SQLJobStore(url).engine
    with engine.begin() as conn:
        conn.exec_driver_sql(CREATE.format(t=table))
        for row in OLD_ROWS:
            conn.execute(
                sa.text(f"INSERT INTO {table} VALUES (:i, :p, :s, :g, :u, :a, :c)"),
                dict(zip("ipsguac", row, strict=True)),
            )
    yield url, table, prefix
    with engine.begin() as conn:
        conn.exec_driver_sql(f"DROP TABLE {table}")
    engine.dispose()
    _drop_tables(url, prefix)


def old_rows(url: str, table: str) -> list[tuple[Any, ...]]:
    engine = SQLJobStore(url).engine
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text(
                "SELECT id, prompt, status, progress, image_url, author_id, created_at "
                f"FROM {table} WHERE id LIKE :old ORDER BY id"
            ),
            {"old": "gen-%"},
        )
        found = [tuple(r) for r in rows]
    engine.dispose()
    return found


def mapping(table: str) -> JobTable:
    return JobTable(
        table,
        columns={"owner_id": "author_id"},
        values={"prompt": lambda job: job.input["prompt"]},
    )


def test_missing_columns_are_named_at_construction(app_db: Any) -> None:
    url, table, prefix = app_db
    with pytest.raises(ValidationError) as info:
        SQLJobStore(url, table_prefix=prefix, job_table=mapping(table))
    message = str(info.value)
    for field, _ in added_columns("sqlite"):
        assert f"{field} (column '{field}')" in message
    assert "owner_id" not in message  # mapped onto author_id
    assert "status" not in message.split("fields:")[1]  # the app's own column


def test_unknown_fields_in_a_mapping_are_refused() -> None:
    with pytest.raises(ValidationError, match="owner"):
        JobTable("image_generations", columns={"owner": "author_id"})


def test_the_story_table_adopted_through_a_whole_chaotic_flow(app_db: Any) -> None:
    url, table, prefix = app_db
    before = old_rows(url, table)
    engine = SQLJobStore(url).engine
    with engine.begin() as conn:  # the app's own migration adds the columns
        for name, type_ in added_columns(engine.dialect.name):
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {type_}")
    engine.dispose()

    store = SQLJobStore(url, table_prefix=prefix, job_table=mapping(table), create_schema=True)
    # jobhook added its side tables only.
    names = sa.inspect(store.engine).get_table_names()
    assert f"{prefix}jobs" not in names
    assert {f"{prefix}deliveries", f"{prefix}events", f"{prefix}dead_letters"} <= set(names)

    handler = WebhookHandler(store, secret=SECRET)
    chaos = Chaos(duplicate=0.3, reorder=0.3, seed=5)
    fake = FakeGenerator(SECRET, handler=handler, chaos=chaos, script=Scripts.mixed(seed=2))
    client = GeneratorClient(
        store,
        "http://generator.invalid",
        callback_url="http://app.invalid/webhooks/{job_id}",
        status_path=FakeGenerator.status_path,
        http_client=httpx.Client(transport=fake.transport),
    )
    jobs = [
        client.submit({"prompt": f"prompt {n}"}, kind="image", owner_id=str(n % 3)).id
        for n in range(12)
    ]
    sent = fake.deliver_all()
    assert any(count > 1 for count in Counter(r.msg_id for r in sent).values())
    for job_id in jobs:
        job = store.get(job_id)
        assert job.status is fake.final_status(job_id)
        changes = [e.status for e in store.events(limit=1000) if e.job_id == job_id]
        assert [s for s in changes if s.terminal] == [job.status]  # once, never doubled
    client.close()

    # The app's table holds the jobs, under its own column names.
    with store.engine.connect() as conn:
        prompt, author = conn.exec_driver_sql(
            f"SELECT prompt, author_id FROM {table} WHERE id = '{jobs[4]}'"
        ).one()
    assert (prompt, author) == ("prompt 4", "1")
    assert store.list(owner_id="1", limit=100) == sorted(
        (store.get(j) for j in jobs if int(store.get(j).input["prompt"][7:]) % 3 == 1),
        key=lambda j: (j.created_at, j.id),
        reverse=True,
    )

    # The rows from before jobhook are not its jobs: never read, never written.
    assert {j.id for j in store.list(limit=100)} == set(jobs)
    with pytest.raises(JobNotFoundError):
        store.get("gen-2")
    result = store.apply("gen-2", JobUpdate("succeeded"), delivery_id="d-old")
    assert result.outcome is Outcome.NOT_FOUND
    assert "gen-3" not in {j.id for j in store.stale(updated_before=_far_future())}
    assert old_rows(url, table) == before
    store.close()


def test_an_adopted_table_keeps_the_rules_in_the_guarded_update(app_db: Any) -> None:
    url, table, prefix = app_db
    engine = SQLJobStore(url).engine
    with engine.begin() as conn:
        for name, type_ in added_columns(engine.dialect.name):
            conn.exec_driver_sql(f"ALTER TABLE {table} ADD COLUMN {name} {type_}")
    engine.dispose()
    store = SQLJobStore(url, table_prefix=prefix, job_table=mapping(table), create_schema=True)
    job = store.create({"prompt": "a red fox"}, owner_id="7")
    assert store.apply(job.id, JobUpdate("running", progress=50, sequence=2)).applied
    assert store.apply(job.id, JobUpdate("running", progress=40)).outcome is Outcome.STALE
    assert store.apply(job.id, JobUpdate("running", progress=60, sequence=1)).outcome is (
        Outcome.STALE
    )
    assert store.apply(job.id, JobUpdate("failed")).applied
    assert store.apply(job.id, JobUpdate("succeeded")).outcome is Outcome.CONFLICT
    got = store.get(job.id)
    assert (got.status, got.progress, got.sequence, got.version) == (JobStatus.FAILED, 50.0, 2, 3)
    store.close()


def _far_future() -> Any:
    from datetime import datetime, timezone

    return datetime(2999, 1, 1, tzinfo=timezone.utc)
