"""Django: a CSRF-exempt, POST-only view over a `WebhookHandler`, a GET view streaming
a job's events as Server-Sent Events, and a Django app.

```python
path("webhooks/jobhook/<str:job_id>", webhook_view(handler))
path("jobs/<str:job_id>/events", events_view(store, authorize=can_see))
```

Each view is async when its store is async, sync otherwise.

With ``"jobhook.django"`` in ``INSTALLED_APPS``, jobhook keeps its jobs in the
project's own database through `DjangoJobStore` (models, migrations, admin and
management commands), and ``webhook_view()`` without a handler builds one from the
``JOBHOOK`` setting. `DjangoJobStore` loads when first used, once Django is set up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

try:
    from django.core.handlers.asgi import ASGIRequest
    from django.core.handlers.wsgi import WSGIRequest
    from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
    from django.views.decorators.csrf import csrf_exempt
    from django.views.decorators.http import require_GET, require_POST
except ModuleNotFoundError as exc:  # Django, or one of its own dependencies, is missing
    raise ModuleNotFoundError(
        "jobhook.django needs Django: pip install 'jobhook[django]'", name=exc.name
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
from jobhook._streams import aopen_stream, open_stream, open_threaded_stream
from jobhook._webhook import WebhookHandler, WebhookResponse
from jobhook.live import AsyncWatcher, Watcher, is_async_store, shared_watcher

if TYPE_CHECKING:
    from jobhook.django._store import DjangoJobStore

__all__ = ["DjangoJobStore", "events_view", "webhook_view"]


def __getattr__(name: str) -> Any:
    # The store imports the models, which need Django's app registry to be ready.
    if name == "DjangoJobStore":
        from jobhook.django._store import DjangoJobStore

        return DjangoJobStore
    raise AttributeError(f"module 'jobhook.django' has no attribute {name!r}")


def _body(request: HttpRequest, limit: int) -> bytes:
    # Never `request.body`: it refuses bodies over DATA_UPLOAD_MAX_MEMORY_SIZE with
    # Django's HTML 400, while the handler's own limit (and its JSON 413) should decide.
    read: Callable[[int], bytes] = request.read
    if (
        isinstance(request, WSGIRequest)
        and not request.META.get("CONTENT_LENGTH")
        and request.environ.get("wsgi.input_terminated")
    ):
        # A chunked delivery: WSGIRequest caps a stream without Content-Length at 0
        # bytes, but a server that sets wsgi.input_terminated (gunicorn) ends its
        # input at the end of the body, so it is safe to read, bounded, directly.
        read = request.environ["wsgi.input"].read
    return read_limited(read, limit)


def _response(answer: WebhookResponse) -> HttpResponse:
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return response


def webhook_view(handler: WebhookHandler | None = None) -> Callable[..., Any]:
    """A view passing the raw body, the route's ``job_id`` and ``?token=``.

    It reads at most ``handler.max_body_bytes + 1`` bytes of the body, chunked or not.
    Without ``handler``, one is built from the ``JOBHOOK`` setting over a
    `DjangoJobStore` (see `jobhook.django.conf.handler`).
    """
    if handler is None:
        from jobhook.django.conf import handler as from_settings

        handler = from_settings()
    view: Callable[..., Any]
    if handler.async_store:

        async def async_view(request: HttpRequest, job_id: str | None = None) -> HttpResponse:
            body = _body(request, handler.max_body_bytes)
            token = request.GET.get("token")
            answer = await handler.ahandle(request.headers, body, job_id=job_id, token=token)
            return _response(answer)

        view = async_view
    else:

        def sync_view(request: HttpRequest, job_id: str | None = None) -> HttpResponse:
            body = _body(request, handler.max_body_bytes)
            token = request.GET.get("token")
            answer = handler.handle(request.headers, body, job_id=job_id, token=token)
            return _response(answer)

        view = sync_view
    # Webhook senders have no CSRF token; the signature or callback token authenticates.
    exempt: Callable[..., Any] = csrf_exempt(require_POST(view))
    return exempt


def _refusal(status: int) -> HttpResponse:
    body, headers = refusal(status)
    response = HttpResponse(body, status=status)
    for name, value in headers.items():
        response[name] = value
    return response


def _last_event_id(request: HttpRequest) -> int | None:
    return parse_last_event_id(
        request.headers.get("Last-Event-ID"), request.GET.get(LAST_EVENT_ID_PARAMETER)
    )


def _parameter(by_owner: bool) -> str:
    return "owner_id" if by_owner else "job_id"


def _follow(route: dict[str, str], by_owner: bool) -> Follow | None:
    """What the route's parameters say to follow (None: the parameter is missing)."""
    subject = route.get(_parameter(by_owner))
    if subject is None:
        return None
    return Follow(owner_id=subject) if by_owner else Follow(job_id=subject)


def _streaming(stream: Any) -> StreamingHttpResponse:
    response = StreamingHttpResponse(stream, content_type=SSE_MEDIA_TYPE)
    for name, value in SSE_HEADERS.items():
        response[name] = value
    return response


def events_view(
    store: Any,
    *,
    authorize: Callable[[HttpRequest, str], bool],
    heartbeat: float = 15.0,
    retry: float | None = 3.0,
    end_on_terminal: bool = True,
    by_owner: bool = False,
    watcher: Watcher | AsyncWatcher | None = None,
) -> Callable[..., Any]:
    """A GET view streaming the route's ``job_id``'s events as Server-Sent Events
    (with ``by_owner=True``, every job's of the route's ``owner_id``).

    ``authorize(request, job_id)`` (``(request, owner_id)`` by owner) decides first:
    False answers 403 and streams nothing. Then 404 for an unknown job, 204 when
    ``Last-Event-ID`` (or ``?last_event_id=``) already names the job's last event, 503
    when the store is unavailable. Under WSGI each open stream holds a worker thread;
    under ASGI a stream is a task (a sync store is then read in worker threads), and a
    client that disconnects ends it. The view is async when the store is.
    """
    options = StreamOptions(heartbeat=heartbeat, retry=retry, end_on_terminal=end_on_terminal)
    live = watcher if watcher is not None else shared_watcher(store)
    view: Callable[..., Any]
    if is_async_store(store):

        async def async_view(request: HttpRequest, **route: str) -> HttpResponseBase:
            follow = _follow(route, by_owner)
            if follow is None:
                return _refusal(404)
            if not authorize(request, route[_parameter(by_owner)]):
                return _refusal(403)
            last = _last_event_id(request)
            status, stream = await aopen_stream(store, live, follow, last, options)
            return _refusal(status) if stream is None else _streaming(stream)

        view = async_view
    else:
        if not isinstance(live, Watcher):
            raise TypeError("a sync store needs a sync Watcher")
        sync_live = live

        def sync_view(request: HttpRequest, **route: str) -> HttpResponseBase:
            follow = _follow(route, by_owner)
            if follow is None:
                return _refusal(404)
            if not authorize(request, route[_parameter(by_owner)]):
                return _refusal(403)
            last = _last_event_id(request)
            stream: Any
            if isinstance(request, ASGIRequest):
                # Django under ASGI would read a sync iterator to its end before
                # sending anything: stream an async one, reading the store in threads.
                status, stream = open_threaded_stream(store, sync_live, follow, last, options)
            else:
                status, stream = open_stream(store, sync_live, follow, last, options)
            return _refusal(status) if stream is None else _streaming(stream)

        view = sync_view
    get_only: Callable[..., Any] = require_GET(view)
    return get_only
