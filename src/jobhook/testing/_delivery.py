"""How the fake delivers one callback: POST it, retrying as a webhook sender does.

Each attempt gets the headers the impersonated backend would send (re-signed per
attempt, under the same id), so this is `CallbackSender` for any signature scheme,
or none. The retry rules are the client's (`jobhook._http.exchange`), with a short
backoff: a test waits for these retries.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping

import httpx

from jobhook._http import (
    RetryPolicy,
    Send,
    Steps,
    adrive,
    asyncio_sleep,
    drive,
    exchange,
    redact_url,
)
from jobhook.sender import DeliveryReport

__all__ = ["Courier"]

log = logging.getLogger("jobhook.testing")

_TIMEOUT = 10.0


def _retry_status(status: int) -> bool:
    # As every webhook sender: 5xx, 408 and 429 mean "not now"; other answers end it.
    return status >= 500 or status in (408, 429)


class Courier:
    """Sends callbacks with up to ``attempts`` attempts each (1 when not ``retried``)."""

    def __init__(self, attempts: int) -> None:
        self._retried = RetryPolicy(max_attempts=attempts, backoff=0.02, max_backoff=0.5)
        self._once = RetryPolicy(max_attempts=1)

    def _steps(
        self,
        url: str,
        body: bytes,
        headers: Callable[[], Mapping[str, str]],
        msg_id: str,
        retried: bool,
    ) -> Steps[DeliveryReport]:
        def request() -> Send:
            return Send("POST", url, {"content-type": "application/json", **headers()}, body)

        policy = self._retried if retried else self._once
        end = yield from exchange(
            request, policy, retry_status=_retry_status, label=f"fake callback {msg_id}"
        )
        response = end.response
        if response is not None and response.is_success:
            return DeliveryReport(True, end.attempts, response.status_code, None, msg_id)
        if response is not None:
            error = f"HTTP {response.status_code}: {response.text.strip()[:200]}"
        else:
            error = f"{type(end.error).__name__}: {end.error}"
        log.info("fake callback %s to %s not delivered: %s", msg_id, redact_url(url), error)
        status = response.status_code if response is not None else None
        return DeliveryReport(False, end.attempts, status, error, msg_id)

    def send(
        self,
        http: httpx.Client,
        url: str,
        body: bytes,
        headers: Callable[[], Mapping[str, str]],
        *,
        msg_id: str,
        retried: bool,
    ) -> DeliveryReport:
        steps = self._steps(url, body, headers, msg_id, retried)
        return drive(steps, http=http, sleep=time.sleep, timeout=_TIMEOUT)

    async def asend(
        self,
        http: httpx.AsyncClient,
        url: str,
        body: bytes,
        headers: Callable[[], Mapping[str, str]],
        *,
        msg_id: str,
        retried: bool,
    ) -> DeliveryReport:
        steps = self._steps(url, body, headers, msg_id, retried)
        return await adrive(steps, http=http, sleep=asyncio_sleep, timeout=_TIMEOUT)
