"""GeneratorClient against a mocked backend (pytest-httpx): every retry and failure path."""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from jobhook import (
    BackendError,
    GeneratorClient,
    InMemoryJobStore,
    JobExistsError,
    JobIdMismatchError,
    JobNotFoundError,
    JobStatus,
    JobUpdate,
    StoreUnavailableError,
    SubmitError,
    ValidationError,
)
from jobhook._http import RetryPolicy, retry_after_seconds
from jobhook._signing import callback_token, new_webhook_secret, verify_callback_token

BASE = "https://gen.test"
SUBMIT_URL = f"{BASE}/jobs"
CALLBACK = "https://app.test/webhooks/jobhook/{job_id}"

MakeClient = Callable[..., GeneratorClient]


@pytest.fixture
def store() -> InMemoryJobStore:
    return InMemoryJobStore()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(store: InMemoryJobStore, sleeps: list[float]) -> MakeClient:
    def make(**kwargs: Any) -> GeneratorClient:
        options: dict[str, Any] = {
            "callback_url": CALLBACK,
            "sleep": sleeps.append,
            "rng": random.Random(1),
        }
        target = kwargs.pop("store", store)
        options.update(kwargs)
        return GeneratorClient(target, BASE, **options)

    return make


def body_of(request: httpx.Request) -> Any:
    return json.loads(request.content)


# --- the happy path ---------------------------------------------------------------


