"""The SQL statements of the stores, built once per store for its dialect.

Every transition is decided inside the database by one guarded
``UPDATE … WHERE id = :id AND <lifecycle rules> RETURNING …``; on PostgreSQL the delivery
id, that UPDATE and the outbox event are one statement (`Statements.one_trip`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from jobhook._lifecycle import allowed_from
from jobhook._models import (
    JobStatus,
    JobUpdate,
)
from jobhook.stores._mysql import MySQLStatements
from jobhook.stores._rows import bound
from jobhook.stores._schema import MYSQL_DIALECTS, Tables

__all__ = ["BEFORE", "EVENT_SLOTS", "Shape", "Statements", "event_id"]

#: The column of a group commit batch's rows that holds a job before its update (JSON).
BEFORE = "before"

#: PostgreSQL outbox event ids are ``xid * EVENT_SLOTS + slot``: room for one event per
#: job of a group commit's batch in one transaction (see `event_id`).
EVENT_SLOTS = 1024

#: What an update's statements depend on: status, the fields it sets, has a sequence.
Shape = tuple[JobStatus, tuple[str, ...], bool]


#: PostgreSQL: the id below which no event can commit any more, counting only the
#: transactions that write to the events table. Every jobhook writer locks the events
#: table (at executor start, before its first row is written) before it takes a
#: transaction id, and that id becomes its event's id. So, reading the locks *after*
#: this statement's snapshot: a writer whose id is below the snapshot's xmax either still
#: holds the lock (its id is among the snapshot's running ones, and is the horizon), or
#: has ended, and a later snapshot sees its event. ``xip`` ids are 64-bit and pg_locks
#: holds 32-bit ones, hence the modulo. Scaled by `EVENT_SLOTS`, as event ids are. Read
#: the events below it in a *later* statement.
#: The events table is matched by name in every schema (``schema_translate_map`` may
#: place it anywhere): a same-named table elsewhere can only lower the horizon.
_OUTBOX_HORIZON = f"""{EVENT_SLOTS} * least(
  txid_snapshot_xmax(txid_current_snapshot()),
  (SELECT min(x) FROM txid_snapshot_xip(txid_current_snapshot()) AS x
   WHERE x % 4294967296 IN (
     SELECT t.transactionid::text::bigint
     FROM pg_locks r JOIN pg_locks t ON t.virtualtransaction = r.virtualtransaction
     WHERE r.locktype = 'relation'
       AND r.relation IN (SELECT oid FROM pg_class WHERE relname = :events)
       AND r.database = (SELECT oid FROM pg_database WHERE datname = current_database())
       AND r.mode <> 'AccessShareLock' AND t.locktype = 'transactionid'))
)"""


def event_id(slot: Any = 0) -> Any:
    """PostgreSQL: the id of the writing transaction's event number ``slot``.

    ``txid_current() * EVENT_SLOTS + slot``: unique while one transaction writes at most
    `EVENT_SLOTS` events (a group commit's batch writes one per job), and ordered as
    the transaction ids are, which is what readers rely on (see `Statements`).
    """
    return sa.func.txid_current() * EVENT_SLOTS + slot


class Statements:
    """Every statement the SQL stores run, built once per store for its dialect."""

    #: PostgreSQL: how long a committed event may wait behind an unrelated open
    #: transaction before readers stop waiting for the server-wide oldest one.
    outbox_wait = timedelta(seconds=2)

    def __init__(self, tables: Tables, dialect: str) -> None:
        self.t = tables
        jobs, events = tables.jobs, tables.events
        insert: Callable[[sa.Table], Any]
        #: MySQL and MariaDB: what they run in place of RETURNING and ON CONFLICT.
        self.mysql: MySQLStatements | None = None
        if dialect == "postgresql":
            insert = postgresql.insert
        elif dialect == "sqlite":
            insert = sqlite.insert
        elif dialect in MYSQL_DIALECTS:
            self.mysql = MySQLStatements(tables)
        else:
            raise ValueError(
                f"SQLJobStore supports SQLite, PostgreSQL and MySQL/MariaDB, not {dialect!r}"
            )
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
            bound(jobs, **dict.fromkeys((*unset, "completed_at"), sa.null()))
        )
        if self.mysql is not None:
            self.insert_delivery = self.mysql.insert_delivery
        else:
            # RETURNING tells whether the row was written (rowcount is -1 on some drivers).
            self.insert_delivery = (
                insert(tables.deliveries)
                .values(bound(tables.deliveries))
                .on_conflict_do_nothing(index_elements=["id"])
                .returning(tables.deliveries.c.id)
            )
        self.insert_event = sa.insert(events).values(bound(events, id=None)).returning(events.c.id)
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
            # The id is scaled (`event_id`) so that one transaction may write several.
            self.insert_event = (
                sa.insert(events).values(bound(events, id=event_id())).returning(events.c.id)
            )
            #
            # The oldest transaction still running may be anyone's, though (an idle
            # session in another database holds it back as well), so the query returns
            # every visible event and marks those below it ``settled``; the events after
            # the first unsettled one wait, for `outbox_wait` at most. Past that, readers
            # use `select_outbox_horizon`: below the oldest transaction that is writing
            # to the events table (see `jobhook.stores._consumers.read_events`).
            self.select_events = self.select_events.add_columns(
                (
                    events.c.id
                    < sa.func.txid_snapshot_xmin(sa.func.txid_current_snapshot()) * EVENT_SLOTS
                ).label("settled")
            )
            self.select_events_below = (
                sa.select(events)
                .where(events.c.id > sa.bindparam("after"), events.c.id < sa.bindparam("horizon"))
                .order_by(events.c.id)
                .limit(sa.bindparam("limit"))
            )
            # The table name is letters, digits and underscores (`Tables` checks).
            horizon = _OUTBOX_HORIZON.replace(":events", f"'{events.name}'")
            self.select_outbox_horizon = sa.select(
                sa.literal_column(horizon, type_=sa.BigInteger).label("horizon")
            )
        # The same read, one job's events only (a live stream resuming after an id).
        by_job = events.c.job_id == sa.bindparam("job_id")
        self.select_job_events = self.select_events.where(by_job)
        if dialect == "postgresql":
            self.select_job_events_below = self.select_events_below.where(by_job)
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
        if self.mysql is not None:
            self.insert_dead_letter = self.mysql.insert_dead_letter
        else:
            self.insert_dead_letter = (
                insert(dl)
                .values(bound(dl, id=None))
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
        it: never for a missing job, so nothing is written then), ``event_id``, and
        ``job``, the job's row as a JSON object: as updated when it was (``event_id``
        is set), else as the statement's snapshot saw it (NULL for a missing job).
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
        # Reads of the jobs table go through a short alias: the statement stays well
        # under psycopg's 4 KiB limit for prepared statements (see below).
        b = jobs.alias("b")
        found = sa.select(b.c.id).where(b.c.id == job_id).exists()
        guarded = self.guarded_update(shape)
        fresh: Any = sa.literal(1)
        seen: Any = sa.false()
        if with_delivery:
            delivery_id = sa.bindparam("d_id", type_=deliveries.c.id.type)
            # Whether the delivery id was recorded before this statement (for any job).
            dv = deliveries.alias("dv")
            seen = sa.select(dv.c.id).where(dv.c.id == delivery_id).exists()
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
                    event_id(),
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
        # The job as this statement's snapshot sees it: what a refused or duplicate
        # delivery is answered with, without a second round trip.
        # One job per row: the updated one, or else the one the statement's snapshot saw
        # (what a refused or duplicate delivery is answered with, without a second round
        # trip). Kept short: psycopg prepares (and caches the parsing of) statements of
        # up to 4 KiB only, and an unprepared statement is planned anew each time.
        seen_before = sa.select(b).where(b.c.id == job_id, ~sa.exists().select_from(job))
        current = sa.union_all(sa.select(job), seen_before).cte("j")
        one = sa.select(sa.literal(1).label("one")).subquery("one")
        # The job as one JSON column (NULL when there is none), not sixteen: a driver
        # describes every column of every result (psycopg builds an object per column
        # and looks up its type), which cost more than the whole row's JSON; see
        # `jobhook.stores._rows.job_from_json`.
        as_json = sa.func.row_to_json(current.table_valued(), type_=postgresql.JSON)
        return sa.select(
            found.label("found"),
            seen.label("seen"),
            fresh.label("fresh"),
            event.c.id.label("event_id"),
            as_json.label("job"),
        ).select_from(one.outerjoin(current, sa.true()).outerjoin(event, sa.true()))

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
        stmt = sa.update(jobs).where(*guard).values(**sets)
        if self.mysql is not None:
            # No UPDATE … RETURNING there; it takes the outbox id instead (`_mysql`).
            return self.mysql.taking_event_id(stmt)
        return stmt.returning(*jobs.c)

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
