"""`DjangoHolds`: the output keeper's holds in the ``OutputKeep`` model, beside a
`DjangoJobStore`'s jobs in the same database.

The same rows and rules as the SQL stores' ``output_keeps`` table: one hold per job
(a second ``add`` for the job writes nothing), ``due`` holds oldest first, and ``save``
changes only the fields it is given. Each method is one statement or one transaction
(a savepoint inside the caller's ``transaction.atomic()``, which it then joins).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from django.db import IntegrityError, transaction

from jobhook._models import JSON, JobUpdate
from jobhook.django._errors import _mapped
from jobhook.stores._outputs import Hold, update_from_json, update_to_json
from jobhook.stores._rows import utc

__all__ = ["DjangoHolds"]

#: The state of a hold whose files are not all kept yet.
KEEPING = "keeping"


def _hold(row: dict[str, Any]) -> Hold:
    return Hold(
        job_id=row["job_id"],
        delivery_id=row["delivery_id"],
        update=update_from_json(row["update"]),
        files=list(row["files"]),
        state=row["state"],
        attempts=row["attempts"],
        last_error=row["last_error"],
        next_attempt_at=utc(row["next_attempt_at"]),
        created_at=utc(row["created_at"]),
        updated_at=utc(row["updated_at"]),
        dead_letter_id=row["dead_letter_id"],
    )


class DjangoHolds:
    """Holds in the ``jobhook_outputkeep`` table of the database ``using`` (made by
    ``manage.py migrate jobhook``). Database errors raise `StoreUnavailableError`, as
    the store's do. Thread-safe (Django gives each thread its connection)."""

    def __init__(self, using: str = "default") -> None:
        self.using = using

    def __repr__(self) -> str:
        return f"<DjangoHolds using={self.using!r}>"

    def _keeps(self) -> Any:
        from jobhook.django.models import OutputKeep

        return OutputKeep.objects.using(self.using)

    def create_schema(self) -> None:
        """Nothing to do: the table is made by jobhook's migrations."""

    @_mapped
    def add(
        self,
        job_id: str,
        delivery_id: str | None,
        update: JobUpdate,
        now: datetime,
        dead_letter_id: int | None = None,
    ) -> bool:
        """Hold ``update`` for ``job_id``; False (and nothing written) when the job has
        a hold already, a concurrent one included (the primary key decides)."""
        row: dict[str, Any] = {
            "job_id": job_id,
            "delivery_id": delivery_id,
            "update": update_to_json(update),
            "files": [],
            "state": KEEPING,
            "attempts": 0,
            "last_error": None,
            "next_attempt_at": now,
            "created_at": now,
            "updated_at": now,
            "dead_letter_id": dead_letter_id,
        }
        try:
            with transaction.atomic(using=self.using):
                if self._keeps().filter(job_id=job_id).exists():
                    return False
                self._keeps().create(**row)
        except IntegrityError:
            return False  # a concurrent hold for the same job won
        return True

    @_mapped
    def get(self, job_id: str) -> Hold | None:
        row = self._keeps().filter(job_id=job_id).values().first()
        return None if row is None else _hold(row)

    @_mapped
    def due(self, now: datetime, limit: int) -> list[Hold]:
        """Holds still ``keeping`` whose next attempt is due, oldest first."""
        rows = (
            self._keeps()
            .filter(state=KEEPING, next_attempt_at__lte=now)
            .order_by("created_at", "job_id")
            .values()[:limit]
        )
        return [_hold(row) for row in rows]

    @_mapped
    def save(
        self,
        job_id: str,
        *,
        now: datetime,
        files: list[dict[str, JSON] | None] | None = None,
        state: str | None = None,
        attempts: int | None = None,
        last_error: str | None = None,
        next_attempt_at: datetime | None = None,
    ) -> None:
        """Change the given fields of ``job_id``'s hold (one UPDATE)."""
        given = {
            "files": files,
            "state": state,
            "attempts": attempts,
            "last_error": last_error,
            "next_attempt_at": next_attempt_at,
        }
        changes: dict[str, Any] = {k: v for k, v in given.items() if v is not None}
        changes["updated_at"] = now
        self._keeps().filter(job_id=job_id).update(**changes)