def test_submit_sends_job_id_callback_and_idempotency_key(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    httpx_mock.add_response(method="POST", url=SUBMIT_URL, status_code=202, json={})
    client = make_client(headers={"Authorization": "Bearer k"})

    job = client.submit({"prompt": "a red fox"}, kind="image", owner_id="u1")

    request = httpx_mock.get_request()
    assert request is not None
    assert request.headers["Idempotency-Key"] == job.id
    assert request.headers["Authorization"] == "Bearer k"
    assert request.headers["Content-Type"] == "application/json"
    assert body_of(request) == {
        "job_id": job.id,
        "callback_url": f"https://app.test/webhooks/jobhook/{job.id}",
        "kind": "image",
        "input": {"prompt": "a red fox"},
    }
    assert job.status is JobStatus.SUBMITTED
    assert store.get(job.id).status is JobStatus.SUBMITTED
    assert store.get(job.id).owner_id == "u1"


def test_the_job_is_committed_before_the_request_leaves(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    seen: list[JobStatus] = []

    def backend(request: httpx.Request) -> httpx.Response:
        seen.append(store.get(body_of(request)["job_id"]).status)
        return httpx.Response(202, json={})

    httpx_mock.add_callback(backend)
    make_client().submit({"prompt": "x"}, job_id="j-1")
    assert seen == [JobStatus.PENDING]


def test_the_client_timeout_is_set_on_each_request(
    httpx_mock: HTTPXMock, make_client: MakeClient
) -> None:
    httpx_mock.add_response(status_code=202)
    make_client(timeout=2.5).submit({})
    request = httpx_mock.get_request()
    assert request is not None
    assert request.extensions["timeout"]["read"] == 2.5


def test_remote_id_is_recorded(httpx_mock: HTTPXMock, make_client: MakeClient) -> None:
    httpx_mock.add_response(status_code=201, json={"job_id": "j-1", "remote_id": "r-9"})
    assert make_client().submit({}, job_id="j-1").remote_id == "r-9"


def test_a_hosted_api_id_without_job_id_becomes_remote_id(
    httpx_mock: HTTPXMock, make_client: MakeClient
) -> None:
    httpx_mock.add_response(status_code=201, json={"id": "pred_123", "status": "starting"})
    assert make_client().submit({}).remote_id == "pred_123"


def test_a_non_json_2xx_answer_is_accepted(httpx_mock: HTTPXMock, make_client: MakeClient) -> None:
    httpx_mock.add_response(status_code=202, text="accepted")
    assert make_client().submit({}).status is JobStatus.SUBMITTED


def test_submitted_lands_stale_when_the_webhook_won_the_race(
    httpx_mock: HTTPXMock,
    make_client: MakeClient,
    store: InMemoryJobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def backend(request: httpx.Request) -> httpx.Response:
        # The backend finishes and its webhook is applied before it answers.
        store.apply(body_of(request)["job_id"], JobUpdate(JobStatus.SUCCEEDED, output=[1]))
        return httpx.Response(202, json={"job_id": body_of(request)["job_id"]})

    httpx_mock.add_callback(backend)
    with caplog.at_level(logging.INFO, logger="jobhook"):
        job = make_client().submit({}, job_id="j-1")
    assert job.status is JobStatus.SUCCEEDED
    assert job.output == [1]
    assert [e.status for e in store.events()] == [JobStatus.SUCCEEDED]
    assert "outcome=stale" in caplog.text


# --- nothing leaves without a stored job ------------------------------------------


class BrokenStore(InMemoryJobStore):
    def create(self, *args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailableError("database is down")


def test_no_request_is_sent_when_the_store_cannot_create(
    httpx_mock: HTTPXMock, make_client: MakeClient
) -> None:
    client = make_client(store=BrokenStore())
    with pytest.raises(StoreUnavailableError):
        client.submit({"prompt": "x"})
    assert httpx_mock.get_requests() == []


def test_no_request_is_sent_for_a_taken_job_id(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    with pytest.raises(JobExistsError):
        make_client().submit({}, job_id="j-1")
    assert httpx_mock.get_requests() == []


def test_no_request_is_sent_for_input_json_cannot_hold(
    httpx_mock: HTTPXMock, make_client: MakeClient
) -> None:
    with pytest.raises(ValidationError):
        make_client().submit({"bad": {1, 2}})
    assert httpx_mock.get_requests() == []


# --- retries ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504])
def test_transient_statuses_are_retried_under_the_same_job_id(
    httpx_mock: HTTPXMock, make_client: MakeClient, sleeps: list[float], status: int
) -> None:
    httpx_mock.add_response(status_code=status)
    httpx_mock.add_response(status_code=status)
    httpx_mock.add_response(status_code=202)

    job = make_client().submit({})

    requests = httpx_mock.get_requests()
    assert len(requests) == 3
    assert {r.headers["Idempotency-Key"] for r in requests} == {job.id}
    assert {body_of(r)["job_id"] for r in requests} == {job.id}
    assert len(sleeps) == 2
    assert job.status is JobStatus.SUBMITTED


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("refused"),
        httpx.ConnectTimeout("slow connect"),
        httpx.ReadTimeout("slow answer"),
        httpx.RemoteProtocolError("server hung up"),
    ],
)
def test_network_errors_and_timeouts_are_retried(
    httpx_mock: HTTPXMock, make_client: MakeClient, sleeps: list[float], error: Exception
) -> None:
    httpx_mock.add_exception(error)
    httpx_mock.add_response(status_code=202)
    assert make_client().submit({}).status is JobStatus.SUBMITTED
    assert len(httpx_mock.get_requests()) == 2
    assert len(sleeps) == 1


def test_backoff_grows_with_jitter(
    httpx_mock: HTTPXMock, make_client: MakeClient, sleeps: list[float]
) -> None:
    for _ in range(4):
        httpx_mock.add_response(status_code=503)
    httpx_mock.add_response(status_code=202)
    make_client(max_attempts=5, backoff=1.0).submit({})
    assert len(sleeps) == 4
    for attempt, delay in enumerate(sleeps, start=1):
        assert 2 ** (attempt - 1) / 2 <= delay <= 2 ** (attempt - 1)


def test_retry_after_seconds_is_obeyed(
    httpx_mock: HTTPXMock, make_client: MakeClient, sleeps: list[float]
) -> None:
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "7"})
    httpx_mock.add_response(status_code=202)
    make_client().submit({})
    assert sleeps == [7.0]


def test_retry_after_http_date_is_obeyed(
    httpx_mock: HTTPXMock, make_client: MakeClient, sleeps: list[float]
) -> None:
    when = datetime.now(timezone.utc) + timedelta(seconds=20)
    httpx_mock.add_response(status_code=503, headers={"Retry-After": format_datetime(when, True)})
    httpx_mock.add_response(status_code=202)
    make_client().submit({})
    assert len(sleeps) == 1
    assert 10 < sleeps[0] <= 20


def test_a_retry_after_beyond_max_backoff_ends_the_retries(
    httpx_mock: HTTPXMock, make_client: MakeClient, sleeps: list[float], store: InMemoryJobStore
) -> None:
    httpx_mock.add_response(status_code=429, headers={"Retry-After": "3600"})
    with pytest.raises(SubmitError) as info:
        make_client(max_backoff=60).submit({})
    assert sleeps == []
    assert len(httpx_mock.get_requests()) == 1
    # A 429 is the backend saying no: nothing was taken, so the refusal is definite.
    assert info.value.ambiguous is False
    assert store.get(info.value.job.id).status is JobStatus.FAILED


def test_retry_after_parsing() -> None:
    def answer(value: str) -> httpx.Response:
        return httpx.Response(503, headers={"Retry-After": value})

    assert retry_after_seconds(answer("12")) == 12.0
    assert retry_after_seconds(answer("-3")) == 0.0
    assert retry_after_seconds(answer("soon")) is None
    assert retry_after_seconds(httpx.Response(503)) is None
    past = format_datetime(datetime(2000, 1, 1, tzinfo=timezone.utc), True)
    assert retry_after_seconds(answer(past)) == 0.0


def test_retry_policy_refuses_nonsense() -> None:
    with pytest.raises(ValidationError):
        RetryPolicy(max_attempts=0)
    with pytest.raises(ValidationError):
        RetryPolicy(backoff=-1)


# --- definite refusals: the job fails ----------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_4xx_refusal_fails_the_job_without_retrying(
    httpx_mock: HTTPXMock,
    make_client: MakeClient,
    store: InMemoryJobStore,
    sleeps: list[float],
    status: int,
) -> None:
    httpx_mock.add_response(status_code=status, json={"detail": "prompt must not be empty"})
    with pytest.raises(SubmitError) as info:
        make_client().submit({"prompt": ""})
    error = info.value
    assert error.ambiguous is False
    assert error.response is not None
    assert error.response.status_code == status
    assert error.request is not None
    assert error.job.status is JobStatus.FAILED
    stored = store.get(error.job.id)
    assert stored.status is JobStatus.FAILED
    assert stored.error is not None
    assert stored.error.code == "submit_rejected"
    assert str(status) in stored.error.message
    assert "prompt must not be empty" in stored.error.message
    assert len(httpx_mock.get_requests()) == 1
    assert sleeps == []


