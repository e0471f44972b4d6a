"""The `Backend` protocol: one generator backend's wire contract, without I/O.

A profile builds the requests the client sends (submit, status, cancel) for a job and
its callback URL, reads the answers (status code and raw body in, jobhook values out),
and tells the webhook handler how callbacks are authenticated and parsed. It never
sends anything itself: `GeneratorClient` and `AsyncGeneratorClient` do, with the
retry rules the profile allows.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Literal, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import attrs

from jobhook._models import Job, JobUpdate
from jobhook._payloads import ParsedPayload
from jobhook.exceptions import PayloadError, ValidationError

__all__ = [
    "RETRYABLE_STATUSES",
    "Backend",
    "CallbackAuth",
    "Request",
    "SubmitAnswer",
    "check_base_url",
    "check_key",
    "json_object",
    "path_part",
]

#: Answers that mean "not taken; try again later", for every backend: 408, 429 and the
#: gateway and availability errors. Profiles may add their own (Cog's 409 "busy").
RETRYABLE_STATUSES = frozenset({408, 429, 502, 503, 504})

#: How a backend's callbacks are authenticated: ``"standard-webhooks"`` (the handler's
#: ``secret``), ``"token"`` (unsigned: only the callback URL's per-job token), or
#: ``"custom"`` (the profile's own `Backend.verify_callback`).
CallbackAuth = Literal["standard-webhooks", "token", "custom"]


@attrs.frozen
class Request:
    """One HTTP request to send: ``method``, absolute ``url``, ``headers``, ``content``."""

    method: str
    url: str
    headers: Mapping[str, str] = attrs.field(factory=dict)
    content: bytes | None = None


@attrs.frozen
class SubmitAnswer:
    """What a submit's 2xx answer says.

    ``remote_id``: the backend's own id for the job, when it has one. ``update``: a
    change the answer already carries (a synchronous backend's result), applied after
    ``submitted``. ``other_job_id``: the job id the answer names when it is *not* ours
    (the original bug: its webhooks would name a job nobody stored).
    """

    remote_id: str | None = None
    update: JobUpdate | None = None
    other_job_id: str | None = None


@runtime_checkable
class Backend(Protocol):
    """One generator backend's wire contract. Built-in profiles: `Jobhook`, `Cog`,
    `Replicate`, `Fal`, `RunPod`, `OpenAI`; see "Write your own backend" in the docs.

    Every method is pure: it builds a `Request` or reads a status code and raw body.
    Answers that cannot be read raise `PayloadError`.
    """

    #: A short name for logs and reprs (``"cog"``).
    name: str
    #: Whether a submit that may have reached the backend may be sent again and still
    #: be the same job there (the job id is the backend's key). When false, an
    #: ambiguous submit leaves the job ``pending`` and nothing ever sends it twice.
    idempotent_submit: bool
    #: How callbacks are authenticated (see `CallbackAuth`).
    callback_auth: CallbackAuth

    def submit_request(self, job: Job, callback_url: str) -> Request:
        """The request that submits ``job``, asking for callbacks at ``callback_url``."""
        ...

    def read_submit(self, job: Job, status: int, body: bytes) -> SubmitAnswer:
        """Read a 2xx answer to the submit."""
        ...

    def transient(self, status: int) -> bool:
        """Whether an answer with this status means "try again later" (not a refusal)."""
        ...

    def status_request(self, job: Job) -> Request | None:
        """The request that asks for the job's status, or ``None`` when there is none
        (no status endpoint, or it needs a remote id the job does not have yet)."""
        ...

    def read_status(self, job: Job, body: bytes) -> ParsedPayload | Request:
        """Read a 2xx answer to the status request: what it says, or a `Request` for
        the result, whose answer `read_result` reads (fal's completed requests)."""
        ...

    def read_result(self, job: Job, body: bytes) -> ParsedPayload:
        """Read a 2xx answer to the result request `read_status` asked for."""
        ...

    def cancel_request(self, job: Job) -> Request | None:
        """The request that cancels the job, or ``None`` when it cannot be canceled."""
        ...

    def read_cancel(self, job: Job, body: bytes) -> JobUpdate | None:
        """Read a 2xx answer to the cancel request: the update it confirms, or ``None``
        when the cancel is only requested (the outcome comes later)."""
        ...

    def parse_callback(self, body: bytes) -> ParsedPayload:
        """Parse a callback body (already authenticated)."""
        ...

    def verify_callback(self, headers: Mapping[str, object], body: bytes, now: float) -> str:
        """For ``callback_auth == "custom"``: check the callback's signature and return
        its delivery id; raise `SignatureError`. Other profiles raise `TypeError`."""
        ...


def check_key(value: object, what: str) -> str:
    """An API key or token: a non-empty ASCII string (it goes into an HTTP header)."""
    if not isinstance(value, str) or not value or not value.isascii() or value != value.strip():
        raise ValidationError(f"{what} must be a non-empty ASCII string without spaces around it")
    return value


def check_base_url(value: object, name: str = "base_url") -> str:
    """``value`` without a trailing slash; `ValidationError` unless absolute http(s)."""
    if not isinstance(value, str):
        raise ValidationError(f"{name} must be an absolute http(s) URL, got {value!r}")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValidationError(f"{name} must be an absolute http(s) URL, got {value!r}")
    return value.rstrip("/")


def path_part(value: str) -> str:
    """``value`` quoted as one URL path segment."""
    return quote(value, safe="")


def json_object(body: bytes, what: str) -> dict[str, Any]:
    """``body`` as a JSON object; `PayloadError` naming ``what`` otherwise."""
    try:
        data = json.loads(body) if body.strip() else None
    except (ValueError, RecursionError):
        raise PayloadError(f"{what} is not JSON") from None
    if not isinstance(data, dict):
        raise PayloadError(f"{what} is not a JSON object")
    return data


def optional_str(data: Mapping[str, Any], key: str) -> str | None:
    """``data[key]`` as text when present (numbers are ids too), else ``None``."""
    value = data.get(key)
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (str, int)):
        return str(value)
    raise PayloadError(f"{key} must be a string, got {type(value).__name__}")


__all__ += ["optional_str"]


class ProfileBase:
    """Defaults most profiles share; each profile overrides what differs.

    Besides the `Backend` protocol, the client and the handler read these optional
    attributes (a profile without them gets these defaults):

    - ``callbacks_name_job``: whether a callback body names the job id; when false the
      handler requires ``token_secret`` so that the callback URL's job id is trusted.
    - ``thin_callbacks``: callbacks only say that something happened (OpenAI's events):
      the handler needs ``client=`` and fetches the result.
    - ``callbacks_by_remote_id``: callbacks may name the job by its remote id alone, so
      one can beat the submit's answer; the client then looks for such early
      deliveries once the answer records the remote id (false: callbacks always come
      to the job's own URL, and nothing is looked for).
    - ``max_callback_bytes``: the handler's default ``max_body_bytes``.
    - ``busy_statuses``: submit answers meaning "every slot is taken": after the
      retries the job stays ``pending`` (idempotent backends only).
    - ``has_status_endpoint``: false when `refresh` can never work (Cog).
    - ``uses_callback_url``: false when the backend calls one fixed URL (OpenAI), so
      the client needs no ``callback_url``.
    """

    name = "backend"
    idempotent_submit = False
    callback_auth: CallbackAuth = "token"
    callbacks_name_job = True
    thin_callbacks = False
    callbacks_by_remote_id = False
    max_callback_bytes = 1_048_576
    busy_statuses: frozenset[int] = frozenset()
    has_status_endpoint = True
    uses_callback_url = True
    _retryable: frozenset[int] = RETRYABLE_STATUSES
    _parse: Callable[[bytes], ParsedPayload]

    def transient(self, status: int) -> bool:
        return status in self._retryable

    def status_request(self, job: Job) -> Request | None:
        return None

    def read_status(self, job: Job, body: bytes) -> ParsedPayload | Request:
        return self.parse_callback(body)

    def read_result(self, job: Job, body: bytes) -> ParsedPayload:
        return self.parse_callback(body)

    def cancel_request(self, job: Job) -> Request | None:
        return None

    def read_cancel(self, job: Job, body: bytes) -> JobUpdate | None:
        return self.parse_callback(body).update if body.strip() else None

    def parse_callback(self, body: bytes) -> ParsedPayload:
        return self._parse(body)

    def verify_callback(self, headers: Mapping[str, object], body: bytes, now: float) -> str:
        raise TypeError(f"the {self.name} profile does not verify callbacks itself")


class HostedProfile(ProfileBase):
    """What hosted APIs share: they assign the job's id (read from the submit answer's
    ``remote_id_field`` and kept as ``remote_id``), so nothing about a job can be
    asked before that id is known, and a submit may never be sent twice."""

    idempotent_submit = False
    #: The submit answer's field holding the id the service assigned.
    remote_id_field = "id"

    def auth_headers(self) -> dict[str, str]:
        """The headers that authenticate every request to the service."""
        return {}

    @property
    def headers(self) -> dict[str, str]:
        return {**self.auth_headers(), "content-type": "application/json"}

    def read_submit(self, job: Job, status: int, body: bytes) -> SubmitAnswer:
        try:
            answer = json_object(body, f"{self.name}'s answer")
        except PayloadError:
            return SubmitAnswer()  # accepted, but unreadable: no remote id to keep
        return SubmitAnswer(remote_id=optional_str(answer, self.remote_id_field))

    def by_remote_id(self, job: Job, method: str, url: str) -> Request | None:
        """A request to ``url`` (a template with ``{remote_id}``), or ``None`` while the
        job has no remote id."""
        if job.remote_id is None:
            return None
        return Request(method, url.format(remote_id=path_part(job.remote_id)), self.headers)

    def read_cancel(self, job: Job, body: bytes) -> JobUpdate | None:
        # The answer is the job as it now is: final, or still stopping (then wait).
        answer = self.read_status(job, body)
        if isinstance(answer, Request) or not answer.update.status.terminal:
            return None
        return answer.update


__all__ += ["HostedProfile", "ProfileBase"]
