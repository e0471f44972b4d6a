"""The reconciler: finds jobs whose webhooks never came and settles them.

Webhooks get lost: the app was down, a proxy dropped the request, the backend gave up
retrying. A submit can end ambiguously and leave its job ``pending``. The reconciler
looks at the jobs that have not changed for ``stale_after`` and, for each one:

1. polls the backend's status endpoint (`GeneratorClient.refresh`) when the client has
   one, and applies the answer exactly as a webhook would be applied;
2. resubmits a ``pending`` job the backend never saw (its status endpoint answers 404,
   or there is none to ask) under the job's own id, where the backend treats that as
   the same job (`GeneratorClient.can_resubmit`: jobhook's contract, Cog). With a
   backend that would take it as a second job (Replicate, fal, RunPod, OpenAI) a
   pending job is never submitted again: it is polled by remote id, or times out;
3. fails a job older than ``give_up_after`` that is still not finished with
   ``code="timed_out"``.

The rules are written once, as steps (`_Call`); `Reconciler` and `AsyncReconciler` only
run them against a sync or an async store and client.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Mapping
from datetime import datetime, timedelta
from typing import Any, TypeVar

import attrs

from jobhook._client import AsyncGeneratorClient, GeneratorClient
from jobhook._ids import utcnow
from jobhook._models import Job, JobError, JobStatus, JobUpdate
from jobhook.exceptions import ClientError, SubmitError, ValidationError
from jobhook.stores.protocol import AsyncJobStore, JobStore

__all__ = ["AsyncReconciler", "ReconcileFailure", "ReconcileReport", "Reconciler"]

log = logging.getLogger("jobhook.reconcile")

T = TypeVar("T")


@attrs.frozen
class ReconcileFailure:
    """A job the reconciler could not settle this time, and why (it is tried again)."""

    job_id: str
    message: str


@attrs.frozen
class ReconcileReport:
    """What one `Reconciler.run_once` did, as job ids per action.

    ``refreshed``: polled and changed (``finished`` is the subset now terminal);
    ``unchanged``: polled, still in progress; ``resubmitted``: sent to the backend
    again under the same id; ``timed_out``: failed with ``code="timed_out"``;
    ``errors``: jobs left as they were because the backend could not answer.
    ``backend_unreachable`` is true when the run stopped asking the backend after a
    network error (the remaining jobs were only checked for ``give_up_after``).
    """

    checked: int = 0
    refreshed: tuple[str, ...] = ()
    finished: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    resubmitted: tuple[str, ...] = ()
    timed_out: tuple[str, ...] = ()
    errors: tuple[ReconcileFailure, ...] = ()
    backend_unreachable: bool = False

    @property
    def ok(self) -> bool:
        """True when every stale job was settled or is known to be in progress."""
        return not self.errors

    def summary(self) -> str:
        """One line for logs and terminals: ``checked 4: 1 refreshed, ...``."""
        parts = [
            f"{len(self.refreshed)} refreshed ({len(self.finished)} finished)",
            f"{len(self.unchanged)} unchanged",
            f"{len(self.resubmitted)} resubmitted",
            f"{len(self.timed_out)} timed out",
            f"{len(self.errors)} errors",
        ]
        text = f"checked {self.checked}: " + ", ".join(parts)
        return text + (" (backend unreachable)" if self.backend_unreachable else "")


@attrs.frozen
class _Call:
    """Call ``<target>.<method>(*args)`` (target is ``"store"`` or ``"client"``)."""

    target: str
    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)


_Steps = Generator[_Call, Any, T]


def _seconds(name: str, value: timedelta | float) -> timedelta:
    if isinstance(value, timedelta):
        delta = value
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        delta = timedelta(seconds=value)
    else:
        raise ValidationError(f"{name} must be seconds or a timedelta, got {value!r}")
    if delta <= timedelta(0):
        raise ValidationError(f"{name} must be positive, got {value!r}")
    return delta


def _never_seen(exc: ClientError) -> bool:
    # The status endpoint's 404 is the backend saying it has no such job: the
    # submit never arrived (or the backend lost it).
    return exc.response is not None and exc.response.status_code == 404


class _Run:
    """The state of one pass: what was done to which job."""

    def __init__(self) -> None:
        self.checked = 0
        self.refreshed: list[str] = []
        self.finished: list[str] = []
        self.unchanged: list[str] = []
        self.resubmitted: list[str] = []
        self.timed_out: list[str] = []
        self.errors: list[ReconcileFailure] = []
        self.unreachable = False

    def backend_failed(self, exc: ClientError) -> None:
        if exc.response is None and not self.unreachable:
            # No answer at all: every other job would wait through the same retries.
            self.unreachable = True
            log.warning("backend unreachable; polling stops for this run: %s", exc)

    def report(self) -> ReconcileReport:
        return ReconcileReport(
            checked=self.checked,
            refreshed=tuple(self.refreshed),
            finished=tuple(self.finished),
            unchanged=tuple(self.unchanged),
            resubmitted=tuple(self.resubmitted),
            timed_out=tuple(self.timed_out),
            errors=tuple(self.errors),
            backend_unreachable=self.unreachable,
        )


class _ReconcilerCore:
    """The reconciler's rules, as steps: no I/O here."""

    def __init__(
        self,
        client: GeneratorClient | AsyncGeneratorClient,
        *,
        stale_after: timedelta | float,
        give_up_after: timedelta | float,
        limit: int,
        clock: Callable[[], datetime],
    ) -> None:
        self.client = client
        self.stale_after = _seconds("stale_after", stale_after)
        self.give_up_after = _seconds("give_up_after", give_up_after)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise ValidationError(f"limit must be a positive integer, got {limit!r}")
        self.limit = limit
        self.clock = clock

    def run_once(self) -> _Steps[ReconcileReport]:
        now = self.clock()
        jobs: list[Job] = yield _Call(
            "store", "stale", kwargs={"updated_before": now - self.stale_after, "limit": self.limit}
        )
        run = _Run()
        for job in jobs:
            run.checked += 1
            yield from self._settle(job, now, run)
        report = run.report()
        log.info("reconcile: %s", report.summary())
        return report

    def _settle(self, job: Job, now: datetime, run: _Run) -> _Steps[None]:
        expired = now - job.created_at >= self.give_up_after
        if not run.unreachable:
            job, settled = yield from self._ask_backend(job, run, expired=expired)
            if settled:
                return
        if expired and not job.terminal:
            yield from self._time_out(job, now, run)

    def _ask_backend(self, job: Job, run: _Run, *, expired: bool) -> _Steps[tuple[Job, bool]]:
        """Poll the job, or resubmit it; return it and whether this run is done with it."""
        # Only where the backend takes a repeated submit as the same job: otherwise a
        # pending job (its submit may have arrived) is polled by remote id or times out.
        resubmittable = (
            job.status is JobStatus.PENDING
            and not expired
            and getattr(self.client, "can_resubmit", True)
        )
        if not self.client.can_refresh(job):
            if resubmittable:
                # Nothing to ask: a resubmit under the same id is safe either way.
                yield from self._resubmit(job, run)
                return job, True
            return job, False
        try:
            polled: Job = yield _Call("client", "refresh", (job.id,))
        except ClientError as exc:
            if resubmittable and _never_seen(exc):
                yield from self._resubmit(job, run)
                return job, True
            run.backend_failed(exc)
            if expired:
                return job, False  # timed out below, whatever the backend says
            run.errors.append(ReconcileFailure(job.id, str(exc)))
            return job, True
        if polled.version != job.version:
            run.refreshed.append(job.id)
            if polled.terminal:
                run.finished.append(job.id)
        elif not expired:
            run.unchanged.append(job.id)
        return polled, polled.terminal or not expired

    def _resubmit(self, job: Job, run: _Run) -> _Steps[None]:
        try:
            yield _Call("client", "resubmit", (job.id,))
        except SubmitError as exc:
            # A definite refusal failed the job; an ambiguous end leaves it pending
            # for the next run.
            run.backend_failed(exc)
            run.errors.append(ReconcileFailure(job.id, str(exc)))
            return
        run.resubmitted.append(job.id)

    def _time_out(self, job: Job, now: datetime, run: _Run) -> _Steps[None]:
        age = now - job.created_at
        message = f"no final status after {age.total_seconds():.0f}s (still {job.status})"
        update = JobUpdate(JobStatus.FAILED, error=JobError("timed_out", message))
        result = yield _Call("store", "apply", (job.id, update))
        if result.applied:
            run.timed_out.append(job.id)
            log.warning("job %s: timed out after %.0fs", job.id, age.total_seconds())
        elif result.job is not None and result.job.terminal:
            # A webhook finished it between the poll and now: the first terminal wins.
            run.refreshed.append(job.id)
            run.finished.append(job.id)


