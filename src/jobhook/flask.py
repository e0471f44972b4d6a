"""Flask adapter: a view that hands the raw request to a `WebhookHandler`.

```python
app.add_url_rule(
    "/webhooks/jobhook/<job_id>", view_func=webhook_view(handler), methods=["POST"]
)
```
"""

from __future__ import annotations

from collections.abc import Callable

try:
    from flask import Response, request
except ModuleNotFoundError as exc:  # Flask, or one of its own dependencies, is missing
    raise ModuleNotFoundError(
        "jobhook.flask needs Flask: pip install 'jobhook[flask]'", name=exc.name
    ) from exc

from jobhook._body import read_limited
from jobhook._webhook import WebhookHandler

__all__ = ["webhook_view"]


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
