"""MariaDB/MySQL: what differs there (outbox ids in commit order, column types, locks),
and the race suite on the ``mariadb`` and ``async-mariadb`` store kinds."""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa

from jobhook import JobStatus, JobUpdate, Outcome, SQLJobStore, WebhookHandler
from jobhook.exceptions import StoreUnavailableError
from jobhook.stores._schema import async_url, sync_url

from . import test_store_races as races
from .conftest import MYSQL_SKIP_REASON, MYSQL_URL, _mysql_server_is_mariadb

needs_mysql = pytest.mark.skipif(not MYSQL_URL, reason=MYSQL_SKIP_REASON)


@pytest.mark.parametrize(
    ("given", "sync", "async_"),
    [
        ("mysql://u@h/db", "mysql+pymysql", "mysql+asyncmy"),
        ("mysql+pymysql://u@h/db", "mysql+pymysql", "mysql+asyncmy"),
        ("mariadb://u@h/db", "mariadb+pymysql", "mariadb+asyncmy"),
        ("mariadb+pymysql://u@h/db", "mariadb+pymysql", "mariadb+asyncmy"),
        ("mysql+aiomysql://u@h/db", "mysql+aiomysql", "mysql+aiomysql"),
    ],
)
def test_mysql_urls_pick_pymysql_and_asyncmy(given: str, sync: str, async_: str) -> None:
    assert sync_url(given).drivername == sync
    assert async_url(given).drivername == async_


# -- the outbox never skips an event ------------------------------------------------


@pytest.fixture(params=["mysql+pymysql", "mariadb+pymysql"])
def either_store(request: pytest.FixtureRequest) -> Iterator[SQLJobStore]:
    """A sync store on each of the two apply paths: MySQL's, and MariaDB's (a
    ``mariadb://`` URL, only on a MariaDB server)."""
    if not MYSQL_URL:
        pytest.skip(MYSQL_SKIP_REASON)
    if request.param.startswith("mariadb") and not _mysql_server_is_mariadb():
        pytest.skip("mariadb:// URLs need a MariaDB server")
    url = sa.make_url(MYSQL_URL).set(drivername=request.param)
    store = SQLJobStore(url, table_prefix=f"t{uuid.uuid4().hex[:10]}_", create_schema=True)
    yield store
    with store.engine.begin() as conn:
        store.tables.drop(conn)
    store.close()


@needs_mysql
def test_a_reader_paging_the_outbox_during_concurrent_applies_misses_no_event(
    either_store: SQLJobStore,
) -> None:
    """Writers on 6 threads apply to their own jobs while a reader pages with
    ``events(after=last)``, as an outbox consumer does. Each commit is delayed by a
    random moment (a ``commit`` listener), so a transaction that took an id early
    often commits after one that took a later id: were ids not handed out in commit
    order, the reader would see the later one first and skip the other for good."""
    store = either_store
    rng = random.Random(5)

    def jitter(_conn: Any) -> None:
        time.sleep(rng.random() / 500)

    sa.event.listen(store.engine, "commit", jitter)
    writers, per_writer = 6, 15
    jobs = [[store.create({"w": w, "n": n}).id for n in range(per_writer)] for w in range(writers)]
    done = threading.Event()
    applied_ids: list[int] = []
    errors: list[BaseException] = []
    seen: list[int] = []
    lock = threading.Lock()

    def write(job_ids: list[str]) -> None:
        try:
            for status in ("submitted", "running", "succeeded"):
                for job_id in job_ids:
                    result = store.apply(
                        job_id, JobUpdate(status), delivery_id=f"{job_id}-{status}"
                    )
                    assert result.event is not None
                    with lock:
                        applied_ids.append(result.event.id)
        except BaseException as exc:  # reported below
            errors.append(exc)

    def read() -> None:
        last = 0
        # Until the writers are done, then once more: everything committed by then.
        while True:
            finished = done.is_set()
            page = store.events(after=last, limit=7)
            seen.extend(e.id for e in page)
            if page:
                last = page[-1].id
            elif finished:
                return
            else:
                time.sleep(0.001)  # nothing new yet: let the writers run

    reader = threading.Thread(target=read)
    threads = [threading.Thread(target=write, args=(job_ids,)) for job_ids in jobs]
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    reader.join()
    assert errors == []
    assert len(applied_ids) == writers * per_writer * 3
    # The reader saw every event exactly once, in increasing order, none skipped.
    assert seen == sorted(applied_ids)
    assert seen == list(range(1, len(applied_ids) + 1))


