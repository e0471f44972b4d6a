"""The consumer methods of the in-memory stores (durable outbox consumers and their
parked events, see `ConsumerStore`), mixed into `InMemoryJobStore` and
`AsyncInMemoryJobStore`."""

from __future__ import annotations

import builtins
import threading
from typing import Any

import attrs

from jobhook._ids import utcnow
from jobhook._models import JobEvent
from jobhook._outbox import (
    PARKED,
    REPLAY,
    REPLAYED,
    ConsumerInfo,
    ParkedEvent,
    check_consumer_name,
    check_lease,
)
from jobhook.exceptions import ParkedEventNotFoundError
from jobhook.stores.protocol import check_limit

__all__ = ["AsyncMemoryConsumerMethods", "MemoryConsumerMethods"]


class MemoryConsumerMethods:
    """`JobStore`'s consumer methods on the in-memory store's state, under its lock."""

    _lock: threading.Lock
    # name -> [position, owner, lease expiry]
    _consumers: dict[str, list[Any]]
    _parked: list[ParkedEvent]

    def claim_consumer(self, name: str, owner: str, *, lease: float) -> int | None:
        check_consumer_name(name)
        check_consumer_name(owner)
        now = utcnow()
        expires = now + check_lease(lease)
        with self._lock:
            state = self._consumers.get(name)
            if state is None:
                self._consumers[name] = [0, owner, expires]
                return 0
            position, holder, until = state
            if holder is not None and holder != owner and until >= now:
                return None
            state[1:] = [owner, expires]
            return int(position)

    def _advance_locked(self, name: str, owner: str, position: int, lease: float) -> bool:
        state = self._consumers.get(name)
        if state is None or state[1] != owner:
            return False
        state[0] = max(state[0], position)
        state[2] = utcnow() + check_lease(lease)
        return True

    def advance_consumer(self, name: str, owner: str, position: int, *, lease: float) -> bool:
        with self._lock:
            return self._advance_locked(name, owner, position, lease)

    def release_consumer(self, name: str, owner: str) -> None:
        with self._lock:
            state = self._consumers.get(name)
            if state is not None and state[1] == owner:
                state[1:] = [None, None]

    def park_event(
        self, name: str, owner: str, event: JobEvent, *, error: str, attempts: int, lease: float
    ) -> bool:
        with self._lock:
            if not self._advance_locked(name, owner, event.id, lease):
                return False
            if not any(p.consumer == name and p.event.id == event.id for p in self._parked):
                parked = ParkedEvent(
                    id=len(self._parked) + 1,
                    consumer=name,
                    event=event,
                    attempts=attempts,
                    error=error,
                    state=PARKED,
                    parked_at=utcnow(),
                )
                self._parked.append(parked)
            return True

    def consumers(self) -> builtins.list[ConsumerInfo]:
        with self._lock:
            waiting: dict[str, int] = {}
            for p in self._parked:
                if p.state != REPLAYED:
                    waiting[p.consumer] = waiting.get(p.consumer, 0) + 1
            return [
                ConsumerInfo(name, position, owner, until, waiting.get(name, 0))
                for name, (position, owner, until) in sorted(self._consumers.items())
            ]

    def parked_events(
        self, *, consumer: str | None = None, state: str | None = None, limit: int = 100
    ) -> builtins.list[ParkedEvent]:
        check_limit(limit)
        with self._lock:
            kept = [
                p
                for p in self._parked
                if (consumer is None or p.consumer == consumer)
                and (state is None or p.state == state)
            ]
        return kept[:limit]

    def replay_parked(self, parked_id: int) -> ParkedEvent:
        with self._lock:
            if not 0 < parked_id <= len(self._parked):
                raise ParkedEventNotFoundError(parked_id)
            parked = self._parked[parked_id - 1]
            if parked.state == PARKED:
                parked = self._parked[parked_id - 1] = attrs.evolve(parked, state=REPLAY)
            return parked

    def settle_parked(self, parked_id: int, *, handled: bool, error: str | None = None) -> None:
        with self._lock:
            if not 0 < parked_id <= len(self._parked):
                return
            parked = self._parked[parked_id - 1]
            if parked.state == REPLAY:
                self._parked[parked_id - 1] = attrs.evolve(
                    parked,
                    state=REPLAYED if handled else PARKED,
                    attempts=parked.attempts + 1,
                    error=parked.error if error is None else error,
                )


class AsyncMemoryConsumerMethods:
    """The async twin of `MemoryConsumerMethods`, over the sync store it wraps."""

    _store: MemoryConsumerMethods

    async def claim_consumer(self, name: str, owner: str, *, lease: float) -> int | None:
        return self._store.claim_consumer(name, owner, lease=lease)

    async def advance_consumer(self, name: str, owner: str, position: int, *, lease: float) -> bool:
        return self._store.advance_consumer(name, owner, position, lease=lease)

    async def release_consumer(self, name: str, owner: str) -> None:
        self._store.release_consumer(name, owner)

    async def park_event(
        self, name: str, owner: str, event: JobEvent, *, error: str, attempts: int, lease: float
    ) -> bool:
        return self._store.park_event(
            name, owner, event, error=error, attempts=attempts, lease=lease
        )

    async def consumers(self) -> builtins.list[ConsumerInfo]:
        return self._store.consumers()

    async def parked_events(
        self, *, consumer: str | None = None, state: str | None = None, limit: int = 100
    ) -> builtins.list[ParkedEvent]:
        return self._store.parked_events(consumer=consumer, state=state, limit=limit)

    async def replay_parked(self, parked_id: int) -> ParkedEvent:
        return self._store.replay_parked(parked_id)

    async def settle_parked(
        self, parked_id: int, *, handled: bool, error: str | None = None
    ) -> None:
        self._store.settle_parked(parked_id, handled=handled, error=error)
