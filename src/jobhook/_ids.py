"""Job ids and clocks."""

from __future__ import annotations

import os
import threading
import time
from datetime import datetime, timezone

__all__ = ["new_job_id", "utcnow"]

# Crockford's base32, lower case: URL-safe, no ambiguous letters, sorts like the numbers.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]
_lock = threading.Lock()
_last_ms = 0
_last_rand = 0


def new_job_id() -> str:
    """A new 26-character job id: 48 bits of milliseconds, then 80 random bits.

    Ids made later sort after ids made earlier, also within one millisecond of one
    process (the random part is then incremented), ULID-style.
    """
    global _last_ms, _last_rand
    with _lock:
        ms = time.time_ns() // 1_000_000
        if ms <= _last_ms:
            ms = _last_ms
            rand = _last_rand + 1
        else:
            rand = int.from_bytes(os.urandom(10), "big")
        _last_ms, _last_rand = ms, rand
    value = (ms << 80) | (rand & ((1 << 80) - 1))
    # 26 digits of 5 bits, two at a time (the top two bits of the 130 are zero).
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in range(120, -1, -10)])


def utcnow() -> datetime:
    """Now, timezone-aware UTC, at the microsecond precision every database keeps."""
    return datetime.now(timezone.utc)
