"""One stream of Server-Sent Events, sync or async: open it (404, 204, 503 or 200),
subscribe, send the snapshot or the missed events, then what the watcher hands over.

The framing and what was already sent are `jobhook._sse`'s; the watchers are
`jobhook.live`'s. The sync and async streams are the same steps, written twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, Protocol

from jobhook._models import Job, JobEvent
from jobhook._sse import Follow, LiveEvent, StreamOptions, StreamState
from jobhook.exceptions import JobhookError, JobNotFoundError, StoreUnavailableError
from jobhook.live import (
    BATCH,
    AsyncSubscription,
    AsyncWatcher,
    Subscription,
    Watcher,
    is_async_store,
    logger,
)


def _missed_events(store: Any, follow: Follow, after: int) -> Iterator[LiveEvent]:
    # An owner's: every event after the id, kept when it is the owner's (no filter
    # in the store for that: a reconnect's gap is short).
    while events := store.events(after=after, limit=BATCH, job_id=follow.job_id):
        for event in events:
            if follow.owner_id is None or event.owner_id == follow.owner_id:
                job = store.get(event.job_id) if event.status.terminal else None
                yield LiveEvent(event, job)
        after = events[-1].id
        if len(events) < BATCH:
            return


def _opening(store: Any, follow: Follow, last_event_id: int | None, options: StreamOptions) -> int:
    """The status a stream opens with, read now (a sync store): 200, or 404 for an
    unknown job, 204 when the client already had the job's last event (EventSource
    stops reconnecting on 204), 503 when the store is unavailable. An owner's stream
    always opens."""
    if follow.job_id is None:
        return 200
    try:
        job = store.get(follow.job_id)
        if (
            last_event_id is not None
            and job.terminal
            and options.end_on_terminal
            and not store.events(after=last_event_id, limit=1, job_id=follow.job_id)
        ):
            return 204
    except JobNotFoundError:
        return 404
    except StoreUnavailableError:
        return 503
    return 200


def open_stream(
    store: Any, watcher: Watcher, follow: Follow, last_event_id: int | None, options: StreamOptions
) -> tuple[int, Iterator[bytes] | None]:
    """The status to answer and, for 200, the stream's bytes (a sync store, a sync
    server). Nothing is subscribed until the stream is first iterated."""
    status = _opening(store, follow, last_event_id, options)
    if status != 200:
        return status, None
    return status, _sync_stream(store, watcher, follow, last_event_id, options)


def open_threaded_stream(
    store: Any, watcher: Watcher, follow: Follow, last_event_id: int | None, options: StreamOptions
) -> tuple[int, AsyncIterator[bytes] | None]:
    """`open_stream` for a sync store under an async server called from a sync view
    (Django under ASGI): checked now, streamed as an async iterator whose store reads
    run in worker threads."""
    status = _opening(store, follow, last_event_id, options)
    if status != 200:
        return status, None
    return status, _async_stream(_InThread(store), watcher, follow, last_event_id, options)


def _sync_stream(
    store: Any, watcher: Watcher, follow: Follow, last_event_id: int | None, options: StreamOptions
) -> Iterator[bytes]:
    state = StreamState(last_event_id, options, one_job=follow.job_id is not None)
    yield state.start()
    try:
        subscription = Subscription(follow)
        watcher._register(subscription)
    except JobhookError as exc:
        logger.warning("live stream of %s ended: %s", follow, exc)
        return
    try:
        if last_event_id is not None:
            for live in _missed_events(store, follow, last_event_id):
                if data := state.accept(live):
                    yield data
        elif follow.job_id is not None:
            yield state.snapshot(store.get(follow.job_id))
        while not state.done:
            arrived = subscription.wait(options.heartbeat)
            if not arrived:
                yield state.heartbeat()
            for live in arrived:
                if data := state.accept(live):
                    yield data
    except JobhookError as exc:  # the client reconnects and resumes from its last id
        logger.warning("live stream of %s ended: %s", follow, exc)
    finally:
        watcher.unsubscribe(subscription)


class _Reads(Protocol):
    def get(self, job_id: str) -> Awaitable[Job]: ...

    def events(
        self, *, after: int, limit: int, job_id: str | None
    ) -> Awaitable[list[JobEvent]]: ...


class _InThread:
    """A sync store's reads, awaited in a worker thread (the loop never blocks)."""

    def __init__(self, store: Any) -> None:
        self._store = store

    async def get(self, job_id: str) -> Job:
        job: Job = await asyncio.to_thread(self._store.get, job_id)
        return job

    async def events(self, *, after: int, limit: int, job_id: str | None) -> list[JobEvent]:
        events: list[JobEvent] = await asyncio.to_thread(
            lambda: self._store.events(after=after, limit=limit, job_id=job_id)
        )
        return events


