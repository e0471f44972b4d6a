"""Django: a CSRF-exempt, POST-only view over a `WebhookHandler`, and a Django app.

```python
path("webhooks/jobhook/<str:job_id>", webhook_view(handler))
```

The view is async when the handler's store is async, sync otherwise.

With ``"jobhook.django"`` in ``INSTALLED_APPS``, jobhook keeps its jobs in the
project's own database through `DjangoJobStore` (models, migrations, admin and
management commands), and ``webhook_view()`` without a handler builds one from the
``JOBHOOK`` setting. `DjangoJobStore` loads when first used, once Django is set up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

try:
    from django.core.handlers.wsgi import WSGIRequest
    from django.http import HttpRequest, HttpResponse
    from django.views.decorators.csrf import csrf_exempt
    from django.views.decorators.http import require_POST
except ModuleNotFoundError as exc:  # Django, or one of its own dependencies, is missing
    raise ModuleNotFoundError(
        "jobhook.django needs Django: pip install 'jobhook[django]'", name=exc.name
    ) from exc

from jobhook._body import read_limited
from jobhook._webhook import WebhookHandler, WebhookResponse

if TYPE_CHECKING:
    from jobhook.django._store import DjangoJobStore

__all__ = ["DjangoJobStore", "webhook_view"]


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
