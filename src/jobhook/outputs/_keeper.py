"""The output keeper: holds a success back until the files it names are kept."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta, timezone
from typing import Any

import attrs
import httpx

from jobhook._models import (
    JSON,
    ApplyResult,
    Job,
    JobError,
    JobStatus,
    JobUpdate,
    Outcome,
)
from jobhook.exceptions import (
    JobNotFoundError,
    OutputError,
    ValidationError,
)
from jobhook.outputs._fetch import FetchPolicy, fetch, inline_base64
from jobhook.outputs._files import FileFinder, files_for, replace_at, value_at
from jobhook.outputs._kept import (
    NOT_KEPT,
    KeptFile,
    KeptOutput,
    Listener,
    _extension,
    _holds_for,
    _is_url,
    _source,
)
from jobhook.outputs._letters import find_dead_letter
from jobhook.outputs._storage import Storage
from jobhook.stores._outputs import (
    DROPPED,
    FAILED,
    KEPT,
    Hold,
    Holds,
)

__all__ = ["KeptFile", "KeptOutput", "OutputKeeper"]

log = logging.getLogger("jobhook.outputs")


class _KeepingStore:
    """The store as the keeper guards it: a success that names files is held back."""

    def __init__(self, store: Any, keeper: OutputKeeper) -> None:
        self._store = store
        self._keeper = keeper

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def __repr__(self) -> str:
        return f"<kept outputs of {self._store!r}>"

    def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult:
        """As the store's ``apply``, except that a success whose output names files is
        held until they are kept: the answer is then ``applied`` (``duplicate`` when
        already held) with the job as it is, and no event is written yet."""
        held = self._keeper._hold(job_id, update, delivery_id)
        if held is not None:
            return held
        result: ApplyResult = self._store.apply(job_id, update, delivery_id=delivery_id)
        return result

    def replay_dead_letter(self, dead_letter_id: int, *, job_id: str | None = None) -> ApplyResult:
        """As the store's ``replay_dead_letter``, except that a success whose output
        names files is held like any other; the letter is marked replayed once the
        keeper has applied it. Raises `DeadLetterNotFoundError`."""
        letter = find_dead_letter(self._store, dead_letter_id)
        target = letter.job_id if job_id is None else job_id
        held = self._keeper._hold(target, letter.update, letter.delivery_id, dead_letter_id)
        if held is not None:
            return held
        result: ApplyResult = self._store.replay_dead_letter(dead_letter_id, job_id=job_id)
        return result


class KeeperCore:
    """What the sync and async keepers share: configuration, and every decision
    (what to hold, what to copy, what a failure means, the kept output)."""

    def __init__(
        self,
        store: Any,
        storage: Storage,
        *,
        files: FileFinder | None = None,
        backend: Any = None,
        policy: FetchPolicy | None = None,
        max_attempts: int = 5,
        retry_after: float = 30.0,
        clock: Callable[[], float] = time.time,
        listeners: Iterable[Listener] = (),
        http_client: httpx.Client | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValidationError(f"max_attempts must be at least 1, got {max_attempts!r}")
        self._plain = store
        self.storage = storage
        self.policy = policy or FetchPolicy()
        self._files = files or files_for(backend)
        self._max_attempts = max_attempts
        self._retry_after = retry_after
        self._clock = clock
        self._listeners = tuple(listeners)
        self._owns_http = http_client is None
        # No connection reuse: a pooled connection is keyed by the address it went to,
        # and two host names on one address must each have their own TLS check.
        self._http = http_client or httpx.Client(
            follow_redirects=False,
            trust_env=False,
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} store={self._plain!r} storage={self.storage!r}>"

    def close(self) -> None:
        """Close the HTTP client the keeper made."""
        if self._owns_http:
            self._http.close()

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), timezone.utc)

    def _holds_back(self, update: JobUpdate) -> bool:
        return update.status is JobStatus.SUCCEEDED and bool(self._files(update.output))

    @staticmethod
    def _held(job: Job, added: bool) -> ApplyResult:
        outcome = Outcome.APPLIED if added else Outcome.DUPLICATE
        log.info("job %s: success held until its files are kept (%s)", job.id, outcome)
        return ApplyResult(outcome, job)

    @staticmethod
    def _report(hold: Hold | None) -> KeptOutput | None:
        if hold is None:
            return None
        files = [KeptFile(**entry) for entry in hold.files if entry is not None]
        return KeptOutput(
            hold.job_id, hold.state, hold.update.output, files, hold.attempts, hold.last_error
        )

    def _to_keep(self, hold: Hold) -> tuple[list[Any], list[dict[str, JSON] | None]]:
        """The paths of the hold's files, and what is kept of them so far."""
        paths = self._files(hold.update.output)
        files = list(hold.files) + [None] * (len(paths) - len(hold.files))
        return paths, files

    def _copy(self, hold: Hold, index: int, url: JSON) -> dict[str, JSON]:
        """Fetch one file and put it in the storage (blocking); the `KeptFile` as JSON.
        Raises `OutputError` or `OSError`."""
        if isinstance(url, str) and not _is_url(url):
            fetched = inline_base64(url, self.policy)
        else:
            fetched = fetch(url, self.policy, self._http)  # refuses a non-string
        key = f"{hold.job_id}/{index}{_extension(fetched.content_type)}"
        kept_url = self.storage.put(key, fetched.data, fetched.content_type)
        log.info("job %s: kept file %d as %s", hold.job_id, index, key)
        kept = KeptFile(
            index,
            _source(str(url)),
            key,
            kept_url,
            fetched.content_type,
            len(fetched.data),
            fetched.sha256,
        )
        return attrs.asdict(kept)

    @staticmethod
    def _copy_failure(index: int, exc: Exception) -> tuple[bool, str]:
        """Whether a failed copy is final, and the reason to record."""
        if isinstance(exc, OutputError):
            return exc.permanent, f"file {index}: {exc}"
        return False, f"file {index}: storage: {exc}"

    @staticmethod
    def _kept_update(
        hold: Hold, paths: list[Any], files: list[dict[str, JSON] | None]
    ) -> JobUpdate:
        urls = {path: entry["url"] for path, entry in zip(paths, files, strict=True) if entry}
        return attrs.evolve(hold.update, output=replace_at(hold.update.output, urls))

    @staticmethod
    def _failure(hold: Hold, reason: str) -> tuple[JobUpdate, str]:
        log.warning("job %s: output not kept: %s", hold.job_id, reason)
        update = JobUpdate(JobStatus.FAILED, error=JobError(NOT_KEPT, reason[:1000]))
        return update, f"{NOT_KEPT}:{hold.job_id}"

    @staticmethod
    def _settled(result: ApplyResult, state: str, update: JobUpdate) -> str:
        """The hold's final state once ``update`` was applied with ``result``."""
        if result.outcome in (Outcome.APPLIED, Outcome.DUPLICATE):
            return state
        job = result.job
        # Applied again after a crash between the apply and saving the hold, with no
        # delivery id to make it a duplicate: the job already holds exactly this update.
        if (
            job is not None
            and job.status == update.status
            and job.output == update.output
            and job.error == update.error
        ):
            return state
        return DROPPED

    def _retry_plan(self, hold: Hold, reason: str) -> dict[str, Any] | None:
        """The hold's changes for another attempt later; None when it is time to give up."""
        attempts = hold.attempts + 1
        if attempts >= self._max_attempts:
            return None
        delay = self._retry_after * 2 ** (attempts - 1)
        log.warning("job %s: output not kept yet (%s); retry in %.0f s", hold.job_id, reason, delay)
        now = self._now()
        return {
            "now": now,
            "attempts": attempts,
            "last_error": reason,
            "next_attempt_at": now + timedelta(seconds=delay),
        }

    def _applied(self, hold: Hold, update: JobUpdate, result: ApplyResult) -> list[Any]:
        """Log an apply; the listener calls it asks for (their results)."""
        log.info("job %s: %s after keeping; outcome=%s", hold.job_id, update.status, result.outcome)
        if result.event is None or result.job is None:
            return []
        answers = []
        for listener in self._listeners:
            try:
                answers.append(listener(result.event, result.job))
            except Exception:
                log.exception("output keeper listener %r failed", listener)
        return answers


