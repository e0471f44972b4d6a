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
        backend = url.get_backend_name()
        driver = {"sqlite": "sqlite", "postgresql": "postgresql+psycopg"}.get(
            backend, f"{backend}+pymysql"
        )
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
        # (The store's engine is in autocommit: this connection asks for a transaction.)
        blocker.execution_options(isolation_level="READ COMMITTED")
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


# -- one execution path ------------------------------------------------------------------

SYNC_KINDS = [
    "sqlite",
    pytest.param("postgres", marks=pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)),
]


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_every_operation_runs_through_connection_execute(make_store: Any, kind: str) -> None:
    """Every statement of every operation goes through SQLAlchemy's public
    `Connection.execute`, so what an app attached to its engine sees all of them."""
    store = make_store(kind)
    executed: list[str] = []
    sa.event.listen(
        store.engine,
        "before_execute",
        lambda conn, clause, *rest: executed.append(type(clause).__name__),
    )
    cursors: list[str] = []
    sa.event.listen(
        store.engine, "before_cursor_execute", lambda c, cur, sql, *a: cursors.append(sql)
    )
    job = store.create({"prompt": "fox"}, owner_id="u1")
    assert store.apply(job.id, JobUpdate("running", progress=5), delivery_id="d1").applied
    duplicate = store.apply(job.id, JobUpdate("running", progress=5), delivery_id="d1")
    assert duplicate.outcome is Outcome.DUPLICATE
    assert store.apply(job.id, JobUpdate("submitted")).outcome is Outcome.STALE
    assert store.get(job.id).progress == 5.0
    assert [e.version for e in store.events()] == [2]
    assert store.stale(updated_before=job.created_at.replace(year=3000)) != []
    assert [j.id for j in store.list(owner_id="u1")] == [job.id]
    letter = store.add_dead_letter("nope", JobUpdate("succeeded"), delivery_id="d9")
    assert store.replay_dead_letter(letter.id, job_id=job.id).outcome is Outcome.APPLIED
    # Every statement the driver ran (but SQLite's BEGIN, sent by jobhook's listener
    # through exec_driver_sql) came through Connection.execute.
    statements = [sql for sql in cursors if not sql.startswith("BEGIN")]
    assert len(statements) == len(executed) - executed.count("str"), (statements, executed)
    assert any(f"UPDATE {store.tables.jobs.name}" in sql for sql in statements)


