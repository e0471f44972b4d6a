"""Durable outbox consumers: hand every event to a function, at least once, in order.

`OutboxConsumer` (and `AsyncOutboxConsumer`) keep a position per name in the store, so
a restart resumes where the last instance stopped; a lease (owner + expiry in the
consumers table) lets one instance per name work while the others stand by; a handler
that keeps failing on an event parks it (kept, visible, replayable) instead of stopping
every later notification. On PostgreSQL the consumer LISTENs for the events table's
trigger and wakes at each commit; elsewhere it polls.

The rules live once in `_ConsumerBase`; the two classes are the thin sync and async
shells around the same calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import socket
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from jobhook._models import JobEvent
from jobhook._outbox import REPLAY, ParkedEvent, check_consumer_name, check_lease
from jobhook.exceptions import ValidationError

__all__ = ["AsyncOutboxConsumer", "OutboxConsumer"]

logger = logging.getLogger("jobhook")

#: Longest pause between two attempts at a failing event, in seconds.
MAX_RETRY_DELAY = 30.0
#: Longest wait in one piece, so that ``stop`` is noticed promptly.
_SLICE = 0.25
#: How long after a notification the consumer keeps looking again soon: the outbox's
#: bounded wait behind other transactions (2 s), and some.
_RECHECK_FOR = 3.0


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValidationError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000]


def _listen_url(store: Any) -> str | None:
    """The libpq URL of the store's PostgreSQL database, or None (not PostgreSQL)."""
    engine = getattr(store, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        return None
    try:
        import psycopg  # noqa: F401
    except ImportError:  # pragma: no cover - psycopg ships with jobhook[postgres]
        return None
    url = engine.url.set(drivername="postgresql")
    return str(url.render_as_string(hide_password=False))


class _ConsumerBase:
    """What both consumers share: configuration, the lease clock, and the rules for
    retrying and parking."""

    def __init__(
        self,
        store: Any,
        name: str,
        handle: Callable[[JobEvent], Any],
        *,
        batch: int,
        lease: float,
        poll_interval: float,
        max_attempts: int,
        retry_delay: float,
        listen: bool,
    ) -> None:
        from jobhook.stores.protocol import check_limit

        self.store = store
        self.name = check_consumer_name(name)
        self.handle = handle
        self.batch = check_limit(batch)
        self.lease = check_lease(lease).total_seconds()
        self.poll_interval = _positive("poll_interval", poll_interval)
        self.max_attempts = check_limit(max_attempts)
        self.retry_delay = _positive("retry_delay", retry_delay)
        #: This instance's name in the lease: host, process, and a random part.
        self.owner = f"{socket.gethostname()[:180]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._listen = _listen_url(store) if listen else None
        self._position = 0
        self._renew_at = 0.0
        self._recheck_until = 0.0
        self._recheck_delay = 0.0025
        self._holding = False  # whether this instance holds the lease, as far as it knows

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} position={self._position}>"

    @property
    def position(self) -> int:
        """The id of the last event this consumer passed (handled or parked)."""
        return self._position

    def _claimed(self, started: float) -> None:
        # The lease runs from before the claim was sent; renewing after a third of it
        # leaves two thirds for the handler call in progress (see the docs: a handler
        # that runs longer than that may overlap with a standby taking over).
        self._renew_at = started + self.lease / 3

    def _due_for_renewal(self) -> bool:
        return time.monotonic() >= self._renew_at

    def _idle_wait(self) -> float:
        """How long to wait for work after a turn that left none.

        On PostgreSQL a notification can come before its event is visible to readers:
        `events()` holds back events behind older transactions still running (see
        `jobhook.stores._consumers.read_events`). So for a few seconds after each
        notification the consumer looks again soon (5 ms, doubling to 100 ms) instead of
        waiting for the next notification."""
        if self._listen is None or time.monotonic() >= self._recheck_until:
            return self.poll_interval
        self._recheck_delay = min(self._recheck_delay * 2, 0.1)
        return min(self._recheck_delay, self.poll_interval)

    def _notified(self) -> None:
        self._recheck_until = time.monotonic() + _RECHECK_FOR
        self._recheck_delay = 0.0025

    def _backoff(self, attempt: int) -> float:
        """The pause after failed ``attempt`` (1-based): doubling, capped."""
        return float(min(self.retry_delay * 2 ** (attempt - 1), MAX_RETRY_DELAY))


