"""Replicate's Cog: a model server run by the app itself (``cog.server.http``)."""

from __future__ import annotations

from collections.abc import Mapping

from jobhook._convert import dumps
from jobhook._models import Job, JobUpdate
from jobhook._payloads import ParsedPayload, parse_body, parse_cog
from jobhook.backends._base import (
    RETRYABLE_STATUSES,
    CallbackAuth,
    ProfileBase,
    Request,
    SubmitAnswer,
    check_base_url,
    json_object,
    optional_str,
    path_part,
)
from jobhook.exceptions import PayloadError

__all__ = ["Cog"]

#: Which of Cog's webhook events to ask for: every one, so progress shows as it comes.
_EVENTS = ("start", "output", "logs", "completed")


class Cog(ProfileBase):
    """A Cog model server: ``PUT {base_url}/predictions/{job_id}`` with ``Prefer:
    respond-async`` and ``{"input", "webhook", "webhook_events_filter"}``.

    - The prediction id is the job id, so a repeated submit is the same prediction
      while it runs (`idempotent_submit`) and callbacks name the job.
    - Callbacks are prediction objects, unsigned: the handler needs ``token_secret``
      (the callback URL carries the job's token). Cog sends no delivery id; the
      handler derives one from the body. Outputs without ``--upload-url`` are inline
      ``data:`` URIs, so callbacks may be far over 1 MiB: `max_callback_bytes`.
    - ``409 At capacity`` means busy (every slot taken): retried, not a refusal.
    - There is no status endpoint (`refresh` is not available); cancel is ``POST
      /predictions/{job_id}/cancel``, answered ``200 {}``: only requested, Cog's
      ``canceled`` webhook says how it ended (a prediction finishing at that moment
      still ends ``succeeded``). A Cog that stays busy past the retries leaves the job
      ``pending`` (not failed): the reconciler submits it again, under the same id.
    - A repeated submit is the same prediction only while it runs: Cog forgets
      finished predictions and runs a repeat again.
    """

    name = "cog"
    idempotent_submit = True
    callback_auth: CallbackAuth = "token"
    #: The callback body size the handler accepts by default for this backend.
    max_callback_bytes = 64 * 1024 * 1024
    #: `GeneratorClient.refresh` is not available: Cog keeps no finished predictions.
    has_status_endpoint = False
    _retryable = RETRYABLE_STATUSES | {409}
    #: Answers that mean "every slot is taken": after the retries the job stays pending.
    busy_statuses = frozenset({409})

    def __init__(self, base_url: str, *, headers: Mapping[str, str] | None = None) -> None:
        self.base_url = check_base_url(base_url)
        self.headers = dict(headers or {})  # e.g. an auth proxy's header

    def __repr__(self) -> str:
        return f"Cog({self.base_url!r})"

    def _url(self, job: Job, suffix: str = "") -> str:
        return f"{self.base_url}/predictions/{path_part(job.id)}{suffix}"

    def submit_request(self, job: Job, callback_url: str) -> Request:
        body = {
            "id": job.id,
            "input": job.input if job.input is not None else {},
            "webhook": callback_url,
            "webhook_events_filter": list(_EVENTS),
        }
        headers = {**self.headers, "content-type": "application/json", "prefer": "respond-async"}
        return Request("PUT", self._url(job), headers, dumps(body, field="input").encode())

    def read_submit(self, job: Job, status: int, body: bytes) -> SubmitAnswer:
        try:
            answer = json_object(body, "Cog's answer")
        except PayloadError:
            return SubmitAnswer()
        answered = optional_str(answer, "id")
        if answered is not None and answered != job.id:
            return SubmitAnswer(other_job_id=answered)
        return SubmitAnswer()

    def cancel_request(self, job: Job) -> Request | None:
        return Request("POST", self._url(job, "/cancel"), dict(self.headers))

    def read_cancel(self, job: Job, body: bytes) -> JobUpdate | None:
        return None  # 200 {} means requested: the canceled webhook tells the end

    def parse_callback(self, body: bytes) -> ParsedPayload:
        return parse_cog(parse_body(body))
