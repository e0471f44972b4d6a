"""Bounded body reads for the framework adapters.

A handler refuses a body over ``max_body_bytes`` (413), so an adapter never needs more
than ``max_body_bytes + 1`` bytes, whatever the framing: a ``Content-Length`` that is
absent (chunked), too big, or lying. Both readers stop there.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Callable

__all__ = ["aread_limited", "read_limited"]

CHUNK_BYTES = 65_536


def read_limited(read: Callable[[int], bytes], limit: int) -> bytes:
    """Call ``read(n)`` until EOF or ``limit + 1`` bytes; never asks for a byte more.

    ``read`` may return short reads before EOF (sockets, chunked input); only an empty
    read ends the body. Errors of ``read`` propagate.
    """
    chunks: list[bytes] = []
    wanted = limit + 1
    while wanted > 0:
        chunk = read(min(CHUNK_BYTES, wanted))
        if not chunk:
            break
        chunk = chunk[:wanted]  # a stream that returned more than it was asked for
        chunks.append(chunk)
        wanted -= len(chunk)
    return b"".join(chunks)


async def aread_limited(chunks: AsyncIterable[bytes], limit: int) -> bytes:
    """Collect ``chunks`` until their end or past ``limit``; at most ``limit + 1`` bytes.

    The sender of the chunks (an ASGI server) picks their sizes, so the last one
    received may go past the limit by up to one chunk; the rest is never pulled.
    """
    kept: list[bytes] = []
    size = 0
    async for chunk in chunks:
        kept.append(chunk)
        size += len(chunk)
        if size > limit:
            break
    return b"".join(kept)[: limit + 1]
