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

from jobhook._convert import dumps
from jobhook._http import (
    MESSAGE_LIMIT,
    RETRY_STATUSES,
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
)
from jobhook._models import JSON, Job, JobError, JobStatus, JobUpdate
from jobhook._payloads import PayloadFormat, payload_parser
from jobhook._signing import callback_token
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


def _is_submit_retry(status: int) -> bool:
    return status in RETRY_STATUSES


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


def _check_template(name: str, value: str | None) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {value!r}")
    return value


class _ClientCore:
    """Everything both clients do, as steps: no I/O here."""

    def __init__(
        self,
        base_url: str,
        *,
        callback_url: str,
        submit_path: str,
        status_path: str | None,
        cancel_path: str | None,
        headers: Mapping[str, str] | None,
        timeout: float,
        token_secret: str | bytes | None,
        payload_format: PayloadFormat,
        policy: RetryPolicy,
    ) -> None:
        url = httpx.URL(base_url) if isinstance(base_url, str) else None
        if url is None or url.scheme not in ("http", "https") or not url.host:
            raise ValidationError(f"base_url must be an absolute http(s) URL, got {base_url!r}")
        if not isinstance(callback_url, str) or "{job_id}" not in callback_url:
            raise ValidationError(
                f"callback_url must be a template containing {{job_id}}, got {callback_url!r}"
            )
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValidationError(f"timeout must be a positive number, got {timeout!r}")
        self.base_url = base_url.rstrip("/")
        self.callback_url = callback_url
        self.submit_path = _check_template("submit_path", submit_path) or "/"
        self.status_path = _check_template("status_path", status_path)
        self.cancel_path = _check_template("cancel_path", cancel_path)
        self.headers = dict(headers or {})
        self.timeout = float(timeout)
        self.token_secret = token_secret
        # The same parser the webhook handler uses, so a polled answer means the same.
        self.parse_payload = payload_parser(payload_format)
        self.policy = policy

    # -- requests --

    def url_for(self, path: str, job: Job | None = None) -> str:
        """``path`` (a template with ``{job_id}`` / ``{remote_id}``) under ``base_url``."""
        if job is not None:
            path = path.replace("{job_id}", quote(job.id, safe=""))
            if "{remote_id}" in path:
                if job.remote_id is None:
                    raise ValidationError(
                        f"job {job.id!r} has no remote_id yet, which {path!r} needs"
                    )
                path = path.replace("{remote_id}", quote(job.remote_id, safe=""))
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def callback_url_for(self, job_id: str) -> str:
        """The URL the backend calls back for ``job_id``, with its token when configured."""
        url = self.callback_url.replace("{job_id}", quote(job_id, safe=""))
        if self.token_secret is None:
            return url
        token = callback_token(self.token_secret, job_id)
        return str(httpx.URL(url).copy_merge_params({"token": token}))

    def submit_request(self, job: Job) -> Send:
        """The submit request: the job's id, callback URL, kind and input."""
        body = {
            "job_id": job.id,
            "callback_url": self.callback_url_for(job.id),
            "kind": job.kind,
            "input": job.input,
        }
        headers = {
            **self.headers,
            "content-type": "application/json",
            "idempotency-key": job.id,
        }
        content = dumps(body, field="input").encode()
        return Send("POST", self.url_for(self.submit_path), headers, content)

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
        they are (the backend has seen them)."""
        job: Job = yield StoreCall("get", (job_id,))
        if job.status is not JobStatus.PENDING:
            return job
        # An earlier submit of this job may have arrived: only a definite refusal of
        # this one may fail it; an unreachable backend leaves it pending.
        return (yield from self._send_submit(job, sent_before=True))

    def _send_submit(self, job: Job, *, sent_before: bool = False) -> Steps[Job]:
        """POST the stored job, retrying; judge how it ended and record that.

        ``sent_before``: an earlier request for this job may have reached the backend,
        so running out of retries is never a definite refusal.
        """
        request = self.submit_request(job)
        end: Exchange = yield from exchange(
            lambda: request, self.policy, retry_status=_is_submit_retry, label=f"submit {job.id}"
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
            if status in RETRY_STATUSES:
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
        answer = _read_json_object(response) or {}
        answered_id = answer.get("job_id")
        if answered_id is not None and str(answered_id) != job.id:
            log.error(
                "job %s: backend answered with job_id %r; its webhooks would name a job "
                "that does not exist",
                job.id,
                answered_id,
            )
            message = f"backend answered job {job.id!r} with job_id {answered_id!r}"
            update = JobUpdate(
                JobStatus.FAILED, error=JobError("job_id_mismatch", message[:MESSAGE_LIMIT])
            )
            result = yield StoreCall("apply", (job.id, update))
            raise JobIdMismatchError(
                message,
                job=result.job or job,
                remote_job_id=answered_id,
                request=response.request,
                response=response,
            )
        remote_id = answer.get("remote_id")
        if remote_id is None and answer.get("id") not in (None, job.id):
            remote_id = answer["id"]
        if remote_id is not None and not isinstance(remote_id, str):
            remote_id = str(remote_id)
        result = yield StoreCall(
            "apply", (job.id, JobUpdate(JobStatus.SUBMITTED, remote_id=remote_id))
        )
        # "stale" is the normal race: the backend's webhook moved the job on first.
        log.info("job %s: submitted (remote_id=%s); outcome=%s", job.id, remote_id, result.outcome)
        return result.job or job

    def _call_backend(self, job: Job, path: str, method: str, what: str) -> Steps[httpx.Response]:
        request = Send(method, self.url_for(path, job), self.headers)
        end: Exchange = yield from exchange(
            lambda: request, self.policy, retry_status=_is_submit_retry, label=f"{what} {job.id}"
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

    def _parse(self, job: Job, response: httpx.Response, what: str) -> JobUpdate:
        try:
            parsed = self.parse_payload(response.content)
        except PayloadError as exc:
            raise BackendError(
                f"{what} of job {job.id!r}: unusable answer: {exc}",
                request=response.request,
                response=response,
            ) from None
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
        if self.status_path is None:
            raise ValidationError("refresh() needs the client's status_path")
        job: Job = yield StoreCall("get", (job_id,))
        response = yield from self._call_backend(job, self.status_path, "GET", "refresh")
        update = self._parse(job, response, "refresh")
        return (yield from self._apply(job, update, "refresh"))

    def cancel(self, job_id: str) -> Steps[Job]:
        """Ask the backend to cancel the job; apply ``canceled`` once it confirms."""
        if self.cancel_path is None:
            raise ValidationError("cancel() needs the client's cancel_path")
        job: Job = yield StoreCall("get", (job_id,))
        if job.terminal:
            return job
        response = yield from self._call_backend(job, self.cancel_path, "POST", "cancel")
        if response.content.strip():
            update = self._parse(job, response, "cancel")
        else:
            update = JobUpdate(JobStatus.CANCELED)
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
        """True when a status endpoint is configured that can name this job."""
        return self.status_path is not None and (
            "{remote_id}" not in self.status_path or job.remote_id is not None
        )


def _check_wait(timeout: float, poll_interval: float) -> None:
    if timeout < 0 or poll_interval <= 0:
        raise ValidationError("wait() needs timeout >= 0 and poll_interval > 0")


# --- the two shells ---------------------------------------------------------------


class _BaseGeneratorClient:
    """What both clients share: configuration and the core that holds the rules."""

    def __init__(
        self,
        base_url: str,
        *,
        callback_url: str,
        submit_path: str,
        status_path: str | None,
        cancel_path: str | None,
        headers: Mapping[str, str] | None,
        timeout: float,
        max_attempts: int,
        token_secret: str | bytes | None,
        payload_format: PayloadFormat,
        backoff: float,
        max_backoff: float,
        rng: random.Random | None,
    ) -> None:
        policy = RetryPolicy(
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            rng=rng or random.Random(),
        )
        self._core = _ClientCore(
            base_url,
            callback_url=callback_url,
            submit_path=submit_path,
            status_path=status_path,
            cancel_path=cancel_path,
            headers=headers,
            timeout=timeout,
            token_secret=token_secret,
            payload_format=payload_format,
            policy=policy,
        )

    def __repr__(self) -> str:
        return f"<{type(self).__name__} base_url={self._core.base_url!r}>"

    def callback_url_for(self, job_id: str) -> str:
        """The callback URL sent for ``job_id`` (with ``?token=`` when ``token_secret``)."""
        return self._core.callback_url_for(job_id)

    def can_refresh(self, job: Job) -> bool:
        """True when `refresh` can ask about ``job``: a ``status_path`` is configured and,
        if it needs ``{remote_id}``, the job has one."""
        return self._core.can_refresh(job)


class GeneratorClient(_BaseGeneratorClient):
    """Submits jobs to a generator backend, creating each in ``store`` first.

    ``callback_url`` is a template with ``{job_id}``; with ``token_secret`` each URL
    carries the job's token. ``status_path`` and ``cancel_path`` are templates with
    ``{job_id}`` (or ``{remote_id}``) that enable `refresh` and `cancel`; their answers
    are read with the webhook's ``payload_format``. Transient
    failures are retried ``max_attempts`` times in all, with jittered exponential
    backoff from ``backoff`` seconds up to ``max_backoff``, obeying ``Retry-After``.
    ``sleep`` and ``rng`` replace `time.sleep` and the jitter source (for tests).
    An ``http_client`` passed in is used as is and left open by `close`.
    Thread-safe when the store is (every store jobhook ships is).
    """

    def __init__(
        self,
        store: JobStore,
        base_url: str,
        *,
        callback_url: str,
        submit_path: str = "/jobs",
        status_path: str | None = None,
        cancel_path: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        max_attempts: int = 3,
        token_secret: str | bytes | None = None,
        http_client: httpx.Client | None = None,
        payload_format: PayloadFormat = "jobhook",
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            base_url,
            callback_url=callback_url,
            submit_path=submit_path,
            status_path=status_path,
            cancel_path=cancel_path,
            headers=headers,
            timeout=timeout,
            max_attempts=max_attempts,
            token_secret=token_secret,
            payload_format=payload_format,
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
        base_url: str,
        *,
        callback_url: str,
        submit_path: str = "/jobs",
        status_path: str | None = None,
        cancel_path: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 10.0,
        max_attempts: int = 3,
        token_secret: str | bytes | None = None,
        http_client: httpx.AsyncClient | None = None,
        payload_format: PayloadFormat = "jobhook",
        backoff: float = 0.5,
        max_backoff: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio_sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            base_url,
            callback_url=callback_url,
            submit_path=submit_path,
            status_path=status_path,
            cancel_path=cancel_path,
            headers=headers,
            timeout=timeout,
            max_attempts=max_attempts,
            token_secret=token_secret,
            payload_format=payload_format,
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
