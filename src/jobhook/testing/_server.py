"""The fake generator over real loopback HTTP, on the standard library's server."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from jobhook.testing._fake import FakeGenerator

__all__ = ["serve"]

log = logging.getLogger("jobhook.testing")

# Hop-by-hop and framing headers are the server's to write, not the fake's answer's.
_SKIP_HEADERS = {"content-length", "transfer-encoding", "connection", "content-encoding"}


def _handler_class(fake: FakeGenerator) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _dispatch(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            host = self.headers.get("host") or "127.0.0.1"
            request = httpx.Request(
                self.command,
                f"http://{host}{self.path}",
                headers=list(self.headers.items()),
                content=body,
            )
            try:
                response = fake.handle_request(request)
            except Exception:
                log.exception("the fake generator failed on %s %s", self.command, self.path)
                response = httpx.Response(500, json={"error": "the fake generator failed"})
            content = response.content
            self.send_response(response.status_code)
            for name, value in response.headers.items():
                if name.lower() not in _SKIP_HEADERS:
                    self.send_header(name, value)
            self.send_header("content-length", str(len(content)))
            self.end_headers()
            self.wfile.write(content)

        do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

        def log_message(self, format: str, *args: object) -> None:
            log.debug("fake generator: " + format, *args)

    return Handler


@contextmanager
def serve(fake: FakeGenerator, host: str, port: int) -> Iterator[str]:
    """Serve ``fake`` on ``host:port`` in a thread while the block runs; yield its URL."""
    server = ThreadingHTTPServer((host, port), _handler_class(fake))
    server.daemon_threads = True
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},  # so that leaving the block returns at once
        name="fake-generator-http",
    )
    thread.daemon = True
    thread.start()
    bound_host, bound_port = server.server_address[:2]
    try:
        yield f"http://{bound_host!s}:{bound_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
