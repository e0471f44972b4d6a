"""The generator-backend client: create the job first, then submit it by its id.

The rules live once, in `_ClientCore`: each operation is a generator of steps (see
`jobhook._http`). `GeneratorClient` and `AsyncGeneratorClient` are thin shells that run
those steps with a sync or async httpx client and store.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TypeVar
from urllib.parse import quote

import httpx

from jobhook._http import (
    MESSAGE_LIMIT,
    Exchange,
    RetryPolicy,
    Send,
    Sleep,
    Steps,
    StoreCall,
    adrive,
    asyncio_sleep,
    backend_message,
    drive,
    exchange,
    request_of,
    resolve_retry,
)
from jobhook._ids import remote_key
from jobhook._models import JSON, DeadLetter, Job, JobError, JobStatus, JobUpdate
from jobhook._payloads import ParsedPayload, PayloadFormat
from jobhook._signing import callback_token
from jobhook.backends import Backend, Jobhook, Request, SubmitAnswer
from jobhook.exceptions import (
    BackendError,
    JobhookError,
    JobIdMismatchError,
    PayloadError,
    SubmitError,
    ValidationError,
)
from jobhook.stores.protocol import AsyncJobStore, JobStore

__all__ = ["AsyncGeneratorClient", "GeneratorClient"]

log = logging.getLogger("jobhook.client")

T = TypeVar("T")


# --- the client's rules -----------------------------------------------------------


def _read_json_object(response: httpx.Response) -> dict[str, Any] | None:
    try:
        data = response.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _changes_nothing(job: Job, update: JobUpdate) -> bool:
    # Polling must not write an event per poll when the backend reports what is
    # stored already (a running-after-running update with equal progress applies).
    return (
        update.status is job.status
        and (update.progress is None or update.progress == job.progress)
        and (update.output is None or update.output == job.output)
        and (update.error is None or update.error == job.error)
        and (update.remote_id is None or update.remote_id == job.remote_id)
        and (update.sequence is None or update.sequence == job.sequence)
    )


def _send(request: Request) -> Send:
    return Send(request.method, request.url, request.headers, request.content)


class _ClientCore:
    """Everything both clients do, as steps: no I/O here. What goes on the wire is
    the backend profile's business; when to retry and what an ending means is ours."""

    def __init__(
        self,
        backend: Backend,
        *,
        callback_url: str | None,
        timeout: float,
        token_secret: str | bytes | None,
        policy: RetryPolicy,
    ) -> None:
        if not isinstance(backend, Backend):
            raise ValidationError(
                f"backend must be a jobhook.backends profile or a base URL, got {backend!r}"
            )
        if callback_url is None and not getattr(backend, "uses_callback_url", True):
            callback_url = ""  # the backend calls one project-wide URL (OpenAI)
        elif not isinstance(callback_url, str) or "{job_id}" not in callback_url:
            raise ValidationError(
                f"callback_url must be a template containing {{job_id}}, got {callback_url!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValidationError(f"timeout must be a positive number, got {timeout!r}")
        if not isinstance(policy, RetryPolicy):
            raise ValidationError(f"retry must be a RetryPolicy, got {policy!r}")
        self.backend = backend
        self.callback_url = callback_url
        self.timeout = float(timeout)
        self.token_secret = token_secret
        self.policy = policy

    def callback_url_for(self, job_id: str) -> str:
        """The URL the backend calls back for ``job_id``, with its token when configured
        (empty for a backend that takes none)."""
        if not self.callback_url:
            return ""
        url = self.callback_url.replace("{job_id}", quote(job_id, safe=""))
        if self.token_secret is None:
            return url
        token = callback_token(self.token_secret, job_id)  # URL-safe base64: no quoting
        base, hash_mark, fragment = url.partition("#")
        joiner = "&" if "?" in base else "?"
        return f"{base}{joiner}token={token}{hash_mark}{fragment}"

    # -- operations --

    def submit(
        self,
        input: JSON,
        *,
        kind: str,
        owner_id: str | None,
        job_id: str | None,
        metadata: dict[str, JSON] | None,
    ) -> Steps[Job]:
        """Create and commit the job, then submit it (see `GeneratorClient.submit`)."""
        job: Job = yield StoreCall(
            "create",
            (input,),
            {"kind": kind, "owner_id": owner_id, "job_id": job_id, "metadata": metadata},
        )
        return (yield from self._send_submit(job))

    def resubmit(self, job_id: str) -> Steps[Job]:
        """Submit a stored ``pending`` job again under its id; other jobs are left as
        they are (the backend has seen them). With a backend whose submits are not
        idempotent nothing is sent: the job is returned as it is."""
        job: Job = yield StoreCall("get", (job_id,))
        if job.status is not JobStatus.PENDING:
            return job
        if not self.backend.idempotent_submit:
            log.warning(
                "job %s: not resubmitted: %s would take a second submit as a second job",
                job.id,
                self.backend.name,
            )
            return job
        # An earlier submit of this job may have arrived: only a definite refusal of
        # this one may fail it; an unreachable backend leaves it pending.
        return (yield from self._send_submit(job, sent_before=True))

    def _send_submit(self, job: Job, *, sent_before: bool = False) -> Steps[Job]:
        """Send the stored job, retrying as the backend allows; judge how it ended and
        record that.

        ``sent_before``: an earlier request for this job may have reached the backend,
        so running out of retries is never a definite refusal.
        """
        backend = self.backend
        try:
            request = _send(backend.submit_request(job, self.callback_url_for(job.id)))
        except ValidationError as exc:
            # The job cannot be put on this backend's wire at all: a definite refusal.
            error = JobError("submit_invalid", str(exc)[:MESSAGE_LIMIT])
            result = yield StoreCall("apply", (job.id, JobUpdate(JobStatus.FAILED, error=error)))
            raise SubmitError(
                f"job {job.id!r} cannot be submitted to {backend.name}: {exc}",
                job=result.job or job,
            ) from None
        end: Exchange = yield from exchange(
            lambda: request,
            self.policy,
            retry_status=backend.transient,
            label=f"submit {job.id}",
            resend_if_maybe_sent=backend.idempotent_submit,
        )
        response = end.response
        if response is not None and response.is_success:
            return (yield from self._accepted(job, response))
        if response is None:
            ambiguous = sent_before or end.may_have_arrived
            detail = f"{type(end.error).__name__}: {end.error}"
            error = JobError("backend_unreachable", detail[:MESSAGE_LIMIT])
        else:
            status = response.status_code
            # A retryable refusal (429, 503, ...) that ran out of attempts is definite
            # only if no earlier attempt may have arrived; other 5xx may have stored it.
            if status in getattr(backend, "busy_statuses", ()) and backend.idempotent_submit:
                # Busy, not refused: the reconciler sends it again under the same id.
                ambiguous = True
            elif backend.transient(status):
                ambiguous = sent_before or end.may_have_arrived
            else:
                ambiguous = status >= 500
            detail = f"HTTP {status}: {backend_message(response)}"
            error = JobError("submit_rejected", detail[:MESSAGE_LIMIT])
        http_request = request_of(end.error) or (response.request if response else None)
        if ambiguous:
            log.warning(
                "job %s: submit ended ambiguously after %d attempt(s) (%s); left pending",
                job.id,
                end.attempts,
                detail,
            )
            # The job as created is still the best answer when the store cannot say more.
            with contextlib.suppress(JobhookError):
                job = yield StoreCall("get", (job.id,))
            raise SubmitError(
                f"submit of job {job.id!r} may or may not have reached the backend: {detail}",
                job=job,
                ambiguous=True,
                request=http_request,
                response=response,
            )
        result = yield StoreCall("apply", (job.id, JobUpdate(JobStatus.FAILED, error=error)))
        log.warning(
            "job %s: backend refused the submit (%s); outcome=%s", job.id, detail, result.outcome
        )
        raise SubmitError(
            f"backend refused job {job.id!r}: {detail}",
            job=result.job or job,
            request=http_request,
            response=response,
        )

    def _accepted(self, job: Job, response: httpx.Response) -> Steps[Job]:
        try:
            answer = self.backend.read_submit(job, response.status_code, response.content)
        except PayloadError as exc:
            # Accepted, but the answer is unreadable: the job is submitted, untracked.
            log.warning(
                "job %s: %s accepted it with an unusable answer: %s", job.id, self.backend.name, exc
            )
            answer = SubmitAnswer()
        if answer.other_job_id is not None:
            log.error(
                "job %s: backend answered with job_id %r; its webhooks would name a job "
                "that does not exist",
                job.id,
                answer.other_job_id,
            )
            message = f"backend answered job {job.id!r} with job_id {answer.other_job_id!r}"
            update = JobUpdate(
                JobStatus.FAILED, error=JobError("job_id_mismatch", message[:MESSAGE_LIMIT])
            )
            result = yield StoreCall("apply", (job.id, update))
            raise JobIdMismatchError(
                message,
                job=result.job or job,
                remote_job_id=answer.other_job_id,
                request=response.request,
                response=response,
            )
        remote_id = answer.remote_id
        result = yield StoreCall(
            "apply", (job.id, JobUpdate(JobStatus.SUBMITTED, remote_id=remote_id))
        )
        # "stale" is the normal race: the backend's webhook moved the job on first.
        log.info("job %s: submitted (remote_id=%s); outcome=%s", job.id, remote_id, result.outcome)
        job = result.job or job
        if answer.update is not None:
            job = yield from self._apply(job, answer.update, "submit")
        if remote_id is not None and getattr(self.backend, "callbacks_by_remote_id", True):
            job = yield from self._replay_early(job, remote_id)
        return job

    def _replay_early(self, job: Job, remote_id: str) -> Steps[Job]:
        """Apply the deliveries that named ``remote_id`` before this answer recorded it
        (kept as dead letters under ``remote:<id>``)."""
        letters: list[DeadLetter] = yield StoreCall(
            "dead_letters", (), {"job_id": remote_key(remote_id)}
        )
        if not letters:
            return job
        if getattr(self.backend, "thin_callbacks", False):
            # Thin events only say that something happened: ask what, then let the
            # letters (now matching or stale) be marked replayed.
            try:
                job = yield from self.refresh(job.id)
            except (BackendError, ValidationError) as exc:
                log.warning("job %s: early webhook kept; refresh failed: %s", job.id, exc)
                return job
            if not job.terminal:
                return job  # the reconciler settles it; the letters wait
        for letter in letters:
            result = yield StoreCall("replay_dead_letter", (letter.id,), {"job_id": job.id})
            log.info(
                "job %s: early webhook %s for remote id %s replayed: %s",
                job.id,
                letter.delivery_id,
                remote_id,
                result.outcome,
            )
            job = result.job or job
        return job

    def _call_backend(self, job: Job, request: Request, what: str) -> Steps[httpx.Response]:
        send = _send(request)
        end: Exchange = yield from exchange(
            lambda: send, self.policy, retry_status=self.backend.transient, label=f"{what} {job.id}"
        )
        response = end.response
        if response is None:
            raise BackendError(
                f"{what} of job {job.id!r} failed: {type(end.error).__name__}: {end.error}",
                request=request_of(end.error),
            )
        if not response.is_success:
            raise BackendError(
                f"{what} of job {job.id!r} failed: HTTP {response.status_code}: "
                f"{backend_message(response)}",
                request=response.request,
                response=response,
            )
        return response

    def _unusable(
        self, job: Job, response: httpx.Response, what: str, exc: Exception
    ) -> BackendError:
        return BackendError(
            f"{what} of job {job.id!r}: unusable answer: {exc}",
            request=response.request,
            response=response,
        )

    def _checked(
        self, job: Job, response: httpx.Response, parsed: ParsedPayload, what: str
    ) -> JobUpdate:
        if parsed.job_id is not None and parsed.job_id not in (job.id, job.remote_id):
            raise BackendError(
                f"{what} of job {job.id!r}: the backend answered about job {parsed.job_id!r}",
                request=response.request,
                response=response,
            )
        return parsed.update

    def _apply(self, job: Job, update: JobUpdate, what: str) -> Steps[Job]:
        if _changes_nothing(job, update):
            return job
        result = yield StoreCall("apply", (job.id, update))
        log.info("job %s: %s says %s; outcome=%s", job.id, what, update.status, result.outcome)
        return result.job or job

    def refresh(self, job_id: str) -> Steps[Job]:
        """Ask the status endpoint about the job and apply the answer."""
        job: Job = yield StoreCall("get", (job_id,))
        request = self.backend.status_request(job)
        if request is None:
            raise ValidationError(self._no_status(job))
        response = yield from self._call_backend(job, request, "refresh")
        try:
            answer = self.backend.read_status(job, response.content)
            if isinstance(answer, Request):
                # The status says done; the output is behind another request (fal).
                answer, response = yield from self._result(job, answer)
        except PayloadError as exc:
            raise self._unusable(job, response, "refresh", exc) from None
        update = self._checked(job, response, answer, "refresh")
        return (yield from self._apply(job, update, "refresh"))

    def _result(self, job: Job, request: Request) -> Steps[tuple[ParsedPayload, httpx.Response]]:
        """Fetch a finished job's result; a 4xx result is the job's failure where the
        profile can read it (``read_result_error``: fal answers a failed request so)."""
        read_error = getattr(self.backend, "read_result_error", None)
        try:
            response = yield from self._call_backend(job, request, "refresh")
        except BackendError as exc:
            failed = exc.response
            if (
                read_error is None
                or failed is None
                or not 400 <= failed.status_code < 500
                or failed.status_code in (404, 408, 429)
            ):
                raise
            parsed: ParsedPayload = read_error(job, failed.status_code, failed.content)
            return parsed, failed
        return self.backend.read_result(job, response.content), response

    def _no_status(self, job: Job) -> str:
        backend = self.backend
        if isinstance(backend, Jobhook) and backend.status_path is None:
            return "refresh() needs a status_path (backends.Jobhook(..., status_path=...))"
        if not getattr(backend, "has_status_endpoint", True):
            return f"{backend.name} has no status endpoint"
        return f"job {job.id!r} has no remote_id yet, which {backend.name}'s status request needs"

    def cancel(self, job_id: str) -> Steps[Job]:
        """Ask the backend to cancel the job; apply ``canceled`` once it confirms."""
        job: Job = yield StoreCall("get", (job_id,))
        if job.terminal:
            return job
        request = self.backend.cancel_request(job)
        if request is None:
            if isinstance(self.backend, Jobhook) and self.backend.cancel_path is None:
                raise ValidationError(
                    "cancel() needs a cancel_path (backends.Jobhook(..., cancel_path=...))"
                )
            raise ValidationError(
                f"{self.backend.name} cannot cancel job {job.id!r} yet (it has no remote_id)"
            )
        response = yield from self._call_backend(job, request, "cancel")
        try:
            update = self.backend.read_cancel(job, response.content)
        except PayloadError as exc:
            raise self._unusable(job, response, "cancel", exc) from None
        if update is None:
            return job  # requested; the webhook or a poll will say how it ended
        return (yield from self._apply(job, update, "cancel"))

    def wait(self, job_id: str, *, timeout: float, poll_interval: float) -> Steps[Job]:
        """Poll until the job is terminal; raise `TimeoutError` after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            job: Job = yield StoreCall("get", (job_id,))
            if not job.terminal and self.can_refresh(job):
                try:
                    job = yield from self.refresh(job_id)
                except BackendError as exc:
                    # The webhook may still come: a failed poll is not a failed job.
                    log.warning("job %s: refresh while waiting failed: %s", job_id, exc)
            if job.terminal:
                return job
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"job {job_id!r} is still {job.status} after {timeout}s")
            yield Sleep(min(poll_interval, remaining))

    def can_refresh(self, job: Job) -> bool:
        """True when the backend has a status request for this job now."""
        return self.backend.status_request(job) is not None


def _check_wait(timeout: float, poll_interval: float) -> None:
    if timeout < 0 or poll_interval <= 0:
        raise ValidationError("wait() needs timeout >= 0 and poll_interval > 0")


# --- the two shells ---------------------------------------------------------------


def resolve_backend(
    backend: Backend | str,
    *,
    submit_path: str | None,
    status_path: str | None,
    cancel_path: str | None,
    headers: Mapping[str, str] | None,
    payload_format: PayloadFormat | None,
) -> Backend:
    """The backend profile a client was given: a profile as it is, or a base URL (the
    0.1 form) with its keywords, which means jobhook's own contract."""
    if isinstance(backend, str):
        return Jobhook(
            backend,
            submit_path="/jobs" if submit_path is None else submit_path,
            status_path=status_path,
            cancel_path=cancel_path,
            headers=headers,
            payload_format="jobhook" if payload_format is None else payload_format,
        )
    given = {
        "submit_path": submit_path,
        "status_path": status_path,
        "cancel_path": cancel_path,
        "headers": headers,
        "payload_format": payload_format,
    }
    stray = [name for name, value in given.items() if value is not None]
    if stray:
        raise ValidationError(
            f"{', '.join(stray)} describe jobhook's own contract: pass them to "
            "backends.Jobhook(base_url, ...) instead of giving them with a backend profile"
        )
    return backend


class _BaseGeneratorClient:
    """What both clients share: configuration and the core that holds the rules."""

    def __init__(
        self,
        backend: Backend | str,
        *,
        callback_url: str | None,
        token_secret: str | bytes | None,
        retry: RetryPolicy | None,
        timeout: float,
        submit_path: str | None,
        status_path: str | None,
        cancel_path: str | None,
        headers: Mapping[str, str] | None,
        payload_format: PayloadFormat | None,
        max_attempts: int | None,
        backoff: float | None,
        max_backoff: float | None,
        rng: random.Random | None,
    ) -> None:
        profile = resolve_backend(
            backend,
            submit_path=submit_path,
            status_path=status_path,
            cancel_path=cancel_path,
            headers=headers,
            payload_format=payload_format,
        )
        policy = resolve_retry(
            retry,
            RetryPolicy(),
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            rng=rng,
        )
        self._core = _ClientCore(
            profile,
            callback_url=callback_url,
            timeout=timeout,
            token_secret=token_secret,
            policy=policy,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} backend={self._core.backend!r}>"

    @property
    def backend(self) -> Backend:
        """The backend profile this client talks to."""
        return self._core.backend

    @property
    def retry(self) -> RetryPolicy:
        """The retry policy of every request this client sends."""
        return self._core.policy

    def callback_url_for(self, job_id: str) -> str:
        """The callback URL sent for ``job_id`` (with ``?token=`` when ``token_secret``)."""
        return self._core.callback_url_for(job_id)

    def can_refresh(self, job: Job) -> bool:
        """True when `refresh` can ask about ``job`` now: the backend has a status
        endpoint and the job has the ids it needs (a remote id, for hosted APIs)."""
        return self._core.can_refresh(job)

    @property
    def can_resubmit(self) -> bool:
        """True when a ``pending`` job may be submitted again (the backend takes a
        repeated submit as the same job); the reconciler checks this."""
        return self._core.backend.idempotent_submit


class GeneratorClient(_BaseGeneratorClient):
    """Submits jobs to a generator backend, creating each in ``store`` first.

    ``backend`` is a profile from `jobhook.backends` (``backends.Cog(url)``,
    ``backends.Replicate(token, model=…)``, …) or a base URL, which means jobhook's own
    contract (`backends.Jobhook`) with the 0.1 keywords ``submit_path``,
    ``status_path``, ``cancel_path``, ``headers`` and ``payload_format``.
    ``callback_url`` is a template with ``{job_id}``; with ``token_secret`` each URL
    carries the job's token (required, but for a backend that takes no callback URL:
    OpenAI calls one project-wide URL). ``retry`` (a `RetryPolicy`, or the 0.1 keywords
    ``max_attempts``, ``backoff``, ``max_backoff``, ``rng``) says how transient
    failures are retried: a request that was surely not taken may always be sent
    again, one that may have arrived only where the backend takes a repeat as the same
    job (`Backend.idempotent_submit`). ``timeout`` is per request; ``sleep`` replaces
    `time.sleep` (for tests). An ``http_client`` passed in is used as is and left open
    by `close`. Thread-safe when the store is (every store jobhook ships is).
    """

    def __init__(
        self,
        store: JobStore,
        backend: Backend | str,
        *,
        callback_url: str | None = None,
        token_secret: str | bytes | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        http_client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        submit_path: str | None = None,
        status_path: str | None = None,
        cancel_path: str | None = None,
        headers: Mapping[str, str] | None = None,
        payload_format: PayloadFormat | None = None,
        max_attempts: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            backend,
            callback_url=callback_url,
            token_secret=token_secret,
            retry=retry,
            timeout=timeout,
            submit_path=submit_path,
            status_path=status_path,
            cancel_path=cancel_path,
            headers=headers,
            payload_format=payload_format,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            rng=rng,
        )
        self.store = store
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()
        self._sleep = sleep

    def _run(self, steps: Steps[T]) -> T:
        return drive(
            steps, http=self._http, sleep=self._sleep, timeout=self._core.timeout, store=self.store
        )

    def submit(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job:
        """Create and commit a job, then submit it to the backend; return the job.

        No request is sent unless the job was stored (store errors propagate as they
        are). The returned job is ``submitted`` or already further along when the
        backend's webhook won the race. Raises `SubmitError` with ``.job`` attached:
        the job is ``failed`` after a definite refusal, still ``pending`` when
        ``ambiguous`` (the request may have arrived). Raises `JobIdMismatchError` (job
        ``failed``, ``code="job_id_mismatch"``) when the backend answers another id.
        """
        return self._run(
            self._core.submit(input, kind=kind, owner_id=owner_id, job_id=job_id, metadata=metadata)
        )

    def resubmit(self, job_id: str) -> Job:
        """Submit a stored ``pending`` job again, under the same id (safe: the backend
        treats a repeated id as the same job). A job past ``pending`` is returned as is,
        without a request. Ends and raises like `submit`; raises `JobNotFoundError`."""
        return self._run(self._core.resubmit(job_id))

    def refresh(self, job_id: str) -> Job:
        """GET the job's status from the backend, apply it and return the job.

        Raises `JobNotFoundError`, `BackendError` for an error or unusable answer, and
        `ValidationError` without a ``status_path``.
        """
        return self._run(self._core.refresh(job_id))

    def cancel(self, job_id: str) -> Job:
        """Ask the backend to cancel the job; apply what it confirms and return the job.

        A terminal job is returned as is, without a request. Raises like `refresh`.
        """
        return self._run(self._core.cancel(job_id))

    def wait(self, job_id: str, *, timeout: float = 60.0, poll_interval: float = 1.0) -> Job:
        """Return the job once it is terminal, polling the store (and `refresh` when a
        status endpoint is configured). Raises `TimeoutError` after ``timeout`` seconds."""
        _check_wait(timeout, poll_interval)
        return self._run(self._core.wait(job_id, timeout=timeout, poll_interval=poll_interval))

    def close(self) -> None:
        """Close the HTTP client if this client made it (the store stays open)."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> GeneratorClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncGeneratorClient(_BaseGeneratorClient):
    """The async twin of `GeneratorClient`, over an `AsyncJobStore` and an
    `httpx.AsyncClient`. Same rules and arguments; ``sleep`` is awaited."""

    def __init__(
        self,
        store: AsyncJobStore,
        backend: Backend | str,
        *,
        callback_url: str | None = None,
        token_secret: str | bytes | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 10.0,
        http_client: httpx.AsyncClient | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio_sleep,
        submit_path: str | None = None,
        status_path: str | None = None,
        cancel_path: str | None = None,
        headers: Mapping[str, str] | None = None,
        payload_format: PayloadFormat | None = None,
        max_attempts: int | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            backend,
            callback_url=callback_url,
            token_secret=token_secret,
            retry=retry,
            timeout=timeout,
            submit_path=submit_path,
            status_path=status_path,
            cancel_path=cancel_path,
            headers=headers,
            payload_format=payload_format,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            rng=rng,
        )
        self.store = store
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()
        self._sleep = sleep

    async def _run(self, steps: Steps[T]) -> T:
        return await adrive(
            steps, http=self._http, sleep=self._sleep, timeout=self._core.timeout, store=self.store
        )

    async def submit(
        self,
        input: JSON,
        *,
        kind: str = "default",
        owner_id: str | None = None,
        job_id: str | None = None,
        metadata: dict[str, JSON] | None = None,
    ) -> Job:
        """Create and commit a job, then submit it; see `GeneratorClient.submit`."""
        return await self._run(
            self._core.submit(input, kind=kind, owner_id=owner_id, job_id=job_id, metadata=metadata)
        )

    async def resubmit(self, job_id: str) -> Job:
        """Submit a stored ``pending`` job again; see `GeneratorClient.resubmit`."""
        return await self._run(self._core.resubmit(job_id))

    async def refresh(self, job_id: str) -> Job:
        """GET the job's status and apply it; see `GeneratorClient.refresh`."""
        return await self._run(self._core.refresh(job_id))

    async def cancel(self, job_id: str) -> Job:
        """Ask the backend to cancel the job; see `GeneratorClient.cancel`."""
        return await self._run(self._core.cancel(job_id))

    async def wait(self, job_id: str, *, timeout: float = 60.0, poll_interval: float = 1.0) -> Job:
        """Return the job once terminal; see `GeneratorClient.wait`."""
        _check_wait(timeout, poll_interval)
        return await self._run(
            self._core.wait(job_id, timeout=timeout, poll_interval=poll_interval)
        )

    async def aclose(self) -> None:
        """Close the HTTP client if this client made it (the store stays open)."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncGeneratorClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