class OutputKeeper(KeeperCore):
    """Keeps the files a job's output references in ``storage``, before anyone learns
    that the job succeeded.

    Give `store` (the guarded store) to the `WebhookHandler`, the `GeneratorClient` and
    the `Reconciler` instead of the plain one: a ``succeeded`` update whose output
    names files (found by ``files``, by default `files_for` ``backend``) is then held
    durably, with no event, and the delivery is answered 200; so is a success replayed
    from a dead letter. `run_once` (or `run`, in a worker) fetches each held file under
    ``policy``, writes it to ``storage`` under ``{job_id}/{index}{extension}``, records
    it, and once all are kept applies the success with an output naming the kept
    copies: one event, after the files exist. ``listeners`` are called for the changes
    the keeper applies.

    A keeper that dies mid-copy resumes where it was: kept files are recorded one by
    one and a file's key never changes, so a rerun writes no second copy. A failure
    that no retry changes (a refused URL, a 404, a file over the size limit) fails the
    job with ``code="output_not_kept"``; other failures are retried after
    ``retry_after`` seconds (doubling), the job failed so after ``max_attempts``.
    ``store`` is an `InMemoryJobStore`, a `SQLJobStore` or a `DjangoJobStore`
    (`AsyncOutputKeeper` is the async twin); any other raises `ValidationError`. Run
    one keeper per store.
    Thread-safe.
    """

    def __init__(
        self,
        store: Any,
        storage: Storage,
        *,
        files: FileFinder | None = None,
        backend: Any = None,
        policy: FetchPolicy | None = None,
        max_attempts: int = 5,
        retry_after: float = 30.0,
        clock: Callable[[], float] = time.time,
        listeners: Iterable[Listener] = (),
        http_client: httpx.Client | None = None,
        holds: Holds | None = None,
        create_schema: bool = False,
    ) -> None:
        self._holds = holds if holds is not None else _holds_for(store)
        super().__init__(
            store,
            storage,
            files=files,
            backend=backend,
            policy=policy,
            max_attempts=max_attempts,
            retry_after=retry_after,
            clock=clock,
            listeners=listeners,
            http_client=http_client,
        )
        self._guarded = _KeepingStore(store, self)
        if create_schema:
            self.create_schema()

    @property
    def store(self) -> Any:
        """The guarded store: the plain store's methods, with ``apply`` and
        ``replay_dead_letter`` holding back successes whose files are not kept yet."""
        return self._guarded

    def create_schema(self) -> None:
        """Create the holds table when missing (SQL stores; idempotent; with a
        `DjangoJobStore`, ``manage.py migrate jobhook`` makes it). Until it exists,
        holding a success raises `StoreUnavailableError` (webhooks answer 503)."""
        self._holds.create_schema()

    @property
    def metadata(self) -> Any:
        """The holds table's SQLAlchemy `MetaData` (SQL stores), for the app's own
        migrations; None for in-memory holds."""
        return getattr(self._holds, "metadata", None)

    # -- holding -------------------------------------------------------------------

    def _hold(
        self,
        job_id: str,
        update: JobUpdate,
        delivery_id: str | None,
        dead_letter_id: int | None = None,
    ) -> ApplyResult | None:
        """Hold a success that names files; None when the update is not one to hold."""
        if not self._holds_back(update):
            return None
        try:
            job: Job = self._plain.get(job_id)
        except JobNotFoundError:
            return None  # the store answers not_found; the handler keeps a dead letter
        if job.terminal:
            return None  # the store answers duplicate or conflict
        added = self._holds.add(job_id, delivery_id, update, self._now(), dead_letter_id)
        return self._held(job, added)

    def kept(self, job_id: str) -> KeptOutput | None:
        """What the keeper did for ``job_id``; None when nothing was held for it."""
        return self._report(self._holds.get(job_id))

    # -- keeping -------------------------------------------------------------------

    def run_once(self, *, limit: int = 100) -> int:
        """Work on every hold that is due; return how many were settled (the job
        succeeded, failed or had ended). Errors of one job are logged and retried."""
        settled = 0
        for hold in self._holds.due(self._now(), limit):
            try:
                if self._keep(hold):
                    settled += 1
            except Exception as exc:
                log.exception("job %s: keeping its output failed", hold.job_id)
                self._retry(hold, f"{type(exc).__name__}: {exc}")
        return settled

    def run(self, stop: threading.Event, *, interval: float = 1.0) -> None:
        """Call `run_once` every ``interval`` seconds until ``stop`` is set; a failing
        round (the store unavailable) is logged and tried again."""
        while not stop.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("the output keeper's round failed; trying again")
            stop.wait(interval)

    def _keep(self, hold: Hold) -> bool:
        paths, files = self._to_keep(hold)
        for index, path in enumerate(paths):
            if files[index] is not None:
                continue  # kept before a restart: its original may be gone by now
            try:
                files[index] = self._copy(hold, index, value_at(hold.update.output, path))
            except (OutputError, OSError) as exc:
                final, reason = self._copy_failure(index, exc)
                return self._give_up(hold, reason) if final else self._retry(hold, reason)
            self._holds.save(hold.job_id, now=self._now(), files=files)
        update = self._kept_update(hold, paths, files)
        result = self._apply(hold, update, hold.delivery_id)
        self._holds.save(hold.job_id, now=self._now(), state=self._settled(result, KEPT, update))
        self._close_letter(hold)
        return True

    def _apply(self, hold: Hold, update: JobUpdate, delivery_id: str | None) -> ApplyResult:
        result: ApplyResult = self._plain.apply(hold.job_id, update, delivery_id=delivery_id)
        self._applied(hold, update, result)
        return result

    def _close_letter(self, hold: Hold) -> None:
        # The job has ended: replaying the letter changes nothing and marks it replayed.
        if hold.dead_letter_id is not None:
            try:
                self._plain.replay_dead_letter(hold.dead_letter_id, job_id=hold.job_id)
            except Exception:
                log.exception(
                    "job %s: marking dead letter %s replayed failed",
                    hold.job_id,
                    hold.dead_letter_id,
                )

    def _give_up(self, hold: Hold, reason: str) -> bool:
        update, delivery_id = self._failure(hold, reason)
        result = self._apply(hold, update, delivery_id)
        self._holds.save(
            hold.job_id,
            now=self._now(),
            state=self._settled(result, FAILED, update),
            attempts=hold.attempts + 1,
            last_error=reason,
        )
        self._close_letter(hold)
        return True

    def _retry(self, hold: Hold, reason: str) -> bool:
        plan = self._retry_plan(hold, reason)
        if plan is None:
            return self._give_up(hold, f"{reason} (after {hold.attempts + 1} attempts)")
        self._holds.save(hold.job_id, **plan)
        return False
