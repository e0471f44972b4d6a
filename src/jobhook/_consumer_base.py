"""What `OutboxConsumer` and `AsyncOutboxConsumer` share: configuration, the lease
clock, the rules for retrying and parking, and how long to wait for work."""

from __future__ import annotations

import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from jobhook._models import JobEvent
from jobhook._outbox import check_consumer_name, check_lease
from jobhook.exceptions import ValidationError

__all__ = ["MAX_RETRY_DELAY", "WAIT_SLICE", "ConsumerBase", "Interrupted", "describe", "logger"]

logger = logging.getLogger("jobhook")

#: Longest pause between two attempts at a failing event, in seconds.
MAX_RETRY_DELAY = 30.0
#: Longest wait in one piece, so that ``stop`` is noticed promptly.
WAIT_SLICE = 0.25
#: How long after a notification the consumer keeps looking again soon: the outbox's
#: bounded wait behind other transactions (2 s), and some.
_RECHECK_FOR = 3.0


def _positive(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValidationError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def describe(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()[:4000]


def _listen_url(store: Any) -> str | None:
    """The libpq URL of the store's PostgreSQL database, or None (not PostgreSQL)."""
    engine = getattr(store, "engine", None)
    if engine is None or engine.dialect.name != "postgresql":
        return None
    try:
        import psycopg  # noqa: F401
    except ImportError:  # pragma: no cover - psycopg ships with jobhook[postgres]
        return None
    url = engine.url.set(drivername="postgresql")
    return str(url.render_as_string(hide_password=False))


class ConsumerBase:
    """What both consumers share: configuration, the lease clock, and the rules for
    retrying and parking."""

    def __init__(
        self,
        store: Any,
        name: str,
        handle: Callable[[JobEvent], Any],
        *,
        batch: int,
        lease: float,
        poll_interval: float,
        max_attempts: int,
        retry_delay: float,
        listen: bool,
    ) -> None:
        from jobhook.stores.protocol import check_limit

        self.store = store
        self.name = check_consumer_name(name)
        self.handle = handle
        self.batch = check_limit(batch)
        self.lease = check_lease(lease).total_seconds()
        self.poll_interval = _positive("poll_interval", poll_interval)
        self.max_attempts = check_limit(max_attempts)
        self.retry_delay = _positive("retry_delay", retry_delay)
        #: This instance's name in the lease: host, process, and a random part.
        self.owner = f"{socket.gethostname()[:180]}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
        self._listen = _listen_url(store) if listen else None
        self._position = 0
        self._renew_at = 0.0
        self._recheck_until = 0.0
        self._recheck_delay = 0.0025
        self._holding = False  # whether this instance holds the lease, as far as it knows

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r} position={self._position}>"

    @property
    def position(self) -> int:
        """The id of the last event this consumer passed (handled or parked)."""
        return self._position

    def _claimed(self, started: float) -> None:
        # The lease runs from before the claim was sent; renewing after a third of it
        # leaves two thirds for the handler call in progress (see the docs: a handler
        # that runs longer than that may overlap with a standby taking over).
        self._renew_at = started + self.lease / 3

    def _due_for_renewal(self) -> bool:
        return time.monotonic() >= self._renew_at

    def _idle_wait(self) -> float:
        """How long to wait for work after a turn that left none.

        On PostgreSQL a notification can come before its event is visible to readers:
        `events()` holds back events behind older transactions still running (see
        `jobhook.stores._consumers.read_events`). So for a few seconds after each
        notification the consumer looks again soon (5 ms, doubling to 100 ms) instead of
        waiting for the next notification."""
        if self._listen is None or time.monotonic() >= self._recheck_until:
            return self.poll_interval
        self._recheck_delay = min(self._recheck_delay * 2, 0.1)
        return min(self._recheck_delay, self.poll_interval)

    def _notified(self) -> None:
        self._recheck_until = time.monotonic() + _RECHECK_FOR
        self._recheck_delay = 0.0025

    def _backoff(self, attempt: int) -> float:
        """The pause after failed ``attempt`` (1-based): doubling, capped."""
        return float(min(self.retry_delay * 2 ** (attempt - 1), MAX_RETRY_DELAY))


class Interrupted(Exception):
    """Stop was asked for, or the lease was lost, while an event was being retried."""
