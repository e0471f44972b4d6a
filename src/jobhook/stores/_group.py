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
`GroupStatements` the batch's statement and answers, as steps; `GroupCommit` (threads)
and `AsyncGroupCommit` (asyncio tasks) are the thin shells.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import datetime
from typing import Any, Generic, TypeVar

import attrs
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from jobhook._convert import dumps
from jobhook._ids import check_delivery_id, utcnow
from jobhook._lifecycle import allowed_from, changes, check_id, judge
from jobhook._models import ApplyResult, JobStatus, JobUpdate, Outcome
from jobhook.exceptions import StoreUnavailableError, ValidationError
from jobhook.stores._rows import applied, check_output, job_from_row
from jobhook.stores._schema import Tables
from jobhook.stores._statements import BEFORE, EVENT_SLOTS, event_id
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


def _array(name: str, item: Any) -> Any:
    return sa.cast(sa.bindparam(name), postgresql.ARRAY(item))


_TEXT = sa.String()
#: The batch's rows, one array parameter per column: (column, parameter, type).
_INPUTS = (
    ("slot", "slots", sa.Integer()),
    ("job_id", "job_ids", _TEXT),
    ("delivery_id", "delivery_ids", _TEXT),
    ("now", "nows", sa.DateTime(timezone=True)),
    ("status", "statuses", _TEXT),
    ("allowed", "allowed", _TEXT),
    ("terminal", "terminal", sa.Boolean()),
    ("progress", "progresses", sa.Float()),
    ("output", "outputs", _TEXT),
    ("error_code", "error_codes", _TEXT),
    ("error_message", "error_messages", _TEXT),
    ("remote_id", "remote_ids", _TEXT),
    ("sequence", "sequences", sa.BigInteger()),
)


def _guarded_update(jobs: sa.Table, i: Any) -> sa.Update:
    """`Statements.guarded_update` for many rows: each row of ``i`` gives its update's
    shape (status, the statuses it applies to, fields set, sequence) as values."""
    c = jobs.c
    running = JobStatus.RUNNING.value
    # Rule 3: running after running never goes back in progress or sequence.
    keeps_order = sa.and_(
        sa.or_(i.c.progress.is_(None), c.progress.is_(None), c.progress <= i.c.progress),
        sa.or_(i.c.sequence.is_(None), c.sequence.is_(None), c.sequence < i.c.sequence),
    )
    takes_sequence = sa.and_(
        i.c.sequence.is_not(None), sa.or_(c.sequence.is_(None), c.sequence < i.c.sequence)
    )
    return (
        sa.update(jobs)
        .where(
            c.id == i.c.job_id,
            # Rules 1 and 2, as `allowed_from` says.
            c.status == sa.func.any(sa.func.string_to_array(i.c.allowed, ",")),
            sa.or_(i.c.status != running, c.status != running, keeps_order),
        )
        .values(
            status=i.c.status,
            version=c.version + 1,
            updated_at=i.c.now,
            completed_at=sa.case((i.c.terminal, i.c.now), else_=c.completed_at),
            progress=sa.func.coalesce(i.c.progress, c.progress),
            # NULL: the update carries no output (or error, remote id): the job keeps its own.
            output=sa.func.coalesce(sa.cast(i.c.output, postgresql.JSONB), c.output),
            error_code=sa.func.coalesce(i.c.error_code, c.error_code),
            error_message=sa.case(
                (i.c.error_code.is_not(None), i.c.error_message), else_=c.error_message
            ),
            remote_id=sa.func.coalesce(i.c.remote_id, c.remote_id),
            sequence=sa.case((takes_sequence, i.c.sequence), else_=c.sequence),
        )
    )