@needs_mysql
def test_outbox_ids_continue_after_create_schema_runs_again(make_store: Any) -> None:
    store = make_store("mariadb")
    job = store.create({})
    first = store.apply(job.id, JobUpdate("running", progress=10))
    store.create_schema()
    second = store.apply(job.id, JobUpdate("running", progress=20))
    assert first.event is not None
    assert second.event is not None
    assert second.event.id == first.event.id + 1
    assert [e.id for e in store.events()] == [first.event.id, second.event.id]


@needs_mysql
def test_a_rolled_back_apply_gives_its_outbox_id_back(make_store: Any) -> None:
    """The counter is advanced inside the apply's transaction: an apply that fails after
    taking an id (here the event INSERT: its table is gone) leaves no gap."""
    store = make_store("mariadb")
    job = store.create({})
    assert store.apply("nobody", JobUpdate("running")).outcome is Outcome.NOT_FOUND
    store.tables.events.drop(store.engine)
    with pytest.raises(StoreUnavailableError):
        store.apply(job.id, JobUpdate("running"), delivery_id="d1")
    store.tables.events.create(store.engine)
    result = store.apply(job.id, JobUpdate("running"), delivery_id="d1")
    assert result.event is not None
    assert result.event.id == 1
    assert [e.id for e in store.events()] == [1]


# -- column types -------------------------------------------------------------------


@needs_mysql
@pytest.mark.parametrize("kind", ["mariadb", "async-mariadb"])
def test_values_come_back_as_written(make_store: Any, kind: str) -> None:
    """Microseconds, UTC, double precision, case-distinct ids, 4-byte characters."""
    store = make_store(kind)
    upper = store.create({"prompt": "a red fox 🦊"}, job_id="Job-1")
    lower = store.create({}, job_id="job-1")
    assert store.get("Job-1").input == {"prompt": "a red fox 🦊"}
    assert store.get("job-1").id == lower.id
    job = store.get(upper.id)
    assert job.created_at == upper.created_at
    assert job.created_at.tzinfo is not None
    assert job.created_at.utcoffset() == timedelta(0)
    result = store.apply(upper.id, JobUpdate("running", progress=40.1))
    assert result.job is not None
    assert result.job.progress == 40.1
    assert store.get(upper.id).progress == 40.1
    assert store.get(upper.id).updated_at == result.job.updated_at
    stale = store.stale(updated_before=datetime.now(timezone.utc) + timedelta(seconds=1))
    assert {j.id for j in stale} == {"Job-1", "job-1"}


@needs_mysql
def test_every_table_is_innodb_in_utf8mb4_bin(make_store: Any) -> None:
    store = make_store("mariadb")
    names = [t.name for t in store.tables.metadata.sorted_tables] + [store.tables.event_ids.name]
    assert f"{store.tables.prefix}consumers" in names
    assert f"{store.tables.prefix}parked_events" in names
    query = sa.text(
        "SELECT table_name, engine, table_collation FROM information_schema.tables "
        "WHERE table_schema = DATABASE() AND table_name IN :names"
    ).bindparams(sa.bindparam("names", expanding=True))
    with store.engine.connect() as conn:
        found = [tuple(row) for row in conn.execute(query, {"names": names})]
    assert sorted(found) == sorted((name, "InnoDB", "utf8mb4_bin") for name in names)


