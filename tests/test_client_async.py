"""AsyncGeneratorClient: the same rules as the sync client, driven by an event loop."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from pytest_httpx import HTTPXMock

from jobhook import (
    AsyncGeneratorClient,
    AsyncInMemoryJobStore,
    BackendError,
    JobIdMismatchError,
    JobStatus,
    JobUpdate,
    StoreUnavailableError,
    SubmitError,
)

pytestmark = pytest.mark.anyio

BASE = "https://gen.test"
CALLBACK = "https://app.test/webhooks/jobhook/{job_id}"
STATUS_URL = f"{BASE}/jobs/j-1"

MakeClient = Callable[..., AsyncGeneratorClient]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def store() -> AsyncInMemoryJobStore:
    return AsyncInMemoryJobStore()


@pytest.fixture
def sleeps() -> list[float]:
    return []


@pytest.fixture
def make_client(store: AsyncInMemoryJobStore, sleeps: list[float]) -> MakeClient:
    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    def make(**kwargs: Any) -> AsyncGeneratorClient:
        target = kwargs.pop("store", store)
        options: dict[str, Any] = {
            "callback_url": CALLBACK,
            "sleep": sleep,
            "rng": random.Random(1),
            "status_path": "/jobs/{job_id}",
            "cancel_path": "/jobs/{job_id}/cancel",
        }
        options.update(kwargs)
        return AsyncGeneratorClient(target, BASE, **options)

    return make


async def test_submit_creates_then_sends(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: AsyncInMemoryJobStore
) -> None:
    seen: list[JobStatus] = []

    async def backend(request: httpx.Request) -> httpx.Response:
        seen.append((await store.get(json.loads(request.content)["job_id"])).status)
        return httpx.Response(202, json={"remote_id": "r-1"})

    httpx_mock.add_callback(backend)
    async with make_client() as client:
        job = await client.submit({"prompt": "x"}, kind="image")
    request = httpx_mock.get_request()
    assert request is not None
    assert request.headers["Idempotency-Key"] == job.id
    assert seen == [JobStatus.PENDING]
    assert job.status is JobStatus.SUBMITTED
    assert job.remote_id == "r-1"


async def test_no_request_when_the_store_cannot_create(
    httpx_mock: HTTPXMock, make_client: MakeClient
) -> None:
    class BrokenStore(AsyncInMemoryJobStore):
        async def create(self, *args: Any, **kwargs: Any) -> Any:
            raise StoreUnavailableError("down")

    with pytest.raises(StoreUnavailableError):
        await make_client(store=BrokenStore()).submit({})
    assert httpx_mock.get_requests() == []


async def test_retries_obey_retry_after(
    httpx_mock: HTTPXMock, make_client: MakeClient, sleeps: list[float]
) -> None:
    httpx_mock.add_response(status_code=503, headers={"Retry-After": "4"})
    httpx_mock.add_exception(httpx.ConnectError("down"))
    httpx_mock.add_response(status_code=202)
    job = await make_client().submit({})
    assert job.status is JobStatus.SUBMITTED
    assert sleeps[0] == 4.0
    assert len(sleeps) == 2
    assert {r.headers["Idempotency-Key"] for r in httpx_mock.get_requests()} == {job.id}


async def test_a_refusal_fails_the_job(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: AsyncInMemoryJobStore
) -> None:
    httpx_mock.add_response(status_code=422, json={"detail": "bad prompt"})
    with pytest.raises(SubmitError) as info:
        await make_client().submit({})
    assert info.value.ambiguous is False
    stored = await store.get(info.value.job.id)
    assert stored.status is JobStatus.FAILED
    assert stored.error is not None
    assert "bad prompt" in stored.error.message


async def test_read_timeouts_leave_the_job_pending(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: AsyncInMemoryJobStore
) -> None:
    for _ in range(3):
        httpx_mock.add_exception(httpx.ReadTimeout("slow"))
    with pytest.raises(SubmitError) as info:
        await make_client().submit({})
    assert info.value.ambiguous is True
    assert (await store.get(info.value.job.id)).status is JobStatus.PENDING


async def test_a_mismatched_job_id_fails_the_job(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: AsyncInMemoryJobStore
) -> None:
    httpx_mock.add_response(status_code=202, json={"job_id": "theirs"})
    with pytest.raises(JobIdMismatchError) as info:
        await make_client().submit({}, job_id="ours")
    assert info.value.remote_job_id == "theirs"
    stored = await store.get("ours")
    assert stored.status is JobStatus.FAILED
    assert stored.error is not None
    assert stored.error.code == "job_id_mismatch"


async def test_refresh_cancel_and_wait(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: AsyncInMemoryJobStore
) -> None:
    await store.create({}, job_id="j-1")
    await store.create({}, job_id="j-2")
    httpx_mock.add_response(url=STATUS_URL, json={"job_id": "j-1", "status": "running"})
    httpx_mock.add_response(url=STATUS_URL, json={"job_id": "j-1", "status": "succeeded"})
    httpx_mock.add_response(url=f"{BASE}/jobs/j-2/cancel", status_code=204)
    client = make_client()
    assert (await client.refresh("j-1")).status is JobStatus.RUNNING
    assert (await client.wait("j-1", timeout=30, poll_interval=0.1)).status is JobStatus.SUCCEEDED
    assert (await client.cancel("j-2")).status is JobStatus.CANCELED
    await client.aclose()


async def test_refresh_raises_on_an_error_answer(
    httpx_mock: HTTPXMock, make_client: MakeClient, store: AsyncInMemoryJobStore
) -> None:
    await store.create({}, job_id="j-1")
    httpx_mock.add_response(url=STATUS_URL, status_code=404)
    with pytest.raises(BackendError):
        await make_client().refresh("j-1")


async def test_wait_times_out(make_client: MakeClient, store: AsyncInMemoryJobStore) -> None:
    await store.create({}, job_id="j-1")
    with pytest.raises(TimeoutError):
        await make_client(status_path=None).wait("j-1", timeout=0)


async def test_wait_sees_a_webhook_land(
    make_client: MakeClient, store: AsyncInMemoryJobStore
) -> None:
    await store.create({}, job_id="j-1")

    async def sleep(seconds: float) -> None:
        await store.apply("j-1", JobUpdate(JobStatus.FAILED))

    client = make_client(status_path=None, sleep=sleep)
    assert (await client.wait("j-1", timeout=30)).status is JobStatus.FAILED


async def test_aclose_leaves_an_injected_client_open(store: AsyncInMemoryJobStore) -> None:
    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(202)))
    async with AsyncGeneratorClient(store, BASE, callback_url=CALLBACK, http_client=http) as c:
        await c.submit({})
    assert not http.is_closed
    await http.aclose()