class GroupStatements:
    """A batch's one statement for one store's tables, and its answers as steps."""

    def __init__(self, tables: Tables) -> None:
        jobs, deliveries, events = tables.jobs, tables.deliveries, tables.events
        given = (
            sa.func.unnest(*(_array(param, type_) for _, param, type_ in _INPUTS))
            .table_valued(*(column for column, _, _ in _INPUTS))
            .render_derived(name="given")
        )
        i = sa.select(given).cte("i")
        # Every lookup is ``id = ANY(<the batch's ids>)``: an index scan whatever the
        # planner guesses of the batch's size (a join or a correlated EXISTS may become
        # a hash of the whole table, whose cost grows with it).
        named = jobs.c.id == sa.func.any(_array("job_ids", _TEXT))
        known = sa.select(jobs.c.id).where(named).cte("known")
        # As the statement's snapshot sees it: recorded before this statement.
        seen = (
            sa.select(deliveries.c.id)
            .where(deliveries.c.id == sa.func.any(_array("delivery_ids", _TEXT)))
            .cte("seen")
        )
        # 1. Record the delivery ids of jobs that exist, in delivery-id order.
        recorded = (
            postgresql.insert(deliveries)
            .from_select(
                ["id", "job_id", "received_at"],
                sa.select(i.c.delivery_id, i.c.job_id, i.c.now)
                .where(i.c.delivery_id.is_not(None), i.c.job_id.in_(sa.select(known.c.id)))
                .order_by(i.c.delivery_id),
            )
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(deliveries.c.id)
            .cte("d")
        )
        # 2. Then lock the jobs, in id order (the scalar subquery makes the lock wait for
        # the inserts). The locked rows are the jobs as they are now: the answer to a
        # refused or duplicate delivery.
        after_inserts = sa.select(sa.func.count()).select_from(recorded).scalar_subquery() >= 0
        locked = (
            sa.select(jobs)
            .where(named, after_inserts)
            .order_by(jobs.c.id)
            .with_for_update()
            .cte("locked")
        )
        # 3. The guarded UPDATE, of locked jobs only, for fresh delivery ids only.
        updated = (
            _guarded_update(jobs, i)
            .where(
                named,
                jobs.c.id == locked.c.id,
                sa.or_(i.c.delivery_id.is_(None), i.c.delivery_id.in_(sa.select(recorded.c.id))),
            )
            .returning(*jobs.c, i.c.slot.label("u_slot"), i.c.delivery_id.label("u_delivery_id"))
            .cte("u")
        )
        # 4. One outbox event per updated job: ids txid * EVENT_SLOTS + slot.
        u = updated.c
        written = (
            sa.insert(events)
            .from_select(
                [col.name for col in events.c],
                sa.select(
                    event_id(u.u_slot),
                    *(u.id, u.owner_id, u.kind, u.status, u.progress, u.version),
                    *(u.u_delivery_id, u.updated_at),
                ),
            )
            .returning(events.c.id, events.c.job_id)
            .cte("e")
        )
        self.apply_batch = sa.select(
            i.c.slot.label("slot"),
            i.c.delivery_id.in_(sa.select(recorded.c.id)).label("fresh"),
            i.c.delivery_id.in_(sa.select(seen.c.id)).label("seen"),
            written.c.id.label("event_id"),
            *(u[col.name] for col in jobs.c),
            # The job before: only where nothing was written (not read twice otherwise).
            *(
                sa.case((u.id.is_(None), locked.c[col.name])).label(f"{BEFORE}{col.name}")
                for col in jobs.c
            ),
        ).select_from(
            i.outerjoin(locked, locked.c.id == i.c.job_id)
            .outerjoin(updated, u.u_slot == i.c.slot)
            .outerjoin(written, written.c.job_id == u.id)
        )

    def apply(self, batch: Sequence[Pending[Any]]) -> Steps[list[ApplyResult]]:
        """The batch's answers, in its order (one delivery per job and delivery id):
        one statement, atomic alone."""
        changes_ = [changes(e.update) for e in batch]
        rows = yield (
            self.apply_batch,
            {
                "slots": list(range(len(batch))),
                "job_ids": [e.job_id for e in batch],
                "delivery_ids": [e.delivery_id for e in batch],
                "nows": [e.now for e in batch],
                "statuses": [e.update.status.value for e in batch],
                "allowed": [
                    ",".join(s.value for s in allowed_from(e.update.status)) for e in batch
                ],
                "terminal": [e.update.status.terminal for e in batch],
                "progresses": [v.get("progress") for v in changes_],
                "outputs": [None if "output" not in v else dumps(v["output"]) for v in changes_],
                "error_codes": [v["error"].code if "error" in v else None for v in changes_],
                "error_messages": [v["error"].message if "error" in v else None for v in changes_],
                "remote_ids": [v.get("remote_id") for v in changes_],
                "sequences": [e.update.sequence for e in batch],
            },
        )
        by_slot = {row["slot"]: row for row in rows}
        return [_answer_of(entry, by_slot[slot]) for slot, entry in enumerate(batch)]


def _answer_of(entry: Pending[Any], row: Mapping[str, Any]) -> ApplyResult:
    """One delivery's answer from its row of the batch's statement."""
    if row["event_id"] is not None:
        return applied(job_from_row(row), entry.delivery_id, entry.now, row["event_id"])
    if row[f"{BEFORE}id"] is None:
        # No job: nothing was recorded, and a retry applies once the job exists.
        seen = entry.delivery_id is not None and row["seen"]
        return ApplyResult(Outcome.DUPLICATE if seen else Outcome.NOT_FOUND, None)
    job = job_from_row({k[len(BEFORE) :]: v for k, v in row.items() if k.startswith(BEFORE)})
    if entry.delivery_id is not None and not row["fresh"]:
        return ApplyResult(Outcome.DUPLICATE, job)
    outcome = judge(job, entry.update)
    if outcome is Outcome.APPLIED:
        # The job was locked: the guard saw this very row.
        raise RuntimeError(
            f"the group commit's guard refused an update the lifecycle rules apply to job "
            f"{entry.job_id!r} ({job.status} <- {entry.update.status}): a bug in jobhook"
        )
    return ApplyResult(outcome, job)


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