@needs_mysql
@pytest.mark.parametrize("kind", ["mariadb", "async-mariadb"])
def test_consumer_names_are_case_distinct_and_a_parked_error_keeps_its_characters(
    make_store: Any, kind: str
) -> None:
    store = make_store(kind)
    job = store.create({})
    event = store.apply(job.id, JobUpdate("succeeded")).event
    assert event is not None
    assert store.claim_consumer("mail", "a", lease=30) == 0
    # Another consumer, not the lease of "mail" under another owner.
    assert store.claim_consumer("Mail", "b", lease=30) == 0
    assert store.park_event(
        "Mail", "b", event, error="smtp \U0001f648 refused", attempts=3, lease=30
    )
    # Parking the same event again keeps the first record.
    assert store.park_event("Mail", "b", event, error="again", attempts=4, lease=30)
    [parked] = store.parked_events(consumer="Mail")
    assert (parked.error, parked.attempts, parked.event) == ("smtp \U0001f648 refused", 3, event)
    assert store.parked_events(consumer="mail") == []
    assert {(c.name, c.position) for c in store.consumers()} == {("mail", 0), ("Mail", event.id)}


@needs_mysql
def test_a_dead_letter_body_over_64_kib_is_kept_whole(make_store: Any) -> None:
    store = make_store("mariadb")
    body = bytes(range(256)) * 1024  # 256 KiB, every byte value
    letter = store.add_dead_letter("later", JobUpdate("succeeded"), delivery_id="d1", body=body)
    assert letter.body == body
    again = store.add_dead_letter("later", JobUpdate("succeeded"), delivery_id="d1", body=b"")
    assert again.id == letter.id
    assert [d.body for d in store.dead_letters()] == [body]


# -- errors -------------------------------------------------------------------------


@needs_mysql
def test_a_lock_wait_timeout_is_unavailable_and_writes_nothing(make_store: Any) -> None:
    """A row held by another transaction past the lock wait timeout: 503, nothing written,
    and the retry applies."""
    store = make_store("mariadb")
    job = store.create({})
    impatient = SQLJobStore(
        sa.create_engine(
            sync_url(store.engine.url),
            connect_args={"init_command": "SET SESSION innodb_lock_wait_timeout = 1"},
        ),
        table_prefix=store.tables.prefix,
    )
    handler = WebhookHandler(impatient, allow_unsigned=True)
    body = b'{"status": "succeeded", "output": {"n": 1}}'
    headers = {"webhook-id": "msg_1"}
    jobs = store.tables.jobs
    with store.engine.connect() as holder, holder.begin():
        holder.execute(sa.select(jobs.c.id).where(jobs.c.id == job.id).with_for_update())
        with pytest.raises(StoreUnavailableError, match="lock"):
            impatient.apply(job.id, JobUpdate("running"), delivery_id="d1")
        assert handler.handle(headers, body, job_id=job.id).status == 503
    assert store.get(job.id).version == 1
    assert store.events() == []
    assert impatient.apply(job.id, JobUpdate("running"), delivery_id="d1").applied
    assert handler.handle(headers, body, job_id=job.id).status == 200
    assert store.get(job.id).status is JobStatus.SUCCEEDED
    impatient.engine.dispose()


@needs_mysql
def test_missing_tables_say_how_to_create_them() -> None:
    assert MYSQL_URL is not None
    store = SQLJobStore(MYSQL_URL, table_prefix="never_created_")
    with pytest.raises(StoreUnavailableError, match="tables are missing"):
        store.get("x")
    store.close()


def test_an_unreachable_server_is_unavailable() -> None:
    store = SQLJobStore("mysql+pymysql://root@127.0.0.1:1/test")
    with pytest.raises(StoreUnavailableError, match="unavailable"):
        store.get("x")
    store.close()


# -- the race suite on MariaDB ------------------------------------------------------


@needs_mysql
def test_threads_race_on_one_mariadb_store(make_store: Any) -> None:
    races.test_threads_race_on_one_store(make_store, "mariadb")


@needs_mysql
def test_tasks_race_on_one_async_mariadb_store(make_store: Any) -> None:
    races.test_tasks_race_on_one_async_store(make_store, "async-mariadb")


@needs_mysql
def test_concurrent_retries_of_one_404_keep_one_mariadb_dead_letter(make_store: Any) -> None:
    races.test_concurrent_retries_of_one_404_keep_one_dead_letter(make_store, "mariadb")


@needs_mysql
def test_concurrent_async_retries_of_one_404_keep_one_mariadb_dead_letter(
    make_store: Any,
) -> None:
    races.test_concurrent_async_retries_of_one_404_keep_one_dead_letter(make_store, "async-mariadb")
