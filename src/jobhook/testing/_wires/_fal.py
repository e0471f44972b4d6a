"""fal's queue API (``queue.fal.run``): request ids of its own, one webhook when a
request ends, signed ED25519 in the ``x-fal-webhook-*`` headers."""

from __future__ import annotations

import os
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
    error_message,
    http_url,
    json_body,
    json_response,
    origin,
    segments,
)

__all__ = ["FAL_USER_ID", "FalWire"]

#: The ``x-fal-webhook-user-id`` the fake signs with.
FAL_USER_ID = "fake-fal-user"
# The HTTP status a failed request's result answers, and its webhook's error names.
_FAILED_STATUS = 422
_CANCELED_STATUS = 499  # fal's client_cancelled


def _ending(update: JobUpdate) -> tuple[int, str]:
    """A failed or canceled request's result status and detail."""
    if update.status is JobStatus.CANCELED:
        return _CANCELED_STATUS, "Request cancelled"
    return _FAILED_STATUS, error_message(update)


class FalWire(Wire):
    name = "fal"
    not_found: ClassVar[Any] = {"detail": "Request not found"}

    def __init__(
        self, private_key: bytes | None, *, api_key: str | None, job_id_from_url: JobIdFromUrl
    ) -> None:
        super().__init__(api_key=api_key, job_id_from_url=job_id_from_url)
        if private_key is None:
            private_key = os.urandom(32)
        if not isinstance(private_key, bytes) or len(private_key) != 32:
            raise ValueError("a fal fake signs with a 32-byte ED25519 private key (secret=)")
        self.private_key = private_key

    def jwks(self) -> dict[str, Any]:
        from jobhook.backends._fal import jwks_for

        return jwks_for([self.private_key])

    def route(self, request: httpx.Request) -> Route:
        path, method = segments(request), request.method
        if "requests" not in path:
            if method == "POST" and len(path) >= 2:
                return ("submit", "")
            return json_response(404, {"detail": "Not Found"})
        at = path.index("requests")
        rest = path[at + 1 :]
        if not rest:
            return json_response(404, {"detail": "Not Found"})
        if rest[1:] == ["status"] and method == "GET":
            return ("status", rest[0])
        if len(rest) == 1 and method == "GET":
            return ("result", rest[0])
        if rest[1:] == ["cancel"] and method == "PUT":
            return ("cancel", rest[0])
        return json_response(404, {"detail": "Not Found"})

    def authorize(self, request: httpx.Request) -> httpx.Response | None:
        if self._key_refused(self._credential(request, "Key")):
            return json_response(401, {"detail": "Invalid or missing Authorization: Key …"})
        return None

    def intake(self, request: httpx.Request) -> Intake | httpx.Response:
        webhook = http_url(request.url.params.get("fal_webhook"))
        if webhook is None:
            msg = "the fake calls back: pass ?fal_webhook=<an http(s) URL>"
            return json_response(400, {"detail": msg})
        try:
            data = json_body(request)
        except ValueError:
            return json_response(422, {"detail": [{"loc": ["body"], "msg": "not JSON"}]})
        if not isinstance(data, dict):
            return json_response(422, {"detail": [{"loc": ["body"], "msg": "not an object"}]})
        remote_id = str(uuid.uuid4())
        submission = Submission(
            job_id=self.job_id_from_url(webhook) or remote_id,
            callback_url=webhook,
            kind=None,
            input=data,
            idempotency_key=request.headers.get("idempotency-key"),
            headers=dict(request.headers),
        )
        path = segments(request)
        return Intake(submission, remote_id, {"root": origin(request, path[:2]), "app": path[:2]})

    def _urls(self, job: FakeJob) -> dict[str, str]:
        base = f"{job.meta['root']}/requests/{job.wire_id}"
        return {
            "request_id": job.wire_id,
            "response_url": base,
            "status_url": f"{base}/status",
            "cancel_url": f"{base}/cancel",
        }

    def find(self, job: FakeJob | None, request: httpx.Request) -> FakeJob | None:
        # Status, result and cancel live under {owner}/{alias}, without the app's path.
        if job is None or segments(request)[:3] != [*job.meta["app"], "requests"]:
            return None
        return job

    def accepted(self, job: FakeJob, *, new: bool) -> httpx.Response:
        answer = {"status": "IN_QUEUE", **self._urls(job), "queue_position": 0}
        return json_response(200, {**answer, "gateway_request_id": job.wire_id})

    def status(self, job: FakeJob | None, request: httpx.Request) -> httpx.Response:
        if job is None:
            return json_response(404, self.not_found)
        state, urls = job.state(), self._urls(job)
        logs = None
        if request.url.params.get("logs") in ("1", "true"):
            logs = [
                {"message": line, "level": "INFO", "source": "user", "timestamp": "1970-01-01"}
                for line in job.logs(job.reached).splitlines()
            ]
        if state is None:
            return json_response(200, {"status": "IN_QUEUE", **urls, "queue_position": 0})
        if not state.status.terminal:
            return json_response(200, {"status": "IN_PROGRESS", **urls, "logs": logs})
        metrics = {"inference_time": 0.01 * (len(job.steps) or 1)}
        return json_response(200, {"status": "COMPLETED", **urls, "logs": logs, "metrics": metrics})

    def result(self, job: FakeJob | None, request: httpx.Request) -> httpx.Response:
        if job is None:
            return json_response(404, self.not_found)
        state = job.state()
        if state is None or not state.status.terminal:
            return json_response(400, {"detail": "Request is still in progress"})
        if state.status is JobStatus.SUCCEEDED:
            return json_response(200, state.output)
        status, detail = _ending(state)
        return json_response(status, {"detail": detail})

    def cancel(self, job: FakeJob | None, *, canceled: bool) -> httpx.Response:
        if job is None:
            return json_response(404, {"status": "NOT_FOUND"})
        if not canceled:
            return json_response(400, {"status": "ALREADY_COMPLETED"})
        return json_response(202, {"status": "CANCELLATION_REQUESTED"})

    def callback(self, job: FakeJob, index: int, update: JobUpdate) -> dict[str, Any] | None:
        if not update.status.terminal:
            return None  # fal calls back once, when the request ends
        body: dict[str, Any] = {"request_id": job.wire_id, "gateway_request_id": job.wire_id}
        if update.status is JobStatus.SUCCEEDED:
            return {**body, "status": "OK", "payload": update.output}
        status, detail = _ending(update)
        error = f"Invalid status code: {status}"
        return {**body, "status": "ERROR", "error": error, "payload": {"detail": detail}}

    def headers(self, job: FakeJob, body: bytes, msg_id: str) -> dict[str, str]:
        from jobhook.backends._fal import sign_fal_webhook

        return sign_fal_webhook(
            self.private_key,
            body,
            request_id=job.wire_id,
            user_id=FAL_USER_ID,
            timestamp=int(time.time()),
        )

    def reported(self, update: JobUpdate) -> JobStatus:
        # fal has no "canceled": a canceled request ends as an error.
        return JobStatus.FAILED if update.status is JobStatus.CANCELED else update.status
