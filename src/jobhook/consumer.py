"""Durable outbox consumers: hand every event to a function, at least once, in order.

`OutboxConsumer` (and `AsyncOutboxConsumer`) keep a position per name in the store, so
a restart resumes where the last instance stopped; a lease (owner + expiry in the
consumers table) lets one instance per name work while the others stand by; a handler
that keeps failing on an event parks it (kept, visible, replayable) instead of stopping
every later notification. On PostgreSQL the consumer LISTENs for the events table's
trigger and wakes at each commit; elsewhere it polls.

The rules live once in `jobhook._consumer_base`; this class and the async one
(`jobhook._consumer_async`) are the thin sync and async shells around the same calls.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from jobhook._consumer_async import AsyncOutboxConsumer
from jobhook._consumer_base import WAIT_SLICE, ConsumerBase, Interrupted, describe, logger
from jobhook._models import JobEvent
from jobhook._outbox import REPLAY, ParkedEvent

__all__ = ["AsyncOutboxConsumer", "OutboxConsumer"]


class OutboxConsumer(ConsumerBase):
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
        with contextlib.suppress(Interrupted):
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
                self.store.settle_parked(item.id, handled=False, error=describe(exc))
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
                self._last_error = describe(exc)
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
                    raise Interrupted from None
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
                except Interrupted:
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
                self._stop.wait(min(left, WAIT_SLICE))
                continue
            try:
                conn = self._listener()
                if any(True for _ in conn.notifies(timeout=min(left, WAIT_SLICE), stop_after=1)):
                    # Take every notification already there: one read serves them all.
                    for _ in conn.notifies(timeout=0):
                        pass
                    self._notified()
                    return
            except Exception as exc:
                logger.warning("consumer %s: LISTEN failed, polling: %s", self.name, exc)
                self._close_listener()
                self._stop.wait(min(left, WAIT_SLICE))

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
