"""FastAPI and Starlette adapter: an async endpoint over a `WebhookHandler`, and one
that streams a job's events as Server-Sent Events.

```python
app.post("/webhooks/jobhook/{job_id}")(webhook_endpoint(handler))  # FastAPI
Route("/webhooks/jobhook/{job_id}", webhook_endpoint(handler), methods=["POST"])  # Starlette
app.get("/jobs/{job_id}/events")(events_endpoint(store, authorize=can_see))
```

Works with an async store and with a sync one, whose calls run in a worker thread.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

try:
    from starlette.requests import Request
    from starlette.responses import Response, StreamingResponse
except ModuleNotFoundError as exc:  # Starlette, or one of its own dependencies, is missing
    raise ModuleNotFoundError(
        "jobhook.fastapi needs FastAPI or Starlette: pip install 'jobhook[fastapi]'",
        name=exc.name,
    ) from exc

from jobhook._body import aread_limited
from jobhook._sse import (
    LAST_EVENT_ID_PARAMETER,
    SSE_HEADERS,
    SSE_MEDIA_TYPE,
    Follow,
    StreamOptions,
    parse_last_event_id,
    refusal,
)
from jobhook._streams import aopen_stream
from jobhook._webhook import WebhookHandler
from jobhook.live import AsyncWatcher, Watcher, shared_watcher

__all__ = ["events_endpoint", "webhook_endpoint"]


def webhook_endpoint(handler: WebhookHandler) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint passing the raw body, the ``job_id`` path parameter and ``?token=``.

    It stops reading the body once past ``handler.max_body_bytes``, chunked or not.
    """

    async def jobhook_webhook(request: Request) -> Response:
        body = await aread_limited(request.stream(), handler.max_body_bytes)
        answer = await handler.ahandle(
            request.headers,
            body,
            job_id=request.path_params.get("job_id"),
            token=request.query_params.get("token"),
        )
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    return jobhook_webhook


def events_endpoint(
    store: Any,
    *,
    authorize: Callable[[Request, str], bool | Awaitable[bool]],
    heartbeat: float = 15.0,
    retry: float | None = 3.0,
    end_on_terminal: bool = True,
    by_owner: bool = False,
    watcher: Watcher | AsyncWatcher | None = None,
) -> Callable[[Request], Awaitable[Response]]:
    """A GET endpoint streaming the ``job_id`` path parameter's events as Server-Sent
    Events (with ``by_owner=True``, every job's of the ``owner_id`` path parameter),
    over an async store or a sync one (read in worker threads).

    ``authorize(request, job_id)`` (``(request, owner_id)`` by owner; a function or a
    coroutine function) decides first: False answers 403 and streams nothing. Then 404
    for an unknown job, 204 when ``Last-Event-ID`` (or ``?last_event_id=``) already
    names the job's last event, 503 when the store is unavailable. A client that
    disconnects ends its stream.
    """
    options = StreamOptions(heartbeat=heartbeat, retry=retry, end_on_terminal=end_on_terminal)
    live = watcher if watcher is not None else shared_watcher(store)

    async def jobhook_events(request: Request) -> Response:
        subject = request.path_params.get("owner_id" if by_owner else "job_id")
        if subject is None:  # a route without the parameter
            return _refusal(404)
        allowed = authorize(request, subject)
        if inspect.isawaitable(allowed):
            allowed = await allowed
        if not allowed:
            return _refusal(403)
        last_event_id = parse_last_event_id(
            request.headers.get("last-event-id"),
            request.query_params.get(LAST_EVENT_ID_PARAMETER),
        )
        follow = Follow(owner_id=subject) if by_owner else Follow(job_id=subject)
        status, stream = await aopen_stream(store, live, follow, last_event_id, options)
        if stream is None:
            return _refusal(status)
        return StreamingResponse(stream, media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)

    return jobhook_events


def _refusal(status: int) -> Response:
    body, headers = refusal(status)
    return Response(body, status_code=status, headers=headers)
