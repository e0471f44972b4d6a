"""Group commit for the PostgreSQL stores: concurrent deliveries share one transaction.

A delivery that finds no commit in flight runs at once, as the store's usual single
statement in autocommit: no timer, no added latency. Deliveries that arrive while a
commit is in flight wait; when it ends, they go to the database together, as one
batch in one transaction:

1. one statement records the batch's delivery ids (``INSERT … ON CONFLICT DO
   NOTHING``, in delivery-id order) and then locks the batch's jobs
   (``SELECT … ORDER BY id FOR UPDATE``) and returns them;
2. the lifecycle rules (`jobhook._lifecycle.decide`) judge each delivery against its
   locked job, in Python, the one implementation of the rules;
3. one statement writes every applied update (``UPDATE … FROM unnest(…)``) and its
   outbox event, and returns the updated rows;
4. one ``COMMIT``.

Locks are taken in a fixed order (delivery ids, then job ids, as the single statement
does: its delivery id, then its job), so concurrent batches of several processes cannot
deadlock. A batch holds at most one delivery per job and per delivery id; the others
wait for the next batch, so a batch gives exactly what applying its deliveries one
after the other would. Every caller is answered only after its batch committed; if
anything fails, every caller in the batch gets the error and nothing of it is written.
Outbox event ids stay unique and ordered: ``txid * EVENT_SLOTS + slot`` (see
`jobhook.stores._statements.event_id`), ``slot`` being the delivery's place in the batch.

`GroupQueue` is the pure core (who runs now, who waits, what the next batch is) and
`GroupStatements` the batch's statements and rules, as steps; `GroupCommit` (threads)
and `AsyncGroupCommit` (asyncio tasks) are the thin shells.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from jobhook._convert import dumps
from jobhook._ids import check_delivery_id, utcnow
from jobhook._lifecycle import check_id, decide
from jobhook._models import ApplyResult, JobUpdate, Outcome
from jobhook.exceptions import StoreUnavailableError
from jobhook.stores._direct import Steps
from jobhook.stores._rows import applied, check_output, job_from_row
from jobhook.stores._schema import Tables
from jobhook.stores._statements import EVENT_SLOTS, event_id

__all__ = [
    "MAX_BATCH",
    "AsyncGroupCommit",
    "GroupCommit",
    "GroupQueue",
    "GroupStatements",
    "Pending",
    "check_group_commit",
]

#: The most deliveries one batch carries (each applied one takes an event slot).
MAX_BATCH = min(256, EVENT_SLOTS)

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

    def __init__(self, max_batch: int = MAX_BATCH) -> None:
        self.max_batch = max_batch
        self.waiting: list[Pending[W]] = []
        self.in_flight = False

    def arrive(self, entry: Pending[W]) -> bool:
        """True: nothing is in flight, so ``entry`` runs now, alone. False: it waits."""
        if not self.in_flight and not self.waiting:
            self.in_flight = True
            return True
        self.waiting.append(entry)
        return False

    def finish(self) -> list[Pending[W]] | None:
        """The commit in flight ended: the next batch to run (it is then in flight), or
        None when nobody waits."""
        batch = self._take()
        if not batch:
            self.in_flight = False
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


def _array(name: str, item: Any) -> Any:
    return sa.cast(sa.bindparam(name), postgresql.ARRAY(item))


class GroupStatements:
    """A batch's two statements for one store's tables, and its rules as steps."""

    def __init__(self, tables: Tables) -> None:
        jobs, deliveries, events = tables.jobs, tables.deliveries, tables.events
        text = sa.String()
        # 1. Record the delivery ids (of jobs that exist), then lock the jobs: both in a
        # fixed order. The scalar subquery makes the lock wait for the inserts.
        given = (
            sa.func.unnest(
                _array("ids", text), _array("delivery_ids", text), _array("nows", sa.DateTime(True))
            )
            .table_valued("job_id", "delivery_id", "received_at")
            .render_derived(name="given")
        )
        i = sa.select(given).cte("i")
        recorded = (
            postgresql.insert(deliveries)
            .from_select(
                ["id", "job_id", "received_at"],
                sa.select(i.c.delivery_id, i.c.job_id, i.c.received_at)
                .where(
                    i.c.delivery_id.is_not(None),
                    sa.exists().where(jobs.c.id == i.c.job_id),
                )
                .order_by(i.c.delivery_id),
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(deliveries.c.id)
            .cte("d")
        )
        after_inserts = sa.select(sa.func.count()).select_from(recorded).scalar_subquery() >= 0
        locked = (
            sa.select(jobs)
            .where(jobs.c.id.in_(sa.select(i.c.job_id)), after_inserts)
            .order_by(jobs.c.id)
            .with_for_update()
            .cte("locked")
        )
        self.lock = sa.select(
            i.c.job_id.label("given_id"),
            i.c.delivery_id.in_(sa.select(recorded.c.id)).label("fresh"),
            # As the statement's snapshot sees it: recorded before this statement.
            sa.exists().where(deliveries.c.id == i.c.delivery_id).label("seen"),
            *locked.c,
        ).select_from(i.outerjoin(locked, locked.c.id == i.c.job_id))

        # 2. Write the applied updates (their jobs are locked) and their events.
        changed = (
            sa.func.unnest(
                _array("slots", sa.Integer()),
                _array("ids", text),
                _array("statuses", text),
                _array("progresses", sa.Float()),
                _array("outputs", text),
                _array("error_codes", text),
                _array("error_messages", text),
                _array("remote_ids", text),
                _array("sequences", sa.BigInteger()),
                _array("versions", sa.Integer()),
                _array("nows", sa.DateTime(True)),
                _array("completed_ats", sa.DateTime(True)),
                _array("delivery_ids", text),
            )
            .table_valued(
                "slot",
                "job_id",
                "status",
                "progress",
                "output",
                "error_code",
                "error_message",
                "remote_id",
                "sequence",
                "version",
                "now",
                "completed_at",
                "delivery_id",
            )
            .render_derived(name="changed")
        )
        v = sa.select(changed).cte("v")
        c = jobs.c
        updated = (
            sa.update(jobs)
            .where(c.id == v.c.job_id)
            .values(
                status=v.c.status,
                progress=v.c.progress,
                # NULL: the update carries no output, the job keeps its own.
                output=sa.func.coalesce(sa.cast(v.c.output, postgresql.JSONB), c.output),
                error_code=v.c.error_code,
                error_message=v.c.error_message,
                remote_id=v.c.remote_id,
                sequence=v.c.sequence,
                version=v.c.version,
                updated_at=v.c.now,
                completed_at=v.c.completed_at,
            )
            .returning(*c, v.c.slot.label("slot"), v.c.delivery_id.label("e_delivery_id"))
            .cte("u")
        )
        written = (
            sa.insert(events)
            .from_select(
                [col.name for col in events.c],
                sa.select(
                    event_id(updated.c.slot),
                    updated.c.id,
                    updated.c.owner_id,
                    updated.c.kind,
                    updated.c.status,
                    updated.c.progress,
                    updated.c.version,
                    updated.c.e_delivery_id,
                    updated.c.updated_at,
                ),
            )
            .returning(events.c.id, events.c.job_id)
            .cte("e")
        )
        self.write = sa.select(
            *(col for col in updated.c if col.name not in ("e_delivery_id",)),
            written.c.id.label("event_id"),
        ).select_from(updated.join(written, written.c.job_id == updated.c.id))

    def apply(self, batch: Sequence[Pending[Any]]) -> Steps[list[ApplyResult]]:
        """The batch's answers, in its order (one delivery per job and delivery id)."""
        rows = yield (
            self.lock,
            {
                "ids": [e.job_id for e in batch],
                "delivery_ids": [e.delivery_id for e in batch],
                "nows": [e.now for e in batch],
            },
        )
        by_job = {row["given_id"]: row for row in rows}
        answers: list[ApplyResult | None] = [None] * len(batch)
        slots: list[int] = []
        news = []
        for slot, entry in enumerate(batch):
            row = by_job[entry.job_id]
            if row["id"] is None:
                # No job: nothing was recorded, and a retry applies once the job exists.
                seen = entry.delivery_id is not None and row["seen"]
                answers[slot] = ApplyResult(Outcome.DUPLICATE if seen else Outcome.NOT_FOUND, None)
                continue
            job = job_from_row(row)
            if entry.delivery_id is not None and not row["fresh"]:
                answers[slot] = ApplyResult(Outcome.DUPLICATE, job)
                continue
            outcome, new = decide(job, entry.update, entry.now)
            if outcome is not Outcome.APPLIED:
                answers[slot] = ApplyResult(outcome, job)
                continue
            slots.append(slot)
            news.append(new)
        if slots:
            written = yield (
                self.write,
                {
                    "slots": slots,
                    "ids": [n.id for n in news],
                    "statuses": [n.status.value for n in news],
                    "progresses": [n.progress for n in news],
                    "outputs": [
                        None if batch[s].update.output is None else dumps(batch[s].update.output)
                        for s in slots
                    ],
                    "error_codes": [n.error.code if n.error else None for n in news],
                    "error_messages": [n.error.message if n.error else None for n in news],
                    "remote_ids": [n.remote_id for n in news],
                    "sequences": [n.sequence for n in news],
                    "versions": [n.version for n in news],
                    "nows": [n.updated_at for n in news],
                    "completed_ats": [n.completed_at for n in news],
                    "delivery_ids": [batch[s].delivery_id for s in slots],
                },
            )
            for row in written:
                entry = batch[row["slot"]]
                answers[row["slot"]] = applied(
                    job_from_row(row), entry.delivery_id, entry.now, row["event_id"]
                )
        done = [a for a in answers if a is not None]
        if len(done) != len(batch):
            raise RuntimeError("a group commit batch left a delivery unanswered: a bug in jobhook")
        return done


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


