"""Replicate's HTTP API: predictions with ids of its own, Standard Webhooks signatures."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import Any, ClassVar

import httpx

from jobhook._models import JobUpdate
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
    now_iso,
    origin,
    segments,
)
from jobhook.testing._wires._cog import EVENTS, event_of, prediction_fields
from jobhook.testing._wires._jobhook import StandardWebhooksSigner

__all__ = ["ReplicateWire"]

# Sent whatever the filter says (Replicate: "start and completed are always sent").
_ALWAYS = {"start", "completed"}
# Without a filter: "whenever there are new outputs or the prediction has finished".
_DEFAULT_EVENTS = {"start", "output", "completed"}


def _problem(status: int, title: str, detail: str) -> httpx.Response:
    return json_response(status, {"title": title, "detail": detail, "status": status})


def _prediction_id() -> str:
    # Replicate's ids: 26 lower-case base32 characters.
    return base64.b32encode(os.urandom(20)).decode().lower()[:26]


class ReplicateWire(Wire):
    name = "replicate"
    not_found: ClassVar[Any] = {"title": "Not found", "detail": "Not found.", "status": 404}

    def __init__(
        self, secret: str | bytes, *, api_key: str | None, job_id_from_url: JobIdFromUrl
    ) -> None:
        super().__init__(api_key=api_key, job_id_from_url=job_id_from_url)
        self.signer = StandardWebhooksSigner(secret)

    def route(self, request: httpx.Request) -> Route:
        path, method = segments(request), request.method
        if "predictions" not in path:
            return json_response(404, self.not_found)
        at = len(path) - 1 - path[::-1].index("predictions")
        rest = path[at + 1 :]
        # POST …/models/{owner}/{name}/predictions, or …/predictions with a version
        official = at >= 3 and path[at - 3] == "models"
        if not rest and method == "POST" and (official or "models" not in path):
            return ("submit", "")
        if len(rest) == 1 and method == "GET":
            return ("status", rest[0])
        if len(rest) == 2 and rest[1] == "cancel" and method == "POST":
            return ("cancel", rest[0])
        return json_response(404, self.not_found)

    def authorize(self, request: httpx.Request) -> httpx.Response | None:
        credential = self._credential(request, "Bearer") or self._credential(request, "Token")
        if self._key_refused(credential):
            return _problem(401, "Unauthenticated", "You did not pass a valid authentication token")
        return None

    def intake(self, request: httpx.Request) -> Intake | httpx.Response:
        path = segments(request)
        try:
            data = json_body(request)
        except ValueError:
            return _problem(400, "Bad request", "the body is not JSON")
        if not isinstance(data, dict):
            return _problem(400, "Bad request", "the body is not a JSON object")
        if not isinstance(data.get("input"), dict):
            return _problem(422, "Input validation failed", "input is required: an object")
        at = len(path) - 1 - path[::-1].index("predictions")
        if at >= 3 and path[at - 3] == "models":
            model, version = "/".join(path[at - 2 : at]), None
        else:
            version = data.get("version")
            if not isinstance(version, str) or not version:
                return _problem(422, "Input validation failed", "version is required")
            model = version.split(":")[0] if ":" in version else "fake-owner/fake-model"
        webhook = http_url(data.get("webhook"))
        if webhook is None:
            detail = "the fake calls back: webhook must be an http(s) URL"
            return _problem(422, "Input validation failed", detail)
        events = data.get("webhook_events_filter")
        if events is not None and (not isinstance(events, list) or not set(events) <= set(EVENTS)):
            detail = f"webhook_events_filter must be some of {', '.join(EVENTS)}"
            return _problem(422, "Input validation failed", detail)
        remote_id = _prediction_id()
        submission = Submission(
            job_id=self.job_id_from_url(webhook) or remote_id,
            callback_url=webhook,
            kind=None,
            input=data["input"],
            idempotency_key=request.headers.get("idempotency-key"),
            headers=dict(request.headers),
        )
        prefix = path[: at - 3] if version is None else path[:at]
        meta = {
            "model": model,
            "version": version or hashlib.sha256(model.encode()).hexdigest(),
            "events": (set(events) | _ALWAYS) if events is not None else _DEFAULT_EVENTS,
            "created_at": now_iso(),
            "base": origin(request, prefix),
        }
        return Intake(submission, remote_id, meta)

    def prediction(self, job: FakeJob, update: JobUpdate | None, upto: int) -> dict[str, Any]:
        meta, url = job.meta, f"{job.meta['base']}/predictions/{job.wire_id}"
        fields = prediction_fields(job, update, upto, aborted=True)
        terminal = update is not None and update.status.terminal
        return {
            "id": job.wire_id,
            "model": meta["model"],
            "version": meta["version"],
            "input": job.submission.input,
            "output": None,
            "error": None,
            "data_removed": False,
            "source": "api",
            **fields,
            "created_at": meta["created_at"],
            "started_at": meta["created_at"] if fields["status"] != "starting" else None,
            "completed_at": now_iso() if terminal else None,
            "urls": {
                "get": url,
                "cancel": f"{url}/cancel",
                "stream": f"https://stream.replicate.invalid/v1/files/{job.wire_id}",
                "web": f"https://replicate.com/p/{job.wire_id}",
            },
        }

    def current(self, job: FakeJob) -> dict[str, Any]:
        return self.prediction(job, job.state(), job.reached)

    def accepted(self, job: FakeJob, *, new: bool) -> httpx.Response:
        return json_response(201, self.current(job))

    def status(self, job: FakeJob | None, request: httpx.Request) -> httpx.Response:
        if job is None:
            return json_response(404, self.not_found)
        return json_response(200, self.current(job))

    def cancel(self, job: FakeJob | None, *, canceled: bool) -> httpx.Response:
        if job is None:
            return json_response(404, self.not_found)
        return json_response(200, self.current(job))  # canceled now, or as it ended

    def callback(self, job: FakeJob, index: int, update: JobUpdate) -> dict[str, Any] | None:
        if event_of(job, index, update) not in job.meta["events"]:
            return None
        return self.prediction(job, update, job.upto(index))

    def headers(self, job: FakeJob, body: bytes, msg_id: str) -> dict[str, str]:
        return self.signer.sign(body, msg_id)
