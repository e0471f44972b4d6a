"""`DjangoJobStore`: a `JobStore` on the Django ORM and the project's ``DATABASES``.

Every transition is decided in the database by one guarded
``QuerySet.filter(id=…, <lifecycle rules>).update(…)``; the delivery id is recorded
against a unique key in the same transaction; the outbox event is written in that
transaction too, with an id no reader can skip:

- SQLite serialises writers, so an autoincrementing id grows in commit order;
- PostgreSQL: the id is the writing transaction's id times 65,536 plus its count of
  events so far, and readers see only ids below the oldest running transaction's;
- MySQL and MariaDB: a counter row incremented in the transaction, whose row lock
  hands out ids in commit order.
"""

from __future__ import annotations

import builtins
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import IntegrityError, connections, transaction
from django.db.models import BigIntegerField, Case, F, Q, Value, When

from jobhook._convert import update_to_dict
from jobhook._ids import check_delivery_id, utcnow
from jobhook._lifecycle import allowed_from, changes, check_id, check_reason, judge, new_job
from jobhook._models import (
    JSON,
    ApplyResult,
    DeadLetter,
    Job,
    JobEvent,
    JobStatus,
    JobUpdate,
    Outcome,
)
from jobhook._outbox import PruneReport, check_prune, prune_plan, prune_report
from jobhook.django._errors import _mapped, _Rollback
from jobhook.django._outbox import insert_event, visible
from jobhook.exceptions import (
    DeadLetterNotFoundError,
    JobExistsError,
    JobNotFoundError,
)
from jobhook.stores._rows import (
    applied,
    check_output,
    dead_letter_from_row,
    event_from_row,
    job_from_row,
    utc,
)
from jobhook.stores.protocol import StatusFilter, check_limit, status_values

__all__ = ["DjangoJobStore"]


def _models() -> Any:
    """jobhook's models, imported when first used: they need Django's app registry,
    while `DjangoJobStore` itself can be imported before Django is set up."""
    from jobhook.django import models

    return models


def _job_fields() -> list[str]:
    return [f.name for f in _models().Job._meta.fields]


