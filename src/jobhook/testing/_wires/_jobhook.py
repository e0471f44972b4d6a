"""jobhook's own contract: ``POST /jobs``, ``GET /jobs/{id}``, ``POST /jobs/{id}/cancel``,
callbacks signed with Standard Webhooks."""

from __future__ import annotations

import uuid
from typing import Any

import httpx

from jobhook._convert import update_to_dict
from jobhook._models import JobStatus, JobUpdate
from jobhook._signing import parse_secrets, sign_webhook
from jobhook.testing._scripts import Submission
from jobhook.testing._wires._base import (
    FakeJob,
    Intake,
    JobIdFromUrl,
    Route,
    Wire,
    http_url,
    json_body,
    json_response,
    segments,
)

__all__ = ["JobhookWire", "StandardWebhooksSigner"]


class StandardWebhooksSigner:
    """Signs each attempt of a callback with Standard Webhooks (same id, fresh time)."""

    def __init__(self, secret: str | bytes) -> None:
        parse_secrets(secret)  # refuse a malformed secret now, not at the first send
        self.secret = secret

    def sign(self, body: bytes, msg_id: str) -> dict[str, str]:
        return sign_webhook(self.secret, body, msg_id=msg_id)


class JobhookWire(Wire):
    name = "jobhook"
    takes_job_id = True
    finds_by_job_id = True

    def __init__(
        self, secret: str | bytes, *, api_key: str | None, job_id_from_url: JobIdFromUrl
    ) -> None:
        super().__init__(api_key=api_key, job_id_from_url=job_id_from_url)
        self.signer = StandardWebhooksSigner(secret)

    def route(self, request: httpx.Request) -> Route:
        path, method = segments(request), request.method
        if method == "POST" and path == ["jobs"]:
            return ("submit", "")
        if len(path) == 2 and path[0] == "jobs" and method == "GET":
            return ("status", path[1])
        if len(path) == 3 and path[::2] == ["jobs", "cancel"] and method == "POST":
            return ("cancel", path[1])
        return json_response(404, {"error": f"no route for {method} {request.url.path}"})

    def intake(self, request: httpx.Request) -> Intake | httpx.Response:
        try:
            data = json_body(request)
        except ValueError:  # UnicodeDecodeError included
            return json_response(400, {"error": "the body is not JSON"})
        if not isinstance(data, dict):
            return json_response(400, {"error": "the body is not a JSON object"})
        job_id, callback_url = data.get("job_id"), http_url(data.get("callback_url"))
        if not isinstance(job_id, str) or not job_id:
            return json_response(400, {"error": "job_id is required"})
        if callback_url is None:
            return json_response(400, {"error": "callback_url must be an http(s) URL"})
        kind = data.get("kind")
        submission = Submission(
            job_id=job_id,
            callback_url=callback_url,
            kind=kind if isinstance(kind, str) else None,
            input=data.get("input"),
            idempotency_key=request.headers.get("idempotency-key"),
            headers=dict(request.headers),
        )
        return Intake(submission, f"fake_{uuid.uuid4().hex}")

    def same_job(self, job: FakeJob) -> bool:
        return True  # the contract: a repeated job_id is the same job

    def body(self, job: FakeJob, update: JobUpdate) -> dict[str, Any]:
        return {"job_id": job.wire_id, "remote_id": job.remote_id, **update_to_dict(update)}

    def accepted(self, job: FakeJob, *, new: bool) -> httpx.Response:
        answer = {"job_id": job.wire_id, "remote_id": job.remote_id, "status": "submitted"}
        return json_response(202 if new else 200, answer)

    def status(self, job: FakeJob | None, request: httpx.Request) -> httpx.Response:
        if job is None:
            return json_response(404, {"error": f"no job {segments(request)[-1]!r}"})
        return json_response(200, self.body(job, job.state() or JobUpdate(JobStatus.SUBMITTED)))

    def cancel(self, job: FakeJob | None, *, canceled: bool) -> httpx.Response:
        if job is None:
            return json_response(404, {"error": "no such job"})
        state = job.state()
        assert state is not None  # canceled, or ended
        return json_response(200, self.body(job, state))

    def callback(self, job: FakeJob, index: int, update: JobUpdate) -> dict[str, Any] | None:
        return self.body(job, update)

    def headers(self, job: FakeJob, body: bytes, msg_id: str) -> dict[str, str]:
        return self.signer.sign(body, msg_id)