def _reads(store: Any) -> _Reads:
    reads: _Reads = store if is_async_store(store) else _InThread(store)
    return reads


async def _asubscribe(watcher: Watcher | AsyncWatcher, follow: Follow) -> AsyncSubscription:
    if isinstance(watcher, AsyncWatcher):
        return await watcher._subscribe(follow)
    subscription = AsyncSubscription(follow, asyncio.get_running_loop())
    # The first subscription may read the outbox's end: not on the event loop. The
    # thread cannot be cancelled, so a stream cancelled meanwhile undoes it after.
    registering = asyncio.ensure_future(asyncio.to_thread(watcher._register, subscription))
    try:
        await asyncio.shield(registering)
    except asyncio.CancelledError:
        registering.add_done_callback(lambda _: watcher.unsubscribe(subscription))
        raise
    return subscription


async def aopen_stream(
    store: Any,
    watcher: Watcher | AsyncWatcher,
    follow: Follow,
    last_event_id: int | None,
    options: StreamOptions,
) -> tuple[int, AsyncIterator[bytes] | None]:
    """`open_stream` for async servers; a sync store is read in worker threads."""
    reads = _reads(store)
    if follow.job_id is not None:
        try:
            job = await reads.get(follow.job_id)
            if (
                last_event_id is not None
                and job.terminal
                and options.end_on_terminal
                and not await reads.events(after=last_event_id, limit=1, job_id=follow.job_id)
            ):
                return 204, None
        except JobNotFoundError:
            return 404, None
        except StoreUnavailableError:
            return 503, None
    return 200, _async_stream(reads, watcher, follow, last_event_id, options)


async def _async_stream(
    reads: _Reads,
    watcher: Watcher | AsyncWatcher,
    follow: Follow,
    last_event_id: int | None,
    options: StreamOptions,
) -> AsyncIterator[bytes]:
    state = StreamState(last_event_id, options, one_job=follow.job_id is not None)
    yield state.start()
    try:
        subscription = await _asubscribe(watcher, follow)
    except JobhookError as exc:
        logger.warning("live stream of %s ended: %s", follow, exc)
        return
    try:
        if last_event_id is not None:
            after = last_event_id
            while events := await reads.events(after=after, limit=BATCH, job_id=follow.job_id):
                for event in events:
                    if follow.owner_id is not None and event.owner_id != follow.owner_id:
                        continue
                    job = await reads.get(event.job_id) if event.status.terminal else None
                    if data := state.accept(LiveEvent(event, job)):
                        yield data
                after = events[-1].id
                if len(events) < BATCH:
                    break
        elif follow.job_id is not None:
            yield state.snapshot(await reads.get(follow.job_id))
        while not state.done:
            arrived = await subscription.wait(options.heartbeat)
            if not arrived:
                yield state.heartbeat()
            for live in arrived:
                if data := state.accept(live):
                    yield data
    except JobhookError as exc:  # the client reconnects and resumes from its last id
        logger.warning("live stream of %s ended: %s", follow, exc)
    finally:
        watcher.unsubscribe(subscription)
