"""Every error jobhook raises, under one base class.

```
JobhookError
├── ValidationError (also ValueError)      a value jobhook cannot accept
│   └── PayloadError                       a webhook body that cannot be parsed (400)
├── JobNotFoundError (also LookupError)    no job with that id or remote id (404)
├── DeadLetterNotFoundError (LookupError)  no dead letter with that id (404)
├── ParkedEventNotFoundError (LookupError) no parked event with that id (404)
├── JobExistsError                         a job with that id exists already (409)
├── StoreUnavailableError                  the database cannot be reached (503)
├── SignatureError                         a webhook failed authentication (401)
└── ClientError                            talking to the generator backend failed
    ├── SubmitError                        submit() did not reach a definite "accepted"
    │   └── JobIdMismatchError             the backend answered with a different job id
    └── BackendError                       refresh() / cancel() got an unusable answer
└── OutputError                            an output file could not be kept
```

Each class carries ``status_hint``: the HTTP status a server should answer when the
error reaches it (the h11 ``error_status_hint`` idea).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import httpx

    from jobhook._models import Job

__all__ = [
    "BackendError",
    "ClientError",
    "DeadLetterNotFoundError",
    "JobExistsError",
    "JobIdMismatchError",
    "JobNotFoundError",
    "JobhookError",
    "OutputError",
    "ParkedEventNotFoundError",
    "PayloadError",
    "SignatureError",
    "StoreUnavailableError",
    "SubmitError",
    "ValidationError",
]


class JobhookError(Exception):
    """Base class of every error jobhook raises."""

    status_hint: int = 500


class ValidationError(JobhookError, ValueError):
    """A value jobhook cannot accept: not JSON, progress out of range, and the like."""

    status_hint = 400


class PayloadError(ValidationError):
    """A webhook body that is not UTF-8, not JSON, or not the expected shape.

    The message names the offending field.
    """


class JobNotFoundError(JobhookError, LookupError):
    """No job has this id, or (``remote_id``) no job carries this backend's id.

    ``job_id`` is the id looked up, ``None`` for a lookup by ``remote_id``.
    """

    status_hint = 404

    def __init__(self, job_id: str | None = None, *, remote_id: str | None = None) -> None:
        if remote_id is not None:
            super().__init__(f"no job with remote id {remote_id!r}")
        else:
            super().__init__(f"no job with id {job_id!r}")
        self.job_id = job_id
        self.remote_id = remote_id


class JobExistsError(JobhookError):
    """A job with this id exists already."""

    status_hint = 409

    def __init__(self, job_id: str) -> None:
        super().__init__(f"a job with id {job_id!r} exists already")
        self.job_id = job_id


class StoreUnavailableError(JobhookError):
    """The store's database could not be reached; nothing was written.

    A webhook handler answers 503 so the sender retries later.
    """

    status_hint = 503


class SignatureError(JobhookError):
    """A webhook failed authentication: missing, malformed or wrong signature or token,
    or a timestamp outside the tolerance."""

    status_hint = 401


class ClientError(JobhookError):
    """Talking to the generator backend failed.

    ``request`` and ``response`` are the last ``httpx`` request and response, when
    there were any.
    """

    status_hint = 502

    def __init__(
        self,
        message: str,
        *,
        request: httpx.Request | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message)
        self.request = request
        self.response = response


class SubmitError(ClientError):
    """``submit()`` did not end with the backend accepting the job.

    ``job`` is the stored job (``failed`` for a definite refusal, still ``pending``
    when ``ambiguous``). ``ambiguous`` is true when the request may have reached the
    backend: the job is left for the reconciler, which resubmits it under the same id.
    """

    def __init__(
        self,
        message: str,
        *,
        job: Job,
        ambiguous: bool = False,
        request: httpx.Request | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message, request=request, response=response)
        self.job = job
        self.ambiguous = ambiguous


class JobIdMismatchError(SubmitError):
    """The backend answered a submit with a job id other than the one it was given.

    This is the bug jobhook exists to catch: its webhooks would name a job the app
    never stored. The job is marked ``failed`` with ``code="job_id_mismatch"``.
    """

    def __init__(
        self,
        message: str,
        *,
        job: Job,
        remote_job_id: Any,
        request: httpx.Request | None = None,
        response: httpx.Response | None = None,
    ) -> None:
        super().__init__(message, job=job, request=request, response=response)
        self.remote_job_id = remote_job_id


class BackendError(ClientError):
    """``refresh()`` or ``cancel()`` got an error or an unusable answer from the backend."""


class DeadLetterNotFoundError(JobhookError, LookupError):
    """No dead letter has this id."""

    status_hint = 404

    def __init__(self, dead_letter_id: int) -> None:
        super().__init__(f"no dead letter with id {dead_letter_id!r}")
        self.dead_letter_id = dead_letter_id


class ParkedEventNotFoundError(JobhookError, LookupError):
    """No parked event has this id."""

    status_hint = 404

    def __init__(self, parked_id: int) -> None:
        super().__init__(f"no parked event with id {parked_id!r}")
        self.parked_id = parked_id


class OutputError(JobhookError):
    """An output file could not be fetched or kept (`jobhook.outputs`).

    ``permanent`` is true when no retry will change it: a refused scheme or address, a
    file over the size limit, an answer such as 404.
    """

    status_hint = 502

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent
