"""A Cog model server (``python -m cog.server.http``), as observed in
docs/backends/real-servers.md: ``PUT /predictions/{id}`` with ``Prefer: respond-async``,
no status endpoint, cancel ``POST /predictions/{id}/cancel``, unsigned prediction
webhooks to the URL exactly as given."""

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

__all__ = ["EVENTS", "CogWire", "event_of", "prediction_status"]

EVENTS = ("start", "output", "logs", "completed")


def prediction_status(update: JobUpdate | None, *, aborted: bool = False) -> str:
    """A Cog / Replicate prediction status for what the job says now."""
    if update is None or not (update.status.terminal or update.status is JobStatus.RUNNING):
        return "starting"
    if update.status is JobStatus.RUNNING:
        return "processing"
    if update.status is JobStatus.FAILED:
        return "aborted" if aborted and error_code(update) == "aborted" else "failed"
    return "succeeded" if update.status is JobStatus.SUCCEEDED else "canceled"


def event_of(job: FakeJob, index: int, update: JobUpdate) -> str:
    """The webhook event a script step is: the first running step ``start``, later
    ones ``logs``, a terminal one (or a cancel) ``completed``."""
    if index < 0 or update.status.terminal:
        return "completed"
    first = next((i for i, s in enumerate(job.steps) if not s.status.terminal), None)
    return "start" if index == first else "logs"


def prediction_fields(
    job: FakeJob, update: JobUpdate | None, upto: int, *, aborted: bool = False
) -> dict[str, Any]:
    """``status``, ``logs``, ``output``, ``error`` and ``metrics`` of a prediction."""
    status = prediction_status(update, aborted=aborted)
    fields: dict[str, Any] = {"status": status, "logs": job.logs(upto), "metrics": {}}
    if update is not None and update.status is JobStatus.SUCCEEDED:
        fields["output"] = update.output
        fields["metrics"] = {"predict_time": 0.01 * (len(job.steps) or 1)}
    if update is not None and update.status is JobStatus.FAILED:
        fields["error"] = error_message(update)
    return fields


_SYNC_REFUSED = (
    "the fake Cog server runs predictions asynchronously only: send Prefer: respond-async"
)


def _invalid(field: str, message: str) -> httpx.Response:
    """Cog's (FastAPI's) 422 for a body it cannot take."""
    loc = ["body"] if field == "body" else ["body", field]
    return json_response(422, {"detail": [{"loc": loc, "msg": message}]})


class CogWire(Wire):
    name = "cog"
    takes_job_id = True
    finds_by_job_id = True
    not_found: ClassVar[Any] = {}

    def route(self, request: httpx.Request) -> Route:
        path, method = segments(request), request.method
        if path == ["health-check"] and method == "GET":
            return json_response(200, {"status": "READY", "setup": {"status": "succeeded"}})
        if len(path) == 2 and path[0] == "predictions":
            if method == "PUT":
                return ("submit", path[1])
            return json_response(405, {"detail": "Method Not Allowed"}, {"allow": "PUT"})
        if len(path) == 3 and path[::2] == ["predictions", "cancel"] and method == "POST":
            return ("cancel", path[1])
        if path == ["predictions"] and method != "POST":
            return json_response(405, {"detail": "Method Not Allowed"}, {"allow": "POST"})
        return json_response(404, {"detail": "Not Found"})

    def intake(self, request: httpx.Request) -> Intake | httpx.Response:
        prediction_id = segments(request)[-1]
        if "respond-async" not in request.headers.get("prefer", ""):
            # Cog would run it synchronously; jobhook's Cog profile never asks for that.
            return json_response(400, {"detail": _SYNC_REFUSED})
        try:
            data = json_body(request)
        except ValueError:
            return _invalid("body", "not JSON")
        if not isinstance(data, dict):
            return _invalid("body", "not an object")
        if data.get("id") not in (None, prediction_id):
            return _invalid("id", "the body's id differs from the URL's")
        if not isinstance(data.get("input", {}), dict):
            return _invalid("input", "an object")
        webhook = http_url(data.get("webhook"))
        if webhook is None:
            return _invalid("webhook", "the fake calls back: an http(s) URL")
        events = data.get("webhook_events_filter") or list(EVENTS)
        if not isinstance(events, list) or not set(events) <= set(EVENTS):
            return _invalid("webhook_events_filter", f"some of {', '.join(EVENTS)}")
        submission = Submission(
            job_id=prediction_id,
            callback_url=webhook,
            kind=None,
            input=data.get("input", {}),
            idempotency_key=request.headers.get("idempotency-key"),
            headers=dict(request.headers),
        )
        return Intake(submission, f"fake_{uuid.uuid4().hex}", {"events": set(events)})

    def same_job(self, job: FakeJob) -> bool:
        # While it runs, the same PUT is that prediction; Cog forgets finished ones.
        return not job.ended()

    def prediction(self, job: FakeJob) -> dict[str, Any]:
        fields = prediction_fields(job, job.state(), job.reached)
        return {"id": job.wire_id, "input": job.submission.input, **fields}

    def accepted(self, job: FakeJob, *, new: bool) -> httpx.Response:
        if new:
            return json_response(202, {"id": job.wire_id, "status": "starting"})
        return json_response(202, self.prediction(job))

    def status(self, job: FakeJob | None, request: httpx.Request) -> httpx.Response:
        raise AssertionError("Cog has no status route")  # routed to 405 above

    def cancel(self, job: FakeJob | None, *, canceled: bool) -> httpx.Response:
        return json_response(200 if canceled else 404, {})

    def callback(self, job: FakeJob, index: int, update: JobUpdate) -> dict[str, Any] | None:
        if event_of(job, index, update) not in job.meta["events"]:
            return None
        return {"id": job.wire_id, **prediction_fields(job, update, job.upto(index))}

    def retried(self, job: FakeJob, update: JobUpdate) -> bool:
        return update.status.terminal  # Cog sends non-terminal webhooks once