def _drive(steps: _Steps[T], store: Any, client: Any) -> T:
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            call = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        value, error = None, None
        target = store if call.target == "store" else client
        try:
            value = getattr(target, call.method)(*call.args, **call.kwargs)
        except ClientError as exc:  # the rules decide what a backend failure means
            error = exc


async def _adrive(steps: _Steps[T], store: Any, client: Any) -> T:
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            call = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            result: T = stop.value
            return result
        value, error = None, None
        target = store if call.target == "store" else client
        try:
            value = await getattr(target, call.method)(*call.args, **call.kwargs)
        except ClientError as exc:
            error = exc


class Reconciler:
    """Settles jobs whose webhooks never came: poll, resubmit, or time out.

    ``store`` is a `JobStore`; ``client`` a `GeneratorClient` on the same store (its
    backend's status endpoint enables polling; its ``can_resubmit`` allows resubmits).
    ``stale_after`` and ``give_up_after`` are seconds or timedeltas: a job is looked at
    once it has not changed for ``stale_after``, and failed with ``code="timed_out"``
    once it is ``give_up_after`` old. ``limit`` caps
    the jobs of one run. Store errors (`StoreUnavailableError`) propagate; backend
    errors are reported per job in the `ReconcileReport`. Several reconcilers may run
    at once: every change goes through the store's guarded ``apply``.
    """

    def __init__(
        self,
        store: JobStore,
        client: GeneratorClient,
        *,
        stale_after: timedelta | float,
        give_up_after: timedelta | float,
        limit: int = 100,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.client = client
        self._core = _ReconcilerCore(
            client,
            stale_after=stale_after,
            give_up_after=give_up_after,
            limit=limit,
            clock=clock,
        )

    def run_once(self) -> ReconcileReport:
        """Look at every stale job once and return what was done."""
        return _drive(self._core.run_once(), self.store, self.client)


class AsyncReconciler:
    """The async twin of `Reconciler`, over an `AsyncJobStore` and an
    `AsyncGeneratorClient`. Same rules and arguments."""

    def __init__(
        self,
        store: AsyncJobStore,
        client: AsyncGeneratorClient,
        *,
        stale_after: timedelta | float,
        give_up_after: timedelta | float,
        limit: int = 100,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.store = store
        self.client = client
        self._core = _ReconcilerCore(
            client,
            stale_after=stale_after,
            give_up_after=give_up_after,
            limit=limit,
            clock=clock,
        )

    async def run_once(self) -> ReconcileReport:
        """Look at every stale job once and return what was done."""
        return await _adrive(self._core.run_once(), self.store, self.client)
