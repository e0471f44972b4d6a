"""Outbox event ids no reader can skip, per database.

A notifier reads ``events(after=last_id)``: an event whose id is below one it has read
must never commit after that read.

- SQLite serialises writers, so an autoincrementing id grows in commit order.
- PostgreSQL: the id is the writing transaction's id times 65,536 plus its count of
  events so far (only that transaction writes ids in its range), and readers see only
  ids below the oldest running transaction's (`visible`).
- MySQL and MariaDB: a counter row incremented in the writing transaction; its row lock
  hands out ids in commit order.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import connections
from django.db.models import F
from django.db.models.expressions import RawSQL

from jobhook._models import Job
from jobhook.exceptions import StoreUnavailableError

__all__ = ["insert_event", "visible"]

#: PostgreSQL: event ids are ``txid * PER_TRANSACTION + n``.
PER_TRANSACTION = 65_536


def insert_event(using: str, job: Job, delivery_id: str | None, now: datetime) -> int:
    """Append ``job``'s event to the outbox, in the caller's transaction; return its id."""
    from jobhook.django.models import Counter, Event

    fields = {
        "job_id": job.id,
        "owner_id": job.owner_id,
        "kind": job.kind,
        "status": job.status.value,
        "progress": job.progress,
        "version": job.version,
        "delivery_id": delivery_id,
        "created_at": now,
    }
    connection = connections[using]
    events = Event.objects.using(using)
    if connection.vendor == "postgresql":
        quote = connection.ops.quote_name
        table = quote(Event._meta.db_table)
        columns = ", ".join(quote(c) for c in fields)
        placeholders = ", ".join(["%s"] * len(fields))
        sql = (
            f"INSERT INTO {table} (id, {columns}) "
            f"SELECT COALESCE(MAX(id) + 1, txid_current() * {PER_TRANSACTION}), "
            f"{placeholders} FROM {table} "
            f"WHERE id >= txid_current() * {PER_TRANSACTION} "
            f"AND id < (txid_current() + 1) * {PER_TRANSACTION} RETURNING id"
        )
        with connection.cursor() as cursor:
            cursor.execute(sql, list(fields.values()))
            return int(cursor.fetchone()[0])
    if connection.vendor == "mysql":
        counters = Counter.objects.using(using).filter(name="events")
        if counters.update(value=F("value") + 1) != 1:
            raise StoreUnavailableError(
                f"the outbox counter row is missing in {using!r}: run `manage.py migrate jobhook`"
            )
        event_id = int(counters.values_list("value", flat=True).get())
        events.create(id=event_id, **fields)
        return event_id
    return int(events.create(**fields).id)


def visible(using: str, query: Any) -> Any:
    """``query`` (of events) narrowed to the ids no running transaction can precede."""
    if connections[using].vendor != "postgresql":
        return query
    # Below the oldest running transaction: nothing can commit there any more.
    xmin = RawSQL(f"txid_snapshot_xmin(txid_current_snapshot()) * {PER_TRANSACTION}", [])
    return query.filter(id__lt=xmin)
