"""Small, valid PNG pictures made with zlib and struct alone (no imaging library)."""

from __future__ import annotations

import base64
import hashlib
import struct
import zlib

__all__ = ["png_data_uri", "png_for"]


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF)


def png(
    width: int, height: int, pixel: tuple[int, int, int], accent: tuple[int, int, int]
) -> bytes:
    """An RGB PNG of ``width`` x ``height``: a diagonal band of ``accent`` on ``pixel``."""
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type: none
        for x in range(width):
            near = abs(x - y) < max(2, width // 8) or abs(x + y - width) < max(2, width // 8)
            rows.extend(accent if near else pixel)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(bytes(rows), 9))
        + _chunk(b"IEND", b"")
    )


def png_for(name: str, size: int = 64) -> bytes:
    """The fake's picture for ``name`` (a job id and file name): the same name always
    gives the same picture, another name another colour."""
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).digest()
    background = (digest[0], digest[1], digest[2])
    accent = (255 - digest[0], 255 - digest[1], 255 - digest[2])
    return png(size, size, background, accent)


def png_data_uri(name: str, size: int = 64) -> str:
    """`png_for` as a ``data:image/png;base64,…`` URI (as Cog answers without an
    upload URL)."""
    return "data:image/png;base64," + base64.b64encode(png_for(name, size)).decode("ascii")
