"""Every store operation, written once as steps of statements."""

from __future__ import annotations

import builtins
from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from jobhook._convert import loads, normalize_json, update_to_dict
from jobhook._ids import check_delivery_id, utcnow
from jobhook._lifecycle import changes, check_id, check_reason, judge, new_job, transition
from jobhook._models import (
    JSON,
    ApplyResult,
    DeadLetter,
    Job,
    JobEvent,
    JobUpdate,
    Outcome,
)
from jobhook.exceptions import (
    DeadLetterNotFoundError,
    JobExistsError,
    JobNotFoundError,
)
from jobhook.stores._steps import Counted, Steps
from jobhook.stores._steps import Rollback as _Rollback
from jobhook.stores.protocol import StatusFilter, check_limit, status_values

__all__ = ["Operations"]

from jobhook.stores._consumers import read_events
from jobhook.stores._rows import (
    applied,
    as_float,
    check_output,
    dead_letter_from_row,
    event_row,
    first,
    job_from_json,
    job_from_row,
    utc,
)
from jobhook.stores._statements import Shape, Statements


class Operations(Statements):
    """Every store operation as steps (see `jobhook.stores._steps.Steps`): each yields
    ``(statement, parameters)`` and receives the rows, so that the sync and the async
    store run the same rules."""

    def select_jobs(self) -> sa.Select[Any]:
        """The SELECT `list` narrows: every row of the jobs table."""
        return sa.select(self.t.jobs)

    # -- operations -----------------------------------------------------------------

    def create(
        self,
        input: JSON,
        kind: str,
        owner_id: str | None,
        job_id: str | None,
        metadata: dict[str, JSON] | None,
    ) -> Steps[Job]:
        job = new_job(
            input, kind=kind, owner_id=owner_id, job_id=job_id, metadata=metadata, now=utcnow()
        )
        row = {
            "id": job.id,
            "kind": job.kind,
            "owner_id": job.owner_id,
            "input": job.input,
            "status": job.status.value,
            "metadata": job.metadata,
            "version": job.version,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
        }
        try:
            yield self.insert_job, row
        except sa_exc.IntegrityError:
            raise JobExistsError(job.id) from None
        return job

    def get(self, job_id: str) -> Steps[Job]:
        check_id(job_id)
        row = first((yield self.select_job, {"id": job_id}))
        if row is None:
            raise JobNotFoundError(job_id)
        return job_from_row(row)

    def get_by_remote_id(self, remote_id: str) -> Steps[Job]:
        check_id(remote_id, "remote_id")
        row = first((yield self.select_job_by_remote_id, {"remote_id": remote_id}))
        if row is None:
            raise JobNotFoundError(remote_id=remote_id)
        return job_from_row(row)

    def list(
        self,
        owner_id: str | None,
        status: StatusFilter,
        kind: str | None,
        limit: int,
        before: str | None,
    ) -> Steps[builtins.list[Job]]:
        check_limit(limit)
        jobs = self.t.jobs
        c = jobs.c
        query = self.select_jobs()
        if owner_id is not None:
            query = query.where(c.owner_id == owner_id)
        statuses = status_values(status)
        if statuses is not None:
            query = query.where(c.status.in_(statuses))
        if kind is not None:
            query = query.where(c.kind == kind)
        if before is not None:
            a = first((yield self.select_job, {"id": before}))
            if a is None:
                raise JobNotFoundError(before)
            query = query.where(
                sa.or_(
                    c.created_at < a["created_at"],
                    sa.and_(c.created_at == a["created_at"], c.id < a["id"]),
                )
            )
        query = query.order_by(c.created_at.desc(), c.id.desc()).limit(limit)
        return [job_from_row(r) for r in (yield query, None)]

    def apply(self, job_id: str, update: JobUpdate, delivery_id: str | None) -> Steps[ApplyResult]:
        # Refuse what no store can keep before anything is written.
        check_id(job_id)
        if delivery_id is not None:
            check_delivery_id(delivery_id)
        check_output(update)
        now = utcnow()
        values = changes(update)
        shape = self.shape(update, values)
        params = self.update_params(job_id, update, values, now)
        if self._one_trip is not None:
            steps = self._apply_by_statement(job_id, update, delivery_id, now, shape, params)
            return (yield from steps)
        if self.mysql is not None:
            return (yield from self._apply_locked(job_id, update, delivery_id, now, shape, params))
        if delivery_id is not None:
            inserted = yield (
                self.insert_delivery,
                {"id": delivery_id, "job_id": job_id, "received_at": now},
            )
            if not inserted:
                row = first((yield self.select_job, {"id": job_id}))
                return ApplyResult(Outcome.DUPLICATE, job_from_row(row) if row else None)
        row = first((yield self.guarded_update(shape), params))
        if row is not None:
            job = job_from_row(row)
            (event,) = yield self.insert_event, event_row(job, delivery_id, now)
            return applied(job, delivery_id, now, event["id"])
        return (yield from self._refused(job_id, update))

    def _apply_by_statement(
        self,
        job_id: str,
        update: JobUpdate,
        delivery_id: str | None,
        now: datetime,
        shape: Shape,
        params: dict[str, Any],
    ) -> Steps[ApplyResult]:
        """PostgreSQL's apply: every statement it runs is atomic on its own (see
        `one_trip`), so it is correct with or without a transaction around it."""
        with_delivery = delivery_id is not None
        trip = {**params, "e_delivery_id": delivery_id}
        if with_delivery:
            trip["d_id"] = delivery_id
        (done,) = yield self.one_trip(shape, with_delivery), trip
        if done["event_id"] is not None:
            return applied(job_from_json(done["job"]), delivery_id, now, done["event_id"])
        if not done["found"]:
            if done["seen"]:
                return ApplyResult(Outcome.DUPLICATE, None)
            # Nothing was written (a delivery id is only recorded for a known job).
            raise _Rollback(ApplyResult(Outcome.NOT_FOUND, None))
        # Refused or a duplicate: answered from the job as the statement saw it.
        before = job_from_json(done["job"])
        if not done["fresh"]:
            return ApplyResult(Outcome.DUPLICATE, before)
        outcome = judge(before, update)
        if outcome is not Outcome.APPLIED:
            return ApplyResult(outcome, before)
        # The guard saw a newer row than the snapshot (a change committed while this
        # statement waited for the row's lock): read the job as it is now.
        return (yield from self._refused(job_id, update))

    def _apply_locked(
        self,
        job_id: str,
        update: JobUpdate,
        delivery_id: str | None,
        now: datetime,
        shape: Shape,
        params: dict[str, Any],
    ) -> Steps[ApplyResult]:
        """MySQL's apply, in one transaction (no RETURNING there; see `_mysql`): the
        job row is locked first, so nothing is written for an unknown job and the
        lifecycle rules judge the row as it stays until commit; the guarded UPDATE
        still decides in the database and takes the next outbox id in commit order."""
        m = self.mysql
        assert m is not None
        row = first((yield m.lock_job, {"id": job_id}))
        if row is None:
            # A delivery id seen before (for any job) is a duplicate first, as elsewhere.
            if delivery_id is not None and (yield m.select_delivery, {"id": delivery_id}):
                return ApplyResult(Outcome.DUPLICATE, None)
            raise _Rollback(ApplyResult(Outcome.NOT_FOUND, None))
        current = job_from_json(loads(row["job"]))
        if delivery_id is not None:
            try:
                yield (
                    self.insert_delivery,
                    {"id": delivery_id, "job_id": job_id, "received_at": now},
                )
            except sa_exc.IntegrityError:
                return ApplyResult(Outcome.DUPLICATE, current)
        outcome = judge(current, update)
        if outcome is not Outcome.APPLIED:
            return ApplyResult(outcome, current)
        updated = yield self.guarded_update(shape), params
        assert isinstance(updated, Counted)
        # The row is locked and was read in this transaction, and the UPDATE wrote
        # the rules' transition of it: the job is that transition, computed here
        # rather than read back (a wide row costs more to read than the database
        # takes to write it). Values as a JSON column and a DOUBLE give them back.
        if not updated.rowcount:
            raise RuntimeError(
                f"the guarded UPDATE refused an update the lifecycle rules apply to "
                f"job {job_id!r} ({current.status} <- {update.status}): a bug in jobhook"
            )
        if update.output is not None:
            update = attrs.evolve(update, output=normalize_json(update.output, field="output"))
        job = transition(current, update, now)
        job = attrs.evolve(job, progress=as_float(job.progress))
        # The UPDATE took the event's id from the counter with LAST_INSERT_ID(expr),
        # which the server sends back with its answer (see `jobhook.stores._mysql`).
        event_id = int(updated.lastrowid)
        yield m.insert_event, {**event_row(job, delivery_id, now), "id": event_id}
        return applied(job, delivery_id, now, event_id)

    def _refused(
        self, job_id: str, update: JobUpdate, *, duplicate: bool = False
    ) -> Steps[ApplyResult]:
        """Nothing was updated: read the job to say why (``duplicate``: its delivery id
        was seen before).

        A job only ever moves forward (rank, progress, sequence), so an update the
        guard refused stays refused whatever commits between the guard and this read:
        `judge` calling it applicable means the guard and the rules disagree, a bug,
        reported as such rather than retried.
        """
        row = first((yield self.select_job, {"id": job_id}))
        if row is None:
            # Roll back the delivery id too: a retry after the job exists must apply.
            raise _Rollback(ApplyResult(Outcome.NOT_FOUND, None))
        current = job_from_row(row)
        outcome = Outcome.DUPLICATE if duplicate else judge(current, update)
        if outcome is Outcome.APPLIED:
            raise RuntimeError(
                f"the guarded UPDATE refused an update the lifecycle rules apply to job "
                f"{job_id!r} ({current.status} <- {update.status}): a bug in jobhook"
            )
        return ApplyResult(outcome, current)

    def stale(self, updated_before: datetime, limit: int) -> Steps[builtins.list[Job]]:
        check_limit(limit)
        rows = yield self.select_stale, {"before": utc(updated_before), "limit": limit}
        return [job_from_row(r) for r in rows]

    def events(
        self, after: int, limit: int, job_id: str | None = None
    ) -> Steps[builtins.list[JobEvent]]:
        check_limit(limit)
        # PostgreSQL's bounded wait behind unrelated transactions lives there.
        return (yield from read_events(self, after, limit, job_id))

    def add_dead_letter(
        self,
        job_id: str,
        update: JobUpdate,
        delivery_id: str | None,
        body: bytes,
        reason: str,
    ) -> Steps[DeadLetter]:
        check_id(job_id)
        if delivery_id is not None:
            check_delivery_id(delivery_id)
        check_reason(reason)
        check_output(update)
        letter = {
            "job_id": job_id,
            "delivery_id": delivery_id,
            "update": update_to_dict(update),
            "body": bytes(body),
            "reason": reason,
            "received_at": utcnow(),
            "replayed_at": None,
        }
        if self.mysql is not None:
            # No ON CONFLICT or RETURNING: the unique key refuses a second letter.
            try:
                yield self.insert_dead_letter, letter
            except sa_exc.IntegrityError:
                rows = yield self.select_dead_letter_of, {"delivery_id": delivery_id}
            else:
                rows = yield self.mysql.select_inserted_dead_letter, None
            return dead_letter_from_row(rows[0])
        rows = yield self.insert_dead_letter, letter
        if not rows:
            # This delivery is kept already (the unique key on delivery_id said so).
            rows = yield self.select_dead_letter_of, {"delivery_id": delivery_id}
        return dead_letter_from_row(rows[0])

    def dead_letters(
        self, job_id: str | None, include_replayed: bool, limit: int
    ) -> Steps[builtins.list[DeadLetter]]:
        check_limit(limit)
        dl = self.t.dead_letters
        query = sa.select(dl).order_by(dl.c.id).limit(limit)
        if job_id is not None:
            query = query.where(dl.c.job_id == job_id)
        if not include_replayed:
            query = query.where(dl.c.replayed_at.is_(None))
        return [dead_letter_from_row(r) for r in (yield query, None)]

    def replay_dead_letter(self, dead_letter_id: int, job_id: str | None) -> Steps[ApplyResult]:
        row = first((yield self.select_dead_letter, {"id": dead_letter_id}))
        if row is None:
            raise DeadLetterNotFoundError(dead_letter_id)
        letter = dead_letter_from_row(row)
        target = letter.job_id if job_id is None else job_id
        # A NOT_FOUND ends in _Rollback, leaving the letter as it was.
        result = yield from self.apply(target, letter.update, letter.delivery_id)
        yield self.mark_replayed, {"b_id": dead_letter_id, "b_now": utcnow()}
        return result
