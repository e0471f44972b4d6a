"""The live-progress core: SSE framing, a stream's resume logic, the shared watcher.

Watchers here are polled by hand (`poll()`), so that what one wake-up reads is counted
exactly; the threaded and async paths are exercised over real servers in
``tests/integrations/test_live_servers.py``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from jobhook import AsyncInMemoryJobStore, InMemoryJobStore, JobError, JobUpdate
from jobhook._sse import Follow, LiveEvent, StreamOptions, StreamState, parse_last_event_id
from jobhook._streams import open_stream
from jobhook.live import AsyncWatcher, Watcher, _find_tail, shared_watcher

from .conftest import PG_SKIP_REASON, PG_URL


class CountingStore:
    """A sync store that counts its reads."""

    def __init__(self, store: InMemoryJobStore) -> None:
        self.store = store
        self.reads: list[str] = []

    def events(self, **kwargs: Any) -> Any:
        self.reads.append("events")
        return self.store.events(**kwargs)

    def get(self, job_id: str) -> Any:
        self.reads.append("get")
        return self.store.get(job_id)


def messages(chunks: list[bytes]) -> list[dict[str, Any]]:
    """SSE messages (not comments) as dicts of their fields, ``data`` parsed."""
    parsed = []
    for block in b"".join(chunks).decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if line[:1] != ":")
        if "data" in fields:
            parsed.append({**fields, "data": json.loads(fields["data"])})
    return parsed


def test_one_thousand_subscribers_cost_one_outbox_read_per_wake_up() -> None:
    memory = InMemoryJobStore()
    store = CountingStore(memory)
    jobs = [memory.create({}) for _ in range(100)]
    watcher = Watcher(store)
    watcher.poll()  # finds the outbox's end
    subscriptions = [watcher.subscribe(jobs[n % 100].id) for n in range(1000)]
    assert watcher.subscribers == 1000
    for job in jobs:
        memory.apply(job.id, JobUpdate("running", progress=50))
    store.reads.clear()

    assert watcher.poll() == 100
    assert store.reads == ["events"]
    for n, subscription in enumerate(subscriptions):
        (live,) = subscription.wait(0)
        assert (live.event.job_id, live.event.progress) == (jobs[n % 100].id, 50.0)
    watcher.close()


def test_a_finished_job_is_read_once_for_all_its_streams() -> None:
    memory = InMemoryJobStore()
    store = CountingStore(memory)
    job = memory.create({})
    watcher = Watcher(store)
    subscriptions = [watcher.subscribe(job.id) for _ in range(50)]
    memory.apply(job.id, JobUpdate("succeeded", output={"images": ["1.png"]}))
    store.reads.clear()
    watcher.poll()
    assert store.reads == ["events", "get"]
    for subscription in subscriptions:
        (live,) = subscription.wait(0)
        assert live.job is not None
        assert live.job.output == {"images": ["1.png"]}
    watcher.close()


def test_a_first_subscription_skips_what_committed_before_it() -> None:
    memory = InMemoryJobStore()
    job = memory.create({})
    for progress in range(1, 40):
        memory.apply(job.id, JobUpdate("running", progress=progress))
    watcher = Watcher(memory)
    subscription = watcher.subscribe(job.id)
    assert watcher.position == memory.events(limit=1000)[-1].id
    assert watcher.poll() == 0
    memory.apply(job.id, JobUpdate("running", progress=90))
    assert watcher.poll() == 1
    assert [live.event.progress for live in subscription.wait(0)] == [90.0]
    watcher.unsubscribe(subscription)
    watcher.unsubscribe(subscription)  # idempotent
    assert watcher.subscribers == 0
    watcher.close()


@pytest.mark.parametrize("ids", [[], [1], [1, 2, 3], [5, 9, 1000], list(range(3, 700, 7))])
@pytest.mark.parametrize("start", [0, 1])
def test_the_tail_search_finds_the_greatest_id(ids: list[int], start: int) -> None:
    if ids and start > ids[0]:
        pytest.skip("the start is an id the outbox has, or 0")
    search = _find_tail(start)
    after = next(search)
    reads, tail = 0, None
    while tail is None:
        reads += 1
        try:
            after = search.send(next((i for i in ids if i > after), None))
        except StopIteration as end:
            tail = end.value
    assert tail == (ids[-1] if ids else start)
    assert reads <= 2 * max(len(ids), 1).bit_length() + 2 * (ids[-1] if ids else 1).bit_length()


def test_the_async_watcher_reads_once_for_all_its_subscribers() -> None:
    async def scenario() -> None:
        store = AsyncInMemoryJobStore()
        job = await store.create({})
        watcher = AsyncWatcher(store, interval=60)
        subscriptions = [await watcher.subscribe(job.id) for _ in range(10)]
        await store.apply(job.id, JobUpdate("failed", error=JobError("nsfw", "refused")))
        assert await watcher.poll() == 1
        for subscription in subscriptions:
            (live,) = await subscription.wait(1)
            assert live.job is not None
            assert live.job.error == JobError("nsfw", "refused")
        for subscription in subscriptions:
            watcher.unsubscribe(subscription)
        assert watcher.subscribers == 0
        await watcher.aclose()

    asyncio.run(scenario())


def test_the_stream_state_sends_each_event_once_and_ends_after_the_terminal_one() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    store.apply(job.id, JobUpdate("running", progress=10))
    snapshot = store.get(job.id)
    store.apply(job.id, JobUpdate("running", progress=20))
    store.apply(job.id, JobUpdate("succeeded", output={"images": ["a.png"]}))
    first, second, third = store.events()
    state = StreamState(None, StreamOptions())
    assert state.start() == b"retry: 3000\n\n"
    assert messages([state.snapshot(snapshot)])[0]["data"]["progress"] == 10.0
    assert state.accept(LiveEvent(first)) is None  # older than the snapshot
    sent = [state.accept(LiveEvent(second)), state.accept(LiveEvent(second))]
    assert sent[1] is None
    assert state.done is False
    done = state.accept(LiveEvent(third, store.get(job.id)))
    assert state.done is True
    (message,) = messages([done or b""])
    assert message["id"] == str(third.id)
    assert message["event"] == "job"
    assert message["data"]["output"] == {"images": ["a.png"]}
    assert message["data"]["terminal"] is True


@pytest.mark.parametrize(
    ("header", "query", "expected"),
    [
        ("7", None, 7),
        (None, "9", 9),
        ("7", "9", 7),
        ("x", "9", 9),
        ("-1", None, None),
        (None, None, None),
    ],
)
def test_last_event_id_comes_from_the_header_then_the_query(
    header: str | None, query: str | None, expected: int | None
) -> None:
    assert parse_last_event_id(header, query) == expected


def test_a_resumed_stream_gets_exactly_the_missed_events() -> None:
    store = InMemoryJobStore()
    job, other = store.create({}), store.create({})
    store.apply(job.id, JobUpdate("running", progress=10))
    (seen,) = store.events()
    for progress in (20, 30):
        store.apply(job.id, JobUpdate("running", progress=progress))
        store.apply(other.id, JobUpdate("running", progress=progress))
    store.apply(job.id, JobUpdate("succeeded"))
    watcher = Watcher(store)
    status, stream = open_stream(store, watcher, Follow(job.id), seen.id, StreamOptions())
    assert status == 200
    assert stream is not None
    got = messages(list(stream))  # ends after the terminal event
    assert [(m["data"]["status"], m["data"]["progress"]) for m in got] == [
        ("running", 20.0),
        ("running", 30.0),
        ("succeeded", 100.0),
    ]
    assert watcher.subscribers == 0
    # Resuming after the last event: nothing will ever come, so 204 (EventSource stops).
    last = int(got[-1]["id"])
    assert open_stream(store, watcher, Follow(job.id), last, StreamOptions()) == (204, None)
    assert open_stream(store, watcher, Follow("missing"), None, StreamOptions()) == (404, None)
    watcher.close()


def test_a_stream_closed_after_its_first_bytes_subscribes_nothing() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    watcher = Watcher(store)
    status, stream = open_stream(store, watcher, Follow(job.id), None, StreamOptions())
    assert status == 200
    assert stream is not None
    assert next(stream).startswith(b"retry:")
    stream.close()  # type: ignore[attr-defined]
    assert watcher.subscribers == 0
    watcher.close()


def test_one_shared_watcher_per_store() -> None:
    sync, other = InMemoryJobStore(), InMemoryJobStore()
    assert shared_watcher(sync) is shared_watcher(sync)
    assert shared_watcher(sync) is not shared_watcher(other)
    assert isinstance(shared_watcher(sync), Watcher)
    assert isinstance(shared_watcher(AsyncInMemoryJobStore()), AsyncWatcher)


def test_options_refuse_a_heartbeat_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        StreamOptions(heartbeat=0)
    with pytest.raises(ValueError, match="interval"):
        Watcher(InMemoryJobStore(), interval=0)


def test_the_async_watcher_follows_a_new_event_loop() -> None:
    # A server restarted in the same process (or a test client's new loop): the
    # watcher's task, event and lock are rebuilt in the new loop.
    store = AsyncInMemoryJobStore()
    watcher = AsyncWatcher(store, interval=0.05)

    async def one_stream() -> int:
        job = await store.create({})
        subscription = await watcher.subscribe(job.id)
        await store.apply(job.id, JobUpdate("running", progress=1))
        (live,) = await subscription.wait(10)
        watcher.unsubscribe(subscription)
        return int(live.event.progress or 0)

    assert asyncio.run(one_stream()) == 1
    assert asyncio.run(one_stream()) == 1


def test_an_owners_stream_gets_every_job_of_the_owner_and_only_those() -> None:
    store = InMemoryJobStore()
    mine, also_mine, theirs = (store.create({}, owner_id=o) for o in ("u1", "u1", "u2"))
    watcher = Watcher(store)
    subscription = watcher.subscribe(owner_id="u1")
    for job in (mine, theirs, also_mine):
        store.apply(job.id, JobUpdate("succeeded"))
    watcher.poll()
    arrived = subscription.wait(0)
    assert [live.event.job_id for live in arrived] == [mine.id, also_mine.id]
    assert all(live.job is not None for live in arrived)  # finished: output read
    # The stream goes on after a terminal event: the owner may start another job.
    state = StreamState(None, StreamOptions(), one_job=False)
    assert all(state.accept(live) for live in arrived)
    assert state.done is False
    watcher.unsubscribe(subscription)
    watcher.close()


def test_a_resumed_owners_stream_gets_exactly_the_owners_missed_events() -> None:
    store = InMemoryJobStore()
    mine, theirs = store.create({}, owner_id="u1"), store.create({}, owner_id="u2")
    store.apply(mine.id, JobUpdate("running", progress=1))
    (seen,) = store.events()
    for progress in (2, 3):
        store.apply(theirs.id, JobUpdate("running", progress=progress))
        store.apply(mine.id, JobUpdate("running", progress=progress))
    watcher = Watcher(store)
    status, stream = open_stream(store, watcher, Follow(owner_id="u1"), seen.id, StreamOptions())
    assert status == 200
    assert stream is not None
    chunks = [next(stream) for _ in range(3)]  # the retry hint, then two events
    assert [(m["data"]["job_id"], m["data"]["progress"]) for m in messages(chunks)] == [
        (mine.id, 2.0),
        (mine.id, 3.0),
    ]
    stream.close()  # type: ignore[attr-defined]
    assert watcher.subscribers == 0
    watcher.close()


def test_a_follow_names_a_job_or_an_owner() -> None:
    with pytest.raises(ValueError, match="job_id or one owner_id"):
        Follow()
    with pytest.raises(ValueError, match="job_id or one owner_id"):
        Follow("job", "owner")


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)
@pytest.mark.parametrize("kind", ["postgres", "async-postgres"])
def test_on_postgres_a_commit_wakes_the_watcher_without_waiting_for_the_interval(
    make_store: Any, kind: str
) -> None:
    """The watcher LISTENs for the events table's notifications: with an interval of an
    hour, only a notification can make it read in time."""
    store = make_store(kind)
    job = store.create({})
    if kind == "postgres":
        watcher = Watcher(store, interval=3600)
        subscription = watcher.subscribe(job.id)
        try:
            deadline = time.monotonic() + 20
            store.apply(job.id, JobUpdate("running", progress=5))
            got: list[Any] = []
            while not got and time.monotonic() < deadline:
                got = subscription.wait(0.5)
            assert [e.event.version for e in got] == [2]
        finally:
            watcher.close()
        return

    inner = store.inner

    async def scenario() -> list[Any]:
        watcher = AsyncWatcher(inner, interval=3600)
        subscription = await watcher.subscribe(job.id)
        try:
            await inner.apply(job.id, JobUpdate("running", progress=5))
            got: list[Any] = []
            for _ in range(40):
                got = got or await subscription.wait(0.5)
            return got
        finally:
            await watcher.aclose()

    got = store.runner.run(scenario())
    assert [e.event.version for e in got] == [2]
