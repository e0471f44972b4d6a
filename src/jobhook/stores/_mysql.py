"""MySQL and MariaDB: the statements that stand in for what they lack.

They have no ``UPDATE … RETURNING`` and no ``ON CONFLICT``, so an apply there is one
transaction of plain statements (`jobhook.stores._operations.Operations.apply`):

1. `MySQLStatements.lock_job` reads the job ``FOR UPDATE`` (as one JSON object): an
   unknown job ends the
   apply before anything is written, and the row cannot change until commit, so
   concurrent deliveries to one job queue here.
2. ``INSERT`` the delivery id; the unique key refusing it (a duplicate) is caught.
3. The lifecycle rules judge the locked row; a refused update ends here (the delivery
   id stays recorded). Otherwise the guarded ``UPDATE … WHERE id = :id AND <rules>``
   writes it, deciding in the database as on the other databases; the same statement
   advances the one row of the ``{prefix}event_ids`` counter
   (`MySQLStatements.taking_event_id`), locking it until commit. The server's answer
   to it carries the rows it matched and the ``LAST_INSERT_ID(expr)`` it set, the
   outbox id it took (SQLAlchemy's ``rowcount`` and ``lastrowid``): no statement
   reads them. The job is the rules' transition of the row locked in step 1, which is
   what step 3 wrote.
4. The event is inserted with that id, and the transaction commits.

Four statements and a COMMIT, one fewer than the best hand-written code with the same
guarantees (``benchmarks/_floor_mysql.py``), on MySQL and MariaDB alike.

Why a counter: readers page the outbox with ``events(after=last_id)`` and never look
back, so an id must never become visible after a greater one. ``AUTO_INCREMENT`` cannot
promise that: a transaction may take id 10, another id 11 and commit first, and a
reader that saw 11 skips 10 forever. The counter row is locked from the moment an
apply advances it until that apply commits, so the next apply can only take its id after
the previous one has committed: ids are handed out in commit order, and a rolled-back
apply gives its id back. The lock is the last one an apply takes (job, then delivery
id, then counter), and every apply takes them in that order, so applies wait for one
another in a queue, not in a cycle; what they serialise is the end of each transaction.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from jobhook.stores._rows import bound
from jobhook.stores._schema import Tables

__all__ = ["MySQLStatements"]


class MySQLStatements:
    """The statements MySQL and MariaDB run in place of RETURNING and ON CONFLICT."""

    def __init__(self, tables: Tables) -> None:
        jobs, events, counter = tables.jobs, tables.events, tables.event_ids
        dl = tables.dead_letters
        # A duplicate delivery id raises IntegrityError (caught by the steps); INSERT
        # IGNORE would also turn other refusals (a value too long) into warnings.
        self.insert_delivery = sa.insert(tables.deliveries).values(bound(tables.deliveries))
        # The locked row as one JSON object (``job``), not one column per field: PyMySQL
        # parses a description of every column of every result, which cost a third of
        # an apply's CPU with sixteen columns. JSON columns nest as JSON, timestamps
        # come as text (see `jobhook.stores._rows.job_from_json`).
        fields: list[sa.ColumnElement[Any]] = []
        for c in jobs.c:
            fields += [sa.literal_column(f"'{c.key}'"), c]
        self.lock_job = (
            sa.select(sa.func.json_object(*fields, type_=sa.Text).label("job"))
            .where(jobs.c.id == sa.bindparam("id"))
            .with_for_update()
        )
        deliveries = tables.deliveries
        self.select_delivery = sa.select(deliveries.c.id).where(
            deliveries.c.id == sa.bindparam("id")
        )
        self.insert_event = sa.insert(events).values(bound(events))
        self.insert_dead_letter = sa.insert(dl).values(bound(dl, id=None))
        # The letter just inserted on this connection (its AUTO_INCREMENT id).
        self.select_inserted_dead_letter = sa.select(dl).where(dl.c.id == sa.func.last_insert_id())
        self._counter = counter
        self._jobs = jobs

    def taking_event_id(self, update: sa.Update) -> sa.Update:
        """The guarded UPDATE of a job, made to advance the outbox counter in the same
        statement (a multiple-table UPDATE): the counter row is then locked until
        commit, and ``LAST_INSERT_ID()`` holds the id this job's event takes."""
        counter, jobs = self._counter, self._jobs
        return update.where(
            # The counter's one row. Said as a comparison with the job row (its id is
            # 1, a version is never below 1) so that SQLAlchemy sees the two tables
            # joined on purpose, not an accidental cartesian product.
            counter.c.id == sa.func.least(1, jobs.c.version)
        ).values({counter.c.last_id: sa.func.last_insert_id(counter.c.last_id + 1)})
