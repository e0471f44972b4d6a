"""Group commit for the PostgreSQL stores: concurrent deliveries share one statement.

A store keeps at most `MAX_IN_FLIGHT` commits in flight. A delivery that finds a free
slot runs at once, as the store's usual single statement in autocommit: no timer, no
added latency. Deliveries that arrive while every slot is busy wait; when a commit
ends, the waiting ones go to the database together, as the next batch: one statement
in autocommit (`GroupStatements`), atomic on its own, whose data-modifying CTEs

1. record the batch's delivery ids of jobs that exist (``INSERT … ON CONFLICT DO
   NOTHING``, in delivery-id order),
2. then lock the batch's jobs (``SELECT … ORDER BY id FOR UPDATE``),
3. apply the guarded UPDATE of `Statements.guarded_update` to each, its shape (status,
   fields, sequence) given per row,
4. write one outbox event per updated job,

and return, per delivery, the job as written, or as it was when nothing was written.

Locks are taken in a fixed order (delivery ids, then job ids, as the single statement
does: its delivery id, then its job), so batches and single deliveries of several
processes cannot deadlock. A batch holds at most one delivery per job and per delivery
id; the others keep their place for the next batch, so each delivery gets what applying
them one after the other would give. Every caller is answered only after its batch
committed; if it fails, every caller in it gets the error and nothing of it is written
(a value the database refuses sends the batch's deliveries one by one instead, so that
only its own caller gets the `ValidationError`).
Event ids are ``txid * EVENT_SLOTS + slot`` (see `jobhook.stores._statements.event_id`),
``slot`` being the delivery's place in the batch: distinct within the transaction, and
ordered as transactions are for readers; per job, ``version`` orders events.

`GroupQueue` is the pure core (who runs now, who waits, what the next batch is) and
`GroupStatements` (in `jobhook.stores._group_sql`) the batch's statement and answers, as
steps; `GroupCommit` (threads) and `AsyncGroupCommit` (asyncio tasks) are the thin shells.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs

from jobhook._ids import check_delivery_id, utcnow
from jobhook._lifecycle import check_id
from jobhook._models import ApplyResult, JobUpdate
from jobhook.exceptions import StoreUnavailableError, ValidationError
from jobhook.stores._group_sql import GroupStatements
from jobhook.stores._rows import check_output
from jobhook.stores._statements import EVENT_SLOTS
from jobhook.stores._steps import Steps

__all__ = [
    "MAX_BATCH",
    "MAX_IN_FLIGHT",
    "AsyncGroupCommit",
    "GroupCommit",
    "GroupQueue",
    "GroupStatements",
    "Pending",
    "check_group_commit",
]

#: The most deliveries one batch carries (each applied one takes an event slot).
MAX_BATCH = min(256, EVENT_SLOTS)
#: How many commits one store keeps in flight at once: while one waits for the
#: database, the next batch is built and sent (both cores of a small machine work).
MAX_IN_FLIGHT = 4

W = TypeVar("W")
Answer = ApplyResult | BaseException


def check_group_commit(dialect: str) -> None:
    """Refuse ``group_commit=True`` on a database other than PostgreSQL."""
    if dialect != "postgresql":
        raise ValueError(f"group_commit=True needs PostgreSQL; this store is on {dialect!r}")


@attrs.define(eq=False)
class Pending(Generic[W]):
    """One delivery waiting for its batch, with the shell's way of waking its caller."""

    job_id: str
    update: JobUpdate
    delivery_id: str | None
    now: datetime
    waiter: W
    answer: Answer | None = None
    #: Set when this caller is to run `batch` (it leads the next batch).
    batch: list[Pending[W]] | None = None


def pending(job_id: str, update: JobUpdate, delivery_id: str | None, waiter: W) -> Pending[W]:
    """A delivery checked as `Operations.apply` checks it, before it waits for anything:
    a value no store can keep raises `ValidationError` to its caller alone."""
    check_id(job_id)
    if delivery_id is not None:
        check_delivery_id(delivery_id)
    check_output(update)
    return Pending(job_id, update, delivery_id, utcnow(), waiter)


