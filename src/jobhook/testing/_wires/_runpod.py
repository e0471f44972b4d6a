"""RunPod serverless endpoints (``/v2/{endpoint_id}/run``), and the worker SDK's local
server (``--rp_serve_api``: routes at the root) as docs/backends/real-servers.md
observed it. Job ids are RunPod's; the webhook comes once, for a completed job only."""

from __future__ import annotations

import uuid
from typing import Any, ClassVar

import httpx

from jobhook._models import JobStatus, JobUpdate
from jobhook.testing._scripts import Submission
from jobhook.testing._wires._base import (
    FakeJob,
    Intake,
    Route,
    Wire,
    error_code,
    error_message,
    http_url,
    json_body,
    json_response,
    segments,
)

__all__ = ["RunPodWire", "runpod_status"]


_STATUS = {
    JobStatus.RUNNING: "IN_PROGRESS",
    JobStatus.SUCCEEDED: "COMPLETED",
    JobStatus.CANCELED: "CANCELLED",
}


def runpod_status(update: JobUpdate | None) -> str:
    """A RunPod job status for what the job says now (``timed_out`` errors time out)."""
    if update is None or update.status in (JobStatus.PENDING, JobStatus.SUBMITTED):
        return "IN_QUEUE"
    if update.status is JobStatus.FAILED:
        return "TIMED_OUT" if error_code(update) == "timed_out" else "FAILED"
    return _STATUS[update.status]


def _local(path: list[str]) -> bool:
    """Whether a path is the local server's (routes at the root, no endpoint id)."""
    return path == ["run"] or (len(path) == 2 and path[0] == "status")


class RunPodWire(Wire):
    name = "runpod"
    not_found: ClassVar[Any] = {"error": "request does not exist"}

    def route(self, request: httpx.Request) -> Route:
        path, method = segments(request), request.method
        local = _local(path)
        if path[-1:] == ["run"] and method == "POST":
            return ("submit", "")
        if len(path) >= 2 and path[-2] == "status":
            if local and method != "POST":
                return json_response(405, {"detail": "Method Not Allowed"}, {"allow": "POST"})
            if method in ("GET", "POST"):
                return ("status", path[-1])
        if len(path) >= 3 and path[-2] == "cancel" and method == "POST":
            return ("cancel", path[-1])
        return json_response(404, {"error": "not found"} if not local else {"detail": "Not Found"})

    def authorize(self, request: httpx.Request) -> httpx.Response | None:
        if _local(segments(request)):
            return None  # the local server takes no key
        header = request.headers.get("authorization", "")
        credential = self._credential(request, "Bearer") or header.strip() or None
        if self._key_refused(credential):
            return json_response(401, {"error": "Unauthorized"})
        return None

    def intake(self, request: httpx.Request) -> Intake | httpx.Response:
        path = segments(request)
        local = _local(path)
        refused = 422 if local else 400
        try:
            data = json_body(request)
        except ValueError:
            return json_response(refused, {"error": "the body is not JSON"})
        if not isinstance(data, dict) or not isinstance(data.get("input"), dict):
            return json_response(refused, {"error": "input must be a JSON object"})
        webhook = http_url(data.get("webhook"))
        if webhook is None:
            msg = "the fake calls back: webhook must be an http(s) URL"
            return json_response(refused, {"error": msg})
        remote_id = f"test-{uuid.uuid4()}" if local else f"{uuid.uuid4()}-u1"
        submission = Submission(
            job_id=self.job_id_from_url(webhook) or remote_id,
            callback_url=webhook,
            kind=None,
            input=data["input"],
            idempotency_key=request.headers.get("idempotency-key"),
            headers=dict(request.headers),
        )
        return Intake(submission, remote_id, {"endpoint": path[:-1]})

    def find(self, job: FakeJob | None, request: httpx.Request) -> FakeJob | None:
        # A job is known only to the endpoint it was submitted to.
        if job is None or segments(request)[:-2] != job.meta["endpoint"]:
            return None
        return job

    def _local(self, job: FakeJob) -> bool:
        return not job.meta["endpoint"]

    def body(self, job: FakeJob, update: JobUpdate | None) -> dict[str, Any]:
        status = runpod_status(update)
        body: dict[str, Any] = {"id": job.wire_id, "status": status}
        if not self._local(job) and status != "IN_QUEUE":
            body["delayTime"] = 12
        if update is not None and update.status is JobStatus.SUCCEEDED:
            body["output"] = update.output
            if not self._local(job):
                body["executionTime"] = 34
        elif status in ("FAILED", "TIMED_OUT"):
            assert update is not None
            body["error"] = error_message(update)
        return body

    def accepted(self, job: FakeJob, *, new: bool) -> httpx.Response:
        status = "IN_PROGRESS" if self._local(job) else "IN_QUEUE"
        return json_response(200, {"id": job.wire_id, "status": status})

    def status(self, job: FakeJob | None, request: httpx.Request) -> httpx.Response:
        if job is None:
            path = segments(request)
            if _local(path):  # the local server answers 200, not 404
                unknown = {"id": path[-1], "status": "FAILED", "error": "Job ID not found"}
                return json_response(200, unknown)
            return json_response(404, self.not_found)
        return json_response(200, self.body(job, job.state()))

    def cancel(self, job: FakeJob | None, *, canceled: bool) -> httpx.Response:
        if job is None:
            return json_response(404, self.not_found)
        return json_response(200, self.body(job, job.state()))

    def callback(self, job: FakeJob, index: int, update: JobUpdate) -> dict[str, Any] | None:
        if update.status is not JobStatus.SUCCEEDED:
            return None  # RunPod calls back for a completed job only
        if self._local(job):
            return {"output": update.output}
        return self.body(job, update)

    def retried(self, job: FakeJob, update: JobUpdate) -> bool:
        return not self._local(job)  # the local server never retries its webhook