class _Waiter:
    __slots__ = ("event",)

    def __init__(self) -> None:
        self.event = threading.Event()


class GroupCommit:
    """The sync shell: threads. ``single`` runs one delivery as the store always does;
    ``run_batch`` runs a batch's steps in one transaction and commits. Thread-safe."""

    def __init__(
        self,
        statements: GroupStatements,
        single: Callable[[str, JobUpdate, str | None], ApplyResult],
        run_batch: Callable[[Steps[list[ApplyResult]]], list[ApplyResult]],
        *,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._statements = statements
        self._single = single
        self._run_batch = run_batch
        self._queue: GroupQueue[_Waiter] = GroupQueue(max_batch)
        self._lock = threading.Lock()

    def apply(self, job_id: str, update: JobUpdate, delivery_id: str | None) -> ApplyResult:
        """Apply alone if nothing is in flight, else in the next batch; returns after
        the commit that made it durable, or raises what made that commit fail."""
        entry = pending(job_id, update, delivery_id, _Waiter())
        with self._lock:
            alone = self._queue.arrive(entry)
        if alone:
            try:
                return self._single(job_id, update, delivery_id)
            finally:
                self._hand_off()
        entry.waiter.event.wait()
        batch = entry.batch
        if batch is not None:
            try:
                self._run(batch)
            finally:
                self._hand_off()
        return _answer(entry)

    def _run(self, batch: list[Pending[_Waiter]]) -> None:
        answers: list[Answer] = [_interrupted()] * len(batch)
        try:
            if len(batch) == 1:
                (entry,) = batch
                answers = [self._single(entry.job_id, entry.update, entry.delivery_id)]
            else:
                answers = list(self._run_batch(self._statements.apply(batch)))
        except Exception as exc:
            answers = [exc] * len(batch)
        finally:
            _settle(batch, answers)
            self._wake(batch)

    @staticmethod
    def _wake(batch: list[Pending[_Waiter]]) -> None:
        for entry in batch[1:]:  # the first one ran the batch
            entry.waiter.event.set()

    def _hand_off(self) -> None:
        """The commit ended: wake the first caller of the next batch to run it."""
        with self._lock:
            batch = self._queue.finish()
        if batch is not None:
            batch[0].batch = batch
            batch[0].waiter.event.set()


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
    ) -> None:
        self._statements = statements
        self._single = single
        self._run_batch = run_batch
        self._queue: GroupQueue[asyncio.Future[None]] = GroupQueue(max_batch)
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
                (entry,) = batch
                answers = [await self._single(entry.job_id, entry.update, entry.delivery_id)]
            else:
                answers = list(await self._run_batch(self._statements.apply(batch)))
        except Exception as exc:
            answers = [exc] * len(batch)
        finally:
            _settle(batch, answers)
            for entry in batch:
                if not entry.waiter.done():
                    entry.waiter.set_result(None)
            self._hand_off()

    def _hand_off(self) -> None:
        batch = self._queue.finish()
        if batch is not None:
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
