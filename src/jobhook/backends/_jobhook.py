"""jobhook's own contract: the default backend profile."""

from __future__ import annotations

from collections.abc import Mapping

from jobhook._convert import dumps
from jobhook._models import Job, JobStatus, JobUpdate
from jobhook._payloads import PayloadFormat, payload_parser
from jobhook.backends._base import (
    CallbackAuth,
    ProfileBase,
    Request,
    SubmitAnswer,
    check_base_url,
    json_object,
    optional_str,
    path_part,
)
from jobhook.exceptions import PayloadError, ValidationError

__all__ = ["Jobhook"]


def _template(name: str, value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValidationError(f"{name} must be a string, got {value!r}")
    return value


class Jobhook(ProfileBase):
    """A backend that follows jobhook's contract (see "The backend contract").

    ``POST {base_url}{submit_path}`` with ``Idempotency-Key: <job_id>`` and
    ``{"job_id", "callback_url", "kind", "input"}``; the backend keeps the job id, so a
    repeated submit is the same job (`idempotent_submit`). ``status_path`` and
    ``cancel_path`` are templates with ``{job_id}`` or ``{remote_id}`` (absolute URLs
    too) that enable `GeneratorClient.refresh` and `cancel`; their answers, like the
    callbacks, are read with ``payload_format``. Callbacks are signed with Standard
    Webhooks (the handler's ``secret``) or carry the per-job token.
    """

    name = "jobhook"
    idempotent_submit = True
    # A signed payload may name only the remote id the submit answer gave.
    callbacks_by_remote_id = True
    callback_auth: CallbackAuth = "standard-webhooks"

    def __init__(
        self,
        base_url: str,
        *,
        submit_path: str = "/jobs",
        status_path: str | None = None,
        cancel_path: str | None = None,
        headers: Mapping[str, str] | None = None,
        payload_format: PayloadFormat = "jobhook",
    ) -> None:
        self.base_url = check_base_url(base_url)
        self.submit_path = _template("submit_path", submit_path) or "/"
        self.status_path = _template("status_path", status_path)
        self.cancel_path = _template("cancel_path", cancel_path)
        self.headers = dict(headers or {})
        self._parse = payload_parser(payload_format)

    def __repr__(self) -> str:
        return f"Jobhook({self.base_url!r})"

    def url_for(self, path: str, job: Job | None = None) -> str | None:
        """``path`` with the job's ids filled in, under ``base_url``; ``None`` when it
        needs a ``{remote_id}`` the job does not have yet."""
        if job is not None:
            path = path.replace("{job_id}", path_part(job.id))
            if "{remote_id}" in path:
                if job.remote_id is None:
                    return None
                path = path.replace("{remote_id}", path_part(job.remote_id))
        if path.startswith(("http://", "https://")):
            return path
        return f"{self.base_url}/{path.lstrip('/')}"

    def submit_request(self, job: Job, callback_url: str) -> Request:
        body = {
            "job_id": job.id,
            "callback_url": callback_url,
            "kind": job.kind,
            "input": job.input,
        }
        headers = {**self.headers, "content-type": "application/json", "idempotency-key": job.id}
        url = self.url_for(self.submit_path)
        assert url is not None
        return Request("POST", url, headers, dumps(body, field="input").encode())

    def read_submit(self, job: Job, status: int, body: bytes) -> SubmitAnswer:
        try:
            answer = json_object(body, "the submit answer")
        except PayloadError:
            return SubmitAnswer()  # a bare 2xx is an acceptance too
        answered = optional_str(answer, "job_id")
        if answered is not None and answered != job.id:
            return SubmitAnswer(other_job_id=answered)
        remote_id = optional_str(answer, "remote_id")
        if remote_id is None:
            given = optional_str(answer, "id")
            remote_id = given if given != job.id else None
        return SubmitAnswer(remote_id=remote_id)

    def _request(self, method: str, path: str | None, job: Job) -> Request | None:
        url = None if path is None else self.url_for(path, job)
        return None if url is None else Request(method, url, dict(self.headers))

    def status_request(self, job: Job) -> Request | None:
        return self._request("GET", self.status_path, job)

    def cancel_request(self, job: Job) -> Request | None:
        return self._request("POST", self.cancel_path, job)

    def read_cancel(self, job: Job, body: bytes) -> JobUpdate | None:
        # An empty 2xx confirms the cancel.
        if not body.strip():
            return JobUpdate(JobStatus.CANCELED)
        return self.parse_callback(body).update
