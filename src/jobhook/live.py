"""Live progress: one watcher per process reads the outbox and feeds every open stream.

```
store.events(after=position) ──▶ Watcher (thread) / AsyncWatcher (task) ──▶ streams of job A
        one read per wake-up      fan-out by job id and owner id      ├▶ streams of job B
                                                                      └▶ streams of owner U
```

The framework views (`jobhook.flask.events_view`, `jobhook.fastapi.events_endpoint`,
`jobhook.django.events_view`) open streams on the shared watcher of their store
(`shared_watcher`). A watcher wakes every ``interval`` seconds, or at once when
`wake()` is called (a hook for a push source such as PostgreSQL's LISTEN/NOTIFY), and
reads only while a stream is open: 1,000 streams cost one ``events()`` read per
wake-up, plus one ``get()`` per job that finished (for its output or error).

A stream (`jobhook._streams`) subscribes before it reads the job (or the events it
missed), so nothing that commits in between is lost; the overlap is dropped by
`jobhook._sse.StreamState`.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections import deque
from collections.abc import Generator, Sequence
from typing import Any, Protocol

from jobhook._models import Job, JobEvent
from jobhook._sse import Follow, LiveEvent, event_keys
from jobhook.exceptions import JobNotFoundError

__all__ = ["AsyncWatcher", "Watcher", "shared_watcher"]

logger = logging.getLogger("jobhook.live")

#: Events per outbox read; a wake-up after a burst pages until the end.
BATCH = 500


class _Subscriber(Protocol):
    follow: Follow

    def deliver(self, events: Sequence[LiveEvent]) -> None: ...


class Subscription:
    """One sync stream's inbox: the watcher thread delivers, the stream waits."""

    def __init__(self, follow: Follow) -> None:
        self.follow = follow
        self._ready = threading.Condition()
        self._items: deque[LiveEvent] = deque()

    def deliver(self, events: Sequence[LiveEvent]) -> None:
        with self._ready:
            self._items.extend(events)
            self._ready.notify()

    def wait(self, timeout: float) -> list[LiveEvent]:
        """What arrived, waiting up to ``timeout`` seconds for something."""
        with self._ready:
            if not self._items:
                self._ready.wait(timeout)
            items = list(self._items)
            self._items.clear()
        return items


class AsyncSubscription:
    """One async stream's inbox; the watcher may deliver from any thread."""

    def __init__(self, follow: Follow, loop: asyncio.AbstractEventLoop) -> None:
        self.follow = follow
        self._loop = loop
        self._ready = asyncio.Event()
        self._items: deque[LiveEvent] = deque()

    def deliver(self, events: Sequence[LiveEvent]) -> None:
        # A closed loop (RuntimeError) means a closed stream: nothing to deliver to.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._put, list(events))

    def _put(self, events: list[LiveEvent]) -> None:
        self._items.extend(events)
        self._ready.set()

    async def wait(self, timeout: float) -> list[LiveEvent]:
        """What arrived, waiting up to ``timeout`` seconds for something."""
        if not self._items:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._ready.wait(), timeout)
        self._ready.clear()
        items = list(self._items)
        self._items.clear()
        return items


def _find_tail(start: int) -> Generator[int, int | None, int]:
    """The greatest event id, in O(log n) one-event reads: sends ``after`` values,
    receives the id of the first event after each (None when there is none)."""
    low, probe, step = start, start, 1
    while (found := (yield probe)) is not None:
        low, probe, step = found, found + step, step * 2
    high = probe  # no event after `high`; `low` is an event (or the start)
    while low < high:
        middle = (low + high) // 2
        found = yield middle
        if found is None:
            high = middle
        else:
            low = found
    return low


