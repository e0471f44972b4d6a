"""The request loop shared by the client and the sender, as steps without I/O.

An operation is a generator of steps (`Send` a request, `Sleep`, `StoreCall`) that
receives each step's result, or has its exception thrown in. `drive` and `adrive` run
the steps with a sync or async httpx client and store, so the rules (which failures to
retry, how long to wait) are written once for both halves. The shape is that of the
SQL stores' operations.
"""

from __future__ import annotations

import email.utils
import logging
import random
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Generator, Mapping
from datetime import timezone
from typing import Any, TypeVar

import attrs
import httpx

from jobhook.exceptions import ValidationError

__all__ = [
    "RETRY_STATUSES",
    "Exchange",
    "RetryPolicy",
    "Send",
    "Sleep",
    "Steps",
    "StoreCall",
    "adrive",
    "asyncio_sleep",
    "backend_message",
    "drive",
    "exchange",
    "redact_url",
    "request_of",
    "resolve_retry",
    "retry_after_seconds",
]

log = logging.getLogger("jobhook.client")

T = TypeVar("T")

#: Answers worth another attempt of the same request.
RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
# Gateway answers: the backend behind the gateway may have taken the request.
_GATEWAY_STATUSES = frozenset({502, 504})
# Transport errors raised before any byte of the request left.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Transport errors after which the request may have reached the backend.
_MAYBE_SENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
MESSAGE_LIMIT = 500


# --- steps ------------------------------------------------------------------------


@attrs.frozen
class Send:
    """Send one HTTP request; the driver answers with the `httpx.Response`."""

    method: str
    url: str
    headers: Mapping[str, str]
    content: bytes | None = None


@attrs.frozen
class Sleep:
    """Wait this many seconds; the driver answers ``None``."""

    seconds: float


@attrs.frozen
class StoreCall:
    """Call ``store.<method>(*args, **kwargs)``; the driver answers with its result."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)


Step = Send | Sleep | StoreCall
Steps = Generator[Step, Any, T]


def drive(
    steps: Steps[T],
    *,
    http: httpx.Client,
    sleep: Callable[[float], None],
    timeout: float,
    store: Any = None,
) -> T:
    """Run ``steps`` to their end with a sync client and store; return their value."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, error = None, None
        try:
            if isinstance(step, Send):
                request = http.build_request(
                    step.method,
                    step.url,
                    headers=step.headers,
                    content=step.content,
                    timeout=timeout,
                )
                value = http.send(request)
            elif isinstance(step, Sleep):
                sleep(step.seconds)
            else:
                value = getattr(store, step.method)(*step.args, **step.kwargs)
        except Exception as exc:  # handed to the steps, which decide what is fatal
            error = exc


async def adrive(
    steps: Steps[T],
    *,
    http: httpx.AsyncClient,
    sleep: Callable[[float], Awaitable[None]],
    timeout: float,
    store: Any = None,
) -> T:
    """Run ``steps`` to their end with an async client and store; return their value."""
    value: Any = None
    error: Exception | None = None
    while True:
        try:
            step = steps.send(value) if error is None else steps.throw(error)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        value, error = None, None
        try:
            if isinstance(step, Send):
                request = http.build_request(
                    step.method,
                    step.url,
                    headers=step.headers,
                    content=step.content,
                    timeout=timeout,
                )
                value = await http.send(request)
            elif isinstance(step, Sleep):
                await sleep(step.seconds)
            else:
                value = await getattr(store, step.method)(*step.args, **step.kwargs)
        except Exception as exc:
            error = exc


# --- retries ----------------------------------------------------------------------


def retry_after_seconds(response: httpx.Response, *, now: float | None = None) -> float | None:
    """The wait a ``Retry-After`` header asks for (seconds or an HTTP date), if any."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


@attrs.frozen
class RetryPolicy:
    """How often and how patiently a request is repeated.

    Attempt ``n`` waits a random time between half and all of
    ``backoff * 2 ** (n - 1)`` (capped at ``max_backoff``), so that many clients that
    failed together do not come back together. A ``Retry-After`` answer is obeyed
    exactly; one asking for more than ``max_backoff`` ends the retries instead.
    """

    max_attempts: int = 3
    backoff: float = 0.5
    max_backoff: float = 30.0
    rng: random.Random = attrs.field(factory=random.Random)

    def __attrs_post_init__(self) -> None:
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise ValidationError(f"max_attempts must be an integer, got {self.max_attempts!r}")
        if self.max_attempts < 1:
            raise ValidationError(f"max_attempts must be at least 1, got {self.max_attempts!r}")
        if self.backoff < 0 or self.max_backoff < 0:
            raise ValidationError("backoff and max_backoff must not be negative")

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait after failed ``attempt`` (1-based); ``None``: stop retrying."""
        if response is not None:
            asked = retry_after_seconds(response)
            if asked is not None:
                return asked if asked <= self.max_backoff else None
        ceiling = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        return self.rng.uniform(ceiling / 2, ceiling)


