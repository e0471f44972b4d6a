"""FastAPI and Starlette adapter: an async endpoint over a `WebhookHandler`.

```python
app.post("/webhooks/jobhook/{job_id}")(webhook_endpoint(handler))  # FastAPI
Route("/webhooks/jobhook/{job_id}", webhook_endpoint(handler), methods=["POST"])  # Starlette
```

Works with an async store and with a sync one, whose calls run in a worker thread.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from jobhook._webhook import WebhookHandler

__all__ = ["webhook_endpoint"]


async def _read_body(request: Request, limit: int) -> bytes:
    # Stop one byte past the limit: enough for a 413 without buffering the rest.
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(chunks)


def webhook_endpoint(handler: WebhookHandler) -> Callable[[Request], Awaitable[Response]]:
    """An endpoint passing the raw body, the ``job_id`` path parameter and ``?token=``."""

    async def jobhook_webhook(request: Request) -> Response:
        body = await _read_body(request, handler.max_body_bytes)
        answer = await handler.ahandle(
            request.headers,
            body,
            job_id=request.path_params.get("job_id"),
            token=request.query_params.get("token"),
        )
        return Response(answer.body, status_code=answer.status, headers=answer.headers)

    return jobhook_webhook
