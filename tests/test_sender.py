"""CallbackSender: signs, retries what may succeed later, stops on the rest, and is
applied exactly once by a handler behind a flaky network."""

from __future__ import annotations

import json
import random
from collections import Counter
from typing import Any

import httpx
import pytest

from jobhook import CallbackSender, InMemoryJobStore, JobStatus, ValidationError, WebhookHandler
from jobhook._signing import new_webhook_secret, verify_webhook
from jobhook.sender import AsyncCallbackSender, DeliveryReport

URL = "https://app.test/webhooks/jobhook/j-1"
PAYLOAD = {"job_id": "j-1", "status": "running", "progress": 40}


@pytest.fixture
def secret() -> str:
    return new_webhook_secret()


class Receiver:
    """An app endpoint that answers from a script, then 200; it records every request."""

    def __init__(self, *answers: int | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer, text="answer body")


def make_sender(secret: str, receiver: Any, sleeps: list[float] | None = None, **kw: Any) -> Any:
    http = httpx.Client(transport=httpx.MockTransport(receiver))
    naps = sleeps if sleeps is not None else []
    return CallbackSender(secret, http_client=http, sleep=naps.append, **kw)


def test_a_callback_is_signed_and_sent_as_json(secret: str) -> None:
    receiver = Receiver()
    report = make_sender(secret, receiver).send(URL, PAYLOAD, msg_id="msg_1")
    assert report == DeliveryReport(True, 1, 200, None, "msg_1")
    (request,) = receiver.requests
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["webhook-id"] == "msg_1"
    assert json.loads(request.content) == PAYLOAD
    verify_webhook(secret, request.headers, request.content)
    standardwebhooks = pytest.importorskip("standardwebhooks")
    standardwebhooks.Webhook(secret).verify(request.content, dict(request.headers))


def test_bytes_are_sent_exactly_and_an_id_is_made(secret: str) -> None:
    receiver = Receiver()
    body = b'{"job_id":"j-1",  "status":"running"}'
    report = make_sender(secret, receiver).send(URL, body)
    assert receiver.requests[0].content == body
    assert report.msg_id.startswith("msg_")
    assert receiver.requests[0].headers["webhook-id"] == report.msg_id


@pytest.mark.parametrize(
    "failure",
    [500, 502, 503, 504, 408, 429, httpx.ConnectError("down"), httpx.ReadTimeout("slow")],
)
def test_retryable_failures_are_retried_with_the_same_id(secret: str, failure: Any) -> None:
    receiver = Receiver(failure, failure)
    sleeps: list[float] = []
    report = make_sender(secret, receiver, sleeps, max_attempts=5).send(URL, PAYLOAD)
    assert report.delivered
    assert report.attempts == 3
    assert len(sleeps) == 2
    assert {r.headers["webhook-id"] for r in receiver.requests} == {report.msg_id}
    for request in receiver.requests:  # every attempt is re-signed and valid
        verify_webhook(secret, request.headers, request.content)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 422])
def test_other_4xx_stop_at_once(secret: str, status: int) -> None:
    receiver = Receiver(status)
    report = make_sender(secret, receiver).send(URL, PAYLOAD)
    assert not report.delivered
    assert report.attempts == 1
    assert report.status_code == status
    assert report.error is not None
    assert str(status) in report.error


