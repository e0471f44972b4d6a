"""Backend profiles: each one's wire shapes, answers, statuses and retry rules, over
`httpx.MockTransport` (the real Cog and RunPod servers are driven in tests/backends)."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx
import pytest

from jobhook import (
    GeneratorClient,
    InMemoryJobStore,
    JobIdMismatchError,
    JobStatus,
    Reconciler,
    RetryPolicy,
    SubmitError,
    ValidationError,
    WebhookHandler,
    backends,
    sign_webhook,
)
from jobhook._ids import utcnow
from jobhook._signing import callback_token
from jobhook.backends._fal import jwks_for, sign_fal_webhook

TOKENS = "app-callback-token-secret"
CALLBACK = "https://app.example/webhooks/{job_id}"
REPLICATE_SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
NOW = 1_700_000_000

Answer = httpx.Response | Exception


class Backend:
    """A scripted backend: answers from a list per (method, path), records requests."""

    def __init__(self, routes: dict[tuple[str, str], list[Answer] | Callable[..., Answer]]):
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"detail": "no such route"})
        answer = (
            route(request) if callable(route) else (route.pop(0) if len(route) > 1 else route[0])
        )
        if isinstance(answer, Exception):
            raise answer
        return answer

    def sent(self, method: str, path: str) -> list[httpx.Request]:
        return [r for r in self.requests if (r.method, r.url.path) == (method, path)]


def client_for(store: Any, backend: Any, fake: Backend, **options: Any) -> GeneratorClient:
    options.setdefault("retry", RetryPolicy(max_attempts=3, backoff=0))
    return GeneratorClient(
        store,
        backend,
        callback_url=CALLBACK,
        token_secret=TOKENS,
        http_client=httpx.Client(transport=httpx.MockTransport(fake)),
        sleep=lambda s: None,
        **options,
    )


def deliver(
    handler: WebhookHandler, job_id: str, body: Any, headers: dict[str, str] | None = None
) -> Any:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    token = callback_token(TOKENS, job_id)
    return handler.handle(headers or {}, raw, job_id=job_id, token=token)


# -- configuration -------------------------------------------------------------------


def test_a_base_url_means_jobhooks_own_contract() -> None:
    store = InMemoryJobStore()
    fake = Backend({("POST", "/v1/jobs"): [httpx.Response(202, json={})]})
    client = client_for(store, "https://gen.example/v1", fake, submit_path="/jobs")
    assert isinstance(client.backend, backends.Jobhook)
    job = client.submit({"prompt": "fox"}, job_id="j-1")
    [request] = fake.requests
    assert request.headers["idempotency-key"] == "j-1"
    assert json.loads(request.content)["job_id"] == "j-1"
    assert job.status is JobStatus.SUBMITTED


def test_contract_keywords_belong_to_the_jobhook_profile() -> None:
    with pytest.raises(ValidationError, match=r"backends\.Jobhook"):
        GeneratorClient(
            InMemoryJobStore(), backends.Cog("http://cog"), callback_url=CALLBACK, submit_path="/x"
        )
    with pytest.raises(ValidationError, match="either retry"):
        GeneratorClient(
            InMemoryJobStore(),
            "http://gen",
            callback_url=CALLBACK,
            retry=RetryPolicy(),
            max_attempts=2,
        )


def test_profiles_keep_keys_out_of_their_reprs() -> None:
    shown = " ".join(
        repr(b)
        for b in (
            backends.Replicate("r8_secret", model="owner/name"),
            backends.Fal("fal-ai/flux/dev", "fal-secret", jwks={"keys": []}),
            backends.RunPod("ep", "rp-secret"),
        )
    )
    assert "secret" not in shown


def test_every_profile_is_a_backend() -> None:
    for profile in (
        backends.Jobhook("http://gen"),
        backends.Cog("http://cog"),
        backends.Replicate("t", model="o/n"),
        backends.Fal("o/a", "k", jwks={"keys": []}),
        backends.RunPod("ep", "k"),
    ):
        assert isinstance(profile, backends.Backend)


# -- Cog -------------------------------------------------------------------------------


def cog_fake(*submit: Answer) -> Backend:
    return Backend(
        {
            ("PUT", "/predictions/j-1"): list(submit)
            or [httpx.Response(202, json={"id": "j-1", "status": "starting"})],
            ("POST", "/predictions/j-1/cancel"): [httpx.Response(200, json={})],
        }
    )


def test_cog_submit_is_a_put_under_our_id_asking_for_every_event() -> None:
    store = InMemoryJobStore()
    fake = cog_fake()
    job = client_for(store, backends.Cog("http://cog:5000"), fake).submit({"p": 1}, job_id="j-1")
    [request] = fake.requests
    assert (request.method, str(request.url)) == ("PUT", "http://cog:5000/predictions/j-1")
    assert request.headers["prefer"] == "respond-async"
    body = json.loads(request.content)
    assert body["id"] == "j-1"
    assert body["input"] == {"p": 1}
    assert body["webhook_events_filter"] == ["start", "output", "logs", "completed"]
    webhook = httpx.URL(body["webhook"])
    assert webhook.path == "/webhooks/j-1"
    assert webhook.params["token"] == callback_token(TOKENS, "j-1")
    assert (job.status, job.remote_id) == (JobStatus.SUBMITTED, None)


def test_a_busy_cog_is_retried_not_failed() -> None:
    store = InMemoryJobStore()
    busy = httpx.Response(409, json={"error": "At capacity - all prediction slots busy"})
    fake = cog_fake(busy, busy, httpx.Response(202, json={"id": "j-1", "status": "starting"}))
    job = client_for(store, backends.Cog("http://cog"), fake).submit({}, job_id="j-1")
    assert len(fake.requests) == 3
    assert job.status is JobStatus.SUBMITTED


def test_a_cog_submit_that_may_have_arrived_is_sent_again_under_the_same_id() -> None:
    store = InMemoryJobStore()
    fake = cog_fake(httpx.ReadTimeout("slow"), httpx.Response(202, json={"id": "j-1"}))
    job = client_for(store, backends.Cog("http://cog"), fake).submit({}, job_id="j-1")
    assert [r.url.path for r in fake.requests] == ["/predictions/j-1"] * 2
    assert job.status is JobStatus.SUBMITTED


def test_cog_answering_another_id_is_the_original_bug() -> None:
    store = InMemoryJobStore()
    fake = cog_fake(httpx.Response(202, json={"id": "pred_abc", "status": "starting"}))
    with pytest.raises(JobIdMismatchError) as info:
        client_for(store, backends.Cog("http://cog"), fake).submit({}, job_id="j-1")
    assert info.value.job.error.code == "job_id_mismatch"


def test_cog_cancel_and_no_status_endpoint() -> None:
    store = InMemoryJobStore()
    fake = cog_fake()
    client = client_for(store, backends.Cog("http://cog"), fake)
    client.submit({}, job_id="j-1")
    assert not client.can_refresh(store.get("j-1"))
    with pytest.raises(ValidationError, match="no status endpoint"):
        client.refresh("j-1")
    # 200 {} only means requested: Cog's canceled webhook tells the end.
    assert client.cancel("j-1").status is JobStatus.SUBMITTED
    assert len(fake.sent("POST", "/predictions/j-1/cancel")) == 1


def test_a_cog_busy_past_the_retries_leaves_the_job_pending_for_the_reconciler() -> None:
    store = InMemoryJobStore()
    busy = httpx.Response(409, json={"error": "At capacity - all prediction slots busy"})
    fake = cog_fake(busy)
    client = client_for(store, backends.Cog("http://cog"), fake)
    with pytest.raises(SubmitError) as info:
        client.submit({}, job_id="j-1")
    assert info.value.ambiguous
    assert len(fake.requests) == 3
    assert store.get("j-1").status is JobStatus.PENDING
    fake.routes[("PUT", "/predictions/j-1")] = [httpx.Response(202, json={"id": "j-1"})]
    later = lambda: utcnow() + timedelta(minutes=5)  # noqa: E731
    Reconciler(store, client, stale_after=60, give_up_after=3600, clock=later).run_once()
    assert store.get("j-1").status is JobStatus.SUBMITTED


def test_cog_callbacks_apply_by_token_with_progress_from_logs_and_big_inline_outputs() -> None:
    store = InMemoryJobStore()
    store.create({}, job_id="j-1")
    handler = WebhookHandler(store, backend=backends.Cog("http://cog"), token_secret=TOKENS)
    logs = "loading\n 25%|##  | 1/4\r 50%|#### | 2/4\n"
    running = {"id": "j-1", "status": "processing", "logs": logs, "metrics": {}}
    assert deliver(handler, "j-1", running).json()["outcome"] == "applied"
    assert store.get("j-1").progress == 50.0
    # Cog sends no webhook-id: a throttled re-send of the same state is a duplicate.
    assert deliver(handler, "j-1", running).json()["outcome"] == "duplicate"
    image = "data:image/png;base64," + base64.b64encode(os.urandom(1_500_000)).decode()
    done = {"id": "j-1", "status": "succeeded", "output": image, "logs": logs}
    assert deliver(handler, "j-1", done).json()["outcome"] == "applied"
    assert store.get("j-1").output == image
    # A late "processing" after "succeeded" (Cog does not order them) changes nothing.
    assert deliver(handler, "j-1", {**running, "logs": "x"}).json()["outcome"] == "stale"


def test_cog_callbacks_need_the_token_and_a_prediction_for_another_job_is_refused() -> None:
    store = InMemoryJobStore()
    store.create({}, job_id="j-1")
    with pytest.raises(ValidationError, match="does not sign"):
        WebhookHandler(store, backend=backends.Cog("http://cog"), secret=REPLICATE_SECRET)
    handler = WebhookHandler(store, backend=backends.Cog("http://cog"), token_secret=TOKENS)
    other = {"id": "j-2", "status": "succeeded"}
    assert deliver(handler, "j-1", other).status == 400
    no_token = handler.handle({}, b'{"id": "j-1", "status": "succeeded"}', job_id="j-1")
    assert no_token.status == 401


# -- Replicate ---------------------------------------------------------------------------


def prediction(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": "r8-pred-1", "status": status, "input": {}, "logs": "", **extra}


def replicate_fake(*submit: Answer, **status: list[Answer]) -> Backend:
    return Backend(
        {
            ("POST", "/v1/models/black-forest-labs/flux-schnell/predictions"): list(submit)
            or [httpx.Response(201, json=prediction("starting"))],
            ("GET", "/v1/predictions/r8-pred-1"): status.get("get")
            or [httpx.Response(200, json=prediction("processing"))],
            ("POST", "/v1/predictions/r8-pred-1/cancel"): [
                httpx.Response(200, json=prediction("canceled"))
            ],
        }
    )


REPLICATE = backends.Replicate("r8_token", model="black-forest-labs/flux-schnell")


def test_replicate_submit_records_the_prediction_id_as_remote_id() -> None:
    store = InMemoryJobStore()
    fake = replicate_fake()
    job = client_for(store, REPLICATE, fake).submit({"prompt": "fox"}, job_id="j-1")
    [request] = fake.requests
    assert request.headers["authorization"] == "Bearer r8_token"
    body = json.loads(request.content)
    assert body["input"] == {"prompt": "fox"}
    assert body["webhook_events_filter"] == ["start", "output", "logs", "completed"]
    assert httpx.URL(body["webhook"]).params["token"] == callback_token(TOKENS, "j-1")
    assert (job.status, job.remote_id) == (JobStatus.SUBMITTED, "r8-pred-1")


def test_replicate_version_submits_to_predictions() -> None:
    store = InMemoryJobStore()
    fake = Backend(
        {("POST", "/v1/predictions"): [httpx.Response(201, json=prediction("starting"))]}
    )
    profile = backends.Replicate(
        "t", version="5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa"
    )
    client_for(store, profile, fake).submit({}, job_id="j-1")
    assert json.loads(fake.requests[0].content)["version"].startswith("5c7d")


@pytest.mark.parametrize(
    ("status", "extra", "expected", "code"),
    [
        ("starting", {}, JobStatus.RUNNING, None),
        ("processing", {"logs": "3/10"}, JobStatus.RUNNING, None),
        ("succeeded", {"output": ["https://replicate.delivery/x.png"]}, JobStatus.SUCCEEDED, None),
        ("failed", {"error": "CUDA out of memory"}, JobStatus.FAILED, "prediction_failed"),
        ("canceled", {}, JobStatus.CANCELED, None),
        ("aborted", {}, JobStatus.FAILED, "aborted"),
    ],
)
def test_every_replicate_status_is_read_the_same_by_poll_and_webhook(
    status: str, extra: dict[str, Any], expected: JobStatus, code: str | None
) -> None:
    store = InMemoryJobStore()
    fake = replicate_fake(get=[httpx.Response(200, json=prediction(status, **extra))])
    client = client_for(store, REPLICATE, fake)
    client.submit({}, job_id="j-1")
    polled = client.refresh("j-1")
    assert polled.status is expected
    assert (polled.error.code if polled.error else None) == code
    webhook = REPLICATE.parse_callback(json.dumps(prediction(status, **extra)).encode())
    assert webhook.update.status is expected
    assert webhook.update.remote_id == "r8-pred-1"


def test_replicate_webhooks_are_signed_and_applied_by_token() -> None:
    store = InMemoryJobStore()
    store.create({}, job_id="j-1")
    with pytest.raises(ValidationError, match="token_secret"):
        WebhookHandler(store, backend=REPLICATE, secret=REPLICATE_SECRET)
    handler = WebhookHandler(
        store, backend=REPLICATE, secret=REPLICATE_SECRET, token_secret=TOKENS, clock=lambda: NOW
    )
    body = json.dumps(prediction("succeeded", output=["https://x/1.png"])).encode()
    signed = sign_webhook(REPLICATE_SECRET, body, msg_id="msg_r8", timestamp=NOW)
    assert deliver(handler, "j-1", body, signed).json()["outcome"] == "applied"
    forged = {**signed, "webhook-signature": "v1," + base64.b64encode(b"x" * 32).decode()}
    assert deliver(handler, "j-1", body, forged).status == 401
    assert store.get("j-1").remote_id == "r8-pred-1"


def test_replicate_cancel_applies_what_the_prediction_says() -> None:
    store = InMemoryJobStore()
    client = client_for(store, REPLICATE, replicate_fake())
    client.submit({}, job_id="j-1")
    assert client.cancel("j-1").status is JobStatus.CANCELED


# -- never twice to a backend that would take it as a second job -------------------------


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("dropped"),
        httpx.Response(502),
        httpx.Response(504),
    ],
    ids=["read-timeout", "dropped", "502", "504"],
)
def test_a_replicate_submit_that_may_have_arrived_is_never_sent_again(failure: Answer) -> None:
    store = InMemoryJobStore()
    fake = replicate_fake(failure, httpx.Response(201, json=prediction("starting")))
    client = client_for(store, REPLICATE, fake)
    with pytest.raises(SubmitError) as info:
        client.submit({}, job_id="j-1")
    assert info.value.ambiguous
    assert len(fake.requests) == 1
    assert store.get("j-1").status is JobStatus.PENDING
    # Neither a resubmit nor the reconciler sends it again.
    assert client.resubmit("j-1").status is JobStatus.PENDING
    later = lambda: utcnow() + timedelta(minutes=5)  # noqa: E731
    report = Reconciler(store, client, stale_after=60, give_up_after=3600, clock=later).run_once()
    assert report.resubmitted == ()
    assert len(fake.requests) == 1
    # Past give_up_after it times out instead.
    Reconciler(store, client, stale_after=60, give_up_after=120, clock=later).run_once()
    assert store.get("j-1").error.code == "timed_out"
    assert len(fake.requests) == 1


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.Response(429), httpx.Response(503)],
    ids=["connect", "429", "503"],
)
def test_a_replicate_submit_that_surely_did_not_arrive_is_retried(failure: Answer) -> None:
    store = InMemoryJobStore()
    fake = replicate_fake(failure, httpx.Response(201, json=prediction("starting")))
    job = client_for(store, REPLICATE, fake).submit({}, job_id="j-1")
    assert len(fake.requests) == 2
    assert job.remote_id == "r8-pred-1"


def test_an_idempotent_backend_is_resubmitted_by_the_reconciler() -> None:
    store = InMemoryJobStore()
    fake = cog_fake(httpx.ReadTimeout("slow"), httpx.ReadTimeout("slow"), httpx.ReadTimeout("x"))
    client = client_for(store, backends.Cog("http://cog"), fake)
    with pytest.raises(SubmitError):
        client.submit({}, job_id="j-1")
    assert len(fake.requests) == 3
    fake.routes[("PUT", "/predictions/j-1")] = [httpx.Response(202, json={"id": "j-1"})]
    later = lambda: utcnow() + timedelta(minutes=5)  # noqa: E731
    report = Reconciler(store, client, stale_after=60, give_up_after=3600, clock=later).run_once()
    assert report.resubmitted == ("j-1",)
    assert store.get("j-1").status is JobStatus.SUBMITTED


# -- fal -------------------------------------------------------------------------------


FAL_KEY = bytes(range(32))
ROTATED_KEY = bytes(range(1, 33))


def fal_profile(**options: Any) -> backends.Fal:
    options.setdefault("jwks", jwks_for([FAL_KEY]))
    return backends.Fal("fal-ai/flux/dev", "fal-key", **options)


def fal_fake(**routes: list[Answer]) -> Backend:
    return Backend(
        {
            ("POST", "/fal-ai/flux/dev"): [
                httpx.Response(200, json={"request_id": "fal-1", "gateway_request_id": "fal-1"})
            ],
            ("GET", "/fal-ai/flux/requests/fal-1/status"): routes.get("status")
            or [httpx.Response(200, json={"status": "IN_PROGRESS"})],
            ("GET", "/fal-ai/flux/requests/fal-1"): [
                httpx.Response(200, json={"images": [{"url": "https://fal.media/x.png"}]})
            ],
            ("PUT", "/fal-ai/flux/requests/fal-1/cancel"): [
                httpx.Response(202, json={"status": "CANCELLATION_REQUESTED"})
            ],
        }
    )


def test_fal_submit_queues_with_the_webhook_and_records_the_request_id() -> None:
    store = InMemoryJobStore()
    fake = fal_fake()
    job = client_for(store, fal_profile(), fake).submit({"prompt": "fox"}, job_id="j-1")
    [request] = fake.requests
    assert request.headers["authorization"] == "Key fal-key"
    assert json.loads(request.content) == {"prompt": "fox"}
    webhook = httpx.URL(request.url.params["fal_webhook"])
    assert webhook.params["token"] == callback_token(TOKENS, "j-1")
    assert job.remote_id == "fal-1"


def test_fal_status_and_result_and_cancel() -> None:
    store = InMemoryJobStore()
    fake = fal_fake(
        status=[
            httpx.Response(200, json={"status": "IN_QUEUE", "queue_position": 3}),
            httpx.Response(200, json={"status": "IN_PROGRESS"}),
            httpx.Response(200, json={"status": "COMPLETED"}),
        ]
    )
    client = client_for(store, fal_profile(), fake)
    client.submit({}, job_id="j-1")
    assert client.refresh("j-1").status is JobStatus.SUBMITTED
    assert client.cancel("j-1").status is JobStatus.SUBMITTED  # only requested
    assert client.refresh("j-1").status is JobStatus.RUNNING
    done = client.refresh("j-1")
    assert done.status is JobStatus.SUCCEEDED
    assert done.output == {"images": [{"url": "https://fal.media/x.png"}]}


def fal_webhook(status: str = "OK", key: bytes = FAL_KEY) -> tuple[dict[str, str], bytes]:
    body = json.dumps(
        {
            "request_id": "fal-1",
            "gateway_request_id": "fal-1",
            "status": status,
            "payload": {"images": [{"url": "https://fal.media/x.png"}]},
            "error": "boom" if status == "ERROR" else None,
        }
    ).encode()
    headers = sign_fal_webhook(key, body, request_id="fal-1", user_id="u-1", timestamp=NOW)
    return headers, body


def test_fal_webhooks_are_ed25519_signed_and_a_forgery_is_refused() -> None:
    store = InMemoryJobStore()
    store.create({}, job_id="j-1")
    handler = WebhookHandler(store, backend=fal_profile(), token_secret=TOKENS, clock=lambda: NOW)
    headers, body = fal_webhook()
    forged = {**headers, "x-fal-webhook-signature": "00" * 64}
    assert deliver(handler, "j-1", body, forged).status == 401
    other_key = fal_webhook(key=ROTATED_KEY)[0]
    assert deliver(handler, "j-1", body, other_key).status == 401
    tampered = body.replace(b"x.png", b"y.png")
    assert deliver(handler, "j-1", tampered, headers).status == 401
    assert deliver(handler, "j-1", body, headers).json()["outcome"] == "applied"
    assert deliver(handler, "j-1", body, headers).json()["outcome"] == "duplicate"
    job = store.get("j-1")
    assert (job.status, job.remote_id) == (JobStatus.SUCCEEDED, "fal-1")


def test_fal_keys_are_fetched_once_and_again_for_an_unknown_key() -> None:
    fetched: list[str] = []
    keys = [[FAL_KEY]]

    def fetch(url: str) -> dict[str, Any]:
        fetched.append(url)
        return jwks_for(keys[0])

    profile = backends.Fal("fal-ai/flux/dev", "k", fetch_jwks=fetch)
    store = InMemoryJobStore()
    for job_id in ("j-1", "j-2", "j-3"):
        store.create({}, job_id=job_id)
    handler = WebhookHandler(store, backend=profile, token_secret=TOKENS, clock=lambda: NOW)
    headers, body = fal_webhook()
    assert deliver(handler, "j-1", body, headers).status == 200
    assert deliver(handler, "j-2", body, headers).status == 200
    assert len(fetched) == 1  # cached
    keys[0] = [ROTATED_KEY]  # fal rotates; a webhook signed with the new key arrives
    # The cache is fresh (under a minute old), so the new key is not fetched yet.
    assert deliver(handler, "j-3", *reversed(fal_webhook(key=ROTATED_KEY))).status == 401
    profile._fetched_at = -1e9  # as if the last fetch were long ago
    assert deliver(handler, "j-3", *reversed(fal_webhook(key=ROTATED_KEY))).status == 200
    assert len(fetched) == 2


def test_a_fal_error_webhook_fails_the_job() -> None:
    store = InMemoryJobStore()
    store.create({}, job_id="j-1")
    handler = WebhookHandler(store, backend=fal_profile(), token_secret=TOKENS, clock=lambda: NOW)
    headers, body = fal_webhook("ERROR")
    assert deliver(handler, "j-1", body, headers).json()["status"] == "failed"
    assert store.get("j-1").error.code == "fal_error"


# -- RunPod ----------------------------------------------------------------------------


def runpod_fake(*status: Answer) -> Backend:
    return Backend(
        {
            ("POST", "/v2/ep-1/run"): [
                httpx.Response(200, json={"id": "rp-1", "status": "IN_QUEUE"})
            ],
            ("GET", "/v2/ep-1/status/rp-1"): list(status)
            or [httpx.Response(200, json={"id": "rp-1", "status": "IN_PROGRESS"})],
            ("POST", "/v2/ep-1/cancel/rp-1"): [
                httpx.Response(200, json={"id": "rp-1", "status": "CANCELLED"})
            ],
        }
    )


RUNPOD = backends.RunPod("ep-1", "rp-key")


def test_runpod_submit_and_its_statuses() -> None:
    store = InMemoryJobStore()
    fake = runpod_fake(
        httpx.Response(200, json={"id": "rp-1", "status": "IN_PROGRESS"}),
        httpx.Response(200, json={"id": "rp-1", "status": "FAILED", "error": "handler raised"}),
    )
    client = client_for(store, RUNPOD, fake)
    job = client.submit({"prompt": "fox"}, job_id="j-1")
    request = fake.requests[0]
    assert request.headers["authorization"] == "Bearer rp-key"
    body = json.loads(request.content)
    assert body["input"] == {"prompt": "fox"}
    assert httpx.URL(body["webhook"]).params["token"] == callback_token(TOKENS, "j-1")
    assert job.remote_id == "rp-1"
    assert client.refresh("j-1").status is JobStatus.RUNNING
    # A failed RunPod job may send no webhook: polling settles it.
    failed = client.refresh("j-1")
    assert (failed.status, failed.error.code) == (JobStatus.FAILED, "runpod_failed")


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("IN_QUEUE", JobStatus.SUBMITTED),
        ("IN_PROGRESS", JobStatus.RUNNING),
        ("COMPLETED", JobStatus.SUCCEEDED),
        ("FAILED", JobStatus.FAILED),
        ("CANCELLED", JobStatus.CANCELED),
        ("TIMED_OUT", JobStatus.FAILED),
    ],
)
def test_every_runpod_status(status: str, expected: JobStatus) -> None:
    parsed = RUNPOD.parse_callback(json.dumps({"id": "rp-1", "status": status}).encode())
    assert parsed.update.status is expected


def test_runpod_input_must_be_an_object_and_the_job_fails_before_sending() -> None:
    store = InMemoryJobStore()
    fake = runpod_fake()
    with pytest.raises(SubmitError, match="JSON object"):
        client_for(store, RUNPOD, fake).submit(["not", "an", "object"], job_id="j-1")
    assert fake.requests == []
    assert store.get("j-1").error.code == "submit_invalid"


def test_runpod_local_server_routes_and_its_bare_output_webhook() -> None:
    profile = backends.RunPod.local("http://127.0.0.1:8000")
    store = InMemoryJobStore()
    fake = Backend(
        {
            ("POST", "/run"): [httpx.Response(200, json={"id": "test-1", "status": "IN_PROGRESS"})],
            ("POST", "/status/test-1"): [
                httpx.Response(200, json={"id": "test-1", "status": "COMPLETED", "output": 42})
            ],
        }
    )
    client = client_for(store, profile, fake)
    client.submit({"n": 1}, job_id="j-1")
    assert client.refresh("j-1").output == 42
    store.create({}, job_id="j-2")
    handler = WebhookHandler(store, backend=profile, token_secret=TOKENS)
    assert deliver(handler, "j-2", {"output": {"text": "hi"}}).json()["status"] == "succeeded"


# -- OpenAI ----------------------------------------------------------------------------

OPENAI_SECRET = "whsec_b3BlbmFpLXByb2plY3Qtd2ViaG9vay1zZWNyZXQ="
OPENAI = backends.OpenAI("sk-test", model="gpt-image-test")


def response(status: str, **extra: Any) -> dict[str, Any]:
    return {"id": "resp_1", "object": "response", "status": status, "output": [], **extra}


def openai_fake(*get: Answer) -> Backend:
    return Backend(
        {
            ("POST", "/v1/responses"): [httpx.Response(200, json=response("queued"))],
            ("GET", "/v1/responses/resp_1"): list(get)
            or [httpx.Response(200, json=response("in_progress"))],
            ("POST", "/v1/responses/resp_1/cancel"): [
                httpx.Response(200, json=response("cancelled"))
            ],
        }
    )


def event(kind: str, remote_id: str = "resp_1") -> bytes:
    return json.dumps(
        {
            "id": "evt_1",
            "object": "event",
            "type": kind,
            "created_at": NOW,
            "data": {"id": remote_id},
        }
    ).encode()


def openai_handler(store: Any, client: GeneratorClient) -> WebhookHandler:
    return WebhookHandler(
        store, backend=OPENAI, secret=OPENAI_SECRET, client=client, clock=lambda: NOW
    )


def post_event(handler: WebhookHandler, body: bytes, msg_id: str = "msg_1") -> Any:
    # One project-wide URL: no job id in the route, no token.
    return handler.handle(sign_webhook(OPENAI_SECRET, body, msg_id=msg_id, timestamp=NOW), body)


def test_openai_submits_a_background_response_and_records_its_id() -> None:
    store = InMemoryJobStore()
    fake = openai_fake()
    job = client_for(store, OPENAI, fake).submit("a fox, in watercolour", job_id="j-1")
    [request] = fake.requests
    body = json.loads(request.content)
    assert body == {
        "model": "gpt-image-test",
        "input": "a fox, in watercolour",
        "background": True,
        "metadata": {"jobhook_job_id": "j-1"},
    }
    assert request.headers["authorization"] == "Bearer sk-test"
    assert job.remote_id == "resp_1"


@pytest.mark.parametrize(
    ("status", "extra", "expected", "code"),
    [
        ("queued", {}, JobStatus.SUBMITTED, None),
        ("in_progress", {}, JobStatus.RUNNING, None),
        ("completed", {"output": [{"type": "message"}]}, JobStatus.SUCCEEDED, None),
        (
            "failed",
            {"error": {"code": "server_error", "message": "x"}},
            JobStatus.FAILED,
            "server_error",
        ),
        ("cancelled", {}, JobStatus.CANCELED, None),
        (
            "incomplete",
            {"incomplete_details": {"reason": "max_output_tokens"}},
            JobStatus.FAILED,
            "incomplete",
        ),
    ],
)
def test_every_openai_status(
    status: str, extra: dict[str, Any], expected: JobStatus, code: str | None
) -> None:
    store = InMemoryJobStore()
    client = client_for(
        store, OPENAI, openai_fake(httpx.Response(200, json=response(status, **extra)))
    )
    client.submit("x", job_id="j-1")
    polled = client.refresh("j-1")
    assert polled.status is expected
    assert (polled.error.code if polled.error else None) == code


def test_a_thin_completed_event_finds_the_job_by_remote_id_and_fetches_its_output() -> None:
    store = InMemoryJobStore()
    done = response("completed", output=[{"type": "image_generation_call", "result": "aGk="}])
    fake = openai_fake(httpx.Response(200, json=done))
    client = client_for(store, OPENAI, fake)
    with pytest.raises(ValidationError, match="client="):
        WebhookHandler(store, backend=OPENAI, secret=OPENAI_SECRET)
    handler = openai_handler(store, client)
    client.submit("x", job_id="j-1")
    answer = post_event(handler, event("response.completed"))
    assert answer.json() == {"outcome": "applied", "job_id": "j-1", "status": "succeeded"}
    job = store.get("j-1")
    assert job.output == done["output"]  # never succeeded without its output
    assert post_event(handler, event("response.completed")).json()["outcome"] == "duplicate"
    forged = {
        **sign_webhook(OPENAI_SECRET, event("response.completed")),
        "webhook-signature": "v1,AAAA",
    }
    assert handler.handle(forged, event("response.completed")).status == 401


def test_a_thin_event_for_an_unknown_response_is_kept_as_a_dead_letter() -> None:
    store = InMemoryJobStore()
    handler = openai_handler(store, client_for(store, OPENAI, openai_fake()))
    answer = post_event(handler, event("response.failed", "resp_unknown"))
    assert answer.status == 404
    [letter] = store.dead_letters()
    assert letter.job_id == "remote:resp_unknown"
    assert letter.update.remote_id == "resp_unknown"


# -- the async twins share the rules -----------------------------------------------------


def test_the_async_client_and_handler_drive_a_profile_the_same_way() -> None:
    import asyncio

    from jobhook import AsyncGeneratorClient, AsyncInMemoryJobStore

    async def main() -> None:
        store = AsyncInMemoryJobStore()
        done = response("completed", output=[{"type": "message", "text": "hi"}])
        fake = openai_fake(httpx.Response(200, json=done))
        retry = RetryPolicy(max_attempts=2, backoff=0)

        async def no_sleep(seconds: float) -> None:
            return None

        client = AsyncGeneratorClient(
            store,
            OPENAI,
            callback_url=CALLBACK,
            retry=retry,
            http_client=httpx.AsyncClient(transport=httpx.MockTransport(fake)),
            sleep=no_sleep,
        )
        job = await client.submit("x", job_id="j-1")
        assert job.remote_id == "resp_1"
        handler = WebhookHandler(
            store, backend=OPENAI, secret=OPENAI_SECRET, client=client, clock=lambda: NOW
        )
        body = event("response.completed")
        headers = sign_webhook(OPENAI_SECRET, body, msg_id="msg_1", timestamp=NOW)
        answer = await handler.ahandle(headers, body)
        assert answer.json()["outcome"] == "applied"
        assert (await store.get("j-1")).output == done["output"]
        # A non-idempotent submit that may have arrived is not resent by the async twin.
        fake.routes[("POST", "/v1/responses")] = [httpx.ReadTimeout("slow")]
        with pytest.raises(SubmitError) as info:
            await client.submit("y", job_id="j-2")
        assert info.value.ambiguous
        assert len(fake.sent("POST", "/v1/responses")) == 2  # j-1 once, j-2 once
        await client.aclose()

    asyncio.run(main())


# -- the webhook that beats the submit answer ------------------------------------------------


def test_a_thin_event_that_beats_the_submit_answer_is_applied_once_the_answer_lands() -> None:
    store = InMemoryJobStore()
    done = response("completed", output=[{"type": "message", "text": "early"}])
    fake = openai_fake(httpx.Response(200, json=done))
    client = client_for(store, OPENAI, fake)
    handler = openai_handler(store, client)
    # OpenAI answers the event before our submit's answer recorded resp_1.
    assert post_event(handler, event("response.completed")).status == 404
    [letter] = store.dead_letters()
    job = client.submit("x", job_id="j-1")
    assert (job.status, job.output) == (JobStatus.SUCCEEDED, done["output"])
    assert store.dead_letters() == []  # replayed
    assert store.dead_letters(include_replayed=True)[0].id == letter.id


def test_a_signed_delivery_naming_only_a_remote_id_waits_for_it_and_applies_once() -> None:
    secret = REPLICATE_SECRET
    store = InMemoryJobStore()
    handler = WebhookHandler(store, secret=secret, clock=lambda: NOW)
    body = json.dumps({"status": "succeeded", "remote_id": "gen-7", "output": {"url": "a.png"}})
    headers = sign_webhook(secret, body, msg_id="msg_early", timestamp=NOW)
    assert handler.handle(headers, body).status == 404
    fake = Backend({("POST", "/jobs"): [httpx.Response(202, json={"remote_id": "gen-7"})]})
    job = client_for(store, "https://gen.example", fake).submit({}, job_id="j-1")
    assert (job.status, job.output) == (JobStatus.SUCCEEDED, {"url": "a.png"})
    # The sender's retry of the early delivery is now a duplicate of the replayed one.
    assert handler.handle(headers, body).json()["outcome"] == "duplicate"
    assert [e.delivery_id for e in store.events()] == [None, "msg_early"]


def test_misconfigurations_are_refused_when_built() -> None:
    store = InMemoryJobStore()
    with pytest.raises(ValidationError, match="checks its own signatures"):
        WebhookHandler(store, backend=fal_profile(), secret=REPLICATE_SECRET, token_secret=TOKENS)
    with pytest.raises(ValidationError, match="name no job id"):
        WebhookHandler(store, backend=fal_profile())
    for build in (
        lambda: backends.Replicate("tøken", model="o/n"),
        lambda: backends.OpenAI(" sk-x", model="m"),
        lambda: backends.Fal("o/a", ""),
        lambda: backends.RunPod("ep", "kéy"),
    ):
        with pytest.raises(ValidationError, match="ASCII"):
            build()


def test_fal_keys_can_be_loaded_at_start_up() -> None:
    fetched: list[str] = []

    def fetch(url: str) -> dict[str, Any]:
        fetched.append(url)
        return jwks_for([FAL_KEY])

    profile = backends.Fal("fal-ai/flux/dev", "k", fetch_jwks=fetch)
    profile.load_keys()
    assert len(fetched) == 1
    store = InMemoryJobStore()
    store.create({}, job_id="j-1")
    handler = WebhookHandler(store, backend=profile, token_secret=TOKENS, clock=lambda: NOW)
    headers, body = fal_webhook()
    assert deliver(handler, "j-1", body, headers).status == 200
    assert len(fetched) == 1


def test_the_callback_sender_takes_the_same_retry_policy() -> None:
    from jobhook import CallbackSender

    answers = iter([503, 503, 200])
    calls: list[httpx.Request] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        return httpx.Response(next(answers))

    sender = CallbackSender(
        REPLICATE_SECRET,
        retry=RetryPolicy(max_attempts=2, backoff=0),
        http_client=httpx.Client(transport=httpx.MockTransport(receiver)),
        sleep=lambda s: None,
    )
    assert not sender.send("https://app.example/hook", {"status": "running"}).delivered
    assert len(calls) == 2
    with pytest.raises(ValidationError, match="either retry"):
        CallbackSender(REPLICATE_SECRET, retry=RetryPolicy(), max_attempts=3)


def test_a_failed_fal_request_is_settled_by_polling_with_its_reason() -> None:
    store = InMemoryJobStore()
    detail = {"detail": [{"loc": ["body", "prompt"], "msg": "field required"}]}
    fake = fal_fake(status=[httpx.Response(200, json={"status": "COMPLETED"})])
    fake.routes[("GET", "/fal-ai/flux/requests/fal-1")] = [httpx.Response(422, json=detail)]
    client = client_for(store, fal_profile(), fake)
    client.submit({}, job_id="j-1")
    failed = client.refresh("j-1")
    assert (failed.status, failed.error.code) == (JobStatus.FAILED, "fal_error")
    assert "field required" in failed.error.message


def test_a_fal_error_webhook_keeps_the_reason_from_the_payload() -> None:
    body = json.dumps(
        {
            "request_id": "fal-1",
            "status": "ERROR",
            "error": "Invalid status code: 422",
            "payload": {"detail": [{"msg": "field required"}]},
        }
    ).encode()
    update = fal_profile().parse_callback(body).update
    assert "field required" in update.error.message


def test_openai_needs_no_callback_url_and_others_still_do() -> None:
    store = InMemoryJobStore()
    fake = openai_fake()
    client = GeneratorClient(
        store, OPENAI, http_client=httpx.Client(transport=httpx.MockTransport(fake))
    )
    assert client.submit("x", job_id="j-1").remote_id == "resp_1"
    with pytest.raises(ValidationError, match="callback_url"):
        GeneratorClient(store, backends.Cog("http://cog"))
