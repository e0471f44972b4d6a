"""A webhook receiver on the standard library's HTTP server: an adapter in 60 lines.

This is what every framework adapter does, with no framework: take the route's job id,
the ``?token=`` query parameter, the headers and the *raw* body, hand them to
`WebhookHandler.handle`, and answer with its status, headers and body.
"""

from __future__ import annotations

import collections
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from jobhook._webhook import WebhookHandler

__all__ = ["WebhookReceiver"]

ROUTE = "/webhooks/jobhook/"


class WebhookReceiver:
    """Serves ``POST /webhooks/jobhook/<job_id>`` on a loopback port in a thread.

    ``outcomes`` counts the outcome each delivery was answered with (``applied``,
    ``duplicate``, ``stale``, ``not_found``, ...). Thread-safe.
    """

    def __init__(self, handler: WebhookHandler, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.outcomes: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()
        receiver = self

        class _Route(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._serve(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the handler logs one line per decision on the "jobhook" logger

        self.server = ThreadingHTTPServer((host, port), _Route)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},  # so that stop() returns at once
            name="jobhook-receiver",
            daemon=True,
        )

    @property
    def url(self) -> str:
        """The receiver's base URL, ``http://127.0.0.1:<port>``."""
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    @property
    def callback_url(self) -> str:
        """The callback URL template for `GeneratorClient` (``…/{job_id}``)."""
        return f"{self.url}{ROUTE}{{job_id}}"

    def start(self) -> WebhookReceiver:
        """Start serving in a daemon thread; return self."""
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        url = urlsplit(request.path)
        if not url.path.startswith(ROUTE) or len(url.path) == len(ROUTE):
            request.send_error(404, "not a webhook route")
            return
        job_id = unquote(url.path[len(ROUTE) :])
        token = parse_qs(url.query).get("token", [None])[0]
        try:
            length = int(request.headers.get("content-length") or 0)
        except ValueError:
            request.send_error(400, "bad Content-Length")
            return
        # Read at most one byte past the limit: enough for the handler to answer 413.
        body = request.rfile.read(min(max(length, 0), self.handler.max_body_bytes + 1))
        answer = self.handler.handle(request.headers, body, job_id=job_id, token=token)
        outcome = _outcome(answer.body, answer.status)
        with self._lock:
            self.outcomes[outcome] += 1
        request.send_response(answer.status)
        for name, value in answer.headers.items():
            request.send_header(name, value)
        request.send_header("content-length", str(len(answer.body)))
        if length > len(body):
            request.send_header("connection", "close")  # the rest of the body is unread
            request.close_connection = True
        request.end_headers()
        request.wfile.write(answer.body)


def _outcome(body: bytes, status: int) -> str:
    import json

    try:
        value = json.loads(body).get("outcome")
    except (ValueError, AttributeError):
        value = None
    return value if isinstance(value, str) else f"http_{status}"
