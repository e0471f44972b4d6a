"""`AsyncOutboxConsumer`: the async twin of `jobhook.consumer.OutboxConsumer`."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any

from jobhook._consumer_base import WAIT_SLICE, ConsumerBase, Interrupted, describe, logger
from jobhook._models import JobEvent
from jobhook._outbox import REPLAY, ParkedEvent

__all__ = ["AsyncOutboxConsumer"]


class AsyncOutboxConsumer(ConsumerBase):
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
        with contextlib.suppress(Interrupted):
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
                await self.store.settle_parked(item.id, handled=False, error=describe(exc))
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
                await self._sleep(self._backoff(attempt))
                if self._stopping() or not await self._renew_if_due():
                    raise Interrupted from None
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
                except Interrupted:
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
                async for _ in conn.notifies(timeout=min(left, WAIT_SLICE), stop_after=1):
                    self._notified()
                    return
            except Exception as exc:
                logger.warning("consumer %s: LISTEN failed, polling: %s", self.name, exc)
                await self._close_listener()
                await self._sleep(min(left, WAIT_SLICE))

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
