"""What every impersonated backend shares: the fake's job record and the `Wire` base.

A wire is one backend's side of the HTTP conversation, without state of its own: it
routes a request, reads a submit, and renders answers and callbacks from a `FakeJob`.
`FakeGenerator` keeps the jobs, runs the scripts and sends what the wire renders.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, ClassVar, Literal
from urllib.parse import quote, unquote

import attrs
import httpx

from jobhook._convert import dumps
from jobhook._models import JobError, JobStatus, JobUpdate
from jobhook.testing._scripts import Submission

__all__ = [
    "FakeJob",
    "Intake",
    "JobIdFromUrl",
    "Route",
    "Wire",
    "json_response",
    "last_path_segment",
    "percent",
    "segments",
]

#: What a request asks for: ``(kind, id)``, or an answer given at once (a 404, a 405).
Route = tuple[Literal["submit", "status", "result", "cancel"], str] | httpx.Response
#: Reads the app's job id out of a callback URL, as the app's webhook route does.
JobIdFromUrl = Callable[[str], str | None]


def json_response(
    status: int, data: Any, headers: Mapping[str, str] | None = None
) -> httpx.Response:
    return httpx.Response(status, json=data, headers=dict(headers or {}))


def segments(request: httpx.Request) -> list[str]:
    """The request's path segments, percent-decoded, without empty ones."""
    path = request.url.raw_path.split(b"?")[0].decode()
    return [unquote(s) for s in path.split("/") if s]


def origin(request: httpx.Request, path: Sequence[str] = ()) -> str:
    """The request's scheme and host, and ``path`` under it: a base URL for answers."""
    url = request.url
    return f"{url.scheme}://{url.netloc.decode()}" + "".join(f"/{quote(s, safe='')}" for s in path)


def last_path_segment(url: str) -> str | None:
    """The default `JobIdFromUrl`: the callback URL's last path segment
    (``/webhooks/{job_id}``)."""
    try:
        parts = [s for s in httpx.URL(url).path.split("/") if s]
    except httpx.InvalidURL:
        return None
    return parts[-1] if parts else None


def percent(progress: float) -> str:
    """``progress`` as a log line's percentage (``"12.5%"``), to two decimals."""
    return f"{progress:.2f}".rstrip("0").rstrip(".") + "%"


def http_url(value: object) -> str | None:
    """``value`` when it is an absolute http(s) URL, else ``None``."""
    if not isinstance(value, str):
        return None
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return None
    return value if url.scheme in ("http", "https") and url.host else None


def json_body(request: httpx.Request) -> Any:
    """The request's JSON body; `ValueError` when it is not JSON."""
    return json.loads(request.content)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")


__all__ += ["http_url", "json_body", "now_iso", "origin"]


@attrs.define(eq=False)
class FakeJob:
    """One job (prediction, request) as the fake runs it; guarded by the fake's lock.

    ``job_id`` is the app's id (from the submit, or read from the callback URL where
    the backend names none), ``wire_id`` the id the fake answers and calls back with,
    ``remote_id`` the fake's own id. ``reached`` is the highest script step sent (or
    silently passed) so far: what the status endpoint tells.
    """

    job_id: str
    wire_id: str
    remote_id: str
    callback_url: str
    steps: list[JobUpdate]
    submission: Submission
    meta: dict[str, Any]
    reached: int = -1
    canceled: bool = False

    def state(self) -> JobUpdate | None:
        """What the job says now; ``None`` before its first step."""
        if self.canceled:
            return JobUpdate(JobStatus.CANCELED)
        return self.steps[self.reached] if self.reached >= 0 else None

    def ended(self) -> bool:
        state = self.state()
        return state is not None and state.status.terminal

    def logs(self, upto: int) -> str:
        """One log line per ``running`` step with a progress, up to step ``upto``
        (none for -1: no step yet), as a model's progress bar writes them."""
        return "".join(
            f"generating: {percent(step.progress)}\n"
            for step in self.steps[: max(upto + 1, 0)]
            if step.status is JobStatus.RUNNING and step.progress is not None
        )

    def upto(self, index: int) -> int:
        """The step a callback for ``index`` (-1: a cancel) reports the logs up to:
        a cancel reports what the job had reached."""
        return self.reached if index < 0 else index


