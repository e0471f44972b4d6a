"""OpenAI's background Responses, with project-wide thin webhook events."""

from __future__ import annotations

from typing import Any

from jobhook._convert import dumps
from jobhook._models import Job, JobError, JobStatus, JobUpdate
from jobhook._payloads import ParsedPayload, parse_body
from jobhook.backends._base import (
    CallbackAuth,
    HostedProfile,
    Request,
    check_base_url,
    check_key,
    optional_str,
)
from jobhook.exceptions import PayloadError, ValidationError

__all__ = ["OpenAI", "parse_response"]

_STATUS = {
    "queued": JobStatus.SUBMITTED,
    "in_progress": JobStatus.RUNNING,
    "completed": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "cancelled": JobStatus.CANCELED,
    "incomplete": JobStatus.FAILED,
}
_EVENTS = {
    "response.completed": JobStatus.SUCCEEDED,
    "response.failed": JobStatus.FAILED,
    "response.cancelled": JobStatus.CANCELED,
    "response.incomplete": JobStatus.FAILED,
}


def parse_response(data: Any) -> ParsedPayload:
    """A Response object (``GET /v1/responses/{id}``): its status, its ``output`` once
    completed, its ``error`` (or ``incomplete_details``) when it did not."""
    if not isinstance(data, dict):
        raise PayloadError("a Response is a JSON object")
    status = data.get("status")
    if status not in _STATUS:
        raise PayloadError(f"status must be one of {', '.join(_STATUS)}; got {status!r:.40}")
    mapped = _STATUS[status]
    error = None
    if status == "failed":
        found = data.get("error")
        detail: dict[str, Any] = found if isinstance(found, dict) else {}
        error = JobError(
            str(detail.get("code") or "openai_failed")[:255], str(detail.get("message") or "")
        )
    elif status == "incomplete":
        why = data.get("incomplete_details")
        reason = why.get("reason") if isinstance(why, dict) else None
        error = JobError("incomplete", str(reason or "the response is incomplete"))
    try:
        update = JobUpdate(
            mapped,
            output=data.get("output") if mapped is JobStatus.SUCCEEDED else None,
            error=error,
            remote_id=optional_str(data, "id"),
        )
    except ValidationError as exc:
        raise PayloadError(f"invalid payload: {exc}") from None
    return ParsedPayload(update)


def parse_event(data: Any) -> ParsedPayload:
    """A thin webhook event (``{"type": "response.completed", "data": {"id": …}}``): it
    names only the response, so the handler finds the job by that remote id and asks
    the API for the response itself (`ParsedPayload.fetch`)."""
    if not isinstance(data, dict) or not isinstance(data.get("data"), dict):
        raise PayloadError("an OpenAI webhook event is an object with a data object")
    kind = data.get("type")
    if kind not in _EVENTS:
        raise PayloadError(f"type must be one of {', '.join(_EVENTS)}; got {kind!r:.60}")
    remote_id = optional_str(data["data"], "id")
    if remote_id is None:
        raise PayloadError("the event's data has no response id")
    return ParsedPayload(JobUpdate(_EVENTS[kind], remote_id=remote_id), fetch=True)


class OpenAI(HostedProfile):
    """OpenAI's Responses API in background mode: ``POST {base_url}/responses`` with
    ``{"model", "input", "background": true, "metadata": {"jobhook_job_id"}}``
    (``Authorization: Bearer <api_key>``).

    The response id is the job's ``remote_id``; status is ``GET /responses/{id}``,
    cancel ``POST /responses/{id}/cancel``. Statuses ``queued`` (submitted),
    ``in_progress``, ``completed`` (succeeded, the response's ``output`` kept as the
    job's output), ``failed``, ``cancelled``, ``incomplete`` (failed, code
    ``incomplete``).

    OpenAI sends webhooks to one project-wide URL (set in the dashboard, not per
    request), signed with Standard Webhooks, and they are thin: ``response.completed``
    and friends name only the response id. The handler therefore needs the project's
    webhook ``secret=`` and a ``client=`` (a `GeneratorClient` with this profile): it
    finds the job by its remote id (`JobStore.get_by_remote_id`) and fetches the
    response, so a job never ends ``succeeded`` without its output. Mount it on a
    route without a job id. Not idempotent: a submit that may have arrived is never
    resent.
    """

    name = "openai"
    idempotent_submit = False
    callback_auth: CallbackAuth = "standard-webhooks"
    #: Webhooks name only a remote id and must be completed by a fetch.
    thin_callbacks = True
    callbacks_by_remote_id = True
    #: Webhooks go to the project's one URL: the client needs no ``callback_url``.
    uses_callback_url = False

    def __init__(
        self,
        api_key: str,
        *,
        model: str,
        base_url: str = "https://api.openai.com/v1",
        options: dict[str, Any] | None = None,
    ) -> None:
        check_key(api_key, "OpenAI's API key")
        if not isinstance(model, str) or not model:
            raise ValidationError("OpenAI needs model='…'")
        self._api_key = api_key
        self.model = model
        self.base_url = check_base_url(base_url)
        # Other Responses parameters sent with every job (instructions, tools, ...).
        self.options = dict(options or {})

    def __repr__(self) -> str:
        return f"OpenAI(model={self.model!r})"  # never the key

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._api_key}"}

    def submit_request(self, job: Job, callback_url: str) -> Request:
        if job.input is None:
            raise ValidationError("OpenAI needs the job's input (a prompt or input items)")
        body = {
            **self.options,
            "model": self.model,
            "input": job.input,
            "background": True,
            "metadata": {"jobhook_job_id": job.id},
        }
        url = f"{self.base_url}/responses"
        return Request("POST", url, self.headers, dumps(body, field="input").encode())

    def status_request(self, job: Job) -> Request | None:
        return self.by_remote_id(job, "GET", f"{self.base_url}/responses/{{remote_id}}")

    def read_status(self, job: Job, body: bytes) -> ParsedPayload | Request:
        return parse_response(parse_body(body))

    def cancel_request(self, job: Job) -> Request | None:
        return self.by_remote_id(job, "POST", f"{self.base_url}/responses/{{remote_id}}/cancel")

    def parse_callback(self, body: bytes) -> ParsedPayload:
        return parse_event(parse_body(body))