class DjangoJobStore:
    """A `JobStore` in the Django project's database ``using`` (an alias of
    ``DATABASES``): SQLite, PostgreSQL, MySQL or MariaDB.

    Needs ``"jobhook.django"`` in ``INSTALLED_APPS`` (its migrations make the tables)
    and ``USE_TZ = True``. Thread-safe (Django gives each thread its connection).
    Every method is atomic; called inside the app's ``transaction.atomic()`` it joins
    that transaction (a savepoint), so a job and the app's own rows commit together or
    not at all. On SQLite, use ``"OPTIONS": {"transaction_mode": "IMMEDIATE"}`` so
    that concurrent writers wait for each other instead of failing. On MySQL and
    MariaDB, give the database a binary collation (``utf8mb4_bin``): job ids are
    case-sensitive.
    """

    def __init__(self, using: str = "default") -> None:
        if not settings.USE_TZ:
            raise ImproperlyConfigured("DjangoJobStore needs USE_TZ = True")
        if using not in settings.DATABASES:
            raise ImproperlyConfigured(f"DATABASES has no {using!r} alias")
        self.using = using

    def __repr__(self) -> str:
        return f"<DjangoJobStore using={self.using!r}>"

    @property
    def _vendor(self) -> str:
        return str(connections[self.using].vendor)

    def _jobs(self) -> Any:
        m = _models()
        return m.Job.objects.using(self.using)

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        with transaction.atomic(using=self.using):
            yield

    # -- jobs -----------------------------------------------------------------------

    @_mapped
    def create(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job:
        """Create a ``pending`` job (committed, or part of the caller's ``atomic()``).
        See `JobStore.create`."""
        job = new_job(
            input, kind=kind, owner_id=owner_id, job_id=job_id, metadata=metadata, now=utcnow()
        )
        try:
            with self._atomic():  # a savepoint inside the app's transaction
                self._jobs().create(
                    id=job.id,
                    kind=job.kind,
                    owner_id=job.owner_id,
                    input=job.input,
                    status=job.status.value,
                    metadata=job.metadata,
                    version=job.version,
                    created_at=job.created_at,
                    updated_at=job.updated_at,
                )
        except IntegrityError:
            raise JobExistsError(job.id) from None
        return job

    def _row(self, job_id: str) -> Mapping[str, Any] | None:
        row: Mapping[str, Any] | None
        row = self._jobs().filter(id=job_id).values(*_job_fields()).first()
        return row

    @_mapped
    def get(self, job_id: str) -> Job:
        """Return the job. Raises `JobNotFoundError`."""
        check_id(job_id)
        row = self._row(job_id)
        if row is None:
            raise JobNotFoundError(job_id)
        return job_from_row(row)

    @_mapped
    def get_by_remote_id(self, remote_id: str) -> Job:
        """The newest job carrying ``remote_id``. See `JobStore.get_by_remote_id`."""
        check_id(remote_id, "remote_id")
        row = (
            self._jobs()
            .filter(remote_id=remote_id)
            .order_by("-created_at", "-id")
            .values(*_job_fields())
            .first()
        )
        if row is None:
            raise JobNotFoundError(remote_id=remote_id)
        return job_from_row(row)

    @_mapped
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
        check_limit(limit)
        query = self._jobs()
        if owner_id is not None:
            query = query.filter(owner_id=owner_id)
        statuses = status_values(status)
        if statuses is not None:
            query = query.filter(status__in=statuses)
        if kind is not None:
            query = query.filter(kind=kind)
        if before is not None:
            anchor = self._jobs().filter(id=before).values("created_at", "id").first()
            if anchor is None:
                raise JobNotFoundError(before)
            query = query.filter(
                Q(created_at__lt=anchor["created_at"])
                | Q(created_at=anchor["created_at"], id__lt=anchor["id"])
            )
        rows = query.order_by("-created_at", "-id").values(*_job_fields())[:limit]
        return [job_from_row(r) for r in rows]

    @_mapped
    def stale(self, *, updated_before: datetime, limit: int = 100) -> builtins.list[Job]:
        """Non-terminal jobs last updated before ``updated_before``, oldest first."""
        m = _models()
        check_limit(limit)
        rows = (
            self._jobs()
            .filter(status__in=m.NON_TERMINAL, updated_at__lt=utc(updated_before))
            .order_by("updated_at", "id")
            .values(*_job_fields())[:limit]
        )
        return [job_from_row(r) for r in rows]

    # -- apply ----------------------------------------------------------------------

    @_mapped
    def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult:
        """Judge and apply ``update`` in one transaction. See `JobStore.apply`."""
        check_id(job_id)
        if delivery_id is not None:
            check_delivery_id(delivery_id)
        check_output(update)
        try:
            return self._apply(job_id, update, delivery_id)
        except _Rollback as rollback:
            return rollback.value

    def _apply(self, job_id: str, update: JobUpdate, delivery_id: str | None) -> ApplyResult:
        now = utcnow()
        with self._atomic():
            if delivery_id is not None and not self._record_delivery(delivery_id, job_id, now):
                row = self._row(job_id)
                return ApplyResult(Outcome.DUPLICATE, job_from_row(row) if row else None)
            if self._guarded_update(job_id, update, now):
                # The row is ours (locked) until commit: this reads what we wrote.
                row = self._row(job_id)
                assert row is not None
                job = job_from_row(row)
                event_id = insert_event(self.using, job, delivery_id, now)
                return applied(job, delivery_id, now, event_id)
            row = self._row(job_id)
            if row is None:
                # Roll back the delivery id too: a retry after the job exists must apply.
                raise _Rollback(ApplyResult(Outcome.NOT_FOUND, None))
            current = job_from_row(row)
            outcome = judge(current, update)
            if outcome is Outcome.APPLIED:
                raise RuntimeError(
                    f"the guarded UPDATE refused an update the lifecycle rules apply to job "
                    f"{job_id!r} ({current.status} <- {update.status}): a bug in jobhook"
                )
            return ApplyResult(outcome, current)

    def _record_delivery(self, delivery_id: str, job_id: str, now: datetime) -> bool:
        """Record the delivery id; False when it was recorded before (its unique key).

        One INSERT that does nothing on a taken id (a savepoint around a plain INSERT
        would cost two more round trips); a concurrent one waits for the other's
        transaction, then does nothing if it committed."""
        connection = connections[self.using]
        ops = connection.ops
        table = ops.quote_name(_models().Delivery._meta.db_table)
        insert = {
            "sqlite": "INSERT OR IGNORE INTO",
            "mysql": "INSERT IGNORE INTO",
        }.get(self._vendor, "INSERT INTO")
        conflict = " ON CONFLICT (id) DO NOTHING" if self._vendor == "postgresql" else ""
        sql = f"{insert} {table} (id, job_id, received_at) VALUES (%s, %s, %s){conflict}"
        with connection.cursor() as cursor:
            cursor.execute(sql, [delivery_id, job_id, ops.adapt_datetimefield_value(now)])
            return bool(cursor.rowcount == 1)

    def _guarded_update(self, job_id: str, update: JobUpdate, now: datetime) -> bool:
        """The lifecycle rules as the filter of one UPDATE: True when it applied."""
        values = changes(update)
        allowed = [s.value for s in allowed_from(update.status)]
        query = self._jobs().filter(id=job_id, status__in=allowed)
        if update.status is JobStatus.RUNNING:
            keeps_order = Q()
            if "progress" in values:
                keeps_order &= Q(progress__isnull=True) | Q(progress__lte=values["progress"])
            if update.sequence is not None:
                keeps_order &= Q(sequence__isnull=True) | Q(sequence__lt=update.sequence)
            if keeps_order:
                query = query.filter(~Q(status=JobStatus.RUNNING.value) | keeps_order)
        sets: dict[str, Any] = {
            "status": update.status.value,
            "version": F("version") + 1,
            "updated_at": now,
        }
        if update.status.terminal:
            sets["completed_at"] = now
        if "progress" in values:
            sets["progress"] = values["progress"]
        if "output" in values:
            sets["output"] = values["output"]
        if "error" in values:
            sets["error_code"] = values["error"].code
            sets["error_message"] = values["error"].message
        if "remote_id" in values:
            sets["remote_id"] = values["remote_id"]
        if update.sequence is not None:
            sets["sequence"] = Case(
                When(
                    Q(sequence__isnull=True) | Q(sequence__lt=update.sequence),
                    then=Value(update.sequence),
                ),
                default=F("sequence"),
                output_field=BigIntegerField(),
            )
        return bool(query.update(**sets) == 1)

    # -- the outbox -----------------------------------------------------------------

    @_mapped
    def events(
        self, *, after: int = 0, limit: int = 100, job_id: str | None = None
    ) -> builtins.list[JobEvent]:
        """Outbox events with an id greater than ``after``, in order (only ``job_id``'s
        when given)."""
        m = _models()
        check_limit(limit)
        query = m.Event.objects.using(self.using).filter(id__gt=after)
        if job_id is not None:
            query = query.filter(job_id=job_id)
        rows = visible(self.using, query).order_by("id").values()[:limit]
        return [event_from_row(r) for r in rows]

    # -- housekeeping ---------------------------------------------------------------

    @_mapped
    def prune(
        self,
        *,
        deliveries_older_than: timedelta,
        finished_jobs_older_than: timedelta | None = None,
        batch: int = 1000,
    ) -> PruneReport:
        """Remove delivery ids older than the retention, events as old that every
        consumer has passed (none while no consumer is registered), and, when asked,
        finished jobs older than theirs: ``batch`` rows per transaction, oldest first,
        safe beside live traffic (as `SQLJobStore.prune`)."""
        check_prune(deliveries_older_than, finished_jobs_older_than, batch)
        m = _models()
        report = PruneReport()
        for kind, cutoff in prune_plan(deliveries_older_than, finished_jobs_older_than):
            if kind == "deliveries":
                query = m.Delivery.objects.filter(received_at__lt=cutoff).order_by("received_at")
            elif kind == "events":
                positions = m.Consumer.objects.using(self.using).values_list("position", flat=True)
                passed = min(positions, default=None)
                if passed is None:
                    continue
                query = m.Event.objects.filter(id__lte=passed, created_at__lt=cutoff).order_by("id")
            else:
                terminal = [s.value for s in JobStatus if s.terminal]
                query = m.Job.objects.filter(status__in=terminal, completed_at__lt=cutoff)
                query = query.order_by("completed_at")
            removed = batch
            while removed >= batch:
                with transaction.atomic(using=self.using):
                    ids = list(query.using(self.using).values_list("pk", flat=True)[:batch])
                    removed, _ = query.model.objects.using(self.using).filter(pk__in=ids).delete()
                report += prune_report(kind, removed)
        return report

    # -- dead letters ---------------------------------------------------------------

    @_mapped
    def add_dead_letter(
        self,
        job_id: str,
        update: JobUpdate,
        *,
        delivery_id: str | None = None,
        body: bytes = b"",
        reason: str = "not_found",
    ) -> DeadLetter:
        """Keep a delivery that named an unknown job, once per ``delivery_id``."""
        m = _models()
        check_id(job_id)
        if delivery_id is not None:
            check_delivery_id(delivery_id)
        check_reason(reason)
        check_output(update)
        letters = m.DeadLetter.objects.using(self.using)
        with self._atomic():
            try:
                with self._atomic():
                    letter = letters.create(
                        job_id=job_id,
                        delivery_id=delivery_id,
                        update=update_to_dict(update),
                        body=bytes(body),
                        reason=reason,
                        received_at=utcnow(),
                    )
                pk = letter.pk
            except IntegrityError:
                # Kept already (the unique key on delivery_id said so).
                pk = letters.values_list("id", flat=True).get(delivery_id=delivery_id)
            return dead_letter_from_row(letters.filter(id=pk).values().get())

    @_mapped
    def dead_letters(
        self, *, job_id: str | None = None, include_replayed: bool = False, limit: int = 100
    ) -> builtins.list[DeadLetter]:
        """Kept deliveries, oldest first (not yet replayed ones unless asked)."""
        m = _models()
        check_limit(limit)
        query = m.DeadLetter.objects.using(self.using).order_by("id")
        if job_id is not None:
            query = query.filter(job_id=job_id)
        if not include_replayed:
            query = query.filter(replayed_at__isnull=True)
        return [dead_letter_from_row(r) for r in query.values()[:limit]]

    @_mapped
    def replay_dead_letter(self, dead_letter_id: int, *, job_id: str | None = None) -> ApplyResult:
        """Apply a kept delivery under its delivery id (to ``job_id`` when given).
        Raises `DeadLetterNotFoundError`."""
        m = _models()
        letters = m.DeadLetter.objects.using(self.using)
        with self._atomic():
            row = letters.filter(id=dead_letter_id).values().first()
            if row is None:
                raise DeadLetterNotFoundError(dead_letter_id)
            letter = dead_letter_from_row(row)
            target = letter.job_id if job_id is None else job_id
            check_id(target)
            try:
                result = self._apply(target, letter.update, letter.delivery_id)
            except _Rollback as rollback:
                return rollback.value  # the job is still unknown: the letter stays
            letters.filter(id=dead_letter_id, replayed_at__isnull=True).update(replayed_at=utcnow())
            return result

    def close(self) -> None:
        """Close this thread's connection to the database (Django reopens it on use)."""
        connections[self.using].close()
