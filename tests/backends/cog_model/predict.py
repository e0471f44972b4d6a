"""A small Cog model whose input chooses what it does (run by coglet, not imported by pytest).

``mode``: ``"succeed"`` prints ``step i/n`` lines, sleeping ``delay`` seconds between them,
and returns a string and a 1x1 PNG file; ``"fail"`` raises; ``"long"`` prints steps for
minutes, until it is canceled.
"""

from __future__ import annotations

import struct
import tempfile
import time
import zlib

from cog import BaseModel, BaseRunner, Input, Path


class Output(BaseModel):
    text: str
    image: Path


def _chunk(tag: bytes, data: bytes) -> bytes:
    crc = zlib.crc32(tag + data) & 0xFFFFFFFF
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)


def write_png(path: Path) -> None:
    """A 1x1 red PNG, written without any imaging library."""
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\x00\xff\x00\x00")
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", pixels)
    path.write_bytes(png + _chunk(b"IEND", b""))


class Runner(BaseRunner):
    def run(
        self,
        mode: str = Input(default="succeed", choices=["succeed", "fail", "long"]),
        steps: int = Input(default=4, ge=1),
        delay: float = Input(default=0.1, ge=0),
    ) -> Output:
        if mode == "fail":
            print("about to fail", flush=True)
            raise RuntimeError("the model refused")
        total = 3000 if mode == "long" else steps
        for step in range(1, total + 1):
            print(f"step {step}/{total}", flush=True)
            time.sleep(delay)
        image = Path(tempfile.mkdtemp()) / "out.png"
        write_png(image)
        return Output(text=f"done after {total} steps", image=image)
