"""MySQL and MariaDB: the consumer and prune statements that stand in for
``ON CONFLICT``, ``UPDATE … RETURNING`` and ``DELETE … WHERE id IN (SELECT … LIMIT n)``.

Each of these steps runs in one transaction (`ConsumerOperations.stands_alone` is
False there), at the server's isolation level, REPEATABLE READ by default. Only
locking statements decide anything: ``INSERT``, ``UPDATE``, ``DELETE`` and
``SELECT … FOR UPDATE`` read the latest committed row and lock it until commit, where
a plain ``SELECT`` could read an older snapshot.

- Claiming a lease: `lock_consumer` (``INSERT … ON DUPLICATE KEY UPDATE`` that changes
  nothing) creates the row of a new name at position 0 or locks the existing one; the
  guarded `claim` ``UPDATE`` takes the lease only when it is free, expired or the
  claimer's own; `select_held` reads the row back under its lock: a position when the
  claimer holds the lease, no row when another owner does. Two claimers queue on the row
  lock, so the second sees the first's lease and gets nothing.
- Advancing or parking: the ``owner = :owner`` guarded ``UPDATE``, then `select_held`:
  no row when the lease was lost, and nothing was written.
- Parking: the parked row is inserted with a no-op ``ON DUPLICATE KEY UPDATE``, so a
  second park of the same event changes nothing (``INSERT IGNORE`` would also turn other
  refusals, such as a value too long, into warnings).
- Pruning one batch: a plain ``SELECT`` of at most ``batch`` ids, then ``DELETE … WHERE
  id IN (:ids)`` with the condition again (only those primary-key rows are locked, so
  webhook inserts do not wait behind a scan), then ``ROW_COUNT()``: what was removed.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import mysql

from jobhook._models import JobStatus
from jobhook._outbox import PARKED
from jobhook.stores._schema import Tables

__all__ = ["MySQLConsumerStatements"]


class MySQLConsumerStatements:
    """The consumer and prune statements MySQL and MariaDB run, built once per store."""

    def __init__(self, tables: Tables, free: sa.ColumnElement[bool]) -> None:
        c = tables.consumers
        new = mysql.insert(c).values(
            name=sa.bindparam("c_name"),
            position=0,
            owner=sa.null(),
            lease_expires_at=sa.null(),
            updated_at=sa.bindparam("c_now"),
        )
        # Sets the name to itself: changes nothing, but locks the row until commit.
        self.lock_consumer = new.on_duplicate_key_update(name=new.inserted.name)
        self.claim = (
            sa.update(c)
            .where(c.c.name == sa.bindparam("c_name"), free)
            .values(
                owner=sa.bindparam("c_owner"),
                lease_expires_at=sa.bindparam("c_expires"),
                updated_at=sa.bindparam("c_now"),
            )
        )
        self.select_held = (
            sa.select(c.c.position)
            .where(c.c.name == sa.bindparam("c_name"), c.c.owner == sa.bindparam("c_owner"))
            .with_for_update()
        )
        p = tables.parked
        parked = mysql.insert(p).values(
            consumer=sa.bindparam("c_name"),
            event_id=sa.bindparam("c_event_id"),
            event=sa.bindparam("c_event", type_=p.c.event.type),
            attempts=sa.bindparam("c_attempts"),
            error=sa.bindparam("c_error"),
            state=PARKED,
            parked_at=sa.bindparam("c_now"),
        )
        self.insert_parked = parked.on_duplicate_key_update(event_id=parked.inserted.event_id)
        # -- prune: select a batch of ids, delete them, count what went -----------------
        cutoff: sa.BindParameter[Any] = sa.bindparam("c_cutoff")
        d, e, j = tables.deliveries, tables.events, tables.jobs
        passed = sa.select(sa.func.min(c.c.position)).scalar_subquery()
        terminal: list[Any] = [sa.literal_column(f"'{s.value}'") for s in JobStatus if s.terminal]
        conditions: dict[str, tuple[sa.Table, list[sa.ColumnElement[bool]]]] = {
            "deliveries": (d, [d.c.received_at < cutoff]),
            # Every registered consumer has passed these (no consumer: none are removed).
            "events": (e, [e.c.id <= passed, e.c.created_at < cutoff]),
            "jobs": (j, [j.c.status.in_(terminal), j.c.completed_at < cutoff]),
        }
        self.select_prunable: dict[str, sa.Select[Any]] = {}
        self.delete_prunable: dict[str, sa.Delete] = {}
        ids: sa.BindParameter[Any] = sa.bindparam("c_ids", expanding=True)
        for kind, (table, where) in conditions.items():
            self.select_prunable[kind] = (
                sa.select(table.c.id)
                .where(*where)
                .order_by(table.c.id)
                .limit(sa.bindparam("c_batch"))
            )
            self.delete_prunable[kind] = sa.delete(table).where(table.c.id.in_(ids), *where)
        self.select_deleted = sa.select(sa.func.row_count().label("deleted"))
