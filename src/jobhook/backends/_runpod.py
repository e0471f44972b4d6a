"""RunPod serverless endpoints (and the worker SDK's local API server)."""

from __future__ import annotations

import json
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
    path_part,
)
from jobhook.exceptions import PayloadError, ValidationError

__all__ = ["RunPod"]

_STATUS = {
    "IN_QUEUE": JobStatus.SUBMITTED,
    "IN_PROGRESS": JobStatus.RUNNING,
    "COMPLETED": JobStatus.SUCCEEDED,
    "FAILED": JobStatus.FAILED,
    "CANCELLED": JobStatus.CANCELED,
    "TIMED_OUT": JobStatus.FAILED,
}


def _error(value: Any, status: str) -> JobError:
    code = "timed_out" if status == "TIMED_OUT" else "runpod_failed"
    if value is not None and not isinstance(value, str):
        value = json.dumps(value)
    return JobError(code, (value or status.lower())[:2000])


def parse_runpod(data: Any) -> ParsedPayload:
    """A RunPod job object (``{"id", "status", "output", "error"}``), or the local
    server's bare ``{"output": …}`` (a finished job). ``id`` is the remote id."""
    if not isinstance(data, dict):
        raise PayloadError("a RunPod job is a JSON object")
    status = data.get("status")
    if status is None:
        # The worker SDK's webhook is only {"output": …} (a bare {} for a handler that
        # returned nothing), sent for completed jobs alone.
        status = "COMPLETED"
    if status not in _STATUS:
        raise PayloadError(f"status must be one of {', '.join(_STATUS)}; got {status!r:.40}")
    mapped = _STATUS[status]
    try:
        update = JobUpdate(
            mapped,
            output=data.get("output") if mapped is JobStatus.SUCCEEDED else None,
            error=_error(data.get("error"), status) if mapped is JobStatus.FAILED else None,
            remote_id=optional_str(data, "id"),
        )
    except ValidationError as exc:
        raise PayloadError(f"invalid payload: {exc}") from None
    return ParsedPayload(update)


class RunPod(HostedProfile):
    """A RunPod serverless endpoint: ``POST {base_url}/{endpoint_id}/run`` with
    ``{"input", "webhook"}`` (``Authorization: Bearer <api_key>``).

    RunPod assigns the job id (the job's ``remote_id``); status is ``GET
    /status/{remote_id}``, cancel ``POST /cancel/{remote_id}``. Statuses ``IN_QUEUE``
    (submitted), ``IN_PROGRESS``, ``COMPLETED``, ``FAILED``, ``CANCELLED``,
    ``TIMED_OUT`` (failed, code ``timed_out``). Callbacks are unsigned: the handler
    needs ``token_secret``. A failed job may send no webhook at all, so run the
    `Reconciler` (it polls the status endpoint) to settle such jobs. ``input`` must be
    a JSON object. Not idempotent: a submit that may have arrived is never resent.

    `RunPod.local(url)` talks to the worker SDK's local server
    (``--rp_serve_api``): routes at the root, status by ``POST``, no key.
    """

    name = "runpod"
    idempotent_submit = False
    callback_auth: CallbackAuth = "token"

    def __init__(
        self,
        endpoint_id: str,
        api_key: str,
        *,
        base_url: str = "https://api.runpod.ai/v2",
        status_method: str = "GET",
    ) -> None:
        base = check_base_url(base_url)
        if api_key:
            check_key(api_key, "RunPod's API key")
        self._root = f"{base}/{path_part(endpoint_id)}" if endpoint_id else base
        self._api_key = api_key
        self.endpoint_id = endpoint_id
        self._status_method = status_method

    @classmethod
    def local(cls, base_url: str) -> RunPod:
        """The worker SDK's local API server (``python handler.py --rp_serve_api``)."""
        return cls("", "", base_url=base_url, status_method="POST")

    def __repr__(self) -> str:
        return f"RunPod(endpoint_id={self.endpoint_id!r}, root={self._root!r})"

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._api_key}"} if self._api_key else {}

    def submit_request(self, job: Job, callback_url: str) -> Request:
        if not isinstance(job.input, dict):
            raise ValidationError("RunPod needs the job's input to be a JSON object")
        body = {"input": job.input, "webhook": callback_url}
        return Request("POST", f"{self._root}/run", self.headers, dumps(body).encode())

    def status_request(self, job: Job) -> Request | None:
        url = f"{self._root}/status/{{remote_id}}"
        return self.by_remote_id(job, self._status_method, url)

    def cancel_request(self, job: Job) -> Request | None:
        return self.by_remote_id(job, "POST", f"{self._root}/cancel/{{remote_id}}")

    def parse_callback(self, body: bytes) -> ParsedPayload:
        return parse_runpod(parse_body(body))