class _Base:
    """What both watchers share: subscribers by job or owner, the position, the fan-out."""

    def __init__(self, store: Any, *, interval: float, batch: int) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be a positive number of seconds, not {interval!r}")
        self.store = store
        self.interval = interval
        self.batch = batch
        self.position: int | None = None
        self._lock = threading.Lock()
        self._by_key: dict[tuple[str, str], set[_Subscriber]] = {}
        self._count = 0
        self._listener: threading.Thread | None = None
        self._listening = threading.Event()  # set while the LISTEN is established
        self._closed = threading.Event()

    def _listen(self) -> None:
        """On PostgreSQL, start (once) a daemon thread that LISTENs for the events
        table's notifications (the trigger `create_schema()` installs) and calls
        `wake()` on each: a stream then hears of a commit in milliseconds instead of at
        the next interval, which stays as the fallback. Elsewhere, nothing."""
        with self._lock:
            if self._listener is not None and self._listener.is_alive():
                return
            from jobhook._consumer_base import _listen_url

            url = _listen_url(self.store)
            tables = getattr(self.store, "tables", None)
            if url is None or tables is None:
                return
            self._listener = threading.Thread(
                target=self._listen_loop,
                args=(url, tables.notify_channel),
                name="jobhook-live-listener",
                daemon=True,
            )
            self._listener.start()

    def _listen_loop(self, url: str, channel: str) -> None:
        import psycopg

        while not self._closed.is_set():
            try:
                with psycopg.connect(url, autocommit=True) as conn:
                    conn.execute(f'LISTEN "{channel}"')
                    self._listening.set()
                    self.wake()  # what committed before the LISTEN took hold
                    while not self._closed.is_set():
                        for _ in conn.notifies(timeout=1.0, stop_after=1):
                            self.wake()
            except Exception as exc:  # the interval still reads; try again later
                logger.warning("live watcher: LISTEN failed, polling only: %s", exc)
                self._closed.wait(5.0)
            finally:
                self._listening.clear()

    def wake(self) -> None:  # pragma: no cover - each watcher has its own
        raise NotImplementedError

    @property
    def subscribers(self) -> int:
        """How many streams are subscribed now."""
        return self._count

    def _add(self, subscriber: _Subscriber) -> None:
        with self._lock:
            self._by_key.setdefault(subscriber.follow.key, set()).add(subscriber)
            self._count += 1

    def unsubscribe(self, subscriber: _Subscriber) -> None:
        """Forget a stream's subscription (idempotent)."""
        with self._lock:
            subscribers = self._by_key.get(subscriber.follow.key)
            if subscribers is None or subscriber not in subscribers:
                return
            subscribers.discard(subscriber)
            self._count -= 1
            if not subscribers:
                del self._by_key[subscriber.follow.key]

    def _finished_watched(self, events: Sequence[JobEvent]) -> list[str]:
        """Jobs that finished in ``events`` and have streams: their output is read."""
        with self._lock:
            watched = self._by_key
            return list(
                {
                    e.job_id: None
                    for e in events
                    if e.status.terminal and any(k in watched for k in event_keys(e))
                }
            )

    def _fan_out(self, events: Sequence[JobEvent], jobs: dict[str, Job]) -> None:
        with self._lock:
            keys = {key for event in events for key in event_keys(event)}
            targets = {key: list(self._by_key.get(key, ())) for key in keys}
        # Built once per key, so that the streams of one job share their list.
        grouped: dict[tuple[str, str], list[LiveEvent]] = {}
        for event in events:
            live: LiveEvent | None = None
            for key in event_keys(event):
                if targets[key]:
                    if live is None:
                        job = jobs.get(event.job_id) if event.status.terminal else None
                        live = LiveEvent(event, job)
                    grouped.setdefault(key, []).append(live)
        for key, batch in grouped.items():
            for subscriber in targets[key]:
                subscriber.deliver(batch)


class Watcher(_Base):
    """The outbox watcher of a sync store: one daemon thread, started by the first
    subscription, reading while any stream is open.

    Thread-safe. `wake()` makes it read now (from any thread); `close()` stops it.
    """

    def __init__(self, store: Any, *, interval: float = 0.25, batch: int = BATCH) -> None:
        super().__init__(store, interval=interval, batch=batch)
        self._poll_lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def subscribe(self, job_id: str | None = None, *, owner_id: str | None = None) -> Subscription:
        """A subscription to one job's events (or every job of ``owner_id``) from now
        on; reads the outbox's end first when no other stream is open."""
        subscription = Subscription(Follow(job_id, owner_id))
        self._register(subscription)
        return subscription

    def _register(self, subscriber: _Subscriber) -> None:
        with self._poll_lock:
            if self._count == 0:
                # Nobody needed what committed while no stream was open: skip it.
                self.position = self._tail(self.position or 0)
            self._add(subscriber)
        self._start()

    def _tail(self, start: int) -> int:
        search = _find_tail(start)
        after = next(search)
        try:
            while True:
                found = self.store.events(after=after, limit=1)
                after = search.send(found[0].id if found else None)
        except StopIteration as end:
            return int(end.value)

    def poll(self) -> int:
        """One wake-up: read what committed since the last one and hand it to the
        streams; returns how many events were read. Raises what the store raises."""
        with self._poll_lock:
            if self.position is None:
                self.position = self._tail(0)
            read = 0
            while events := self.store.events(after=self.position, limit=self.batch):
                jobs = {}
                for job_id in self._finished_watched(events):
                    with contextlib.suppress(JobNotFoundError):
                        jobs[job_id] = self.store.get(job_id)
                self._fan_out(events, jobs)
                self.position = events[-1].id
                read += len(events)
                if len(events) < self.batch:
                    break
            return read

    def wake(self) -> None:
        """Read now rather than at the next interval (thread-safe, cheap)."""
        self._wake.set()

    def _start(self) -> None:
        with self._lock:
            # Not alive: never started, or started before a fork (gunicorn --preload).
            if self._stop.is_set() or (self._thread is not None and self._thread.is_alive()):
                return
            self._thread = threading.Thread(
                target=self._run, name="jobhook-live-watcher", daemon=True
            )
            self._thread.start()
        self._listen()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set() or self._count == 0:
                continue
            try:
                self.poll()
            except Exception:  # the next wake-up retries from the same position
                logger.exception("live watcher: reading the outbox failed")

    def close(self) -> None:
        """Stop the thread (streams still open get nothing more)."""
        self._stop.set()
        self._closed.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()


