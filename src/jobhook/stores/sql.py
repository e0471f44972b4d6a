"""SQL job stores on SQLAlchemy 2: SQLite (embedded default) and PostgreSQL.

Each operation is written once, as a generator of statements (`_Operations`): it
yields ``(statement, parameters)`` and receives the buffered result. `SQLJobStore`
and `AsyncSQLJobStore` are thin drivers that run those steps in one transaction on a
sync or an async connection.

Every transition is decided inside the database by one guarded
``UPDATE … WHERE id = :id AND <lifecycle rules> RETURNING …``; the delivery id is
recorded with ``INSERT … ON CONFLICT DO NOTHING`` against a unique key; the outbox
event is written in the same transaction. Nothing reads a row in Python and writes it
back.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timezone
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import URL, CursorResult, Engine
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from jobhook._convert import dumps, update_from_dict, update_to_dict
from jobhook._ids import check_delivery_id, utcnow
from jobhook._lifecycle import allowed_from, changes, check_id, check_reason, judge, new_job
from jobhook._models import (
    JSON,
    ApplyResult,
    DeadLetter,
    Job,
    JobError,
    JobEvent,
    JobStatus,
    JobUpdate,
    Outcome,
)
from jobhook.exceptions import (
    DeadLetterNotFoundError,
    JobExistsError,
    JobhookError,
    JobNotFoundError,
    StoreUnavailableError,
    ValidationError,
)
from jobhook.stores._direct import DirectRunner, Rows, Steps, drive
from jobhook.stores._direct import Rollback as _Rollback
from jobhook.stores._schema import (
    Tables,
    async_url,
    engine_options,
    install_sqlite_pragmas,
    sync_url,
)
from jobhook.stores.protocol import StatusFilter, check_limit, status_values

__all__ = ["AsyncSQLJobStore", "SQLJobStore"]

T = TypeVar("T")
#: What an update's statements depend on: status, the fields it sets, has a sequence.
Shape = tuple[JobStatus, tuple[str, ...], bool]



def _aware(value: datetime | None) -> datetime | None:
    # SQLite keeps no time zone; everything jobhook writes is UTC. PostgreSQL answers
    # in the session's zone: convert, so that every store returns the same values.
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def _float(value: float | None) -> float | None:
    # SQLite's RETURNING hands back 40.0 as 40.
    return None if value is None else float(value)


def _utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValidationError(f"timestamps must be timezone-aware, got {value!r}")
    return value.astimezone(timezone.utc)


def _first(rows: Rows) -> Mapping[str, Any] | None:
    return rows[0] if rows else None


def _job_from_row(m: Mapping[str, Any]) -> Job:
    error = None
    if m["error_code"] is not None:
        error = JobError(m["error_code"], m["error_message"] or "")
    created_at = _aware(m["created_at"])
    updated_at = _aware(m["updated_at"])
    assert created_at is not None
    assert updated_at is not None
    return Job(
        id=m["id"],
        kind=m["kind"],
        owner_id=m["owner_id"],
        input=m["input"],
        status=JobStatus(m["status"]),
        progress=_float(m["progress"]),
        output=m["output"],
        error=error,
        remote_id=m["remote_id"],
        sequence=m["sequence"],
        metadata=m["metadata"],
        version=m["version"],
        created_at=created_at,
        updated_at=updated_at,
        completed_at=_aware(m["completed_at"]),
    )


def _event_from_row(m: Mapping[str, Any]) -> JobEvent:
    created_at = _aware(m["created_at"])
    assert created_at is not None
    return JobEvent(
        id=m["id"],
        job_id=m["job_id"],
        owner_id=m["owner_id"],
        kind=m["kind"],
        status=JobStatus(m["status"]),
        progress=_float(m["progress"]),
        version=m["version"],
        delivery_id=m["delivery_id"],
        created_at=created_at,
    )


def _dead_letter_from_row(m: Mapping[str, Any]) -> DeadLetter:
    received_at = _aware(m["received_at"])
    assert received_at is not None
    return DeadLetter(
        id=m["id"],
        job_id=m["job_id"],
        delivery_id=m["delivery_id"],
        update=update_from_dict(m["update"]),
        body=bytes(m["body"]),
        reason=m["reason"],
        received_at=received_at,
        replayed_at=_aware(m["replayed_at"]),
    )


def _event_row(job: Job, delivery_id: str | None, now: datetime) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "owner_id": job.owner_id,
        "kind": job.kind,
        "status": job.status.value,
        "progress": job.progress,
        "version": job.version,
        "delivery_id": delivery_id,
        "created_at": now,
    }


def _applied(job: Job, delivery_id: str | None, now: datetime, event_id: int) -> ApplyResult:
    event = _event_row(job, delivery_id, now)
    return ApplyResult(
        Outcome.APPLIED, job, JobEvent(**{**event, "id": event_id, "status": job.status})
    )


def _check_output(update: JobUpdate) -> None:
    """Refuse an output no store can keep, before anything is written."""
    if update.output is not None:
        dumps(update.output, field="output")


def _bound(table: sa.Table, **fixed: Any) -> dict[str, Any]:
    """VALUES for an INSERT of every column: a bound parameter named after each column,
    except those in ``fixed`` (a SQL expression, or ``None`` to leave it out). The
    statement then compiles the same whatever parameters it is given."""
    values: dict[str, Any] = {}
    for column in table.c:
        value = fixed.get(column.name, column)
        if value is column:
            values[column.name] = sa.bindparam(column.name, type_=column.type)
        elif value is not None:
            values[column.name] = value
    return values


class _Operations:
    """Every store operation as steps, with its statements built once per store."""

    def __init__(self, tables: Tables, dialect: str) -> None:
        self.t = tables
        jobs, events = tables.jobs, tables.events
        insert: Callable[[sa.Table], Any]
        if dialect == "postgresql":
            insert = postgresql.insert
        elif dialect == "sqlite":
            insert = sqlite.insert
        else:
            raise ValueError(f"SQLJobStore supports SQLite and PostgreSQL, not {dialect!r}")
        self.select_job = sa.select(jobs).where(jobs.c.id == sa.bindparam("id"))
        # Remote ids of two backends can collide: the newest job wins (ix_…_remote_id
        # serves both the match and the order).
        self.select_job_by_remote_id = (
            sa.select(jobs)
            .where(jobs.c.remote_id == sa.bindparam("remote_id"))
            .order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
            .limit(1)
        )
        # A new job has no progress, output, error, remote id, sequence or end yet.
        unset = ("progress", "output", "error_code", "error_message", "remote_id", "sequence")
        self.insert_job = sa.insert(jobs).values(
            _bound(jobs, **dict.fromkeys((*unset, "completed_at"), sa.null()))
        )
        # RETURNING tells whether the row was written (rowcount is -1 on some drivers).
        self.insert_delivery = (
            insert(tables.deliveries)
            .values(_bound(tables.deliveries))
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(tables.deliveries.c.id)
        )
        self.insert_event = sa.insert(events).values(_bound(events, id=None)).returning(events.c.id)
        self.select_events = (
            sa.select(events)
            .where(events.c.id > sa.bindparam("after"))
            .order_by(events.c.id)
            .limit(sa.bindparam("limit"))
        )
        if dialect == "postgresql":
            # Outbox ids must only ever grow *as seen by readers*, or a notifier that
            # reads events(after=last_id) skips an event whose transaction took its id
            # before, but committed after, a later one. A sequence cannot promise that
            # under concurrency. The writing transaction's id can: each apply writes one
            # event, and readers only see ids below the oldest transaction still running
            # (txid_snapshot_xmin), so every later commit gets a greater id than any
            # already read. SQLite serialises writers, so its rowids already do this.
            self.insert_event = (
                sa.insert(events)
                .values(_bound(events, id=sa.func.txid_current()))
                .returning(events.c.id)
            )
            self.select_events = self.select_events.where(
                events.c.id < sa.func.txid_snapshot_xmin(sa.func.txid_current_snapshot())
            )
        self.select_stale = (
            sa.select(jobs)
            .where(
                jobs.c.status.in_(
                    [sa.literal_column(f"'{s.value}'") for s in JobStatus if not s.terminal]
                ),
                jobs.c.updated_at < sa.bindparam("before"),
            )
            .order_by(jobs.c.updated_at, jobs.c.id)
            .limit(sa.bindparam("limit"))
        )
        dl = tables.dead_letters
        self.insert_dead_letter = (
            insert(dl)
            .values(_bound(dl, id=None))
            .on_conflict_do_nothing(index_elements=["delivery_id"])
            .returning(*dl.c)
        )
        self.select_dead_letter_of = sa.select(dl).where(
            dl.c.delivery_id == sa.bindparam("delivery_id")
        )
        self.select_dead_letter = sa.select(dl).where(dl.c.id == sa.bindparam("id"))
        self.mark_replayed = (
            sa.update(dl)
            .where(dl.c.id == sa.bindparam("b_id"), dl.c.replayed_at.is_(None))
            .values(replayed_at=sa.bindparam("b_now"))
        )
        self._updates: dict[tuple[Any, ...], sa.Update] = {}
        self._one_trip: dict[tuple[Any, ...], sa.Select[Any]] | None = None
        if dialect == "postgresql":
            self._one_trip = {}

    @property
    def apply_stands_alone(self) -> bool:
        """Whether apply's statements are each atomic alone (PostgreSQL's `one_trip`)."""
        return self._one_trip is not None

    # -- the guarded UPDATE ---------------------------------------------------------

    @staticmethod
    def shape(update: JobUpdate, values: dict[str, Any]) -> Shape:
        """What an update's statements depend on: its status, the fields it sets, and
        whether it carries a sequence."""
        return (update.status, tuple(sorted(values)), update.sequence is not None)

    def guarded_update(self, shape: Shape) -> sa.Update:
        """The UPDATE for updates of this shape, built on first use and then reused."""
        stmt = self._updates.get(shape)
        if stmt is None:
            status, fields, has_sequence = shape
            stmt = self._updates[shape] = self._build_update(status, fields, has_sequence)
        return stmt

    def one_trip(self, shape: Shape, with_delivery: bool) -> sa.Select[Any]:
        """PostgreSQL: the delivery id INSERT, the guarded UPDATE and the event INSERT as
        one statement (data-modifying CTEs), so an apply is one atomic statement: one
        round trip, and no transaction needed around it.

        Its one row has ``found`` (whether the job exists), ``seen`` (whether the
        delivery id was recorded before), ``fresh`` (whether this statement recorded
        it: never for a missing job, so nothing is written then), ``event_id`` and the
        updated job's columns (all NULL when nothing was updated).
        """
        assert self._one_trip is not None
        key = (shape, with_delivery)
        stmt = self._one_trip.get(key)
        if stmt is None:
            stmt = self._one_trip[key] = self._build_one_trip(shape, with_delivery)
        return stmt

    def _build_one_trip(self, shape: Shape, with_delivery: bool) -> sa.Select[Any]:
        t = self.t
        jobs, deliveries = t.jobs, t.deliveries
        job_id = sa.bindparam("b_id", type_=jobs.c.id.type)
        found = sa.select(jobs.c.id).where(jobs.c.id == job_id).exists()
        guarded = self.guarded_update(shape)
        fresh: Any = sa.literal(1)
        seen: Any = sa.false()
        if with_delivery:
            delivery_id = sa.bindparam("d_id", type_=deliveries.c.id.type)
            # Whether the delivery id was recorded before this statement (for any job).
            seen = sa.select(deliveries.c.id).where(deliveries.c.id == delivery_id).exists()
            # The delivery id is recorded only for a job that exists: a delivery for an
            # unknown job leaves nothing behind, and its retry applies once the job does.
            delivery = (
                postgresql.insert(deliveries)
                .from_select(
                    ["id", "job_id", "received_at"],
                    sa.select(
                        delivery_id,
                        job_id,
                        sa.bindparam("b_now", type_=deliveries.c.received_at.type),
                    ).where(found),
                )
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(deliveries.c.id)
                .cte("d")
            )
            # A delivery id seen before changes nothing.
            guarded = guarded.where(sa.exists().select_from(delivery))
            fresh = sa.select(sa.func.count()).select_from(delivery).scalar_subquery()
        job = guarded.cte("u")
        ev = t.events
        event = (
            sa.insert(ev)
            .from_select(
                [c.name for c in ev.c],
                sa.select(
                    sa.func.txid_current(),
                    job.c.id,
                    job.c.owner_id,
                    job.c.kind,
                    job.c.status,
                    job.c.progress,
                    job.c.version,
                    sa.bindparam("e_delivery_id", type_=ev.c.delivery_id.type),
                    sa.bindparam("b_now", type_=ev.c.created_at.type),
                ),
            )
            .returning(ev.c.id)
            .cte("e")
        )
        one = sa.select(sa.literal(1).label("one")).subquery("one")
        return sa.select(
            found.label("found"),
            seen.label("seen"),
            fresh.label("fresh"),
            event.c.id.label("event_id"),
            *job.c,
        ).select_from(one.outerjoin(job, sa.true()).outerjoin(event, sa.true()))

    def _build_update(
        self, status: JobStatus, fields: Collection[str], has_sequence: bool
    ) -> sa.Update:
        jobs = self.t.jobs
        c = jobs.c
        # Rules 1 and 2: not terminal, and the update's rank is >= the job's rank.
        guard: list[Any] = [
            c.id == sa.bindparam("b_id"),
            # Literal values: a list of bound values would be re-rendered on every call.
            c.status.in_([sa.literal_column(f"'{s.value}'") for s in allowed_from(status)]),
        ]
        if status is JobStatus.RUNNING:
            # Rule 3: running after running never goes back in progress or sequence.
            keeps_order = []
            if "progress" in fields:
                keeps_order.append(
                    sa.or_(c.progress.is_(None), c.progress <= sa.bindparam("b_progress"))
                )
            if has_sequence:
                keeps_order.append(
                    sa.or_(c.sequence.is_(None), c.sequence < sa.bindparam("b_sequence"))
                )
            if keeps_order:
                guard.append(sa.or_(c.status != JobStatus.RUNNING.value, sa.and_(*keeps_order)))
        sets: dict[str, Any] = {
            "status": sa.bindparam("b_status"),
            "version": c.version + 1,
            "updated_at": sa.bindparam("b_now"),
        }
        if status.terminal:
            sets["completed_at"] = sa.bindparam("b_now")
        if "progress" in fields:
            sets["progress"] = sa.bindparam("b_progress")
        if "output" in fields:
            sets["output"] = sa.bindparam("b_output", type_=c.output.type)
        if "error" in fields:
            sets["error_code"] = sa.bindparam("b_error_code")
            sets["error_message"] = sa.bindparam("b_error_message")
        if "remote_id" in fields:
            sets["remote_id"] = sa.bindparam("b_remote_id")
        if has_sequence:
            seq: sa.BindParameter[Any] = sa.bindparam("b_sequence")
            sets["sequence"] = sa.case(
                (sa.or_(c.sequence.is_(None), c.sequence < seq), seq), else_=c.sequence
            )
        return sa.update(jobs).where(*guard).values(**sets).returning(*jobs.c)

    @staticmethod
    def update_params(
        job_id: str, update: JobUpdate, values: dict[str, Any], now: datetime
    ) -> dict[str, Any]:
        params: dict[str, Any] = {"b_id": job_id, "b_status": update.status.value, "b_now": now}
        if "progress" in values:
            params["b_progress"] = values["progress"]
        if "output" in values:
            params["b_output"] = values["output"]
        if "error" in values:
            params["b_error_code"] = values["error"].code
            params["b_error_message"] = values["error"].message
        if "remote_id" in values:
            params["b_remote_id"] = values["remote_id"]
        if update.sequence is not None:
            params["b_sequence"] = update.sequence
        return params

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
        row = _first((yield self.select_job, {"id": job_id}))
        if row is None:
            raise JobNotFoundError(job_id)
        return _job_from_row(row)

    def get_by_remote_id(self, remote_id: str) -> Steps[Job]:
        check_id(remote_id, "remote_id")
        row = _first((yield self.select_job_by_remote_id, {"remote_id": remote_id}))
        if row is None:
            raise JobNotFoundError(remote_id=remote_id)
        return _job_from_row(row)

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
        query = sa.select(jobs)
        if owner_id is not None:
            query = query.where(c.owner_id == owner_id)
        statuses = status_values(status)
        if statuses is not None:
            query = query.where(c.status.in_(statuses))
        if kind is not None:
            query = query.where(c.kind == kind)
        if before is not None:
            a = _first((yield self.select_job, {"id": before}))
            if a is None:
                raise JobNotFoundError(before)
            query = query.where(
                sa.or_(
                    c.created_at < a["created_at"],
                    sa.and_(c.created_at == a["created_at"], c.id < a["id"]),
                )
            )
        query = query.order_by(c.created_at.desc(), c.id.desc()).limit(limit)
        return [_job_from_row(r) for r in (yield query, None)]

    def apply(self, job_id: str, update: JobUpdate, delivery_id: str | None) -> Steps[ApplyResult]:
        # Refuse what no store can keep before anything is written.
        check_id(job_id)
        if delivery_id is not None:
            check_delivery_id(delivery_id)
        _check_output(update)
        now = utcnow()
        values = changes(update)
        shape = self.shape(update, values)
        params = self.update_params(job_id, update, values, now)
        if self._one_trip is not None:
            steps = self._apply_by_statement(job_id, update, delivery_id, now, shape, params)
            return (yield from steps)
        if delivery_id is not None:
            inserted = yield (
                self.insert_delivery,
                {"id": delivery_id, "job_id": job_id, "received_at": now},
            )
            if not inserted:
                row = _first((yield self.select_job, {"id": job_id}))
                return ApplyResult(Outcome.DUPLICATE, _job_from_row(row) if row else None)
        row = _first((yield self.guarded_update(shape), params))
        if row is not None:
            job = _job_from_row(row)
            (event,) = yield self.insert_event, _event_row(job, delivery_id, now)
            return _applied(job, delivery_id, now, event["id"])
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
            return _applied(_job_from_row(done), delivery_id, now, done["event_id"])
        if not done["found"]:
            if done["seen"]:
                return ApplyResult(Outcome.DUPLICATE, None)
            # Nothing was written (a delivery id is only recorded for a known job).
            raise _Rollback(ApplyResult(Outcome.NOT_FOUND, None))
        return (yield from self._refused(job_id, update, duplicate=not done["fresh"]))

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
        row = _first((yield self.select_job, {"id": job_id}))
        if row is None:
            # Roll back the delivery id too: a retry after the job exists must apply.
            raise _Rollback(ApplyResult(Outcome.NOT_FOUND, None))
        current = _job_from_row(row)
        outcome = Outcome.DUPLICATE if duplicate else judge(current, update)
        if outcome is Outcome.APPLIED:
            raise RuntimeError(
                f"the guarded UPDATE refused an update the lifecycle rules apply to job "
                f"{job_id!r} ({current.status} <- {update.status}): a bug in jobhook"
            )
        return ApplyResult(outcome, current)

    def stale(self, updated_before: datetime, limit: int) -> Steps[builtins.list[Job]]:
        check_limit(limit)
        rows = yield self.select_stale, {"before": _utc(updated_before), "limit": limit}
        return [_job_from_row(r) for r in rows]

    def events(self, after: int, limit: int) -> Steps[builtins.list[JobEvent]]:
        check_limit(limit)
        rows = yield self.select_events, {"after": after, "limit": limit}
        return [_event_from_row(r) for r in rows]

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
        _check_output(update)
        rows = yield (
            self.insert_dead_letter,
            {
                "job_id": job_id,
                "delivery_id": delivery_id,
                "update": update_to_dict(update),
                "body": bytes(body),
                "reason": reason,
                "received_at": utcnow(),
                "replayed_at": None,
            },
        )
        if not rows:
            # This delivery is kept already (the unique key on delivery_id said so).
            rows = yield self.select_dead_letter_of, {"delivery_id": delivery_id}
        return _dead_letter_from_row(rows[0])

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
        return [_dead_letter_from_row(r) for r in (yield query, None)]

    def replay_dead_letter(self, dead_letter_id: int, job_id: str | None) -> Steps[ApplyResult]:
        row = _first((yield self.select_dead_letter, {"id": dead_letter_id}))
        if row is None:
            raise DeadLetterNotFoundError(dead_letter_id)
        letter = _dead_letter_from_row(row)
        target = letter.job_id if job_id is None else job_id
        # A NOT_FOUND ends in _Rollback, leaving the letter as it was.
        result = yield from self.apply(target, letter.update, letter.delivery_id)
        yield self.mark_replayed, {"b_id": dead_letter_id, "b_now": utcnow()}
        return result


def _missing_tables(exc: sa_exc.DBAPIError) -> bool:
    # SQLite says "no such table"; PostgreSQL raises UndefinedTable (SQLSTATE 42P01).
    return "no such table" in str(exc.orig) or getattr(exc.orig, "sqlstate", None) == "42P01"


def _store_error(exc: Exception, url: URL) -> JobhookError:
    """The one mapping of a database failure onto jobhook's errors (sync and async).

    A value the database refused is a `ValidationError`; everything else (lost or
    refused connections, timeouts, missing tables, a file that is not a database) is
    a `StoreUnavailableError` whose message says what is wrong and where.
    """
    where = url.render_as_string(hide_password=True)
    text = str(getattr(exc, "orig", None) or exc).strip()
    if isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError)):
        return ValidationError(f"the database refused a value: {text}")
    if isinstance(exc, sa_exc.DBAPIError) and _missing_tables(exc):
        return StoreUnavailableError(
            f"the jobhook tables are missing in {where}: call store.create_schema() "
            f"or run `jobhook db init --db {where}` ({text})"
        )
    return StoreUnavailableError(f"the database {where} is unavailable: {text}")


#: What `_store_error` maps: driver errors, pool timeouts, and OSError (which some
#: async drivers raise unwrapped when a connection is refused).
_DATABASE_ERRORS = (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError)


def _engine(create: Callable[..., T], url: URL, extra: str) -> T:
    """``create(url, …)``, with a missing driver named along with the extra to install."""
    try:
        return create(url, **engine_options(url))
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{url.drivername} URLs need the {exc.name!r} driver: pip install 'jobhook[{extra}]'",
            name=exc.name,
        ) from exc


class SQLJobStore:
    """A `JobStore` in a SQL database: SQLite (a file, WAL) or PostgreSQL (JSONB).

    ``url_or_engine`` is a URL (``sqlite:///jobs.db``, ``postgresql://…``; plain
    ``postgresql://`` uses psycopg 3) or an `Engine`. Thread-safe; every method is one
    transaction. Raises `StoreUnavailableError` when the database cannot be reached.
    Call `create_schema` once (idempotent), or manage `metadata` with Alembic.
    """

    def __init__(
        self,
        url_or_engine: str | URL | Engine,
        *,
        table_prefix: str = "jobhook_",
        create_schema: bool = False,
    ) -> None:
        if isinstance(url_or_engine, Engine):
            self.engine = url_or_engine
            self._owns_engine = False
        else:
            url = sync_url(url_or_engine)
            extra = "postgres" if url.get_backend_name() == "postgresql" else "all"
            self.engine = _engine(sa.create_engine, url, extra)
            self._owns_engine = True
        install_sqlite_pragmas(self.engine)
        if not self._owns_engine:
            # Pooled connections made before the pragmas were installed lack them.
            self.engine.dispose(close=False)
        self.tables = Tables(table_prefix)
        self._ops = _Operations(self.tables, self.engine.dialect.name)
        self._direct = DirectRunner(self.engine)
        if create_schema:
            self.create_schema()

    def __repr__(self) -> str:
        return f"<SQLJobStore {self.engine.url.render_as_string(hide_password=True)!s}>"

    @property
    def metadata(self) -> sa.MetaData:
        """The tables' `MetaData`, for the app's own Alembic migrations."""
        return self.tables.metadata

    def create_schema(self) -> None:
        """Create the tables and indexes that do not exist yet (idempotent)."""
        try:
            with self.engine.begin() as conn:
                self.tables.create(conn)
        except _DATABASE_ERRORS as exc:
            raise _store_error(exc, self.engine.url) from exc

    def _run(
        self, steps: Steps[T], *, write: bool, static: bool = True, standalone: bool = False
    ) -> T:
        """Run ``steps`` in one transaction. ``static``: they only yield statements
        built once per store, so they may run on the driver directly (`_direct`);
        ``standalone``: each of those statements is atomic alone (see
        `DirectRunner.run`)."""
        try:
            if static and self._direct.usable:
                return self._direct.run(steps, write=write, standalone=standalone)
            with self.engine.connect() as conn:
                if write:
                    conn.execution_options(jobhook_write=True)
                try:
                    with conn.begin():
                        return _drive(conn, steps)
                except _Rollback as rollback:
                    result: T = rollback.value
                    return result
        except _DATABASE_ERRORS as exc:
            raise _store_error(exc, self.engine.url) from exc

    def create(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job:
        """Create and commit a ``pending`` job. See `JobStore.create`."""
        steps = self._ops.create(input, kind, owner_id, job_id, metadata)
        return self._run(steps, write=True, standalone=True)

    def get(self, job_id: str) -> Job:
        """Return the job. Raises `JobNotFoundError`."""
        return self._run(self._ops.get(job_id), write=False, standalone=True)

    def get_by_remote_id(self, remote_id: str) -> Job:
        """The newest job carrying ``remote_id``. See `JobStore.get_by_remote_id`."""
        steps = self._ops.get_by_remote_id(remote_id)
        return self._run(steps, write=False, standalone=True)

    def list(
        self,
        *,
        owner_id: str | None = None,
        status: StatusFilter = None,
        kind: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first, ``limit`` at a time; ``before`` is the previous page's last id."""
        steps = self._ops.list(owner_id, status, kind, limit, before)
        return self._run(steps, write=False, static=False)

    def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult:
        """Judge and apply ``update`` in one transaction. See `JobStore.apply`."""
        steps = self._ops.apply(job_id, update, delivery_id)
        return self._run(steps, write=True, standalone=self._ops.apply_stands_alone)

    def stale(self, *, updated_before: datetime, limit: int = 100) -> builtins.list[Job]:
        """Non-terminal jobs last updated before ``updated_before``, oldest first."""
        return self._run(self._ops.stale(updated_before, limit), write=False, standalone=True)

    def events(self, *, after: int = 0, limit: int = 100) -> builtins.list[JobEvent]:
        """Outbox events with an id greater than ``after``, in order."""
        return self._run(self._ops.events(after, limit), write=False, standalone=True)

    def add_dead_letter(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        delivery_id: str | None = None,
        body: bytes = b"",
        reason: str = "not_found",
    ) -> DeadLetter:
        """Keep a delivery that named an unknown job."""
        steps = self._ops.add_dead_letter(job_id, update, delivery_id, body, reason)
        return self._run(steps, write=True, standalone=True)

    def dead_letters(
        self, *, job_id: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> builtins.list[DeadLetter]:
        """Kept deliveries, oldest first (not yet replayed ones unless asked)."""
        steps = self._ops.dead_letters(job_id, include_replayed, limit)
        return self._run(steps, write=False, static=False)

    def replay_dead_letter(self, dead_letter_id: int, *, job_id: str | None = None) -> ApplyResult:
        """Apply a kept delivery under its delivery id (to ``job_id`` when given).
        Raises `DeadLetterNotFoundError`."""
        return self._run(self._ops.replay_dead_letter(dead_letter_id, job_id), write=True)

    def close(self) -> None:
        """Close the engine's connections (only if this store created the engine)."""
        if self._owns_engine:
            self.engine.dispose()


def _rows(result: CursorResult[Any]) -> Rows:
    return [dict(row) for row in result.mappings()] if result.returns_rows else []


def _drive(conn: sa.Connection, steps: Steps[T]) -> T:
    """Drive ``steps`` on a `Connection` (the caller owns the transaction)."""
    return drive(steps, lambda statement, params: _rows(conn.execute(statement, params)))


async def _adrive(conn: AsyncConnection, steps: Steps[T]) -> T:
    try:
        statement, params = next(steps)
        while True:
            try:
                result = await conn.execute(statement, params)
            except sa_exc.IntegrityError as exc:
                statement, params = steps.throw(exc)
            else:
                statement, params = steps.send(_rows(result))
    except StopIteration as stop:
        value: T = stop.value
        return value


class AsyncSQLJobStore:
    """The async twin of `SQLJobStore`: aiosqlite for SQLite, psycopg 3 (or asyncpg, if
    the URL says ``postgresql+asyncpg``) for PostgreSQL. Same tables, same statements."""

    def __init__(
        self,
        url_or_engine: str | URL | AsyncEngine,
        *,
        table_prefix: str = "jobhook_",
    ) -> None:
        if isinstance(url_or_engine, AsyncEngine):
            self.engine = url_or_engine
            self._owns_engine = False
        else:
            url = async_url(url_or_engine)
            self.engine = _engine(create_async_engine, url, "async")
            self._owns_engine = True
        install_sqlite_pragmas(self.engine.sync_engine)
        self.tables = Tables(table_prefix)
        self._ops = _Operations(self.tables, self.engine.dialect.name)

    def __repr__(self) -> str:
        return f"<AsyncSQLJobStore {self.engine.url.render_as_string(hide_password=True)!s}>"

    @property
    def metadata(self) -> sa.MetaData:
        """The tables' `MetaData`, for the app's own Alembic migrations."""
        return self.tables.metadata

    async def create_schema(self) -> None:
        """Create the tables and indexes that do not exist yet (idempotent)."""
        try:
            async with self.engine.begin() as conn:
                await conn.run_sync(self.tables.create)
        except _DATABASE_ERRORS as exc:
            raise _store_error(exc, self.engine.url) from exc

    async def _run(self, steps: Steps[T], *, write: bool) -> T:
        try:
            async with self.engine.connect() as conn:
                if write:
                    await conn.execution_options(jobhook_write=True)
                try:
                    async with conn.begin():
                        return await _adrive(conn, steps)
                except _Rollback as rollback:
                    result: T = rollback.value
                    return result
        except _DATABASE_ERRORS as exc:
            raise _store_error(exc, self.engine.url) from exc

    async def create(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job:
        """Create and commit a ``pending`` job. See `JobStore.create`."""
        steps = self._ops.create(input, kind, owner_id, job_id, metadata)
        return await self._run(steps, write=True)

    async def get(self, job_id: str) -> Job:
        """Return the job. Raises `JobNotFoundError`."""
        return await self._run(self._ops.get(job_id), write=False)

    async def get_by_remote_id(self, remote_id: str) -> Job:
        """The newest job carrying ``remote_id``. See `JobStore.get_by_remote_id`."""
        return await self._run(self._ops.get_by_remote_id(remote_id), write=False)

    async def list(
        self,
        *,
        owner_id: str | None = None,
        status: StatusFilter = None,
        kind: str | None = None,
        limit: int = 50,
        before: str | None = None,
    ) -> builtins.list[Job]:
        """Jobs newest first, ``limit`` at a time; ``before`` is the previous page's last id."""
        steps = self._ops.list(owner_id, status, kind, limit, before)
        return await self._run(steps, write=False)

    async def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult:
        """Judge and apply ``update`` in one transaction. See `JobStore.apply`."""
        return await self._run(self._ops.apply(job_id, update, delivery_id), write=True)

    async def stale(self, *, updated_before: datetime, limit: int = 100) -> builtins.list[Job]:
        """Non-terminal jobs last updated before ``updated_before``, oldest first."""
        return await self._run(self._ops.stale(updated_before, limit), write=False)

    async def events(self, *, after: int = 0, limit: int = 100) -> builtins.list[JobEvent]:
        """Outbox events with an id greater than ``after``, in order."""
        return await self._run(self._ops.events(after, limit), write=False)

    async def add_dead_letter(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        delivery_id: str | None = None,
        body: bytes = b"",
        reason: str = "not_found",
    ) -> DeadLetter:
        """Keep a delivery that named an unknown job."""
        steps = self._ops.add_dead_letter(job_id, update, delivery_id, body, reason)
        return await self._run(steps, write=True)

    async def dead_letters(
        self, *, job_id: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> builtins.list[DeadLetter]:
        """Kept deliveries, oldest first (not yet replayed ones unless asked)."""
        steps = self._ops.dead_letters(job_id, include_replayed, limit)
        return await self._run(steps, write=False)

    async def replay_dead_letter(
        self, dead_letter_id: int, *, job_id: str | None = None
    ) -> ApplyResult:
        """Apply a kept delivery under its delivery id (to ``job_id`` when given).
        Raises `DeadLetterNotFoundError`."""
        steps = self._ops.replay_dead_letter(dead_letter_id, job_id)
        return await self._run(steps, write=True)

    async def close(self) -> None:
        """Close the engine's connections (only if this store created the engine)."""
        if self._owns_engine:
            await self.engine.dispose()