@pytest.mark.parametrize("kind", SYNC_KINDS)
def test_echo_engines_log_every_statement(
    make_store: Any, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(kind)
    store.engine.echo = True
    with caplog.at_level("INFO", logger="sqlalchemy.engine.Engine"):
        job = store.create({})
        store.apply(job.id, JobUpdate("succeeded"))
    store.engine.echo = False
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert f"INSERT INTO {store.tables.jobs.name}" in logged
    assert f"UPDATE {store.tables.jobs.name}" in logged
    assert store.get(job.id).status is JobStatus.SUCCEEDED


def test_a_constraint_error_is_the_store_error_and_the_connection_is_reused(
    tmp_path: Any,
) -> None:
    store = SQLJobStore(f"sqlite:///{tmp_path / 'dup.db'}", create_schema=True)
    store.create({}, job_id="same")
    from jobhook import JobExistsError

    with pytest.raises(JobExistsError):
        store.create({}, job_id="same")
    # The failed statement left nothing open and its connection is fine to reuse.
    assert store.create({}, job_id="other").id == "other"
    assert store.engine.pool.checkedout() == 0
    store.close()


def test_sqlite_reads_open_no_transaction_and_writes_take_the_lock_up_front(
    make_store: Any, tmp_path: Any
) -> None:
    """No BEGIN statement is sent: SQLite's driver begins a transaction itself, IMMEDIATE
    (the write lock at once), before the first statement that writes; reads run
    without one. apply is one transaction: its statements all run inside it."""
    import sqlite3

    store = make_store("sqlite")
    job = store.create({})
    inside: list[tuple[str, bool]] = []
    sa.event.listen(
        store.engine,
        "after_cursor_execute",
        lambda conn, cur, sql, *a: inside.append(
            (sql.split()[0], conn.connection.dbapi_connection.in_transaction)
        ),
    )
    store.get(job.id)
    assert inside == [("SELECT", False)]
    inside.clear()
    store.apply(job.id, JobUpdate("running"), delivery_id="d1")
    assert [verb for verb, _ in inside] == ["INSERT", "UPDATE", "INSERT"]
    assert all(in_tx for _, in_tx in inside), inside
    with store.engine.connect() as conn:
        dbapi = conn.connection.dbapi_connection
        assert dbapi.isolation_level == "IMMEDIATE"  # type: ignore[union-attr]
        assert dbapi.in_transaction is False  # type: ignore[union-attr]
    # A write lock taken at the first write: another writer waits, it does not deadlock.
    sa.event.listen(  # after the store's own checkout listener: a short busy timeout
        store.engine,
        "checkout",
        lambda dbapi, record, proxy: dbapi.execute("PRAGMA busy_timeout = 50"),
    )
    other = sqlite3.connect(store.engine.url.database, isolation_level=None, timeout=0.05)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreUnavailableError, match="locked"):
            store.create({})
    finally:
        other.execute("ROLLBACK")
        other.close()


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)
@pytest.mark.parametrize("kind", ["postgres", "postgres-lent"])
def test_postgres_single_statement_operations_send_no_begin_or_commit(
    make_store: Any, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """create, get and apply are one statement each on PostgreSQL, atomic alone: they
    run in autocommit (no BEGIN, no COMMIT round trips); replaying a dead letter takes
    several statements and runs in a transaction. Afterwards the pooled connection is
    back in transaction mode."""
    import psycopg

    store = make_store(kind)  # a plain engine, and one with a tracing listener
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
        # An engine the store made stays in autocommit (nothing is switched per call); a
        # lent one's connection goes back to the app in its own mode.
        autocommit = conn.connection.dbapi_connection.autocommit  # type: ignore[union-attr]
        assert autocommit is (kind == "postgres")


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)
def test_a_lent_postgres_engine_is_switched_per_call_and_given_back_as_it_was() -> None:
    """On an engine the app lends, single statements still run in autocommit (through
    SQLAlchemy's public isolation_level), and the pooled connection goes back to the
    app in its own transaction mode; transactions run at READ COMMITTED."""
    import uuid

    import psycopg

    assert PG_URL is not None
    engine = sa.create_engine(
        sa.engine.make_url(PG_URL).set(drivername="postgresql+psycopg"),
        isolation_level="REPEATABLE READ",
    )
    store = SQLJobStore(engine, table_prefix=f"le{uuid.uuid4().hex[:8]}_", create_schema=True)
    try:
        modes: list[tuple[bool, Any]] = []
        execute = psycopg.Cursor.execute

        def spy(self: Any, query: Any, *args: Any, **kwargs: Any) -> Any:
            modes.append((self.connection.autocommit, self.connection.isolation_level))
            return execute(self, query, *args, **kwargs)

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(psycopg.Cursor, "execute", spy)
            job = store.create({})
            assert store.apply(job.id, JobUpdate("running"), delivery_id="d1").applied
            assert {autocommit for autocommit, _ in modes} == {True}
            modes.clear()
            letter = store.add_dead_letter(job.id, JobUpdate("succeeded"), delivery_id="d2")
            modes.clear()
            assert store.replay_dead_letter(letter.id).applied
            assert set(modes) == {(False, psycopg.IsolationLevel.READ_COMMITTED)}
        with engine.connect() as conn:
            dbapi = conn.connection.dbapi_connection
            assert dbapi.autocommit is False  # type: ignore[union-attr]
            assert conn.get_isolation_level() == "REPEATABLE READ"
    finally:
        store.metadata.drop_all(engine)
        engine.dispose()


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
    sent: list[tuple[str, Any]] = []
    sa.event.listen(
        store.engine,
        "before_cursor_execute",
        lambda conn, cursor, sql, params, *rest: sent.append((sql, params)),
    )
    assert store.get_by_remote_id("r-4321").id == "j04321"
    ((sql, params),) = sent
    explain = "EXPLAIN QUERY PLAN " if kind == "sqlite" else "EXPLAIN "
    with store.engine.connect() as conn:
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        cursor.execute(explain + sql, params)
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
@pytest.mark.parametrize("kind", ["postgres", "postgres-lent"])
def test_on_postgres_every_delivery_is_one_statement_refused_and_duplicates_too(
    make_store: Any, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(kind)
    job = store.create({})
    statements: list[str] = []
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


@pytest.mark.parametrize("kind", ["sqlite", "sqlite-lent"])
def test_a_writer_blocked_past_the_busy_timeout_is_unavailable_on_every_path(
    make_store: Any, kind: str
) -> None:
    import sqlite3

    store = make_store(kind)
    job = store.create({})
    sa.event.listen(  # after the store's own checkout listener: a short busy timeout
        store.engine,
        "checkout",
        lambda dbapi, record, proxy: dbapi.execute("PRAGMA busy_timeout = 50"),
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
    with engine.connect() as held:  # a connection the app pooled before any store
        held.exec_driver_sql("SELECT 1")
        pooled = held.connection.dbapi_connection
    pool = engine.pool
    first = SQLJobStore(engine, create_schema=True)
    with engine.connect() as conn:
        # Not disposed: the app's pooled connection is configured on its next checkout.
        assert conn.connection.dbapi_connection is pooled
        assert pooled.isolation_level == "IMMEDIATE"  # type: ignore[union-attr]
    second = SQLJobStore(engine.execution_options(tenant="t1"))
    assert engine.pool is pool  # the app's pool was not disposed a second time
    job = second.create({})
    assert [j.id for j in second.list()] == [job.id]
    assert [j.id for j in first.list()] == [job.id]
    from jobhook.stores._schema import _sqlite_checkout

    assert list(engine.pool.dispatch.checkout).count(_sqlite_checkout) == 1
    assert second.apply(job.id, JobUpdate("running")).applied
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


def test_postgres_apply_statements_stay_short_enough_to_be_prepared() -> None:
    """psycopg prepares a statement (and caches its parsing) only under 4 KiB: longer,
    PostgreSQL would parse and plan the apply statement on every delivery."""
    from sqlalchemy.dialects.postgresql import psycopg

    from jobhook._lifecycle import changes
    from jobhook.stores._operations import Operations
    from jobhook.stores._schema import Tables

    ops = Operations(Tables("jobhook_"), "postgresql")
    updates = [
        JobUpdate("running", progress=10, sequence=1),
        JobUpdate("succeeded", output={"images": ["a"]}, remote_id="r-1"),
        JobUpdate("failed", error=JobError("nsfw", "refused"), remote_id="r-1", sequence=3),
    ]
    for update in updates:
        for with_delivery in (True, False):
            statement = ops.one_trip(ops.shape(update, changes(update)), with_delivery)
            assert len(str(statement.compile(dialect=psycopg.dialect()))) < 3500


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)
@pytest.mark.parametrize("zone", ["Asia/Kolkata", "America/St_Johns"])
def test_postgres_jobs_read_back_the_same_whatever_the_session_time_zone(zone: str) -> None:
    """Applies answer with the job read back as JSON from the one statement: its
    timestamps are the instants written, in UTC, whatever zone the session is in (one
    with a half-hour offset included), and every field is as a plain read gives it."""
    import uuid
    from datetime import timezone

    prefix = f"tz_{uuid.uuid4().hex[:6]}_"
    url = sa.make_url(PG_URL).set(drivername="postgresql+psycopg")
    engine = sa.create_engine(url, connect_args={"options": f"-c timezone={zone}"})
    store = SQLJobStore(engine, table_prefix=prefix, create_schema=True)
    try:
        job = store.create({"prompt": "fox", "n": 2**60}, owner_id="u", metadata={"k": [1]})
        running = store.apply(
            job.id, JobUpdate("running", progress=33.5, sequence=7), delivery_id="d1"
        )
        output = {"images": ["a.png"], "seed": 12345678901234567}
        done = store.apply(job.id, JobUpdate("succeeded", output=output), delivery_id="d2")
        stale = store.apply(job.id, JobUpdate("running", progress=40), delivery_id="d3")
        assert running.applied
        assert done.applied
        assert stale.outcome is Outcome.STALE
        read = store.get(job.id)
        assert done.job == read
        assert stale.job == read
        assert read.created_at == job.created_at
        assert read.completed_at is not None
        assert read.completed_at.tzinfo is timezone.utc
        assert (read.progress, read.sequence, read.output) == (100.0, 7, output)
        assert read.input == {"prompt": "fox", "n": 2**60}
    finally:
        store.metadata.drop_all(engine)
        engine.dispose()
