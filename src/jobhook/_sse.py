"""Server-Sent Events of one job: the framing and what one stream has sent. No I/O.

A stream starts with a ``retry:`` hint, then either a snapshot of the job (a fresh
connection: ``event: job`` without an ``id:``, so that a reconnect before any event
gets a fresh snapshot) or the events missed since ``Last-Event-ID``; then every event
as it commits, each with ``id:`` = its outbox id. `StreamState.accept` drops what was
already sent (by event id, and by job version after a snapshot), so the events a
watcher hands over and the events a resume read finds may overlap freely.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

from jobhook._models import Job, JobEvent

#: Headers of every stream: no caching, and no buffering by nginx-like proxies.
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
SSE_MEDIA_TYPE = "text/event-stream"
#: The query parameter read when no ``Last-Event-ID`` header is sent (EventSource
#: cannot set headers on its first connection).
LAST_EVENT_ID_PARAMETER = "last_event_id"
EVENT_NAME = "job"


def _positive(instance: Any, attribute: attrs.Attribute[Any], value: float | None) -> None:
    if value is not None and not value > 0:
        raise ValueError(f"{attribute.name} must be a positive number of seconds, not {value!r}")


@attrs.frozen
class StreamOptions:
    """How a stream behaves: heartbeat interval, reconnect hint, end after terminal.

    ``heartbeat`` (seconds) is how often an idle stream sends a comment line, which
    keeps proxies from closing it and lets a sync server notice a gone client.
    ``retry`` (seconds, or None for the browser's default) is the reconnect delay hint.
    """

    heartbeat: float = attrs.field(default=15.0, validator=_positive)
    retry: float | None = attrs.field(default=3.0, validator=_positive)
    end_on_terminal: bool = True


@attrs.frozen
class Follow:
    """What a stream follows: one job (``job_id``) or every job of one owner
    (``owner_id``)."""

    job_id: str | None = None
    owner_id: str | None = None

    def __attrs_post_init__(self) -> None:
        if (self.job_id is None) == (self.owner_id is None):
            raise ValueError("follow one job_id or one owner_id")

    @property
    def key(self) -> tuple[str, str]:
        """The key a watcher files its subscribers under."""
        if self.job_id is not None:
            return ("job", self.job_id)
        return ("owner", str(self.owner_id))

    def __str__(self) -> str:
        return f"job {self.job_id}" if self.job_id is not None else f"owner {self.owner_id}"


def event_keys(event: JobEvent) -> list[tuple[str, str]]:
    """The keys of the streams an event goes to: its job's, and its owner's."""
    keys = [("job", event.job_id)]
    if event.owner_id is not None:
        keys.append(("owner", event.owner_id))
    return keys


@attrs.frozen
class LiveEvent:
    """An outbox event, with the job as it was after it when that was read (terminal
    events: the output or error the page shows)."""

    event: JobEvent
    job: Job | None = None


def refusal(status: int) -> tuple[bytes, dict[str, str]]:
    """The body and headers of an answer without a stream: 204 (nothing more will
    come: EventSource stops reconnecting), 403, 404 or 503."""
    if status == 204:
        return b"", {}
    error = {403: "forbidden", 404: "not_found"}.get(status, "store_unavailable")
    headers = {"Content-Type": "application/json"}
    if status == 503:
        headers["Retry-After"] = "5"
    return json.dumps({"error": error}).encode(), headers


def parse_last_event_id(header: str | None, query: str | None) -> int | None:
    """The event id to resume after: the header, else the query parameter.

    Anything that is not a non-negative integer means "no id" (a fresh snapshot).
    """
    for value in (header, query):
        if value is not None and value.strip().isdigit():
            return int(value.strip())
    return None


def frame(data: dict[str, Any], *, event: str = EVENT_NAME, event_id: int | None = None) -> bytes:
    """One SSE message: ``id:`` (when given), ``event:`` and one ``data:`` line of JSON."""
    lines = [] if event_id is None else [f"id: {event_id}"]
    # json.dumps escapes newlines, so the data is always one line.
    lines += [f"event: {event}", f"data: {json.dumps(data, separators=(',', ':'))}"]
    return ("\n".join(lines) + "\n\n").encode()


def _error(job: Job | None) -> dict[str, str] | None:
    if job is None or job.error is None:
        return None
    return {"code": job.error.code, "message": job.error.message}


def event_data(live: LiveEvent) -> dict[str, Any]:
    """What a page needs of an event; ``output`` and ``error`` come from its job."""
    event, job = live.event, live.job
    return {
        "event_id": event.id,
        "job_id": event.job_id,
        "status": event.status.value,
        "progress": event.progress,
        "version": event.version,
        "terminal": event.status.terminal,
        "output": job.output if job is not None else None,
        "error": _error(job),
    }


def snapshot_data(job: Job) -> dict[str, Any]:
    """The same fields for the job as it is now (a stream's first message)."""
    return {
        "event_id": None,
        "job_id": job.id,
        "status": job.status.value,
        "progress": job.progress,
        "version": job.version,
        "terminal": job.terminal,
        "output": job.output,
        "error": _error(job),
    }


class StreamState:
    """What one stream has sent and whether it is over. Not thread-safe: one stream.

    A stream of one job also drops events older than what it sent (by job version) and
    ends after the terminal event; a stream of an owner's jobs does neither.
    """

    def __init__(
        self, last_event_id: int | None, options: StreamOptions, *, one_job: bool = True
    ) -> None:
        self.options = options
        self.last_event_id = last_event_id or 0
        self.one_job = one_job
        self._version = 0
        self.done = False

    def start(self) -> bytes:
        """The first bytes: the reconnect hint (a comment when there is none)."""
        if self.options.retry is None:
            return b": stream\n\n"
        return f"retry: {round(self.options.retry * 1000)}\n\n".encode()

    def snapshot(self, job: Job) -> bytes:
        """The job as it is; later events must be newer than its version."""
        self._version = job.version
        self.done = job.terminal and self.options.end_on_terminal
        return frame(snapshot_data(job))

    def accept(self, live: LiveEvent) -> bytes | None:
        """The message for ``live``, or None when it was sent already (or the stream is
        over)."""
        event = live.event
        if self.done or event.id <= self.last_event_id:
            return None
        self.last_event_id = event.id
        if self.one_job:
            if event.version <= self._version:
                return None
            self._version = event.version
            self.done = event.status.terminal and self.options.end_on_terminal
        return frame(event_data(live), event_id=event.id)

    def heartbeat(self) -> bytes:
        """A comment line: ignored by EventSource, seen by every proxy on the way."""
        return b": keep-alive\n\n"
