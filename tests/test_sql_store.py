"""What only the SQL stores have: schema, engines, outages and atomicity."""

from __future__ import annotations

import socket
from typing import Any

import pytest
import sqlalchemy as sa

from jobhook import JobError, JobStatus, JobUpdate, Outcome, StoreUnavailableError
from jobhook.stores.sql import AsyncSQLJobStore, SQLJobStore

from .conftest import PG_SKIP_REASON, PG_URL, SQL_KINDS, SyncFacade, _drop_tables


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_create_schema_is_idempotent_and_prefixed(tmp_path: Any) -> None:
    store = SQLJobStore(f"sqlite:///{tmp_path / 'a.db'}", table_prefix="app_")
    store.create_schema()
    store.create_schema()
    names = set(sa.inspect(store.engine).get_table_names())
    assert names == {
        "app_jobs",
        "app_deliveries",
        "app_events",
        "app_dead_letters",
        "app_consumers",
        "app_parked_events",
    }
    assert set(store.metadata.tables) == names
    indexes = {ix["name"] for ix in sa.inspect(store.engine).get_indexes("app_jobs")}
    assert {"ix_app_jobs_owner_created", "ix_app_jobs_created", "ix_app_jobs_stale"} <= indexes
    store.close()


def test_two_prefixes_share_one_database(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    a = SQLJobStore(url, table_prefix="a_", create_schema=True)
    b = SQLJobStore(url, table_prefix="b_", create_schema=True)
    a.create({}, job_id="x")
    assert b.list() == []
    a.close()
    b.close()


def test_bad_prefix_is_refused(tmp_path: Any) -> None:
    with pytest.raises(ValueError, match="table_prefix"):
        SQLJobStore(f"sqlite:///{tmp_path / 'a.db'}", table_prefix="drop table;")


def test_sqlite_file_uses_wal(tmp_path: Any) -> None:
    store = SQLJobStore(f"sqlite:///{tmp_path / 'wal.db'}", create_schema=True)
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
    store.close()


def test_sqlite_in_memory_url_works() -> None:
    store = SQLJobStore("sqlite://", create_schema=True)
    job = store.create({"a": 1})
    assert store.apply(job.id, JobUpdate("succeeded")).applied
    store.close()


def test_missing_tables_say_how_to_create_them(tmp_path: Any) -> None:
    store = SQLJobStore(f"sqlite:///{tmp_path / 'empty.db'}")
    with pytest.raises(StoreUnavailableError, match="create_schema"):
        store.create({})
    store.close()


def test_an_engine_can_be_passed_and_is_not_disposed(tmp_path: Any) -> None:
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'e.db'}")
    store = SQLJobStore(engine, create_schema=True)
    store.create({}, job_id="x")
    store.close()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM jobhook_jobs").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    engine.dispose()


def test_unreachable_postgres_raises_store_unavailable() -> None:
    store = SQLJobStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test")
    with pytest.raises(StoreUnavailableError, match="unavailable"):
        store.get("x")
    with pytest.raises(StoreUnavailableError):
        store.apply("x", JobUpdate("running"))
    store.close()


def test_unreachable_postgres_async() -> None:
    store = SyncFacade(AsyncSQLJobStore(f"postgresql://postgres@127.0.0.1:{free_port()}/test"))
    with pytest.raises(StoreUnavailableError):
        store.apply("x", JobUpdate("running"))
    store.close()