def resolve_retry(
    retry: RetryPolicy | None,
    default: RetryPolicy,
    *,
    max_attempts: int | None,
    backoff: float | None,
    max_backoff: float | None,
    rng: random.Random | None,
) -> RetryPolicy:
    """``retry``, or ``default`` with the 0.1 keywords given applied; not both."""
    legacy = (max_attempts, backoff, max_backoff, rng)
    if retry is not None:
        if any(v is not None for v in legacy):
            raise ValidationError(
                "give either retry=RetryPolicy(...) or max_attempts/backoff/max_backoff/rng"
            )
        return retry
    return RetryPolicy(
        max_attempts=default.max_attempts if max_attempts is None else max_attempts,
        backoff=default.backoff if backoff is None else backoff,
        max_backoff=default.max_backoff if max_backoff is None else max_backoff,
        rng=rng or random.Random(),
    )


@attrs.frozen
class Exchange:
    """How a retried request ended: the last response or transport error.

    ``may_have_arrived`` is true when any attempt may have reached the server (a read
    timeout, a dropped connection, a gateway error).
    """

    response: httpx.Response | None
    error: httpx.TransportError | None
    attempts: int
    may_have_arrived: bool


def exchange(
    make_request: Callable[[], Send],
    policy: RetryPolicy,
    *,
    retry_status: Callable[[int], bool],
    label: str,
    resend_if_maybe_sent: bool = True,
) -> Steps[Exchange]:
    """Steps that send a request, retrying transient failures under ``policy``.

    Connect errors and errors after sending (timeouts, dropped connections) are
    retried; transport errors that mean the request cannot be sent at all (a bad URL)
    end at once. With ``resend_if_maybe_sent=False`` (a backend that would take a
    repeat as a second job) an attempt that may have arrived ends the exchange: only
    requests that were surely not taken are sent again. ``make_request`` runs per
    attempt, so each attempt can be re-signed.
    """
    may_have_arrived = False
    response: httpx.Response | None = None
    error: httpx.TransportError | None = None
    attempt = 0
    while attempt < policy.max_attempts:
        attempt += 1
        response, error = None, None
        try:
            response = yield make_request()
        except httpx.TransportError as exc:
            error = exc
        if response is not None:
            if not retry_status(response.status_code):
                break
            may_have_arrived |= response.status_code in _GATEWAY_STATUSES
            reason = f"HTTP {response.status_code}"
        elif isinstance(error, _NOT_SENT_ERRORS):
            reason = type(error).__name__
        elif isinstance(error, _MAYBE_SENT_ERRORS):
            may_have_arrived = True
            reason = type(error).__name__
        else:
            break
        if may_have_arrived and not resend_if_maybe_sent:
            log.warning("%s: %s; it may have arrived, so it is not sent again", label, reason)
            break
        if attempt >= policy.max_attempts:
            break
        delay = policy.delay(attempt, response)
        if delay is None:
            log.warning("%s: %s asks to wait longer than allowed; giving up", label, reason)
            break
        log.info(
            "%s: attempt %d/%d failed (%s); retrying in %.2fs",
            label,
            attempt,
            policy.max_attempts,
            reason,
            delay,
        )
        yield Sleep(delay)
    return Exchange(response, error, attempt, may_have_arrived)


def redact_url(url: str | httpx.URL) -> str:
    """``url`` as it may be logged: every query value and any password replaced by
    ``***``.

    A callback URL's ``?token=`` is the credential of a token-only handler, and
    backends' URLs may carry keys: no jobhook logger prints them.
    """
    parts = urllib.parse.urlsplit(str(url))
    query = "&".join(
        f"{name}=***" if sep else name
        for name, sep, _ in (item.partition("=") for item in parts.query.split("&") if item)
    )
    netloc = parts.netloc
    user, at, host = netloc.rpartition("@")
    if at and ":" in user:
        netloc = f"{user.partition(':')[0]}:***@{host}"
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))


def request_of(error: httpx.HTTPError | None) -> httpx.Request | None:
    """The request an httpx error belongs to, when it knows one."""
    if error is None:
        return None
    try:
        return error.request
    except RuntimeError:
        return None


def backend_message(response: httpx.Response) -> str:
    """A short human message from an error answer: its JSON ``message``/``detail``/
    ``error``, else its text, else the reason phrase."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict):
        for key in ("message", "detail", "error"):
            value = data.get(key)
            if isinstance(value, dict):
                value = value.get("message")
            if isinstance(value, str) and value:
                return value[:MESSAGE_LIMIT]
    text = response.text.strip()
    return text[:MESSAGE_LIMIT] if text else response.reason_phrase


async def asyncio_sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)
