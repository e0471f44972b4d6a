"""A ``wsgi.input`` that counts what is read from it, and a WSGI environ around it."""

from __future__ import annotations

import sys
from typing import Any


class CountingInput:
    """``size`` bytes (``body``, then ``x`` padding), counting what is read.

    A sized read returns at most ``most`` bytes (less than the tests' 4096-byte limit),
    as a socket may; ``read()`` returns everything left, as a server's input does.
    Nothing is allocated up front, so ``size`` may be 50 MB.
    """

    def __init__(self, body: bytes = b"", *, size: int | None = None, most: int = 1_000):
        self.body = body
        self.size = len(body) if size is None else size
        self.most = most
        self.bytes_read = 0

    def read(self, n: int | None = -1) -> bytes:
        left = self.size - self.bytes_read
        n = left if n is None or n < 0 else min(n, left, self.most)
        start = self.bytes_read
        self.bytes_read += n
        return self.body[start : start + n].ljust(n, b"x")

    def readline(self, n: int | None = -1) -> bytes:
        return self.read(n)


def wsgi_environ(
    path: str,
    stream: CountingInput,
    headers: dict[str, str] | None = None,
    *,
    content_length: int | None = None,
    terminated: bool = True,
) -> dict[str, Any]:
    """A POST as a server passes it; ``terminated`` is what gunicorn says of its input."""
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "SCRIPT_NAME": "",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": stream,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
    }
    if content_length is None:
        environ["HTTP_TRANSFER_ENCODING"] = "chunked"
    else:
        environ["CONTENT_LENGTH"] = str(content_length)
    if terminated:
        environ["wsgi.input_terminated"] = True
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    return environ