@pytest.mark.parametrize("status", [408, 429, 503])
def test_refusals_that_run_out_of_retries_fail_the_job(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore, status: int
) -> None:
    for _ in range(3):
        httpx_mock.add_response(status_code=status, text="busy")
    with pytest.raises(SubmitError) as info:
        make_client().submit({})
    assert info.value.ambiguous is False
    assert store.get(info.value.job.id).status is JobStatus.FAILED
    assert len(httpx_mock.get_requests()) == 3


def test_connect_errors_only_fail_the_job_as_unreachable(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    for _ in range(3):
        httpx_mock.add_exception(httpx.ConnectError("connection refused"))
    with pytest.raises(SubmitError) as info:
        make_client().submit({})
    assert info.value.ambiguous is False
    assert info.value.request is not None
    stored = store.get(info.value.job.id)
    assert stored.status is JobStatus.FAILED
    assert stored.error is not None
    assert stored.error.code == "backend_unreachable"


# --- ambiguous ends: the job stays pending -----------------------------------------


@pytest.mark.parametrize(
    "failures",
    [
        [httpx.ReadTimeout("slow")] * 3,
        [httpx.ReadTimeout("slow"), httpx.ConnectError("down"), httpx.ConnectError("down")],
        [502, 502, 502],
        [504, 503, 429],
    ],
    ids=["read-timeouts", "timeout-then-connect-errors", "bad-gateway", "gateway-timeout-first"],
)
def test_an_end_that_may_have_arrived_leaves_the_job_pending(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore, failures: list[Any]
) -> None:
    for failure in failures:
        if isinstance(failure, int):
            httpx_mock.add_response(status_code=failure)
        else:
            httpx_mock.add_exception(failure)
    with pytest.raises(SubmitError) as info:
        make_client().submit({})
    assert info.value.ambiguous is True
    assert info.value.job.status is JobStatus.PENDING
    assert store.get(info.value.job.id).status is JobStatus.PENDING
    assert len(httpx_mock.get_requests()) == 3


def test_a_500_is_ambiguous_and_not_retried(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    httpx_mock.add_response(status_code=500, text="Internal Server Error")
    with pytest.raises(SubmitError) as info:
        make_client().submit({})
    assert info.value.ambiguous is True
    assert info.value.response is not None
    assert store.get(info.value.job.id).status is JobStatus.PENDING
    assert len(httpx_mock.get_requests()) == 1


def test_a_definite_refusal_after_a_gateway_error_fails_the_job(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    httpx_mock.add_response(status_code=502)
    httpx_mock.add_response(status_code=422, json={"message": "bad size"})
    with pytest.raises(SubmitError) as info:
        make_client().submit({})
    assert info.value.ambiguous is False
    assert store.get(info.value.job.id).status is JobStatus.FAILED


# --- the original bug --------------------------------------------------------------


def test_a_different_job_id_in_the_answer_fails_the_job(
    httpx_mock: HTTPXMock,
    make_client: MakeClient,
    store: InMemoryJobStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    httpx_mock.add_response(status_code=202, json={"job_id": "backend-own-id"})
    with (
        caplog.at_level(logging.ERROR, logger="jobhook"),
        pytest.raises(JobIdMismatchError) as info,
    ):
        make_client().submit({}, job_id="app-id")
    error = info.value
    assert isinstance(error, SubmitError)
    assert error.remote_job_id == "backend-own-id"
    assert error.ambiguous is False
    assert error.response is not None
    stored = store.get("app-id")
    assert stored.status is JobStatus.FAILED
    assert stored.error is not None
    assert stored.error.code == "job_id_mismatch"
    assert error.job == stored
    assert "app-id" in caplog.text
    assert "backend-own-id" in caplog.text


# --- refresh, cancel, wait ---------------------------------------------------------


STATUS_URL = f"{BASE}/jobs/j-1"
CANCEL_URL = f"{BASE}/jobs/j-1/cancel"


def test_refresh_applies_what_the_status_endpoint_says(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    httpx_mock.add_response(
        method="GET",
        url=STATUS_URL,
        json={"job_id": "j-1", "status": "succeeded", "output": {"images": ["u"]}},
    )
    job = make_client(status_path="/jobs/{job_id}").refresh("j-1")
    assert job.status is JobStatus.SUCCEEDED
    assert job.output == {"images": ["u"]}
    assert store.get("j-1").status is JobStatus.SUCCEEDED


def test_refresh_does_not_write_when_nothing_changed(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    store.apply("j-1", JobUpdate(JobStatus.RUNNING, progress=40))
    httpx_mock.add_response(
        url=STATUS_URL,
        json={"job_id": "j-1", "status": "running", "progress": 40},
        is_reusable=True,
    )
    client = make_client(status_path="/jobs/{job_id}")
    client.refresh("j-1")
    client.refresh("j-1")
    assert len(store.events()) == 1


def test_refresh_by_remote_id(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    store.apply("j-1", JobUpdate(JobStatus.SUBMITTED, remote_id="r 7"))
    httpx_mock.add_response(url=f"{BASE}/v1/r%207", json={"status": "running", "progress": 5})
    job = make_client(status_path="/v1/{remote_id}").refresh("j-1")
    assert job.status is JobStatus.RUNNING


@pytest.mark.parametrize(
    ("answer", "status"),
    [
        ({"json": {"job_id": "j-1", "status": "nonsense"}}, 200),
        ({"text": "not json"}, 200),
        ({"json": {"job_id": "other", "status": "succeeded"}}, 200),
        ({"json": {"error": "no such job"}}, 404),
    ],
    ids=["unknown-status", "not-json", "other-job", "404"],
)
def test_refresh_raises_backend_error_on_an_unusable_answer(
    httpx_mock: HTTPXMock,
    make_client: MakeClient,
    store: InMemoryJobStore,
    answer: dict[str, Any],
    status: int,
) -> None:
    store.create({}, job_id="j-1")
    httpx_mock.add_response(url=STATUS_URL, status_code=status, **answer)
    with pytest.raises(BackendError) as info:
        make_client(status_path="/jobs/{job_id}").refresh("j-1")
    assert info.value.response is not None
    assert store.get("j-1").status is JobStatus.PENDING


def test_refresh_needs_a_status_path_and_a_known_job(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    with pytest.raises(ValidationError):
        make_client().refresh("j-1")
    with pytest.raises(JobNotFoundError):
        make_client(status_path="/jobs/{job_id}").refresh("nope")
    with pytest.raises(ValidationError):
        make_client(status_path="/v1/{remote_id}").refresh("j-1")
    assert httpx_mock.get_requests() == []


def test_cancel_applies_canceled_when_the_backend_confirms(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    httpx_mock.add_response(method="POST", url=CANCEL_URL, status_code=202)
    job = make_client(cancel_path="/jobs/{job_id}/cancel").cancel("j-1")
    assert job.status is JobStatus.CANCELED
    assert store.get("j-1").status is JobStatus.CANCELED


def test_cancel_applies_the_backend_s_own_answer(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    httpx_mock.add_response(url=CANCEL_URL, json={"job_id": "j-1", "status": "succeeded"})
    job = make_client(cancel_path="/jobs/{job_id}/cancel").cancel("j-1")
    assert job.status is JobStatus.SUCCEEDED


def test_cancel_refused_leaves_the_job(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    httpx_mock.add_response(url=CANCEL_URL, status_code=409, json={"error": "too late"})
    with pytest.raises(BackendError, match="too late"):
        make_client(cancel_path="/jobs/{job_id}/cancel").cancel("j-1")
    assert store.get("j-1").status is JobStatus.PENDING


def test_cancel_of_a_terminal_job_sends_nothing(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    store.apply("j-1", JobUpdate(JobStatus.SUCCEEDED))
    job = make_client(cancel_path="/jobs/{job_id}/cancel").cancel("j-1")
    assert job.status is JobStatus.SUCCEEDED
    assert httpx_mock.get_requests() == []


def test_cancel_needs_a_cancel_path(make_client: MakeClient, store: InMemoryJobStore) -> None:
    store.create({}, job_id="j-1")
    with pytest.raises(ValidationError):
        make_client().cancel("j-1")


def test_wait_returns_a_terminal_job(make_client: MakeClient, store: InMemoryJobStore) -> None:
    store.create({}, job_id="j-1")
    store.apply("j-1", JobUpdate(JobStatus.FAILED))
    assert make_client().wait("j-1", timeout=5).status is JobStatus.FAILED


def test_wait_polls_the_store_until_the_webhook_lands(
    make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    naps: list[float] = []

    def sleep(seconds: float) -> None:
        naps.append(seconds)
        if len(naps) == 2:  # the webhook arrives while the caller waits
            store.apply("j-1", JobUpdate(JobStatus.SUCCEEDED))

    job = make_client(sleep=sleep).wait("j-1", timeout=60, poll_interval=0.25)
    assert job.status is JobStatus.SUCCEEDED
    assert naps == [0.25, 0.25]


def test_wait_refreshes_when_a_status_endpoint_exists(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    httpx_mock.add_response(url=STATUS_URL, json={"job_id": "j-1", "status": "running"})
    httpx_mock.add_response(url=STATUS_URL, json={"job_id": "j-1", "status": "canceled"})
    job = make_client(status_path="/jobs/{job_id}").wait("j-1", timeout=60, poll_interval=0.1)
    assert job.status is JobStatus.CANCELED


def test_wait_survives_a_failing_status_endpoint(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    httpx_mock.add_response(url=STATUS_URL, status_code=404)
    httpx_mock.add_response(url=STATUS_URL, json={"job_id": "j-1", "status": "succeeded"})
    job = make_client(status_path="/jobs/{job_id}").wait("j-1", timeout=60, poll_interval=0.1)
    assert job.status is JobStatus.SUCCEEDED


def test_wait_gives_up_after_the_timeout(make_client: MakeClient, store: InMemoryJobStore) -> None:
    store.create({}, job_id="j-1")
    with pytest.raises(TimeoutError, match="pending"):
        make_client().wait("j-1", timeout=0)


# --- construction and lifetime -----------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"callback_url": "https://app.test/webhooks/jobhook"},
        {"max_attempts": 0},
        {"timeout": 0},
    ],
)
def test_bad_configuration_is_refused(make_client: MakeClient, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make_client(**kwargs)


def test_a_relative_base_url_is_refused(store: InMemoryJobStore) -> None:
    with pytest.raises(ValidationError):
        GeneratorClient(store, "gen.test", callback_url=CALLBACK)


def test_the_context_manager_closes_its_own_http_client(store: InMemoryJobStore) -> None:
    with GeneratorClient(store, BASE, callback_url=CALLBACK) as client:
        inner = client._http
    assert inner.is_closed


def test_an_injected_http_client_is_used_and_left_open(store: InMemoryJobStore) -> None:
    seen: list[httpx.Request] = []

    def backend(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(202)

    http = httpx.Client(transport=httpx.MockTransport(backend), headers={"X-App": "demo"})
    with GeneratorClient(store, BASE, callback_url=CALLBACK, http_client=http) as client:
        client.submit({})
    assert not http.is_closed
    assert seen[0].headers["X-App"] == "demo"
    http.close()


def test_repr_shows_no_secrets(store: InMemoryJobStore) -> None:
    client = GeneratorClient(store, BASE, callback_url=CALLBACK, token_secret="s3cret")
    assert "s3cret" not in repr(client)
    client.close()


def test_the_callback_url_carries_the_job_token(
    httpx_mock: HTTPXMock, make_client: MakeClient
) -> None:
    secret = new_webhook_secret()
    httpx_mock.add_response(status_code=202)
    job = make_client(token_secret=secret).submit({}, job_id="a.b~c_d-1")
    request = httpx_mock.get_request()
    assert request is not None
    url = httpx.URL(body_of(request)["callback_url"])
    assert url.raw_path.startswith(b"/webhooks/jobhook/a.b~c_d-1?")
    token = url.params["token"]
    assert token == callback_token(secret, job.id)
    verify_callback_token(secret, job.id, token)


@pytest.mark.parametrize("job_id", ["a/b", "a b", "..", ".", "café-1", "x" * 256, ""])
def test_a_job_id_no_callback_url_can_carry_is_refused_before_anything_is_sent(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore, job_id: str
) -> None:
    client = make_client(token_secret=new_webhook_secret())
    with pytest.raises(ValidationError, match="job id is 1 to 255 characters"):
        client.submit({}, job_id=job_id)
    assert httpx_mock.get_requests() == []
    assert store.list() == []


def test_resubmit_sends_a_pending_job_again_under_its_id(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({"prompt": "again"}, job_id="j-1", kind="image")
    httpx_mock.add_response(status_code=202)
    job = make_client().resubmit("j-1")
    assert job.status is JobStatus.SUBMITTED
    request = httpx_mock.get_request()
    assert request is not None
    assert request.headers["Idempotency-Key"] == "j-1"
    assert body_of(request)["input"] == {"prompt": "again"}
    assert body_of(request)["kind"] == "image"


def test_resubmit_leaves_a_job_the_backend_has_seen(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    store.apply("j-1", JobUpdate(JobStatus.SUBMITTED))
    assert make_client().resubmit("j-1").status is JobStatus.SUBMITTED
    assert httpx_mock.get_requests() == []


def test_resubmit_refused_fails_the_job(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore
) -> None:
    store.create({}, job_id="j-1")
    httpx_mock.add_response(status_code=400)
    with pytest.raises(SubmitError):
        make_client().resubmit("j-1")
    assert store.get("j-1").status is JobStatus.FAILED


@pytest.mark.parametrize("answer", ["connect_error", 503])
def test_resubmit_to_an_unreachable_backend_leaves_the_job_pending(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: InMemoryJobStore, answer: object
) -> None:
    # The first submit may have arrived: running out of retries now proves nothing.
    store.create({}, job_id="j-1")
    for _ in range(3):
        if answer == "connect_error":
            httpx_mock.add_exception(httpx.ConnectError("connection refused"))
        else:
            httpx_mock.add_response(status_code=503)
    with pytest.raises(SubmitError) as info:
        make_client().resubmit("j-1")
    assert info.value.ambiguous
    assert store.get("j-1").status is JobStatus.PENDING


def test_can_refresh_needs_what_the_status_path_names(
    make_client: MakeClient, store: InMemoryJobStore
) -> None:
    job = store.create({}, job_id="j-1")
    assert not make_client().can_refresh(job)
    assert make_client(status_path="/jobs/{job_id}").can_refresh(job)
    by_remote = make_client(status_path="/v1/{remote_id}")
    assert not by_remote.can_refresh(job)
    remote = store.apply("j-1", JobUpdate(JobStatus.SUBMITTED, remote_id="r-1")).job
    assert remote is not None
    assert by_remote.can_refresh(remote)
