"""PostgreSQL: an open transaction anywhere on the server delays outbox events by a
bound, not for as long as it stays open, and a jobhook writer in flight is never
skipped."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from jobhook import JobStatus, JobUpdate, OutboxConsumer

from .conftest import PG_SKIP_REASON, PG_URL

pytestmark = pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)

OTHER_DB = "jobhook_other"


def _libpq(url: str, database: str | None = None) -> str:
    u = make_url(url).set(drivername="postgresql")
    if database is not None:
        u = u.set(database=database)
    return u.render_as_string(hide_password=False)


@pytest.fixture
def idle_elsewhere() -> Iterator[Any]:
    """A session in another database, idle in a transaction that holds an xid: it holds
    back the server-wide xmin for as long as it stays open."""
    import psycopg

    assert PG_URL is not None
    with psycopg.connect(_libpq(PG_URL), autocommit=True) as admin:
        if (
            admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [OTHER_DB]).fetchone()
            is None
        ):
            admin.execute(f"CREATE DATABASE {OTHER_DB}")
    conn = psycopg.connect(_libpq(PG_URL, OTHER_DB))
    conn.execute("SELECT txid_current()")  # psycopg opened the transaction: BEGIN
    yield conn
    conn.rollback()
    conn.close()


@pytest.fixture
def pg_store() -> Iterator[Any]:
    from jobhook import SQLJobStore

    assert PG_URL is not None
    store = SQLJobStore(PG_URL, table_prefix=f"t{uuid.uuid4().hex[:10]}_", create_schema=True)
    yield store
    store.metadata.drop_all(store.engine)
    store.close()


def _event(store: Any) -> int:
    job = store.create({"p": 1})
    result = store.apply(job.id, JobUpdate(JobStatus.SUBMITTED))
    return int(result.event.id)


def _xmin_is_held(store: Any, event_id: int) -> bool:
    with store.engine.connect() as conn:
        xmin = conn.execute(sa.text("SELECT txid_snapshot_xmin(txid_current_snapshot())")).scalar()
    return bool(xmin <= event_id)


def test_an_idle_session_elsewhere_delays_events_by_the_bound_only(
    pg_store: Any, idle_elsewhere: Any
) -> None:
    event_id = _event(pg_store)
    assert _xmin_is_held(pg_store, event_id)
    # The default bound: the event arrives while the other session stays open.
    deadline = time.monotonic() + 60
    while not pg_store.events():
        assert time.monotonic() < deadline, "the event never arrived"
        time.sleep(0.05)
    assert [e.id for e in pg_store.events()] == [event_id]
    assert _xmin_is_held(pg_store, event_id)  # still open all along


def test_a_consumer_gets_events_past_an_idle_session(pg_store: Any, idle_elsewhere: Any) -> None:
    pg_store._ops.outbox_wait = timedelta(0)
    ids = [_event(pg_store) for _ in range(3)]
    seen: list[int] = []
    OutboxConsumer(pg_store, "mail", lambda e: seen.append(e.id)).run_once()
    assert seen == ids


def test_a_jobhook_writer_in_flight_is_never_skipped(pg_store: Any, idle_elsewhere: Any) -> None:
    import psycopg

    assert PG_URL is not None
    # No waiting: the fallback horizon is used on every read.
    pg_store._ops.outbox_wait = timedelta(0)
    events = pg_store.tables.events.name
    writer = psycopg.connect(_libpq(PG_URL))
    try:
        # A writer as jobhook's apply is one: it locks the events table, then takes the
        # transaction id that becomes its event's id; it has not committed yet.
        (early,) = writer.execute(
            f"INSERT INTO {events} (id, job_id, kind, status, version, created_at) "
            "VALUES (txid_current() * 1024, 'early', 'default', 'submitted', 1, now()) "
            "RETURNING id"
        ).fetchone()
        late = _event(pg_store)
        assert early < late
        # The later event has committed, but the earlier one may still: nothing after
        # it is handed out, or a reader would move past it.
        assert pg_store.events() == []
        writer.commit()
    finally:
        writer.close()
    assert [e.id for e in pg_store.events()] == [early, late]
