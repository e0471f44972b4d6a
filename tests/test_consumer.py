"""OutboxConsumer and AsyncOutboxConsumer: in order, at least once, one instance per
name, failing events retried then parked, and woken by LISTEN/NOTIFY on PostgreSQL."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest

from jobhook import (
    AsyncInMemoryJobStore,
    AsyncOutboxConsumer,
    JobEvent,
    JobStatus,
    JobUpdate,
    OutboxConsumer,
    ValidationError,
)

from .conftest import PG_SKIP_REASON, PG_URL, STORE_KINDS

#: `DjangoJobStore` keeps its consumers in its own models and runs them with
#: ``manage.py jobhook_consume`` (tests/test_django_app.py); `OutboxConsumer` runs on
#: every other store.
CONSUMER_KINDS = [kind for kind in STORE_KINDS if not kind.startswith("django-")]


@pytest.fixture(params=CONSUMER_KINDS)
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def _write(store: Any, n: int) -> list[int]:
    ids = []
    for _ in range(n):
        job = store.create({"p": 1})
        ids.append(store.apply(job.id, JobUpdate(JobStatus.SUBMITTED)).event.id)
    return ids


def _wait_until(condition: Any, what: str, timeout: float = 30.0) -> None:
    # A deadline only against hanging forever: no assertion is about time.
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.01)


def test_every_event_in_order_and_the_position_survives_a_restart(store: Any) -> None:
    ids = _write(store, 5)
    seen: list[int] = []
    first = OutboxConsumer(store, "mail", lambda e: seen.append(e.id), batch=2)
    assert first.run_once() == 2
    assert first.position == ids[1]
    first.store.release_consumer("mail", first.owner)
    # A new instance (a restart) resumes after the kept position.
    second = OutboxConsumer(store, "mail", lambda e: seen.append(e.id), batch=10)
    assert second.run_once() == 3
    assert seen == ids
    assert store.consumers()[0].position == ids[-1]
    assert second.run_once() == 0


def test_two_names_each_see_every_event(store: Any) -> None:
    ids = _write(store, 3)
    a: list[int] = []
    b: list[int] = []
    OutboxConsumer(store, "a", lambda e: a.append(e.id)).run_once()
    OutboxConsumer(store, "b", lambda e: b.append(e.id)).run_once()
    assert a == b == ids


def test_a_standby_waits_for_the_lease_then_takes_over(store: Any) -> None:
    ids = _write(store, 2)
    seen: list[tuple[str, int]] = []
    active = OutboxConsumer(store, "mail", lambda e: seen.append(("a", e.id)), batch=1)
    standby = OutboxConsumer(store, "mail", lambda e: seen.append(("b", e.id)), batch=1)
    assert active.run_once() == 1
    assert standby.run_once() == 0
    store.release_consumer("mail", active.owner)  # what run() does when it stops
    assert standby.run_once() == 1
    assert seen == [("a", ids[0]), ("b", ids[1])]


def test_a_failing_event_is_retried_then_parked_and_can_be_replayed(store: Any) -> None:
    ids = _write(store, 3)
    calls: list[int] = []
    broken = {ids[1]}

    def handle(event: JobEvent) -> None:
        calls.append(event.id)
        if event.id in broken:
            raise RuntimeError("mail server down")

    consumer = OutboxConsumer(store, "mail", handle, max_attempts=3, retry_delay=0.001)
    assert consumer.run_once() == 3
    # Retried three times, then parked; the next event was not held up.
    assert calls == [ids[0], ids[1], ids[1], ids[1], ids[2]]
    (parked,) = store.parked_events(consumer="mail")
    assert (parked.event.id, parked.attempts, parked.state) == (ids[1], 3, "parked")
    assert "mail server down" in parked.error
    assert consumer.position == ids[2]
    # Once fixed, a replay hands the parked event over again on the next turn.
    broken.clear()
    store.replay_parked(parked.id)
    calls.clear()
    consumer.run_once()
    assert calls == [ids[1]]
    assert store.parked_events()[0].state == "replayed"


def test_run_stops_cleanly_and_gives_the_lease_up(store: Any) -> None:
    if hasattr(store, "runner"):
        pytest.skip(
            "an async store's facade runs on one thread; AsyncOutboxConsumer.run is tested below"
        )
    seen: list[int] = []
    consumer = OutboxConsumer(store, "mail", lambda e: seen.append(e.id), poll_interval=0.01)
    stop = threading.Event()
    thread = threading.Thread(target=consumer.run, args=(stop,))
    thread.start()
    try:
        ids = _write(store, 3)
        _wait_until(lambda: seen == ids, "every event handled")
    finally:
        stop.set()
        thread.join()
    assert store.consumers()[0].owner is None
    assert store.claim_consumer("mail", "someone-else", lease=60) == ids[-1]


def test_bad_settings_are_refused() -> None:
    from jobhook import InMemoryJobStore

    store = InMemoryJobStore()
    with pytest.raises(ValidationError):
        OutboxConsumer(store, "", print)
    with pytest.raises(ValidationError):
        OutboxConsumer(store, "x", print, batch=0)
    with pytest.raises(ValidationError):
        OutboxConsumer(store, "x", print, poll_interval=0)


async def _async_flow(store: Any) -> None:
    ids = []
    for _ in range(3):
        job = await store.create({"p": 1})
        ids.append((await store.apply(job.id, JobUpdate(JobStatus.SUBMITTED))).event.id)
    seen: list[int] = []

    async def handle(event: JobEvent) -> None:
        await asyncio.sleep(0)
        if event.id == ids[1]:
            raise RuntimeError("no")
        seen.append(event.id)

    consumer = AsyncOutboxConsumer(store, "mail", handle, max_attempts=2, retry_delay=0.001)
    assert await consumer.run_once() == 3
    assert seen == [ids[0], ids[2]]
    assert [p.event.id for p in await store.parked_events()] == [ids[1]]
    # run() until stop, with a plain (not coroutine) handler.
    more: list[int] = []
    other = AsyncOutboxConsumer(store, "other", lambda e: more.append(e.id), poll_interval=0.01)
    stop = asyncio.Event()
    task = asyncio.create_task(other.run(stop))
    while more != ids:
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert other.position == ids[-1]


def test_async_consumer_on_memory() -> None:
    asyncio.run(_async_flow(AsyncInMemoryJobStore()))


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_async_consumer_on_sql(kind: str, tmp_path: Any) -> None:
    from jobhook import AsyncSQLJobStore

    if kind == "postgres":
        if not PG_URL:
            pytest.skip(PG_SKIP_REASON)
        url, prefix = PG_URL, f"t{uuid.uuid4().hex[:10]}_"
    else:
        url, prefix = f"sqlite:///{tmp_path / 'a.db'}", "jobhook_"

    async def main() -> None:
        store = AsyncSQLJobStore(url, table_prefix=prefix)
        # Other sessions on a shared server may hold the outbox back for its bound
        # (see test_outbox_wait_pg.py); this test is not about that wait.
        store._ops.outbox_wait = timedelta(0)
        await store.create_schema()
        try:
            await _async_flow(store)
        finally:
            if kind == "postgres":
                async with store.engine.begin() as conn:
                    await conn.run_sync(store.metadata.drop_all)
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("kind", ["postgres", "async-postgres"])
def test_postgres_consumer_wakes_on_commit_not_on_polling(make_store: Any, kind: str) -> None:
    store = make_store(kind)
    seen: list[int] = []
    if kind == "postgres":
        consumer: Any = OutboxConsumer(store, "mail", lambda e: seen.append(e.id))
        # An hour between polls: only a notification can wake it in this test.
        consumer.poll_interval = 3600
        stop = threading.Event()
        thread = threading.Thread(target=consumer.run, args=(stop,))
        thread.start()
        try:
            _wait_until(lambda: store.consumers() != [], "the consumer registered")
            time.sleep(0.2)  # let it reach its wait (not an assertion)
            ids = _write(store, 2)
            _wait_until(lambda: seen == ids, "the committed events handled")
        finally:
            stop.set()
            thread.join()
    else:

        async def main() -> None:
            inner = store.inner
            consumer = AsyncOutboxConsumer(inner, "mail", lambda e: seen.append(e.id))
            consumer.poll_interval = 3600
            stop = asyncio.Event()
            task = asyncio.create_task(consumer.run(stop))
            while not await inner.consumers():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
            ids = []
            for _ in range(2):
                job = await inner.create({"p": 1})
                ids.append((await inner.apply(job.id, JobUpdate(JobStatus.SUBMITTED))).event.id)
            deadline = time.monotonic() + 30
            while seen != ids and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            stop.set()
            await task
            assert seen == ids

        asyncio.run(main())
