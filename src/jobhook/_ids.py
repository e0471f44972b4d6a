"""Job ids, delivery ids and clocks: what each id may contain is defined here, once.

A **job id** travels in a URL path (``/webhooks/jobhook/<job_id>``), so it is 1 to 255
characters of RFC 3986's unreserved set (``A-Z a-z 0-9 - . _ ~``) and not ``.`` or
``..`` (which URL clients and servers resolve away). Every store enforces this when a
job is created; looking a job up accepts any id, so jobs made under older rules stay
reachable.

A **delivery id** (``webhook-id``) is signed and stored as it came, so it is 1 to 255
visible ASCII characters: no space, no control character, nothing a framework could
decode differently or a comparison could strip.
"""

from __future__ import annotations

import os
import re
import threading
import time
from datetime import datetime, timezone

from jobhook.exceptions import ValidationError

__all__ = [
    "DELIVERY_ID_RULE",
    "JOB_ID_RULE",
    "check_delivery_id",
    "check_new_job_id",
    "is_delivery_id",
    "new_job_id",
    "remote_key",
    "utcnow",
]

_JOB_ID = re.compile(r"[A-Za-z0-9._~-]{1,255}")
_DELIVERY_ID = re.compile(r"[\x21-\x7e]{1,255}")
#: What a job id may be, as error messages and the docs say it.
JOB_ID_RULE = (
    "a job id is 1 to 255 characters from A-Z, a-z, 0-9 and '-', '.', '_', '~' "
    "(safe in a URL path), and not '.' or '..'"
)
#: What a delivery id may be.
DELIVERY_ID_RULE = "a delivery id is 1 to 255 visible ASCII characters (no spaces)"


def check_new_job_id(value: object) -> str:
    """Return ``value`` if it may name a new job; raise `ValidationError` otherwise."""
    if not isinstance(value, str) or _JOB_ID.fullmatch(value) is None or value in (".", ".."):
        raise ValidationError(f"job_id: {JOB_ID_RULE}; got {value!r:.300}")
    return value


def remote_key(remote_id: str) -> str:
    """The job id a dead letter is kept under while no job has its ``remote_id`` yet
    (a webhook that beat the submit answer); see `JobStore.replay_dead_letter`."""
    return f"remote:{remote_id}"


def is_delivery_id(value: object) -> bool:
    """Whether ``value`` is a well-formed delivery id (see `DELIVERY_ID_RULE`)."""
    return isinstance(value, str) and _DELIVERY_ID.fullmatch(value) is not None


def check_delivery_id(value: object, field: str = "delivery_id") -> str:
    """Return ``value`` if it is a well-formed delivery id; raise `ValidationError`."""
    if not is_delivery_id(value):
        raise ValidationError(f"{field}: {DELIVERY_ID_RULE}; got {value!r:.300}")
    assert isinstance(value, str)
    return value


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
