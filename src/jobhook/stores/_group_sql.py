"""The group commit's batch statement for one store's tables, and its answers.

`GroupStatements` builds the one statement a batch of `jobhook.stores._group` runs in
autocommit (its data-modifying CTEs record the delivery ids, lock the jobs, apply the
guarded UPDATE and write the outbox events; see that module's docstring), and turns its
rows into each delivery's `ApplyResult`, as steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from jobhook._convert import dumps
from jobhook._lifecycle import allowed_from, changes, judge
from jobhook._models import ApplyResult, JobStatus, Outcome
from jobhook.stores._rows import applied, job_from_json
from jobhook.stores._schema import Tables
from jobhook.stores._statements import BEFORE, event_id
from jobhook.stores._steps import Steps

if TYPE_CHECKING:  # the queue's entries; _group imports this module
    from jobhook.stores._group import Pending

__all__ = ["GroupStatements"]


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
            # Jobs as JSON objects, one column each rather than one per field (see
            # `Statements.one_trip`): the job as written, and the job before, only where
            # nothing was written (not read twice otherwise).
            sa.func.row_to_json(updated.table_valued(), type_=postgresql.JSON).label("job"),
            sa.case(
                (
                    sa.and_(u.id.is_(None), locked.c.id.is_not(None)),
                    sa.func.row_to_json(locked.table_valued(), type_=postgresql.JSON),
                )
            ).label(BEFORE),
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
        return applied(job_from_json(row["job"]), entry.delivery_id, entry.now, row["event_id"])
    if row[BEFORE] is None:
        # No job: nothing was recorded, and a retry applies once the job exists.
        seen = entry.delivery_id is not None and row["seen"]
        return ApplyResult(Outcome.DUPLICATE if seen else Outcome.NOT_FOUND, None)
    job = job_from_json(row[BEFORE])
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
