"""Flask adapter: a view that hands the raw request to a `WebhookHandler`.

```python
app.add_url_rule(
    "/webhooks/jobhook/<job_id>", view_func=webhook_view(handler), methods=["POST"]
)
```
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Response, request

from jobhook._webhook import WebhookHandler

__all__ = ["webhook_view"]


def webhook_view(handler: WebhookHandler) -> Callable[..., Response]:
    """A Flask view passing the raw body, the route's ``job_id`` and ``?token=``.

    Raises `TypeError` for a handler over an async store (Flask views are sync).
    """
    if handler.async_store:
        raise TypeError("Flask views are sync: build the WebhookHandler over a sync store")

    def jobhook_webhook(job_id: str | None = None) -> Response:
        limit = handler.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            # Enough to be refused (413) without buffering an oversized body.
            body = request.stream.read(limit + 1)
        else:
            body = request.get_data()
        answer = handler.handle(
            request.headers, body, job_id=job_id, token=request.args.get("token")
        )
        return Response(answer.body, status=answer.status, headers=answer.headers)

    return jobhook_webhook