class GroupQueue(Generic[W]):
    """Who runs now and who waits; what the next batch is. Pure, not thread-safe: the
    sync shell calls it under a lock, the async one from its event loop only."""

    def __init__(self, max_batch: int = MAX_BATCH, max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self.waiting: list[Pending[W]] = []
        self.in_flight = 0

    def arrive(self, entry: Pending[W]) -> bool:
        """True: a commit may start now, so ``entry`` runs now, alone. False: it waits."""
        if self.in_flight < self.max_in_flight and not self.waiting:
            self.in_flight += 1
            return True
        self.waiting.append(entry)
        return False

    def finish(self) -> list[Pending[W]] | None:
        """A commit in flight ended: the next batch to run in its place, or None when
        nobody waits."""
        batch = self._take()
        if not batch:
            self.in_flight -= 1
            return None
        return batch

    def _take(self) -> list[Pending[W]]:
        # Oldest first; one delivery per job and per delivery id: the rest keep their
        # place for the next batch, so the outcome is that of applying them in order.
        batch: list[Pending[W]] = []
        jobs: set[str] = set()
        deliveries: set[str] = set()
        rest: list[Pending[W]] = []
        for entry in self.waiting:
            if (
                len(batch) >= self.max_batch
                or entry.job_id in jobs
                or (entry.delivery_id is not None and entry.delivery_id in deliveries)
            ):
                rest.append(entry)
                continue
            batch.append(entry)
            jobs.add(entry.job_id)
            if entry.delivery_id is not None:
                deliveries.add(entry.delivery_id)
        self.waiting = rest
        return batch


def _answer(entry: Pending[Any]) -> ApplyResult:
    answer = entry.answer
    if isinstance(answer, BaseException):
        raise answer
    assert answer is not None
    return answer


def _settle(batch: Sequence[Pending[Any]], answers: Sequence[Answer]) -> None:
    for entry, answer in zip(batch, answers, strict=True):
        entry.answer = answer


def _interrupted() -> StoreUnavailableError:
    # What the callers of a batch learn when the thread or task running it was
    # interrupted (KeyboardInterrupt, cancellation) before it ended: their senders retry.
    return StoreUnavailableError("the group commit running this delivery was interrupted")


class GroupCommit:
    """The sync shell: threads. ``single`` runs one delivery as the store always does;
    ``run_batch`` runs a batch's steps (one statement, atomic alone) in autocommit.
    Thread-safe: the queue is only touched under a lock."""

    def __init__(
        self,
        statements: GroupStatements,
        single: Callable[[str, JobUpdate, str | None], ApplyResult],
        run_batch: Callable[[Steps[list[ApplyResult]]], list[ApplyResult]],
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._statements = statements
        self._single = single
        self._run_batch = run_batch
        self._queue: GroupQueue[threading.Event] = GroupQueue(max_batch, max_in_flight)
        self._lock = threading.Lock()

    def apply(self, job_id: str, update: JobUpdate, delivery_id: str | None) -> ApplyResult:
        """Apply alone if a commit slot is free, else in a batch; returns after the
        commit that made it durable, or raises what made that commit fail (the
        store's errors: `StoreUnavailableError` when the database is unreachable)."""
        entry = pending(job_id, update, delivery_id, threading.Event())
        with self._lock:
            alone = self._queue.arrive(entry)
        if alone:
            try:
                return self._single(job_id, update, delivery_id)
            finally:
                self._hand_off()
        entry.waiter.wait()
        batch = entry.batch
        if batch is not None:
            try:
                self._run(batch)
            finally:
                self._hand_off()
        return _answer(entry)

    def _run(self, batch: list[Pending[threading.Event]]) -> None:
        answers: list[Answer] = [_interrupted()] * len(batch)
        try:
            if len(batch) == 1:
                answers = [self._alone(batch[0])]
            else:
                answers = list(self._run_batch(self._statements.apply(batch)))
        except ValidationError:
            # The database refused a value and wrote nothing: one by one, so that
            # only the delivery it belongs to gets the error.
            answers = [self._alone(entry) for entry in batch]
        except Exception as exc:
            answers = [exc] * len(batch)
        finally:
            _settle(batch, answers)
            self._wake(batch)

    def _alone(self, entry: Pending[Any]) -> Answer:
        try:
            return self._single(entry.job_id, entry.update, entry.delivery_id)
        except Exception as exc:
            return exc

    @staticmethod
    def _wake(batch: list[Pending[threading.Event]]) -> None:
        for entry in batch[1:]:  # the first one ran the batch
            entry.waiter.set()

    def _hand_off(self) -> None:
        """The commit ended: wake the first caller of the next batch to run it."""
        with self._lock:
            batch = self._queue.finish()
        if batch is not None:
            batch[0].batch = batch
            batch[0].waiter.set()


class AsyncGroupCommit:
    """The async shell: asyncio tasks of one event loop. A lone delivery runs in its
    caller's task; a batch runs in a task of its own, so that a caller cancelled while
    it waits leaves the others' batch alone (its delivery may still be written: its
    sender, which got no answer, retries and gets ``duplicate``)."""

    def __init__(
        self,
        statements: GroupStatements,
        single: Callable[[str, JobUpdate, str | None], Awaitable[ApplyResult]],
        run_batch: Callable[[Steps[list[ApplyResult]]], Awaitable[list[ApplyResult]]],
        *,
        max_batch: int = MAX_BATCH,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        self._statements = statements
        self._single = single
        self._run_batch = run_batch
        self._queue: GroupQueue[asyncio.Future[None]] = GroupQueue(max_batch, max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()

    async def apply(self, job_id: str, update: JobUpdate, delivery_id: str | None) -> ApplyResult:
        """As `GroupCommit.apply`, for tasks of one event loop."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = pending(job_id, update, delivery_id, waiter)
        if self._queue.arrive(entry):
            try:
                return await self._single(job_id, update, delivery_id)
            finally:
                self._hand_off()
        await asyncio.shield(waiter)
        return _answer(entry)

    async def _run(self, batch: list[Pending[asyncio.Future[None]]]) -> None:
        answers: list[Answer] = [_interrupted()] * len(batch)
        try:
            if len(batch) == 1:
                answers = [await self._alone(batch[0])]
            else:
                answers = list(await self._run_batch(self._statements.apply(batch)))
        except ValidationError:
            answers = [await self._alone(entry) for entry in batch]  # as in GroupCommit
        except Exception as exc:
            answers = [exc] * len(batch)
        finally:
            _settle(batch, answers)
            for entry in batch:
                if not entry.waiter.done():
                    entry.waiter.set_result(None)
            self._hand_off()

    async def _alone(self, entry: Pending[Any]) -> Answer:
        try:
            return await self._single(entry.job_id, entry.update, entry.delivery_id)
        except Exception as exc:
            return exc

    def _hand_off(self) -> None:
        batch = self._queue.finish()
        if batch is not None:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
