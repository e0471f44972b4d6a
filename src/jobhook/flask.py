"""Flask adapter: a view that hands the raw request to a `WebhookHandler`, and a view
that streams a job's events as Server-Sent Events.

```python
app.add_url_rule(
    "/webhooks/jobhook/<job_id>", view_func=webhook_view(handler), methods=["POST"]
)
app.add_url_rule("/jobs/<job_id>/events", view_func=events_view(store, authorize=can_see))
```
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

try:
    from flask import Response, request
except ModuleNotFoundError as exc:  # Flask, or one of its own dependencies, is missing
    raise ModuleNotFoundError(
        "jobhook.flask needs Flask: pip install 'jobhook[flask]'", name=exc.name
    ) from exc

from jobhook._body import read_limited
from jobhook._sse import (
    LAST_EVENT_ID_PARAMETER,
    SSE_HEADERS,
    SSE_MEDIA_TYPE,
    Follow,
    StreamOptions,
    parse_last_event_id,
    refusal,
)
from jobhook._streams import open_stream
from jobhook._webhook import WebhookHandler
from jobhook.live import Watcher, is_async_store, shared_watcher

__all__ = ["events_view", "webhook_view"]


def webhook_view(handler: WebhookHandler) -> Callable[..., Response]:
    """A Flask view passing the raw body, the route's ``job_id`` and ``?token=``.

    It reads at most ``handler.max_body_bytes + 1`` bytes of the body, chunked or not.
    Raises `TypeError` for a handler over an async store (Flask views are sync).
    """
    if handler.async_store:
        raise TypeError("Flask views are sync: build the WebhookHandler over a sync store")

    def jobhook_webhook(job_id: str | None = None) -> Response:
        # Werkzeug's stream stops at Content-Length, and is the server's own
        # (chunked) input when the server terminates it; the bound is ours either way.
        body = read_limited(request.stream.read, handler.max_body_bytes)
        answer = handler.handle(
            request.headers, body, job_id=job_id, token=request.args.get("token")
        )
        return Response(answer.body, status=answer.status, headers=answer.headers)

    return jobhook_webhook


def events_view(
    store: Any,
    *,
    authorize: Callable[[Any, str], bool],
    heartbeat: float = 15.0,
    retry: float | None = 3.0,
    end_on_terminal: bool = True,
    by_owner: bool = False,
    watcher: Watcher | None = None,
) -> Callable[..., Response]:
    """A GET view streaming the route's ``job_id``'s events as Server-Sent Events
    (with ``by_owner=True``, every job's of the route's ``owner_id``).

    ``authorize(request, job_id)`` (``(request, owner_id)`` by owner) decides first:
    False answers 403 and streams nothing. Then 404 for an unknown job, 204 when
    ``Last-Event-ID`` (or ``?last_event_id=``) already names the job's last event, 503
    when the store is unavailable. Each open stream holds a server thread: run a threaded server.
    Raises `TypeError` for an async store (Flask views are sync).
    """
    if is_async_store(store):
        raise TypeError("Flask views are sync: stream the events of a sync store")
    options = StreamOptions(heartbeat=heartbeat, retry=retry, end_on_terminal=end_on_terminal)
    live = watcher if watcher is not None else shared_watcher(store)
    if not isinstance(live, Watcher):
        raise TypeError("a sync store needs a sync Watcher")

    def jobhook_events(job_id: str | None = None, owner_id: str | None = None) -> Response:
        subject = owner_id if by_owner else job_id
        if subject is None:  # a route without the parameter
            return _refusal(404)
        if not authorize(request, subject):
            return _refusal(403)
        last_event_id = parse_last_event_id(
            request.headers.get("Last-Event-ID"), request.args.get(LAST_EVENT_ID_PARAMETER)
        )
        follow = Follow(owner_id=subject) if by_owner else Follow(job_id=subject)
        status, stream = open_stream(store, live, follow, last_event_id, options)
        if stream is None:
            return _refusal(status)
        return Response(stream, status=200, mimetype=SSE_MEDIA_TYPE, headers=SSE_HEADERS)

    return jobhook_events


def _refusal(status: int) -> Response:
    body, headers = refusal(status)
    return Response(body, status=status, headers=headers)
