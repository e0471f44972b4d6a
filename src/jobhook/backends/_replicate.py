"""Replicate's hosted API: predictions with server-assigned ids, signed webhooks."""

from __future__ import annotations

from collections.abc import Sequence

from jobhook._convert import dumps
from jobhook._models import Job
from jobhook._payloads import ParsedPayload, parse_body, parse_replicate
from jobhook.backends._base import (
    CallbackAuth,
    HostedProfile,
    Request,
    check_base_url,
    check_key,
)
from jobhook.exceptions import ValidationError

__all__ = ["Replicate"]

EVENTS = ("start", "output", "logs", "completed")


class Replicate(HostedProfile):
    """Replicate's HTTP API (``Authorization: Bearer <token>``).

    Submits ``POST {base_url}/models/{model}/predictions`` (an official model) or
    ``POST {base_url}/predictions`` with ``version`` (any version), with ``input``,
    ``webhook`` and ``webhook_events_filter``. The prediction id Replicate assigns is
    the job's ``remote_id``; status is ``GET /predictions/{remote_id}``, cancel ``POST
    /predictions/{remote_id}/cancel``. Statuses ``starting``/``processing`` are
    running, ``succeeded``, ``failed``, ``canceled``, and ``aborted`` (stopped before
    it ran) is failed with code ``aborted``.

    Webhooks are signed with Standard Webhooks: give the handler Replicate's webhook
    signing secret (``GET /v1/webhooks/default/secret``) as ``secret=`` and a
    ``token_secret=``, since a prediction names no job id (the callback URL does).

    Not idempotent: Replicate takes no client key, so a submit that may have arrived
    is never sent again; the job stays ``pending`` for the reconciler, which can only
    poll it once a remote id is known, or time it out.
    """

    name = "replicate"
    callbacks_name_job = False
    idempotent_submit = False
    callback_auth: CallbackAuth = "standard-webhooks"

    def __init__(
        self,
        token: str,
        *,
        model: str | None = None,
        version: str | None = None,
        base_url: str = "https://api.replicate.com/v1",
        events: Sequence[str] = EVENTS,
    ) -> None:
        check_key(token, "Replicate's API token")
        if model is None and version is None:
            raise ValidationError("Replicate needs model='owner/name' or version='…'")
        if model is not None and (not isinstance(model, str) or model.count("/") != 1):
            raise ValidationError(f"model must be 'owner/name', got {model!r}")
        unknown = set(events) - set(EVENTS)
        if unknown or not events:
            raise ValidationError(f"events must be some of {', '.join(EVENTS)}, got {events!r}")
        self._token = token
        self.model = model
        self.version = version
        self.base_url = check_base_url(base_url)
        self.events = tuple(events)

    def __repr__(self) -> str:
        return f"Replicate(model={self.model!r}, version={self.version!r})"  # never the token

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self._token}"}

    def submit_request(self, job: Job, callback_url: str) -> Request:
        body: dict[str, object] = {
            "input": job.input if job.input is not None else {},
            "webhook": callback_url,
            "webhook_events_filter": list(self.events),
        }
        if self.version is not None:
            body["version"] = self.version
            url = f"{self.base_url}/predictions"
        else:
            assert self.model is not None
            url = f"{self.base_url}/models/{self.model}/predictions"
        return Request("POST", url, self.headers, dumps(body, field="input").encode())

    def status_request(self, job: Job) -> Request | None:
        return self.by_remote_id(job, "GET", f"{self.base_url}/predictions/{{remote_id}}")

    def cancel_request(self, job: Job) -> Request | None:
        url = f"{self.base_url}/predictions/{{remote_id}}/cancel"
        return self.by_remote_id(job, "POST", url)

    def parse_callback(self, body: bytes) -> ParsedPayload:
        return parse_replicate(parse_body(body))
