"""FastAPI and Starlette adapter: an async endpoint over a `WebhookHandler`.

```python
app.post("/webhooks/jobhook/{job_id}")(webhook_endpoint(handler))  # FastAPI
Route("/webhooks/jobhook/{job_id}", webhook_endpoint(handler), methods=["POST"])  # Starlette
```

Works with an async store and with a sync one, whose calls run in a worker thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

try:
    from starlette.requests import Request
    from starlette.responses import Response
except ModuleNotFoundError as exc:  # Starlette, or one of its own dependencies, is missing
    raise ModuleNotFoundError(
        "jobhook.fastapi needs FastAPI or Starlette: pip install 'jobhook[fastapi]'",
        name=exc.name,
    ) from exc

from jobhook._body import aread_limited
from jobhook._webhook import WebhookHandler

__all__ = ["webhook_endpoint"]


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
