"""`SQLJobStore.bind`: jobs created and applied in the app's own transaction, on its
own connection or ORM session."""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy import orm

from jobhook import JobExistsError, JobNotFoundError, JobStatus, JobUpdate, ValidationError

KINDS = ["sqlite", "postgres"]


def _app_table(store: Any) -> sa.Table:
    """The app's own table, next to jobhook's in the same database."""
    table = sa.Table(
        f"{store.tables.prefix}orders",
        sa.MetaData(),
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_id", sa.String(255)),
    )
    table.create(store.engine)
    return table


class AppStore:
    """The store, and the app's own engine on the same database (``engine``)."""

    def __init__(self, store: Any) -> None:
        self.inner = store
        self.engine = sa.create_engine(store.engine.url)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


@pytest.fixture(params=KINDS)
def store(request: pytest.FixtureRequest, make_store: Any) -> Any:
    built = AppStore(make_store(request.param))
    yield built
    sa.Table(f"{built.tables.prefix}orders", sa.MetaData()).drop(built.engine, checkfirst=True)
    built.engine.dispose()


def test_the_job_and_the_apps_row_commit_together(store: Any) -> None:
    orders = _app_table(store)
    with store.engine.begin() as conn:
        job = store.bind(conn).create({"prompt": "a red fox"}, job_id="order-1")
        conn.execute(orders.insert().values(id=1, job_id=job.id))
    assert store.get("order-1").status is JobStatus.PENDING
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(orders.c.job_id)).scalar_one() == "order-1"


def test_a_failure_after_the_job_rolls_both_back(store: Any) -> None:
    orders = _app_table(store)
    with pytest.raises(RuntimeError), store.engine.begin() as conn:  # noqa: PT012
        job = store.bind(conn).create({"prompt": "a red fox"}, job_id="order-2")
        conn.execute(orders.insert().values(id=2, job_id=job.id))
        raise RuntimeError("the app fails after the job")
    with pytest.raises(JobNotFoundError):
        store.get("order-2")
    with store.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(orders)).scalar_one() == 0


def test_the_job_is_first_in_the_transaction_and_still_rolls_back(store: Any) -> None:
    # On SQLite the driver opens no transaction before a write: the view must, or the
    # savepoint's release would commit on its own.
    with store.engine.connect() as conn:
        store.bind(conn).create({}, job_id="first")
        conn.rollback()
    with pytest.raises(JobNotFoundError):
        store.get("first")


def test_a_taken_id_leaves_the_apps_transaction_usable(store: Any) -> None:
    orders = _app_table(store)
    store.create({}, job_id="taken")
    with store.engine.begin() as conn:
        bound = store.bind(conn)
        with pytest.raises(JobExistsError):
            bound.create({}, job_id="taken")
        bound.create({}, job_id="fresh")
        conn.execute(orders.insert().values(id=3, job_id="fresh"))
    assert store.get("fresh").status is JobStatus.PENDING


def test_apply_in_an_orm_session_commits_with_it(store: Any) -> None:
    job = store.create({})
    with orm.Session(store.engine) as session:
        result = store.bind(session.connection()).apply(
            job.id, JobUpdate("running", progress=10), delivery_id="d1"
        )
        assert result.applied
        session.rollback()
    assert store.get(job.id).status is JobStatus.PENDING
    with orm.Session(store.engine) as session, session.begin():
        store.bind(session.connection()).apply(job.id, JobUpdate("running", progress=10))
    assert store.get(job.id).progress == 10.0
    assert [e.version for e in store.events()] == [2]


def test_an_unknown_job_leaves_nothing_behind_in_the_transaction(store: Any) -> None:
    with store.engine.begin() as conn:
        bound = store.bind(conn)
        assert bound.apply("nobody", JobUpdate("succeeded"), delivery_id="d9").outcome == (
            "not_found"
        )
        bound.create({}, job_id="nobody")
    # The delivery id was not recorded, so its retry applies.
    assert store.apply("nobody", JobUpdate("succeeded"), delivery_id="d9").applied


def test_postgres_refuses_a_second_apply_in_one_transaction(make_store: Any) -> None:
    store = AppStore(make_store("postgres"))
    job = store.create({})
    with store.engine.begin() as conn:
        bound = store.bind(conn)
        assert bound.apply(job.id, JobUpdate("running", progress=1)).applied
        with pytest.raises(ValidationError, match="at most one update"):
            bound.apply(job.id, JobUpdate("running", progress=2))


def test_an_autocommit_connection_is_refused(make_store: Any) -> None:
    store = make_store("postgres")  # the engine it made itself is in autocommit
    with store.engine.connect() as conn, pytest.raises(ValidationError, match="autocommit"):
        store.bind(conn)