@pytest.mark.parametrize("kind", SQL_KINDS)
def test_job_change_and_event_are_one_transaction(make_store: Any, kind: str) -> None:
    """If the event cannot be written, the job change and the delivery id roll back too."""
    store = make_store(kind)
    job = store.create({})
    tables = store.tables
    sync_engine = store.engine if isinstance(store, SQLJobStore) else None
    if sync_engine is None:
        # The async store: drop and recreate the table through a sync engine on the same DB.
        url = store.engine.url
        driver = "sqlite" if url.get_backend_name() == "sqlite" else "postgresql+psycopg"
        sync_engine = sa.create_engine(url.set(drivername=driver))
    tables.events.drop(sync_engine)
    with pytest.raises(StoreUnavailableError):
        store.apply(job.id, JobUpdate("succeeded"), delivery_id="d1")
    tables.events.create(sync_engine)
    assert store.get(job.id).status is JobStatus.PENDING
    assert store.get(job.id).version == 1
    result = store.apply(job.id, JobUpdate("succeeded"), delivery_id="d1")
    assert result.outcome is Outcome.APPLIED
    assert [e.delivery_id for e in store.events()] == ["d1"]
    if sync_engine is not store.engine:
        sync_engine.dispose()


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)
def test_postgres_uses_jsonb(make_store: Any) -> None:
    store = make_store("postgres")
    columns = {
        c["name"]: c["type"] for c in sa.inspect(store.engine).get_columns(store.tables.jobs.name)
    }
    assert type(columns["input"]).__name__ == "JSONB"
    assert type(columns["output"]).__name__ == "JSONB"


def test_repr_hides_password() -> None:
    store = SQLJobStore("postgresql://postgres:s3cret@127.0.0.1:1/test")
    assert "s3cret" not in repr(store)
    store.close()


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)
def test_postgres_outbox_never_skips_an_event_committed_late(make_store: Any) -> None:
    """A notifier reading events(after=last) must not miss an event whose transaction
    started first but committed last."""
    store = make_store("postgres")
    early, late = store.create({}), store.create({})
    with store.engine.connect() as blocker:
        # An apply of its own, held open: its transaction id is older than the next one's.
        blocker.execution_options(jobhook_write=True)
        tx = blocker.begin()
        steps = store._ops.apply(early.id, JobUpdate("running", progress=5), None)
        from jobhook.stores.sql import _drive

        held = _drive(blocker, steps)
        assert held.applied
        assert store.apply(late.id, JobUpdate("running", progress=7)).applied
        # The later commit is not handed out while the older transaction may still commit.
        assert store.events() == []
        tx.commit()
    events = store.events()
    assert [e.job_id for e in events] == [early.id, late.id]
    assert store.events(after=events[0].id) == events[1:]


# -- the direct driver path ------------------------------------------------------------

