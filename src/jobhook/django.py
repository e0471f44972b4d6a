"""Django adapter: a CSRF-exempt, POST-only view over a `WebhookHandler`.

```python
path("webhooks/jobhook/<str:job_id>", webhook_view(handler))
```

The view is async when the handler's store is async, sync otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from jobhook._webhook import WebhookHandler, WebhookResponse

__all__ = ["webhook_view"]


def _body(request: HttpRequest, limit: int) -> bytes:
    length = request.META.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > limit:
        # Enough to be refused (413) without buffering an oversized body.
        head: bytes = request.read(limit + 1)
        return head
    body: bytes = request.body
    return body


def _response(answer: WebhookResponse) -> HttpResponse:
    response = HttpResponse(answer.body, status=answer.status)
    for name, value in answer.headers.items():
        response[name] = value
    return response


def webhook_view(handler: WebhookHandler) -> Callable[..., Any]:
    """A view passing the raw body, the route's ``job_id`` and ``?token=``."""
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