class OutboxConsumer(_ConsumerBase):
    """Calls ``handle(event)`` for each outbox event after the position kept for
    ``name``, in id order, at least once.

    One instance per name works at a time (a lease of ``lease`` seconds, renewed while
    it runs; the others stand by and take over when it stops or dies). A handler that
    raises is retried with a doubling pause from ``retry_delay``; after
    ``max_attempts`` the event is parked (``store.parked_events``) and the consumer
    moves on. ``handle`` should finish well within two thirds of ``lease``, and be
    idempotent (key what it writes by ``event.id``): after a crash the last batch is
    handed over again. Not thread-safe: one thread runs one instance.
    """

    def __init__(
        self,
        store: Any,
        name: str,
        handle: Callable[[JobEvent], Any],
        *,
        batch: int = 100,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        max_attempts: int = 5,
        retry_delay: float = 0.5,
        listen: bool = True,
    ) -> None:
        super().__init__(
            store,
            name,
            handle,
            batch=batch,
            lease=lease,
            poll_interval=poll_interval,
            max_attempts=max_attempts,
            retry_delay=retry_delay,
            listen=listen,
        )
        self._stop: threading.Event | None = None
        self._conn: Any = None

    def run_once(self) -> int:
        """Handle what is there now (replays asked for, then up to ``batch`` events)
        and return how many events were handled or parked; 0 when another instance
        holds the lease. Raises `StoreUnavailableError` when the store cannot be
        reached (nothing is skipped: the next call resumes at the kept position)."""
        if self._holding and not self._due_for_renewal():
            # The lease is ours and fresh: only its holder moves the position.
            position = self._position
        else:
            started = time.monotonic()
            claimed = self.store.claim_consumer(self.name, self.owner, lease=self.lease)
            self._holding = claimed is not None
            if claimed is None:
                return 0
            self._claimed(started)
            position = self._position = claimed
        done = self._replay()
        events = self.store.events(after=position, limit=self.batch)
        with contextlib.suppress(_Interrupted):
            done += self._handle_events(events)
        if self._position > position:
            started = time.monotonic()
            if self.store.advance_consumer(self.name, self.owner, self._position, lease=self.lease):
                self._claimed(started)
            else:
                self._holding = False
        return done

    def _handle_events(self, events: list[JobEvent]) -> int:
        done = 0
        for event in events:
            if self._stopping() or not self._renew_if_due():
                break
            if self._handle_with_retries(event):
                self._position = event.id
            elif self.store.park_event(
                self.name,
                self.owner,
                event,
                error=self._last_error,
                attempts=self.max_attempts,
                lease=self.lease,
            ):
                logger.warning(
                    "consumer %s parked event %s (job %s): %s",
                    self.name,
                    event.id,
                    event.job_id,
                    self._last_error,
                )
                self._position = event.id
            else:
                self._holding = False
                break  # the lease was lost: the new holder resumes from the kept position
            done += 1
        return done

    def _replay(self) -> int:
        """Hand the parked events asked for (``store.replay_parked``) to the handler."""
        parked: list[ParkedEvent] = self.store.parked_events(
            consumer=self.name, state=REPLAY, limit=self.batch
        )
        for item in parked:
            try:
                self.handle(item.event)
            except Exception as exc:
                self.store.settle_parked(item.id, handled=False, error=_describe(exc))
            else:
                self.store.settle_parked(item.id, handled=True)
        return len(parked)

    def _renew_if_due(self) -> bool:
        if not self._due_for_renewal():
            return True
        started = time.monotonic()
        if not self.store.advance_consumer(self.name, self.owner, self._position, lease=self.lease):
            self._holding = False
            return False
        self._claimed(started)
        return True

    def _handle_with_retries(self, event: JobEvent) -> bool:
        for attempt in range(1, self.max_attempts + 1):
            try:
                self.handle(event)
            except Exception as exc:
                self._last_error = _describe(exc)
                logger.info(
                    "consumer %s: event %s failed (attempt %s): %s",
                    self.name,
                    event.id,
                    attempt,
                    self._last_error,
                )
                if attempt == self.max_attempts:
                    return False
                self._sleep(self._backoff(attempt))
                if self._stopping() or not self._renew_if_due():
                    # Not parked, not passed: whoever holds the lease next retries it.
                    raise _Interrupted from None
            else:
                return True
        return False  # pragma: no cover - the loop returns

    _last_error = ""

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    def _sleep(self, seconds: float) -> None:
        if self._stop is None:
            time.sleep(seconds)
        else:
            self._stop.wait(seconds)

    def run(self, stop: threading.Event | None = None) -> None:
        """Handle events until ``stop`` is set (forever without one), then give the
        lease up so that a standby takes over at once. Waits for a notification on
        PostgreSQL (``poll_interval`` at most), polls every ``poll_interval`` elsewhere.
        A store that cannot be reached is retried every ``poll_interval``."""
        self._stop = stop = stop or threading.Event()
        try:
            if self._listen is not None:
                # LISTEN before the first read, so no commit after it goes unnoticed.
                with contextlib.suppress(Exception):
                    self._listener()
            while not stop.is_set():
                try:
                    done = self.run_once()
                except _Interrupted:
                    continue
                except Exception as exc:
                    from jobhook.exceptions import StoreUnavailableError

                    if not isinstance(exc, StoreUnavailableError):
                        raise
                    logger.warning("consumer %s: %s", self.name, exc)
                    done = 0
                if done < self.batch:
                    self._wait(self._idle_wait())
        finally:
            self._close_listener()
            self._holding = False
            with contextlib.suppress(Exception):
                self.store.release_consumer(self.name, self.owner)
            self._stop = None

    def _wait(self, timeout: float) -> None:
        """Until a notification, ``timeout`` or stop, whichever comes first."""
        assert self._stop is not None
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            if self._listen is None:
                self._stop.wait(min(left, _SLICE))
                continue
            try:
                conn = self._listener()
                if any(True for _ in conn.notifies(timeout=min(left, _SLICE), stop_after=1)):
                    # Take every notification already there: one read serves them all.
                    for _ in conn.notifies(timeout=0):
                        pass
                    self._notified()
                    return
            except Exception as exc:
                logger.warning("consumer %s: LISTEN failed, polling: %s", self.name, exc)
                self._close_listener()
                self._stop.wait(min(left, _SLICE))

    def _listener(self) -> Any:
        if self._conn is None:
            import psycopg

            assert self._listen is not None
            conn = psycopg.connect(self._listen, autocommit=True)
            conn.execute(f'LISTEN "{self.store.tables.notify_channel}"')
            self._conn = conn
        return self._conn

    def _close_listener(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.close()


class _Interrupted(Exception):
    """Stop was asked for, or the lease was lost, while an event was being retried."""


class AsyncOutboxConsumer(_ConsumerBase):
    """The async twin of `OutboxConsumer`, over an `AsyncJobStore`: ``handle`` may be a
    coroutine function (awaited) or a plain function. Same guarantees; runs on one
    event loop."""

    def __init__(
        self,
        store: Any,
        name: str,
        handle: Callable[[JobEvent], Awaitable[Any] | Any],
        *,
        batch: int = 100,
        lease: float = 30.0,
        poll_interval: float = 1.0,
        max_attempts: int = 5,
        retry_delay: float = 0.5,
        listen: bool = True,
    ) -> None:
        super().__init__(
            store,
            name,
            handle,
            batch=batch,
            lease=lease,
            poll_interval=poll_interval,
            max_attempts=max_attempts,
            retry_delay=retry_delay,
            listen=listen,
        )
        self._stop: asyncio.Event | None = None
        self._conn: Any = None

    async def _call(self, event: JobEvent) -> None:
        result = self.handle(event)
        if inspect.isawaitable(result):
            await result

    async def run_once(self) -> int:
        """Handle what is there now; see `OutboxConsumer.run_once`."""
        if self._holding and not self._due_for_renewal():
            # The lease is ours and fresh: only its holder moves the position.
            position = self._position
        else:
            started = time.monotonic()
            claimed = await self.store.claim_consumer(self.name, self.owner, lease=self.lease)
            self._holding = claimed is not None
            if claimed is None:
                return 0
            self._claimed(started)
            position = self._position = claimed
        done = await self._replay()
        events = await self.store.events(after=position, limit=self.batch)
        with contextlib.suppress(_Interrupted):
            done += await self._handle_events(events)
        if self._position > position:
            started = time.monotonic()
            if await self.store.advance_consumer(
                self.name, self.owner, self._position, lease=self.lease
            ):
                self._claimed(started)
            else:
                self._holding = False
        return done

    async def _handle_events(self, events: list[JobEvent]) -> int:
        done = 0
        for event in events:
            if self._stopping() or not await self._renew_if_due():
                break
            if await self._handle_with_retries(event):
                self._position = event.id
            elif await self.store.park_event(
                self.name,
                self.owner,
                event,
                error=self._last_error,
                attempts=self.max_attempts,
                lease=self.lease,
            ):
                logger.warning(
                    "consumer %s parked event %s (job %s): %s",
                    self.name,
                    event.id,
                    event.job_id,
                    self._last_error,
                )
                self._position = event.id
            else:
                self._holding = False
                break
            done += 1
        return done

    async def _replay(self) -> int:
        parked: list[ParkedEvent] = await self.store.parked_events(
            consumer=self.name, state=REPLAY, limit=self.batch
        )
        for item in parked:
            try:
                await self._call(item.event)
            except Exception as exc:
                await self.store.settle_parked(item.id, handled=False, error=_describe(exc))
            else:
                await self.store.settle_parked(item.id, handled=True)
        return len(parked)

    async def _renew_if_due(self) -> bool:
        if not self._due_for_renewal():
            return True
        started = time.monotonic()
        renewed = await self.store.advance_consumer(
            self.name, self.owner, self._position, lease=self.lease
        )
        if renewed:
            self._claimed(started)
        self._holding = bool(renewed)
        return bool(renewed)

    _last_error = ""

    async def _handle_with_retries(self, event: JobEvent) -> bool:
        for attempt in range(1, self.max_attempts + 1):
            try:
                await self._call(event)
            except Exception as exc:
                self._last_error = _describe(exc)
                logger.info(
                    "consumer %s: event %s failed (attempt %s): %s",
                    self.name,
                    event.id,
                    attempt,
                    self._last_error,
                )
                if attempt == self.max_attempts:
                    return False
                await self._sleep(self._backoff(attempt))
                if self._stopping() or not await self._renew_if_due():
                    raise _Interrupted from None
            else:
                return True
        return False  # pragma: no cover - the loop returns

    def _stopping(self) -> bool:
        return self._stop is not None and self._stop.is_set()

    async def _sleep(self, seconds: float) -> None:
        if self._stop is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Handle events until ``stop`` is set; see `OutboxConsumer.run`."""
        self._stop = stop = stop or asyncio.Event()
        try:
            if self._listen is not None:
                with contextlib.suppress(Exception):
                    await self._listener()
            while not stop.is_set():
                try:
                    done = await self.run_once()
                except _Interrupted:
                    continue
                except Exception as exc:
                    from jobhook.exceptions import StoreUnavailableError

                    if not isinstance(exc, StoreUnavailableError):
                        raise
                    logger.warning("consumer %s: %s", self.name, exc)
                    done = 0
                if done < self.batch:
                    await self._wait(self._idle_wait())
        finally:
            await self._close_listener()
            self._holding = False
            with contextlib.suppress(Exception):
                await self.store.release_consumer(self.name, self.owner)
            self._stop = None

    async def _wait(self, timeout: float) -> None:
        assert self._stop is not None
        if self._listen is None:
            await self._sleep(timeout)
            return
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                conn = await self._listener()
                async for _ in conn.notifies(timeout=min(left, _SLICE), stop_after=1):
                    self._notified()
                    return
            except Exception as exc:
                logger.warning("consumer %s: LISTEN failed, polling: %s", self.name, exc)
                await self._close_listener()
                await self._sleep(min(left, _SLICE))

    async def _listener(self) -> Any:
        if self._conn is None:
            import psycopg

            assert self._listen is not None
            conn = await psycopg.AsyncConnection.connect(self._listen, autocommit=True)
            await conn.execute(f'LISTEN "{self.store.tables.notify_channel}"')
            self._conn = conn
        return self._conn

    async def _close_listener(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()
