"""The consumer and prune methods of the SQL stores: thin shells over the steps of
`jobhook.stores._consumers`, mixed into `SQLJobStore` and `AsyncSQLJobStore`."""

from __future__ import annotations

import builtins
from datetime import timedelta
from functools import cached_property
from typing import Any, TypeVar

from jobhook._models import JobEvent
from jobhook._outbox import (
    ConsumerInfo,
    ParkedEvent,
    PruneReport,
    check_prune,
    prune_plan,
    prune_report,
)
from jobhook.stores._consumers import ConsumerOperations
from jobhook.stores._schema import Tables
from jobhook.stores._steps import Steps

__all__ = ["AsyncSQLConsumerMethods", "SQLConsumerMethods"]

T = TypeVar("T")


class _Base:
    tables: Tables
    engine: Any

    @cached_property
    def _consumer_ops(self) -> ConsumerOperations:
        return ConsumerOperations(self.tables, self.engine.dialect.name)


class SQLConsumerMethods(_Base):
    """`JobStore`'s consumer and prune methods on a sync SQL store."""

    def _run(self, steps: Steps[T], *, standalone: bool = False) -> T:
        raise NotImplementedError  # pragma: no cover - the store's own

    def claim_consumer(self, name: str, owner: str, *, lease: float) -> int | None:
        """Take (or renew) the lease of consumer ``name`` for ``owner`` and return its
        position; None when another owner holds an unexpired lease. A new name starts
        at position 0. Atomic."""
        steps = self._consumer_ops.claim_consumer(name, owner, lease)
        return self._run(steps, standalone=self._consumer_ops.stands_alone)

    def advance_consumer(self, name: str, owner: str, position: int, *, lease: float) -> bool:
        """Move the position forward to ``position`` and renew the lease; False (nothing
        written) when ``owner`` does not hold the lease."""
        steps = self._consumer_ops.advance_consumer(name, owner, position, lease)
        return self._run(steps, standalone=self._consumer_ops.stands_alone)

    def release_consumer(self, name: str, owner: str) -> None:
        """Give the lease up (when ``owner`` holds it), so a standby takes over at once."""
        self._run(self._consumer_ops.release_consumer(name, owner), standalone=True)

    def park_event(
        self, name: str, owner: str, event: JobEvent, *, error: str, attempts: int, lease: float
    ) -> bool:
        """Keep ``event`` as parked for ``name`` and move its position past it, in one
        transaction; False (nothing written) when ``owner`` does not hold the lease."""
        steps = self._consumer_ops.park_event(name, owner, event, error, attempts, lease)
        return self._run(steps)

    def consumers(self) -> builtins.list[ConsumerInfo]:
        """Every registered consumer, by name."""
        return self._run(self._consumer_ops.consumers(), standalone=True)

    def parked_events(
        self, *, consumer: str | None = None, state: str | None = None, limit: int = 100
    ) -> builtins.list[ParkedEvent]:
        """Parked events, oldest first, of one consumer and in one state when given."""
        steps = self._consumer_ops.parked_events(consumer, state, limit)
        return self._run(steps, standalone=True)

    def replay_parked(self, parked_id: int) -> ParkedEvent:
        """Ask the parked event's consumer to hand it to its handler again (on its next
        turn). Raises `ParkedEventNotFoundError`."""
        return self._run(self._consumer_ops.replay_parked(parked_id))

    def settle_parked(self, parked_id: int, *, handled: bool, error: str | None = None) -> None:
        """Record how a replay went: ``handled``, or parked again with ``error``."""
        steps = self._consumer_ops.settle_parked(parked_id, handled, error)
        self._run(steps, standalone=True)

    def prune(
        self,
        *,
        deliveries_older_than: timedelta,
        finished_jobs_older_than: timedelta | None = None,
        batch: int = 1000,
    ) -> PruneReport:
        """Remove old delivery ids, events every consumer has passed, and (when asked)
        finished jobs, ``batch`` rows per transaction. See `JobStore.prune`."""
        check_prune(deliveries_older_than, finished_jobs_older_than, batch)
        report = PruneReport()
        for kind, cutoff in prune_plan(deliveries_older_than, finished_jobs_older_than):
            removed = batch
            while removed >= batch:
                steps = self._consumer_ops.prune_batch(kind, cutoff, batch)
                removed = self._run(steps, standalone=self._consumer_ops.stands_alone)
                report += prune_report(kind, removed)
        return report


class AsyncSQLConsumerMethods(_Base):
    """The async twin of `SQLConsumerMethods`."""

    async def _run(self, steps: Steps[T], *, standalone: bool = False) -> T:
        raise NotImplementedError  # pragma: no cover - the store's own

    async def claim_consumer(self, name: str, owner: str, *, lease: float) -> int | None:
        steps = self._consumer_ops.claim_consumer(name, owner, lease)
        return await self._run(steps, standalone=self._consumer_ops.stands_alone)

    async def advance_consumer(self, name: str, owner: str, position: int, *, lease: float) -> bool:
        steps = self._consumer_ops.advance_consumer(name, owner, position, lease)
        return await self._run(steps, standalone=self._consumer_ops.stands_alone)

    async def release_consumer(self, name: str, owner: str) -> None:
        steps = self._consumer_ops.release_consumer(name, owner)
        await self._run(steps, standalone=True)

    async def park_event(
        self, name: str, owner: str, event: JobEvent, *, error: str, attempts: int, lease: float
    ) -> bool:
        steps = self._consumer_ops.park_event(name, owner, event, error, attempts, lease)
        return await self._run(steps)

    async def consumers(self) -> builtins.list[ConsumerInfo]:
        return await self._run(self._consumer_ops.consumers(), standalone=True)

    async def parked_events(
        self, *, consumer: str | None = None, state: str | None = None, limit: int = 100
    ) -> builtins.list[ParkedEvent]:
        steps = self._consumer_ops.parked_events(consumer, state, limit)
        return await self._run(steps, standalone=True)

    async def replay_parked(self, parked_id: int) -> ParkedEvent:
        return await self._run(self._consumer_ops.replay_parked(parked_id))

    async def settle_parked(
        self, parked_id: int, *, handled: bool, error: str | None = None
    ) -> None:
        steps = self._consumer_ops.settle_parked(parked_id, handled, error)
        await self._run(steps, standalone=True)

    async def prune(
        self,
        *,
        deliveries_older_than: timedelta,
        finished_jobs_older_than: timedelta | None = None,
        batch: int = 1000,
    ) -> PruneReport:
        check_prune(deliveries_older_than, finished_jobs_older_than, batch)
        report = PruneReport()
        for kind, cutoff in prune_plan(deliveries_older_than, finished_jobs_older_than):
            removed = batch
            while removed >= batch:
                steps = self._consumer_ops.prune_batch(kind, cutoff, batch)
                removed = await self._run(steps, standalone=self._consumer_ops.stands_alone)
                report += prune_report(kind, removed)
        return report
