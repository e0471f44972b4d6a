"""OpenAI's Responses API in background mode: ``POST /v1/responses`` answers a Response
with an id of its own; thin events (``response.completed`` and friends, naming only
that id) go to one project-wide webhook URL, signed with Standard Webhooks."""

from __future__ import annotations

import time
import uuid
from typing import Any, ClassVar

import httpx

from jobhook._models import JobStatus, JobUpdate
from jobhook.testing._scripts import Submission
from jobhook.testing._wires._base import (
    FakeJob,
    Intake,
    JobIdFromUrl,
    Route,
    Wire,
    error_code,
    error_message,
    json_body,
    json_response,
    segments,
)
from jobhook.testing._wires._jobhook import StandardWebhooksSigner

__all__ = ["OPENAI_WEBHOOK_URL", "OpenAIWire", "response_status"]

#: Where an OpenAI fake sends its events without ``webhook_url=``: nowhere reachable,
#: so they arrive only through ``handler=`` (or a ``callback_client=``).
OPENAI_WEBHOOK_URL = "http://app.invalid/webhooks/openai"

_STATUS = {
    JobStatus.RUNNING: "in_progress",
    JobStatus.SUCCEEDED: "completed",
    JobStatus.CANCELED: "cancelled",
}


def response_status(update: JobUpdate | None) -> str:
    """A Response status for what the job says now: a failure with the code
    ``incomplete`` is OpenAI's ``incomplete`` (its message the reason)."""
    if update is None or update.status in (JobStatus.PENDING, JobStatus.SUBMITTED):
        return "queued"
    if update.status is JobStatus.FAILED:
        return "incomplete" if error_code(update) == "incomplete" else "failed"
    return _STATUS[update.status]


def _error(status: int, message: str, *, code: str | None = None) -> httpx.Response:
    kind = "invalid_request_error" if status < 500 else "server_error"
    error = {"message": message, "type": kind, "param": None, "code": code}
    return json_response(status, {"error": error})


class OpenAIWire(Wire):
    name = "openai"
    not_found: ClassVar[Any] = {
        "error": {
            "message": "No response found with that id.",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    route_names_job = False  # one project-wide webhook URL for every response

    def __init__(
        self,
        secret: str | bytes,
        *,
        api_key: str | None,
        job_id_from_url: JobIdFromUrl,
        webhook_url: str,
    ) -> None:
        super().__init__(api_key=api_key, job_id_from_url=job_id_from_url)
        self.signer = StandardWebhooksSigner(secret)
        self.webhook_url = webhook_url

    def route(self, request: httpx.Request) -> Route:
        path, method = segments(request), request.method
        if "responses" not in path:
            return json_response(404, self.not_found)
        at = len(path) - 1 - path[::-1].index("responses")
        rest = path[at + 1 :]
        if not rest and method == "POST":
            return ("submit", "")
        if len(rest) == 1 and method == "GET":
            return ("status", rest[0])
        if rest[1:] == ["cancel"] and method == "POST":
            return ("cancel", rest[0])
        return json_response(404, self.not_found)

    def authorize(self, request: httpx.Request) -> httpx.Response | None:
        credential = self._credential(request, "Bearer")
        if credential is None:
            return _error(401, "You didn't provide an API key.")
        if self._key_refused(credential):
            return _error(401, "Incorrect API key provided.", code="invalid_api_key")
        return None

    def intake(self, request: httpx.Request) -> Intake | httpx.Response:
        try:
            data = json_body(request)
        except ValueError:
            return _error(400, "We could not parse the JSON body of your request.")
        if not isinstance(data, dict):
            return _error(400, "The body of your request must be a JSON object.")
        if not isinstance(data.get("model"), str) or not data["model"]:
            return _error(400, "Missing required parameter: 'model'.")
        if data.get("input") is None:
            return _error(400, "Missing required parameter: 'input'.")
        if data.get("background") is not True:
            # Webhooks come for background responses only.
            return _error(400, "the fake calls back: background must be true")
        metadata = data.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            return _error(400, "Invalid type for 'metadata': expected an object.")
        named = (metadata or {}).get("jobhook_job_id")
        remote_id = f"resp_{uuid.uuid4().hex}"
        submission = Submission(
            job_id=named if isinstance(named, str) and named else remote_id,
            callback_url=self.webhook_url,
            kind=None,
            input=data["input"],
            idempotency_key=request.headers.get("idempotency-key"),
            headers=dict(request.headers),
        )
        meta = {"model": data["model"], "metadata": metadata or {}, "created_at": int(time.time())}
        return Intake(submission, remote_id, meta)

    def response(self, job: FakeJob) -> dict[str, Any]:
        state = job.state()
        status = response_status(state)
        body: dict[str, Any] = {
            "id": job.wire_id,
            "object": "response",
            "created_at": job.meta["created_at"],
            "status": status,
            "background": True,
            "model": job.meta["model"],
            "metadata": job.meta["metadata"],
            "output": [],
            "error": None,
            "incomplete_details": None,
            "usage": None,
        }
        if state is not None and status == "completed":
            body["output"] = state.output
        elif state is not None and status == "failed":
            code = error_code(state) or "server_error"
            body["error"] = {"code": code, "message": error_message(state)}
        elif state is not None and status == "incomplete":
            body["incomplete_details"] = {"reason": error_message(state)}
        return body

    def accepted(self, job: FakeJob, *, new: bool) -> httpx.Response:
        return json_response(200, self.response(job))

    def status(self, job: FakeJob | None, request: httpx.Request) -> httpx.Response:
        if job is None:
            return json_response(404, self.not_found)
        return json_response(200, self.response(job))

    def cancel(self, job: FakeJob | None, *, canceled: bool) -> httpx.Response:
        if job is None:
            return json_response(404, self.not_found)
        return json_response(200, self.response(job))  # cancelled now, or as it ended

    def callback(self, job: FakeJob, index: int, update: JobUpdate) -> dict[str, Any] | None:
        if not update.status.terminal:
            return None  # events come only when a response ends
        return {
            "id": f"evt_{uuid.uuid4().hex}",
            "object": "event",
            "type": f"response.{response_status(update)}",
            "created_at": int(time.time()),
            "data": {"id": job.wire_id},
        }

    def headers(self, job: FakeJob, body: bytes, msg_id: str) -> dict[str, str]:
        return self.signer.sign(body, msg_id)