@attrs.frozen
class Intake:
    """A submit the wire accepted: what to record and run, the fake's own id for the
    job, and what the wire keeps for its answers (``meta``)."""

    submission: Submission
    remote_id: str
    meta: dict[str, Any] = attrs.field(factory=dict)


class Wire:
    """One backend's wire shapes. Subclasses override what their backend does."""

    name = "backend"
    #: Whether the backend takes the app's job id (so ``mismatched_ids`` makes sense).
    takes_job_id = False
    #: Whether ``GET …/{id}`` may name the app's job id as well as the wire id.
    finds_by_job_id = False
    #: Whether callbacks go to a URL per job, whose route names the job (not to one
    #: project-wide URL, as OpenAI's).
    route_names_job = True
    #: What the backend's answers say when it has no such job.
    not_found: ClassVar[Any] = {"detail": "Not found"}

    def __init__(self, *, api_key: str | None, job_id_from_url: JobIdFromUrl) -> None:
        self.api_key = api_key
        self.job_id_from_url = job_id_from_url

    # -- requests --

    def route(self, request: httpx.Request) -> Route:
        raise NotImplementedError

    def authorize(self, request: httpx.Request) -> httpx.Response | None:
        """``None`` when the request may proceed, else the backend's refusal."""
        return None

    def _credential(self, request: httpx.Request, scheme: str) -> str | None:
        """The credential after ``scheme`` in the Authorization header, if any."""
        value: str = request.headers.get("authorization", "")
        given, _, credential = value.partition(" ")
        if given.lower() != scheme.lower() or not credential.strip():
            return None
        return credential.strip()

    def _key_refused(self, credential: str | None) -> bool:
        return credential is None or (self.api_key is not None and credential != self.api_key)

    def find(self, job: FakeJob | None, request: httpx.Request) -> FakeJob | None:
        """``job`` (found by the id in the request) if the request may name it there."""
        return job

    def intake(self, request: httpx.Request) -> Intake | httpx.Response:
        """Read a submit: what to run, or the backend's refusal."""
        raise NotImplementedError

    def same_job(self, job: FakeJob) -> bool:
        """Whether a repeated submit for ``job``'s id is that job again (not a new one)."""
        return False

    def accepted(self, job: FakeJob, *, new: bool) -> httpx.Response:
        raise NotImplementedError

    def status(self, job: FakeJob | None, request: httpx.Request) -> httpx.Response:
        raise NotImplementedError

    def result(self, job: FakeJob | None, request: httpx.Request) -> httpx.Response:
        return json_response(404, self.not_found)

    def cancel(self, job: FakeJob | None, *, canceled: bool) -> httpx.Response:
        """The answer to a cancel: ``canceled`` when the fake just canceled ``job``
        (else it is unknown or already ended)."""
        raise NotImplementedError

    # -- callbacks --

    def callback(self, job: FakeJob, index: int, update: JobUpdate) -> dict[str, Any] | None:
        """The callback body for script step ``index`` (-1: a cancel), or ``None``
        when the backend sends nothing for it (the step still happens)."""
        raise NotImplementedError

    def encode(self, payload: Mapping[str, Any]) -> bytes:
        return dumps(dict(payload), field="payload").encode()

    def headers(self, job: FakeJob, body: bytes, msg_id: str) -> dict[str, str]:
        """The headers of one attempt of a callback (signed afresh per attempt)."""
        return {}

    def retried(self, job: FakeJob, update: JobUpdate) -> bool:
        """Whether a failed delivery of this callback is tried again."""
        return True

    def reported(self, update: JobUpdate) -> JobStatus:
        """The status the app reads from the backend's report of ``update``."""
        return update.status


def error_message(update: JobUpdate) -> str:
    error = update.error or JobError("failed", "the fake generator failed")
    return error.message or error.code


def error_code(update: JobUpdate) -> str | None:
    return update.error.code if update.error is not None else None


__all__ += ["error_code", "error_message"]