class AsyncWatcher(_Base):
    """The outbox watcher of an async store: one task in the running event loop,
    started by the first subscription, reading while any stream is open.

    `wake()` may be called from any thread; `aclose()` stops the task.
    """

    def __init__(self, store: Any, *, interval: float = 0.25, batch: int = BATCH) -> None:
        super().__init__(store, interval=interval, batch=batch)
        self._task: asyncio.Task[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._poll_lock: asyncio.Lock | None = None

    def _bind(self) -> tuple[asyncio.Event, asyncio.Lock]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._wake is None or self._poll_lock is None:
            # A new loop (tests, a restarted server): its own task, event and lock.
            self._loop, self._task = loop, None
            self._wake, self._poll_lock = asyncio.Event(), asyncio.Lock()
        return self._wake, self._poll_lock

    async def subscribe(
        self, job_id: str | None = None, *, owner_id: str | None = None
    ) -> AsyncSubscription:
        """A subscription to one job's events (or every job of ``owner_id``) from now
        on."""
        return await self._subscribe(Follow(job_id, owner_id))

    async def _subscribe(self, follow: Follow) -> AsyncSubscription:
        subscription = AsyncSubscription(follow, asyncio.get_running_loop())
        wake, lock = self._bind()
        async with lock:
            if self._count == 0:
                self.position = await self._tail(self.position or 0)
            self._add(subscription)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(wake))
        self._listen()
        return subscription

    async def _tail(self, start: int) -> int:
        search = _find_tail(start)
        after = next(search)
        try:
            while True:
                found = await self.store.events(after=after, limit=1)
                after = search.send(found[0].id if found else None)
        except StopIteration as end:
            return int(end.value)

    async def poll(self) -> int:
        """One wake-up: read what committed since the last one and hand it to the
        streams; returns how many events were read. Raises what the store raises."""
        _, lock = self._bind()
        async with lock:
            if self.position is None:
                self.position = await self._tail(0)
            read = 0
            while events := await self.store.events(after=self.position, limit=self.batch):
                jobs = {}
                for job_id in self._finished_watched(events):
                    with contextlib.suppress(JobNotFoundError):
                        jobs[job_id] = await self.store.get(job_id)
                self._fan_out(events, jobs)
                self.position = events[-1].id
                read += len(events)
                if len(events) < self.batch:
                    break
            return read

    def wake(self) -> None:
        """Read now rather than at the next interval (from any thread)."""
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            loop.call_soon_threadsafe(wake.set)

    async def _run(self, wake: asyncio.Event) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), self.interval)
            wake.clear()
            if self._count == 0:
                continue
            try:
                await self.poll()
            except Exception:  # the next wake-up retries from the same position
                logger.exception("live watcher: reading the outbox failed")

    async def aclose(self) -> None:
        """Stop the task."""
        self._closed.set()
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def is_async_store(store: Any) -> bool:
    """True for a store whose methods are coroutine functions."""
    return inspect.iscoroutinefunction(getattr(store, "get", None))


_shared: dict[int, tuple[Any, Watcher | AsyncWatcher]] = {}
_shared_lock = threading.Lock()


def shared_watcher(store: Any) -> Watcher | AsyncWatcher:
    """The process's watcher of ``store`` (created on first use): a `Watcher` for a
    sync store, an `AsyncWatcher` for an async one. Thread-safe."""
    with _shared_lock:
        held = _shared.get(id(store))
        if held is None or held[0] is not store:
            watcher = AsyncWatcher(store) if is_async_store(store) else Watcher(store)
            held = _shared[id(store)] = (store, watcher)
        return held[1]
