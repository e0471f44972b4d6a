"""The SQL steps of durable outbox consumers (positions, leases, parked events) and of
`prune`, written once for the sync and the async SQL store.

A consumer's lease is a row: ``owner`` holds it until ``lease_expires_at``. Claiming is
one upsert whose ``WHERE`` lets it through only when the lease is free, expired, or the
claimer's own, so two instances can never both hold it; every later write of the
consumer (advance, park) is guarded by ``owner = :owner``, so an instance that lost its
lease cannot move the position. MySQL and MariaDB say the same in a few more statements
per step, in one transaction (`jobhook.stores._mysql_consumers`).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from jobhook._ids import utcnow
from jobhook._models import JobEvent, JobStatus
from jobhook._outbox import (
    PARKED,
    REPLAY,
    REPLAYED,
    ConsumerInfo,
    ParkedEvent,
    check_consumer_name,
    check_lease,
    event_from_dict,
    event_to_dict,
)
from jobhook.exceptions import ParkedEventNotFoundError
from jobhook.stores._mysql_consumers import MySQLConsumerStatements
from jobhook.stores._rows import aware, event_from_row, utc
from jobhook.stores._schema import MYSQL_DIALECTS, Tables
from jobhook.stores._steps import Rollback as _Rollback
from jobhook.stores._steps import Steps

if TYPE_CHECKING:
    from jobhook.stores._statements import Statements
from jobhook.stores.protocol import check_limit

__all__ = ["ConsumerOperations", "read_events"]


def _info(row: Any) -> ConsumerInfo:
    return ConsumerInfo(
        name=row["name"],
        position=int(row["position"]),
        owner=row["owner"],
        lease_expires_at=aware(row["lease_expires_at"]),
        parked=int(row["parked"]),
    )


def _parked(row: Any) -> ParkedEvent:
    parked_at = aware(row["parked_at"])
    assert parked_at is not None
    return ParkedEvent(
        id=int(row["id"]),
        consumer=row["consumer"],
        event=event_from_dict(row["event"]),
        attempts=int(row["attempts"]),
        error=row["error"],
        state=row["state"],
        parked_at=parked_at,
    )


class ConsumerOperations:
    """The consumers' and prune's steps, their statements built once per store."""

    def __init__(self, tables: Tables, dialect: str) -> None:
        self.t = tables
        insert: Callable[[sa.Table], Any] = (
            sqlite.insert if dialect == "sqlite" else postgresql.insert
        )
        c = tables.consumers
        free = sa.or_(
            c.c.owner.is_(None),
            c.c.owner == sa.bindparam("c_owner"),
            c.c.lease_expires_at < sa.bindparam("c_now"),
        )
        #: MySQL and MariaDB: their statements in place of ON CONFLICT and RETURNING.
        self.mysql: MySQLConsumerStatements | None = None
        if dialect in MYSQL_DIALECTS:
            self.mysql = MySQLConsumerStatements(tables, free)
        #: Whether every statement of claim, advance and prune is atomic alone; on MySQL
        #: and MariaDB each of those steps needs one transaction.
        self.stands_alone = self.mysql is None
        claim = insert(c).values(
            name=sa.bindparam("c_name"),
            position=0,
            owner=sa.bindparam("c_owner"),
            lease_expires_at=sa.bindparam("c_expires"),
            updated_at=sa.bindparam("c_now"),
        )
        self.claim = claim.on_conflict_do_update(
            index_elements=["name"],
            set_={
                "owner": claim.excluded.owner,
                "lease_expires_at": claim.excluded.lease_expires_at,
                "updated_at": claim.excluded.updated_at,
            },
            where=free,
        ).returning(c.c.position)
        mine = sa.and_(c.c.name == sa.bindparam("c_name"), c.c.owner == sa.bindparam("c_owner"))
        position = sa.bindparam("c_position", type_=sa.BigInteger)
        self.advance_only = (
            sa.update(c)
            .where(mine)
            .values(
                # A position only moves forward.
                position=sa.case((c.c.position < position, position), else_=c.c.position),
                lease_expires_at=sa.bindparam("c_expires"),
                updated_at=sa.bindparam("c_now"),
            )
        )
        self.advance = self.advance_only.returning(c.c.position)
        self.release = sa.update(c).where(mine).values(owner=sa.null(), lease_expires_at=sa.null())
        p = tables.parked
        waiting = (
            sa.select(sa.func.count())
            .where(p.c.consumer == c.c.name, p.c.state != REPLAYED)
            .scalar_subquery()
        )
        self.select_consumers = sa.select(*c.c, waiting.label("parked")).order_by(c.c.name)
        self.insert_parked = (
            insert(p)
            .values(
                consumer=sa.bindparam("c_name"),
                event_id=sa.bindparam("c_event_id"),
                event=sa.bindparam("c_event", type_=p.c.event.type),
                attempts=sa.bindparam("c_attempts"),
                error=sa.bindparam("c_error"),
                state=PARKED,
                parked_at=sa.bindparam("c_now"),
            )
            .on_conflict_do_nothing(index_elements=["consumer", "event_id"])
        )
        # Built once per filter combination, so every statement here is static.
        self.select_parked: dict[tuple[bool, bool], sa.Select[Any]] = {}
        for by_consumer in (False, True):
            for by_state in (False, True):
                query = sa.select(p).order_by(p.c.id).limit(sa.bindparam("c_limit"))
                if by_consumer:
                    query = query.where(p.c.consumer == sa.bindparam("c_consumer"))
                if by_state:
                    query = query.where(p.c.state == sa.bindparam("c_state"))
                self.select_parked[(by_consumer, by_state)] = query
        self.select_parked_one = sa.select(p).where(p.c.id == sa.bindparam("c_id"))
        self.request_replay = (
            sa.update(p)
            .where(p.c.id == sa.bindparam("c_id"), p.c.state == PARKED)
            .values(state=REPLAY)
        )
        self.settle = (
            sa.update(p)
            .where(p.c.id == sa.bindparam("c_id"), p.c.state == REPLAY)
            .values(
                state=sa.bindparam("c_state"),
                attempts=p.c.attempts + 1,
                error=sa.func.coalesce(sa.bindparam("c_error", type_=sa.Text), p.c.error),
            )
        )
        # -- prune: each statement removes one batch, oldest rows first ------------------
        d = tables.deliveries
        old_deliveries = (
            sa.select(d.c.id)
            .where(d.c.received_at < sa.bindparam("c_cutoff"))
            .limit(sa.bindparam("c_batch"))
        )
        self.prune_deliveries = (
            sa.delete(d).where(d.c.id.in_(old_deliveries.scalar_subquery())).returning(d.c.id)
        )
        e = tables.events
        # Every registered consumer has passed these (no consumer: none are removed).
        passed = sa.select(sa.func.min(c.c.position)).scalar_subquery()
        old_events = (
            sa.select(e.c.id)
            .where(e.c.id <= passed, e.c.created_at < sa.bindparam("c_cutoff"))
            .order_by(e.c.id)
            .limit(sa.bindparam("c_batch"))
        )
        self.prune_events = (
            sa.delete(e).where(e.c.id.in_(old_events.scalar_subquery())).returning(e.c.id)
        )
        j = tables.jobs
        terminal: list[Any] = [sa.literal_column(f"'{s.value}'") for s in JobStatus if s.terminal]
        old_jobs = (
            sa.select(j.c.id)
            .where(j.c.status.in_(terminal), j.c.completed_at < sa.bindparam("c_cutoff"))
            .limit(sa.bindparam("c_batch"))
        )
        self.prune_jobs = (
            sa.delete(j).where(j.c.id.in_(old_jobs.scalar_subquery())).returning(j.c.id)
        )

    # -- consumers ----------------------------------------------------------------------

    def claim_consumer(self, name: str, owner: str, lease: float) -> Steps[int | None]:
        check_consumer_name(name)
        check_consumer_name(owner)
        now = utcnow()
        params = {
            "c_name": name,
            "c_owner": owner,
            "c_now": now,
            "c_expires": now + check_lease(lease),
        }
        if self.mysql is None:
            rows = yield self.claim, params
        else:
            yield self.mysql.lock_consumer, params
            yield self.mysql.claim, params
            rows = yield self.mysql.select_held, params
        return int(rows[0]["position"]) if rows else None

    def advance_consumer(self, name: str, owner: str, position: int, lease: float) -> Steps[bool]:
        now = utcnow()
        params = {
            "c_name": name,
            "c_owner": owner,
            "c_position": position,
            "c_now": now,
            "c_expires": now + check_lease(lease),
        }
        if self.mysql is None:
            rows = yield self.advance, params
        else:
            yield self.advance_only, params
            rows = yield self.mysql.select_held, params
        return bool(rows)

    def release_consumer(self, name: str, owner: str) -> Steps[None]:
        yield self.release, {"c_name": name, "c_owner": owner}

    def park_event(
        self, name: str, owner: str, event: JobEvent, error: str, attempts: int, lease: float
    ) -> Steps[bool]:
        """Keep ``event`` as parked and move the position past it, in one transaction;
        nothing is written (False) when ``owner`` no longer holds the lease."""
        moved = yield from self.advance_consumer(name, owner, event.id, lease)
        if not moved:
            raise _Rollback(False)
        now = utcnow()
        yield (
            self.insert_parked if self.mysql is None else self.mysql.insert_parked,
            {
                "c_name": name,
                "c_event_id": event.id,
                "c_event": event_to_dict(event),
                "c_attempts": attempts,
                "c_error": error,
                "c_now": now,
            },
        )
        return True

    def consumers(self) -> Steps[builtins.list[ConsumerInfo]]:
        return [_info(r) for r in (yield self.select_consumers, None)]

    def parked_events(
        self, consumer: str | None, state: str | None, limit: int
    ) -> Steps[builtins.list[ParkedEvent]]:
        check_limit(limit)
        params: dict[str, Any] = {"c_limit": limit, "c_consumer": consumer, "c_state": state}
        query = self.select_parked[(consumer is not None, state is not None)]
        return [_parked(r) for r in (yield query, params)]

    def replay_parked(self, parked_id: int) -> Steps[ParkedEvent]:
        yield self.request_replay, {"c_id": parked_id}
        rows = yield self.select_parked_one, {"c_id": parked_id}
        if not rows:
            raise ParkedEventNotFoundError(parked_id)
        return _parked(rows[0])

    def settle_parked(self, parked_id: int, handled: bool, error: str | None) -> Steps[None]:
        yield (
            self.settle,
            {
                "c_id": parked_id,
                "c_state": REPLAYED if handled else PARKED,
                "c_error": error,
            },
        )

    # -- prune --------------------------------------------------------------------------

    def prune_batch(self, kind: str, cutoff: datetime, batch: int) -> Steps[int]:
        """Remove one batch of ``kind`` (deliveries, events, jobs) older than ``cutoff``."""
        params: dict[str, Any] = {"c_cutoff": utc(cutoff), "c_batch": batch}
        if self.mysql is not None:
            ids = [row["id"] for row in (yield self.mysql.select_prunable[kind], params)]
            if not ids:
                return 0
            yield self.mysql.delete_prunable[kind], {**params, "c_ids": ids}
            (deleted,) = yield self.mysql.select_deleted, None
            return int(deleted["deleted"])
        statement = {
            "deliveries": self.prune_deliveries,
            "events": self.prune_events,
            "jobs": self.prune_jobs,
        }[kind]
        rows = yield statement, params
        return len(rows)


def read_events(
    stmts: Statements, after: int, limit: int, job_id: str | None = None
) -> Steps[builtins.list[JobEvent]]:
    """Outbox events after ``after``, in id order, never one a later read could find
    below an id already returned.

    On PostgreSQL the events query marks the events below the oldest running
    transaction ``settled`` and only those are returned, until the first unsettled one
    is older than `Statements.outbox_wait`: then the horizon counts only transactions
    writing to the events table (`_statements._OUTBOX_HORIZON`), so an idle session
    elsewhere on the server delays events by that bound, not for as long as it stays
    open. The horizon and the events are two statements, two snapshots (PostgreSQL's
    reads run in autocommit), in that order. ``job_id``: that job's events only.
    """
    params: dict[str, Any] = {"after": after, "limit": limit}
    if job_id is not None:
        params["job_id"] = job_id
    rows = yield (stmts.select_events if job_id is None else stmts.select_job_events), params
    if not rows or "settled" not in rows[0]:
        return [event_from_row(r) for r in rows]
    settled = [r for r in rows if r["settled"]]
    if len(settled) < len(rows):
        held = aware(rows[len(settled)]["created_at"])
        if held is not None and held < utcnow() - stmts.outbox_wait:
            (found,) = yield stmts.select_outbox_horizon, None
            params["horizon"] = found["horizon"]
            below = stmts.select_events_below if job_id is None else stmts.select_job_events_below
            rows = yield below, params
            return [event_from_row(r) for r in rows]
    return [event_from_row(r) for r in settled]