SYNC_KINDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)),
]


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_hot_operations_run_on_the_driver_directly(
    make_store: Any, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(kind)
    assert store._direct.usable

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Connection.execute was used on a hot path")

    monkeypatch.setattr(sa.Connection, "execute", refuse)
    job = store.create({"prompt": "fox"}, owner_id="u1")
    assert store.apply(job.id, JobUpdate("running", progress=5), delivery_id="d1").applied
    assert store.apply(job.id, JobUpdate("running", progress=5), delivery_id="d1").outcome is (
        Outcome.DUPLICATE
    )
    assert store.apply(job.id, JobUpdate("submitted")).outcome is Outcome.STALE
    assert store.get(job.id).progress == 5.0
    assert [e.version for e in store.events()] == [2]
    assert store.stale(updated_before=job.created_at.replace(year=3000)) != []
    monkeypatch.undo()
    assert [j.id for j in store.list(owner_id="u1")] == [job.id]


@pytest.mark.parametrize("kind", SYNC_KINDS)
@pytest.mark.parametrize("how", ["listener", "echo"])
def test_instrumented_engines_see_every_statement(make_store: Any, kind: str, how: str) -> None:
    """Tracing (cursor listeners) and echo keep working: the store then goes through
    SQLAlchemy's Connection.execute for every statement."""
    store = make_store(kind)
    seen: list[str] = []
    if how == "listener":
        sa.event.listen(store.engine, "before_cursor_execute", lambda *a: seen.append(a[2]))
    else:
        store.engine.echo = True
    assert not store._direct.usable
    job = store.create({})
    store.apply(job.id, JobUpdate("succeeded"))
    store.engine.echo = False
    if how == "listener":
        assert any(s.startswith(f"INSERT INTO {store.tables.jobs.name}") for s in seen)
        assert any(f"UPDATE {store.tables.jobs.name}" in s for s in seen)
    assert store.get(job.id).status is JobStatus.SUCCEEDED


def test_a_statement_with_expanding_parameters_is_not_prepared(tmp_path: Any) -> None:
    from jobhook.stores._direct import Prepared

    store = SQLJobStore(f"sqlite:///{tmp_path / 'p.db'}")
    jobs = store.tables.jobs
    with pytest.raises(ValueError, match="expanding"):
        Prepared(sa.select(jobs).where(jobs.c.status.in_(["a", "b"])), store.engine.dialect)
    store.close()


def test_a_constraint_error_on_the_driver_path_is_the_store_error(tmp_path: Any) -> None:
    store = SQLJobStore(f"sqlite:///{tmp_path / 'dup.db'}", create_schema=True)
    store.create({}, job_id="same")
    from jobhook import JobExistsError

    with pytest.raises(JobExistsError):
        store.create({}, job_id="same")
    # The failed transaction was rolled back and its connection is fine to reuse.
    assert store.create({}, job_id="other").id == "other"
    assert store.engine.pool.checkedout() == 0
    store.close()


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)
@pytest.mark.parametrize("kind", ["postgres", "postgres-core"])
def test_postgres_single_statement_operations_send_no_begin_or_commit(
    make_store: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """create, get and apply are one statement each on PostgreSQL, atomic alone: they
    run in autocommit (no BEGIN, no COMMIT round trips); replaying a dead letter takes
    several statements and runs in a transaction. Afterwards the pooled connection is
    back in transaction mode."""
    import psycopg

    store = make_store(kind)  # the driver path, and SQLAlchemy's path (a tracing listener)
    modes: list[bool] = []
    execute = psycopg.Cursor.execute

    def spy(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
        modes.append(self.connection.autocommit)
        return execute(self, query, *args, **kwargs)

    monkeypatch.setattr(psycopg.Cursor, "execute", spy)
    job = store.create({})
    store.get(job.id)
    store.apply(job.id, JobUpdate("running"), delivery_id="d1")
    store.apply(job.id, JobUpdate("running"), delivery_id="d1")  # duplicate: one statement
    assert set(modes) == {True}
    letter = store.add_dead_letter(job.id, JobUpdate("succeeded"), delivery_id="d2")
    modes.clear()
    assert store.replay_dead_letter(letter.id).applied
    assert set(modes) == {False}
    monkeypatch.undo()
    with store.engine.connect() as conn:
        assert conn.connection.dbapi_connection.autocommit is False  # type: ignore[union-attr]


# -- the remote id index ---------------------------------------------------------------


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_get_by_remote_id_is_served_by_its_index(make_store: Any, kind: str) -> None:
    """The lookup's statement, exactly as the store sends it, searches
    ix_…_jobs_remote_id and needs no sort (the index holds the newest-first order of
    jobs sharing a remote id too), among enough jobs that a scan would cost."""
    from jobhook._ids import utcnow

    store = make_store(kind)
    jobs = store.tables.jobs
    now = utcnow()
    rows = [
        {
            "id": f"j{n:05d}",
            "kind": "default",
            "status": "submitted",
            "metadata": {},
            "version": 1,
            "created_at": now,
            "updated_at": now,
            # Half the jobs have no remote id (a backend that takes ours).
            "remote_id": f"r-{n}" if n % 2 else None,
        }
        for n in range(5000)
    ]
    with store.engine.begin() as conn:
        conn.execute(jobs.insert(), rows)
        conn.exec_driver_sql(f"ANALYZE {jobs.name}")
    assert store.get_by_remote_id("r-4321").id == "j04321"
    prepared = store._direct.prepared(store._ops.select_job_by_remote_id)
    explain = "EXPLAIN QUERY PLAN " if kind == "sqlite" else "EXPLAIN "
    with store.engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(explain + prepared.sql, prepared.parameters({"remote_id": "r-4321"}))
        plan = "\n".join(str(row[-1]) for row in cursor.fetchall())
        cursor.close()
    assert f"ix_{store.tables.prefix}jobs_remote_id" in plan, plan
    for costly in ("SCAN", "TEMP B-TREE", "Seq Scan", "Sort"):
        assert costly not in plan, plan


def test_create_schema_adds_the_remote_id_index_to_existing_tables(tmp_path: Any) -> None:
    store = SQLJobStore(f"sqlite:///{tmp_path / 'old.db'}", create_schema=True)
    with store.engine.begin() as conn:
        conn.exec_driver_sql("DROP INDEX ix_jobhook_jobs_remote_id")
    store.create_schema()
    indexes = {ix["name"] for ix in sa.inspect(store.engine).get_indexes("jobhook_jobs")}
    assert "ix_jobhook_jobs_remote_id" in indexes
    store.close()


@pytest.mark.parametrize("kind", SQL_KINDS)
def test_a_guard_and_rules_that_disagree_are_a_reported_bug_not_a_retry_loop(
    make_store: Any, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Jobs only move forward, so an update the guarded UPDATE refused stays refused:
    # nothing is retried, and rules that disagree with the guard surface as a bug.
    import jobhook.stores._operations as sql

    store = make_store(kind)
    job = store.create({})
    assert store.apply(job.id, JobUpdate("succeeded")).applied
    monkeypatch.setattr(sql, "judge", lambda current, update: Outcome.APPLIED)
    with pytest.raises(RuntimeError, match="a bug in jobhook"):
        store.apply(job.id, JobUpdate("running"))
    monkeypatch.undo()
    assert store.apply(job.id, JobUpdate("running")).outcome is Outcome.STALE
    assert len(store.events()) == 1


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)
@pytest.mark.parametrize("kind", ["postgres", "postgres-core"])
def test_on_postgres_every_delivery_is_one_statement_refused_and_duplicates_too(
    make_store: Any, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jobhook.stores._direct import DirectRunner

    store = make_store(kind)
    job = store.create({})
    statements: list[str] = []
    if kind == "postgres":
        real = DirectRunner._execute

        def counted(self: Any, cursor: Any, statement: Any, params: Any) -> Any:
            statements.append(self.prepared(statement).sql)
            return real(self, cursor, statement, params)

        monkeypatch.setattr(DirectRunner, "_execute", counted)
    else:
        sa.event.listen(
            store.engine,
            "before_cursor_execute",
            lambda conn, cursor, sql, *rest: statements.append(sql),
        )

    def trips(update: JobUpdate, delivery_id: str | None) -> tuple[Outcome, int]:
        statements.clear()
        result = store.apply(job.id, update, delivery_id=delivery_id)
        return result.outcome, len([s for s in statements if not s.startswith(("BEGIN", "COMMIT"))])

    assert trips(JobUpdate("succeeded"), "d-1") == (Outcome.APPLIED, 1)
    assert trips(JobUpdate("succeeded"), "d-1") == (Outcome.DUPLICATE, 1)
    assert trips(JobUpdate("running"), "d-2") == (Outcome.STALE, 1)
    assert trips(JobUpdate("failed", error=JobError("x")), None) == (Outcome.CONFLICT, 1)
    refused = store.apply(job.id, JobUpdate("running"), delivery_id="d-3")
    assert refused.job is not None
    assert refused.job.status is JobStatus.SUCCEEDED


@pytest.mark.parametrize("kind", ["sqlite", "sqlite-core"])
def test_a_writer_blocked_past_the_busy_timeout_is_unavailable_on_every_path(
    make_store: Any, kind: str
) -> None:
    import sqlite3

    store = make_store(kind)
    job = store.create({})
    store.engine.dispose()  # new connections get the short busy timeout below
    sa.event.listen(
        store.engine,
        "connect",
        lambda dbapi, record: dbapi.execute("PRAGMA busy_timeout = 50"),
    )
    blocker = sqlite3.connect(store.engine.url.database, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailableError, match="locked"):
            store.apply(job.id, JobUpdate("running"))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.apply(job.id, JobUpdate("running")).applied


def test_a_second_store_over_the_engines_execution_options_installs_nothing_twice(
    tmp_path: Any,
) -> None:
    from jobhook.stores._schema import engine_options, sync_url

    url = sync_url(f"sqlite:///{tmp_path / 'shared.db'}")
    engine = sa.create_engine(url, **engine_options(url))
    begins: list[str] = []
    sa.event.listen(engine, "before_cursor_execute", lambda c, cur, sql, *a: begins.append(sql))
    first = SQLJobStore(engine, create_schema=True)
    with engine.connect() as held:  # a connection the app has pooled
        held.exec_driver_sql("SELECT 1")
    pool = engine.pool
    second = SQLJobStore(engine.execution_options(tenant="t1"))
    assert engine.pool is pool  # the app's pool was not disposed a second time
    job = second.create({})
    assert [j.id for j in second.list()] == [job.id]
    assert [j.id for j in first.list()] == [job.id]
    begins.clear()
    second.apply(job.id, JobUpdate("running"))
    assert [s for s in begins if s.startswith("BEGIN")] == ["BEGIN IMMEDIATE"]
    engine.dispose()


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)
def test_schema_translation_and_transaction_listeners_see_every_operation() -> None:
    # SQLAlchemy's multi-tenant recipe: every statement goes to the tenant's schema.
    import uuid

    assert PG_URL is not None
    schema = f"tenant_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(sa.engine.make_url(PG_URL).set(drivername="postgresql+psycopg"))
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    try:
        tenant = admin.execution_options(schema_translate_map={None: schema})
        store = SQLJobStore(tenant, table_prefix="tr_")
        store.create_schema()
        begun: list[str] = []
        sa.event.listen(tenant, "begin", lambda conn: begun.append("begin"))
        job = store.create({"tenant": schema})
        assert [j.id for j in store.list()] == [job.id]
        assert store.get(job.id).input == {"tenant": schema}
        assert store.apply(job.id, JobUpdate("running"), delivery_id="d-1").applied
        assert len(begun) >= 3  # create, list, get and apply all went through SQLAlchemy
        with admin.connect() as conn:
            rows = conn.exec_driver_sql(f"SELECT count(*) FROM {schema}.tr_jobs").scalar()
            public = conn.exec_driver_sql(
                "SELECT count(*) FROM information_schema.tables WHERE table_name = 'tr_jobs' "
                "AND table_schema = 'public'"
            ).scalar()
        assert (rows, public) == (1, 0)
    finally:
        with admin.begin() as conn:
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
        admin.dispose()


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)
@pytest.mark.parametrize("driver", ["psycopg", "asyncpg"])
def test_async_single_statement_operations_run_in_autocommit_on_postgres(driver: str) -> None:
    # No BEGIN and no COMMIT around one atomic statement: a delivery is one round trip.
    import uuid

    assert PG_URL is not None
    url = sa.engine.make_url(PG_URL).set(drivername=f"postgresql+{driver}")
    store = SyncFacade(AsyncSQLJobStore(url, table_prefix=f"ac{uuid.uuid4().hex[:8]}_"))
    store.create_schema()
    modes: list[tuple[str, bool]] = []
    sa.event.listen(
        store.inner.engine.sync_engine,
        "before_cursor_execute",
        lambda conn, cursor, sql, *rest: modes.append(
            (sql.split()[0], bool(conn.connection.dbapi_connection.autocommit))
        ),
    )
    try:
        job = store.create({})
        store.apply(job.id, JobUpdate("running"), delivery_id="d-1")
        store.get(job.id)
        store.events()
        assert modes
        assert all(autocommit for _, autocommit in modes), modes
        modes.clear()
        store.list()  # built per call: still one transaction
        assert modes
        assert not any(autocommit for _, autocommit in modes)
    finally:
        prefix = store.inner.tables.prefix
        store.close()
        _drop_tables(PG_URL, prefix)
