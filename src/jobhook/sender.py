"""The backend's half: sign callbacks with Standard Webhooks and deliver them with retries.

Every attempt of one callback carries the same ``webhook-id`` (re-signed with a fresh
timestamp), so the receiver recognises a repeat and applies the callback once.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any

import attrs
import httpx

from jobhook._convert import dumps
from jobhook._http import (
    Exchange,
    RetryPolicy,
    Send,
    Steps,
    adrive,
    asyncio_sleep,
    drive,
    exchange,
    redact_url,
    resolve_retry,
)
from jobhook._signing import parse_secrets, sign_webhook
from jobhook.exceptions import ValidationError

__all__ = ["AsyncCallbackSender", "CallbackSender", "DeliveryReport"]

log = logging.getLogger("jobhook.sender")


@attrs.frozen
class DeliveryReport:
    """What became of one callback.

    ``delivered`` is true once the receiver answered 2xx. ``status_code`` is the last
    answer's status (``None`` when no answer came), ``error`` describes the last
    failure, ``attempts`` counts the requests sent, ``msg_id`` is the ``webhook-id``
    every attempt carried.
    """

    delivered: bool
    attempts: int
    status_code: int | None
    error: str | None
    msg_id: str


def _retry_status(status: int) -> bool:
    # 5xx, 408 and 429 mean "not now"; any other 4xx means "never": stop.
    return status >= 500 or status in (408, 429)


#: Callbacks are worth more patience than a submit: five attempts by default.
_DEFAULT_RETRY = RetryPolicy(max_attempts=5)


class _BaseSender:
    """Configuration and the delivery steps both senders share."""

    def __init__(
        self,
        secret: str | bytes,
        *,
        retry: RetryPolicy | None,
        max_attempts: int | None,
        timeout: float,
        headers: Mapping[str, str] | None,
        backoff: float | None,
        max_backoff: float | None,
        rng: random.Random | None,
    ) -> None:
        parse_secrets(secret)  # refuse a malformed secret now, not at the first send
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ValidationError(f"timeout must be a positive number, got {timeout!r}")
        self._secret = secret
        self._timeout = float(timeout)
        self._headers = dict(headers or {})
        self._policy = resolve_retry(
            retry,
            _DEFAULT_RETRY,
            max_attempts=max_attempts,
            backoff=backoff,
            max_backoff=max_backoff,
            rng=rng,
        )

    def __repr__(self) -> str:
        # Never show the secret.
        return f"<{type(self).__name__} max_attempts={self._policy.max_attempts}>"

    def _steps(
        self, url: str, payload: Mapping[str, Any] | bytes, msg_id: str | None
    ) -> Steps[DeliveryReport]:
        if isinstance(payload, (bytes, bytearray)):
            body = bytes(payload)
        else:
            body = dumps(payload, field="payload").encode()
        first = sign_webhook(self._secret, body, msg_id=msg_id)
        msg_id = first["webhook-id"]
        signatures = iter([first])

        def request() -> Send:
            # A fresh timestamp per attempt keeps late retries inside the receiver's
            # tolerance; the id stays, so the receiver can drop what it already applied.
            signed = next(signatures, None) or sign_webhook(self._secret, body, msg_id=msg_id)
            headers = {**self._headers, "content-type": "application/json", **signed}
            return Send("POST", url, headers, body)

        end: Exchange = yield from exchange(
            request, self._policy, retry_status=_retry_status, label=f"callback {msg_id}"
        )
        return _report(end, msg_id, url)


def _report(end: Exchange, msg_id: str, url: str) -> DeliveryReport:
    response = end.response
    shown = redact_url(url)  # a callback URL's ?token= is a credential
    if response is not None and response.is_success:
        log.info("callback %s to %s delivered (HTTP %d)", msg_id, shown, response.status_code)
        return DeliveryReport(True, end.attempts, response.status_code, None, msg_id)
    if response is not None:
        error = f"HTTP {response.status_code}: {response.text.strip()[:200]}"
        status: int | None = response.status_code
    else:
        error = f"{type(end.error).__name__}: {end.error}"
        status = None
    log.warning(
        "callback %s to %s not delivered after %d attempt(s): %s",
        msg_id,
        shown,
        end.attempts,
        error.replace(url, shown),
    )
    return DeliveryReport(False, end.attempts, status, error, msg_id)


class CallbackSender(_BaseSender):
    """Signs callbacks with ``secret`` and POSTs them, retrying what may succeed later.

    5xx, 408, 429 and network errors are retried under ``retry`` (a `RetryPolicy`, by
    default 5 attempts in all, jittered exponential backoff from 0.5 s up to 30 s,
    obeying ``Retry-After``; or the 0.1 keywords ``max_attempts``, ``backoff``,
    ``max_backoff``, ``rng``); 2xx and other 4xx end the delivery. `send` never raises
    for a failed delivery: it reports it. Raises `ValidationError` for a malformed
    secret. Thread-safe; an ``http_client`` passed in is left open by `close`.
    """

    def __init__(
        self,
        secret: str | bytes,
        *,
        retry: RetryPolicy | None = None,
        max_attempts: int | None = None,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.Client | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            secret,
            retry=retry,
            max_attempts=max_attempts,
            timeout=timeout,
            headers=headers,
            backoff=backoff,
            max_backoff=max_backoff,
            rng=rng,
        )
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.Client()
        self._sleep = sleep

    def send(
        self, url: str, payload: Mapping[str, Any] | bytes, *, msg_id: str | None = None
    ) -> DeliveryReport:
        """Deliver one callback: a JSON object (serialised once) or raw JSON bytes.

        ``msg_id`` is the ``webhook-id``; a fresh one is made when not given. Raises
        `ValidationError` for a payload JSON cannot hold or a malformed ``msg_id``.
        """
        steps = self._steps(url, payload, msg_id)
        return drive(steps, http=self._http, sleep=self._sleep, timeout=self._timeout)

    def close(self) -> None:
        """Close the HTTP client if this sender made it."""
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> CallbackSender:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncCallbackSender(_BaseSender):
    """The async twin of `CallbackSender` over an `httpx.AsyncClient`."""

    def __init__(
        self,
        secret: str | bytes,
        *,
        retry: RetryPolicy | None = None,
        max_attempts: int | None = None,
        timeout: float = 10.0,
        headers: Mapping[str, str] | None = None,
        http_client: httpx.AsyncClient | None = None,
        backoff: float | None = None,
        max_backoff: float | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio_sleep,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(
            secret,
            retry=retry,
            max_attempts=max_attempts,
            timeout=timeout,
            headers=headers,
            backoff=backoff,
            max_backoff=max_backoff,
            rng=rng,
        )
        self._owns_http = http_client is None
        self._http = http_client if http_client is not None else httpx.AsyncClient()
        self._sleep = sleep

    async def send(
        self, url: str, payload: Mapping[str, Any] | bytes, *, msg_id: str | None = None
    ) -> DeliveryReport:
        """Deliver one callback; see `CallbackSender.send`."""
        steps = self._steps(url, payload, msg_id)
        return await adrive(steps, http=self._http, sleep=self._sleep, timeout=self._timeout)

    async def aclose(self) -> None:
        """Close the HTTP client if this sender made it."""
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> AsyncCallbackSender:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
