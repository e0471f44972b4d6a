"""Deliveries shared by the framework tests: one signed update and the ones to refuse.

Every adapter must pass the body's exact bytes, the route's job id and ``?token=`` to
the handler; these cases fail when any of the three is lost or re-encoded.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import pytest

from jobhook import InMemoryJobStore, WebhookHandler, sign_webhook

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN_SECRET = "app-callback-token-secret"
MAX_BODY = 4096


@attrs.frozen
class Delivery:
    """What a sender posts: headers, raw body, the job id in the URL and the token."""

    headers: dict[str, str]
    body: bytes
    route_job_id: str
    token: str | None = None

    def path(self, prefix: str = "/webhooks/jobhook/") -> str:
        query = f"?token={self.token}" if self.token is not None else ""
        return f"{prefix}{self.route_job_id}{query}"


def odd_body(job_id: str) -> bytes:
    # Odd whitespace, unusual key order, escaped unicode: re-serialised JSON would
    # differ from these bytes, and the signature would no longer match.
    return (
        b'{ "progress" : 40 ,\n\t"status":"running",   "note": "Zo\\u00eb" ,'
        b'"job_id" :"' + job_id.encode() + b'" }  \n'
    )


def signed(job_id: str, body: bytes | None = None, **sign: Any) -> Delivery:
    body = odd_body(job_id) if body is None else body
    return Delivery(sign_webhook(SECRET, body, **sign), body, job_id)


def _unsigned(job: str, other: str) -> Delivery:
    return Delivery({}, odd_body(job), job)


def _tampered(job: str, other: str) -> Delivery:
    good = signed(job)
    return attrs.evolve(good, body=good.body.replace(b"40", b"90"))


def _stale(job: str, other: str) -> Delivery:
    return signed(job, timestamp=1_000_000_000)


def _wrong_job(job: str, other: str) -> Delivery:
    # A valid delivery for ``job`` captured and re-posted to the other job's URL.
    return attrs.evolve(signed(job), route_job_id=other)


REFUSALS: dict[str, tuple[Callable[[str, str], Delivery], int]] = {
    "unsigned": (_unsigned, 401),
    "tampered": (_tampered, 401),
    "stale timestamp": (_stale, 401),
    "wrong job": (_wrong_job, 400),
}


@pytest.fixture(params=list(REFUSALS), ids=list(REFUSALS))
def refusal(request: pytest.FixtureRequest) -> tuple[Callable[[str, str], Delivery], int]:
    """One delivery the handler must refuse, and the status it must answer."""
    return REFUSALS[request.param]


@pytest.fixture
def jobs() -> InMemoryJobStore:
    return InMemoryJobStore()


def snapshot(store: Any) -> list[Any]:
    """Every job, event and dead letter of a sync store: compared before and after."""
    return [store.list(limit=1000), store.events(limit=1000), store.dead_letters()]


def handler_for(store: Any, **options: Any) -> WebhookHandler:
    options.setdefault("secret", SECRET)
    return WebhookHandler(store, max_body_bytes=MAX_BODY, **options)