def test_retry_after_is_obeyed(secret: str) -> None:
    requests: list[httpx.Request] = []

    def app(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        if len(requests) == 1:
            return httpx.Response(429, headers={"Retry-After": "3"})
        return httpx.Response(204)

    sleeps: list[float] = []
    report = make_sender(secret, app, sleeps).send(URL, PAYLOAD)
    assert report.delivered
    assert report.status_code == 204
    assert sleeps == [3.0]


def test_giving_up_is_reported_not_raised(secret: str) -> None:
    receiver = Receiver(*[503] * 4)
    sleeps: list[float] = []
    report = make_sender(secret, receiver, sleeps, max_attempts=4).send(URL, PAYLOAD)
    assert not report.delivered
    assert report.attempts == 4
    assert report.status_code == 503
    assert len(sleeps) == 3


def test_a_network_failure_to_the_end_is_reported(secret: str) -> None:
    receiver = Receiver(*[httpx.ConnectError("refused")] * 3)
    report = make_sender(secret, receiver, max_attempts=3).send(URL, PAYLOAD)
    assert not report.delivered
    assert report.status_code is None
    assert report.error is not None
    assert "ConnectError" in report.error


def test_a_bad_secret_or_payload_is_refused(secret: str) -> None:
    with pytest.raises(ValidationError):
        CallbackSender("not-a-secret")
    with pytest.raises(ValidationError):
        make_sender(secret, Receiver()).send(URL, {"x": float("nan")})
    assert "whsec" not in repr(CallbackSender(secret))


# --- exactly once behind a flaky network ---------------------------------------------


class FlakyNetwork:
    """Between sender and handler: loses requests before they arrive and answers after
    they were applied (so the sender retries what the app already has)."""

    def __init__(self, handler: WebhookHandler, seed: int) -> None:
        self.handler = handler
        self.rng = random.Random(seed)
        self.outcomes: Counter[tuple[str, str]] = Counter()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        roll = self.rng.random()
        if roll < 0.2:
            raise httpx.ConnectError("lost on the way in")
        if roll < 0.3:
            return httpx.Response(502)
        job_id = request.url.path.rsplit("/", 1)[-1]
        answer = self.handler.handle(request.headers, request.content, job_id=job_id)
        self.outcomes[(request.headers["webhook-id"], answer.json()["outcome"])] += 1
        if roll < 0.5:
            raise httpx.ReadTimeout("answer lost on the way out")
        return httpx.Response(answer.status, content=answer.body, headers=answer.headers)


def test_each_callback_is_applied_exactly_once_behind_a_flaky_network(secret: str) -> None:
    store = InMemoryJobStore()
    network = FlakyNetwork(WebhookHandler(store, secret=secret), seed=11)
    sender = make_sender(secret, network, max_attempts=20)
    callbacks = []
    for n in range(15):
        job_id = f"job-{n}"
        store.create({}, job_id=job_id)
        callbacks += [
            {"job_id": job_id, "status": "running", "progress": 30, "sequence": 1},
            {"job_id": job_id, "status": "running", "progress": 70, "sequence": 2},
            {"job_id": job_id, "status": "succeeded", "output": {"n": n}},
        ]

    reports = [sender.send(f"https://app.test/hooks/{c['job_id']}", c) for c in callbacks]

    assert all(r.delivered for r in reports)
    assert any(r.attempts > 1 for r in reports), "the network was never flaky"
    applied = Counter(msg for (msg, outcome) in network.outcomes if outcome == "applied")
    assert applied == Counter({r.msg_id: 1 for r in reports})
    assert any(outcome == "duplicate" for (_, outcome) in network.outcomes)
    assert len(store.events(limit=1000)) == len(callbacks)
    assert {store.get(f"job-{n}").status for n in range(15)} == {JobStatus.SUCCEEDED}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_async_sender_retries_and_reports(secret: str, anyio_backend: str) -> None:
    store = InMemoryJobStore()
    store.create({}, job_id="j-1")
    handler = WebhookHandler(store, secret=secret)
    calls: list[str] = []

    async def app(request: httpx.Request) -> httpx.Response:
        calls.append(request.headers["webhook-id"])
        answer = await handler.ahandle(request.headers, request.content, job_id="j-1")
        if len(calls) == 1:
            return httpx.Response(503)  # applied, but the answer says "try again"
        return httpx.Response(answer.status, content=answer.body)

    naps: list[float] = []

    async def sleep(seconds: float) -> None:
        naps.append(seconds)

    http = httpx.AsyncClient(transport=httpx.MockTransport(app))
    async with AsyncCallbackSender(secret, http_client=http, sleep=sleep) as sender:
        report = await sender.send(URL, PAYLOAD)
    await http.aclose()
    assert report.delivered
    assert report.attempts == 2
    assert len(set(calls)) == 1
    assert [e.status for e in store.events()] == [JobStatus.RUNNING]


@pytest.mark.parametrize("answers", [(), (503, 503, 503)], ids=["delivered", "not delivered"])
def test_no_log_line_shows_the_callback_token(
    secret: str, answers: tuple[int, ...], caplog: pytest.LogCaptureFixture
) -> None:
    # For a token-only handler the ?token= is the credential: it never reaches a log.
    caplog.set_level("DEBUG", logger="jobhook")
    sender = make_sender(secret, Receiver(*answers), max_attempts=3)
    url = "https://user:pw-secret@app.example/webhooks/jobhook/j-1?token=tok-secret-123&x=1"
    report = sender.send(url, {"job_id": "j-1", "status": "running"})
    assert report.delivered is (not answers)
    assert caplog.records
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "tok-secret-123" not in text
    assert "pw-secret" not in text
    assert "https://user:***@app.example/webhooks/jobhook/j-1?token=***&x=***" in text
