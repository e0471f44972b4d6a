"""Adopting an app's own job table: `JobTable` maps jobhook's job fields onto its
columns, and `SQLJobStore` then keeps its jobs there, adding only its side tables."""

from __future__ import annotations

import builtins
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import attrs
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from jobhook._ids import utcnow
from jobhook._lifecycle import new_job
from jobhook._models import JSON, ApplyResult, Job, JobStatus, JobUpdate
from jobhook.exceptions import JobExistsError, ValidationError
from jobhook.stores._operations import Operations
from jobhook.stores._rows import bound
from jobhook.stores._schema import Tables
from jobhook.stores._steps import Rows, Steps
from jobhook.stores.protocol import StatusFilter

__all__ = ["FIELDS", "JobTable", "adopt"]

#: Every field of a job, each kept in one column of the job table.
FIELDS = (
    "id",
    "kind",
    "owner_id",
    "input",
    "status",
    "progress",
    "output",
    "error_code",
    "error_message",
    "remote_id",
    "sequence",
    "metadata",
    "version",
    "created_at",
    "updated_at",
    "completed_at",
)


@attrs.frozen
class JobTable:
    """An app's own table, used as jobhook's job table.

    ``columns`` maps jobhook's job fields (`FIELDS`) to the table's column names; a
    field not mapped is looked for under its own name. ``values`` fills the app's other
    columns when jobhook creates a job: column name to a function of the new `Job`
    (``{"prompt": lambda job: job.input["prompt"]}``). Rows jobhook did not create
    (``version`` is NULL) are not jobs to it: never read, never written.
    """

    name: str
    columns: Mapping[str, str] = attrs.field(factory=dict)
    values: Mapping[str, Callable[[Job], Any]] = attrs.field(factory=dict)
    schema: str | None = None

    def __attrs_post_init__(self) -> None:
        unknown = sorted(set(self.columns) - set(FIELDS))
        if unknown:
            raise ValidationError(f"JobTable maps unknown job fields: {', '.join(unknown)}")

    def column(self, field: str) -> str:
        """The table's column that keeps ``field``."""
        return self.columns.get(field, field)


def adopt(engine: sa.Engine, prefix: str, job_table: JobTable) -> tuple[Tables, Operations]:
    """jobhook's tables with ``job_table`` as the job table, and their operations.

    Raises `ValidationError` naming every job field the table has no column for (add
    those columns, or map the fields onto existing ones)."""
    tables = Tables(prefix)
    inspector = sa.inspect(engine)
    if not inspector.has_table(job_table.name, schema=job_table.schema):
        raise ValidationError(f"there is no table {job_table.name!r} to adopt")
    existing = {c["name"] for c in inspector.get_columns(job_table.name, schema=job_table.schema)}
    missing = [f for f in FIELDS if job_table.column(f) not in existing]
    if missing:
        wanted = ", ".join(f"{f} (column {job_table.column(f)!r})" for f in missing)
        raise ValidationError(
            f"table {job_table.name!r} has no column for these job fields: {wanted}; "
            "add them, or map the fields onto existing columns with JobTable(columns=...)"
        )
    absent = sorted(set(job_table.values) - existing)
    if absent:
        raise ValidationError(f"table {job_table.name!r} has no columns {', '.join(absent)}")
    original = tables.jobs
    tables.metadata.remove(original)  # create_schema() never touches the app's table
    tables.jobs = _table(original, job_table, sa.MetaData())
    insert_into = _table(original, job_table, sa.MetaData(), extra=job_table.values)
    return tables, AdoptedOperations(tables, engine.dialect.name, job_table, insert_into)


def _table(
    original: sa.Table,
    job_table: JobTable,
    metadata: sa.MetaData,
    extra: Mapping[str, Any] | None = None,
) -> sa.Table:
    columns = [
        sa.Column(
            job_table.column(c.name),
            c.type,
            key=c.name,
            primary_key=c.primary_key,
            nullable=c.nullable,
        )
        for c in original.c
    ]
    # The app's other columns, set at create: keyed apart from the job fields.
    columns += [sa.Column(name, sa.types.NullType(), key=f"app:{name}") for name in extra or {}]
    return sa.Table(job_table.name, metadata, *columns, schema=job_table.schema)


class AdoptedOperations(Operations):
    """The store's operations on an adopted job table: the same statements, narrowed
    to jobhook's rows (``version IS NOT NULL``), with rows read back under the job
    fields' names."""

    def __init__(
        self, tables: Tables, dialect: str, job_table: JobTable, insert_into: sa.Table
    ) -> None:
        super().__init__(tables, dialect)
        jobs = tables.jobs
        self._mine = jobs.c.version.is_not(None)
        self.select_job = self.select_job.where(self._mine)
        self.select_job_by_remote_id = self.select_job_by_remote_id.where(self._mine)
        self.select_stale = self.select_stale.where(self._mine)
        unset = ("progress", "output", "error_code", "error_message", "remote_id", "sequence")
        self.insert_job = sa.insert(insert_into).values(
            bound(insert_into, **dict.fromkeys((*unset, "completed_at"), sa.null()))
        )
        # The one-statement apply looks at any row with the id: use the steps instead.
        self._one_trip = None
        self._job_table = job_table
        self._rename = {c.name: c.key for c in jobs.c}

    def select_jobs(self) -> sa.Select[Any]:
        return super().select_jobs().where(self._mine)

    def _build_update(self, status: JobStatus, fields: Any, has_sequence: bool) -> sa.Update:
        return super()._build_update(status, fields, has_sequence).where(self._mine)

    def _renamed(self, steps: Steps[Any]) -> Steps[Any]:
        """``steps`` with the job table's rows keyed by field, as `job_from_row` reads."""
        rename = self._rename
        try:
            step = next(steps)
            while True:
                try:
                    rows: Rows = yield step
                except sa_exc.IntegrityError as exc:
                    step = steps.throw(exc)
                    continue
                if rows and rename.keys() <= rows[0].keys():
                    rows = [{rename.get(k, k): v for k, v in row.items()} for row in rows]
                step = steps.send(rows)
        except StopIteration as stop:
            return stop.value

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
        row: dict[str, Any] = {
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
        for name, value_of in self._job_table.values.items():
            row[f"app:{name}"] = value_of(job)
        try:
            yield self.insert_job, row
        except sa_exc.IntegrityError:
            raise JobExistsError(job.id) from None
        return job

    def get(self, job_id: str) -> Steps[Job]:
        return self._renamed(super().get(job_id))

    def get_by_remote_id(self, remote_id: str) -> Steps[Job]:
        return self._renamed(super().get_by_remote_id(remote_id))

    def list(
        self,
        owner_id: str | None,
        status: StatusFilter,
        kind: str | None,
        limit: int,
        before: str | None,
    ) -> Steps[builtins.list[Job]]:
        steps = super().list(owner_id, status, kind, limit, before)
        return self._renamed(steps)

    def apply(self, job_id: str, update: JobUpdate, delivery_id: str | None) -> Steps[ApplyResult]:
        return self._renamed(super().apply(job_id, update, delivery_id))

    def stale(self, updated_before: datetime, limit: int) -> Steps[builtins.list[Job]]:
        return self._renamed(super().stale(updated_before, limit))
