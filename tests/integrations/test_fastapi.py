"""The FastAPI / Starlette adapter, through Starlette's TestClient, sync and async stores."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Route

with warnings.catch_warnings():
    # Newer Starlette prefers the httpx2 package for its TestClient; httpx still works.
    warnings.filterwarnings("ignore", message=".*httpx2")
    from starlette.testclient import TestClient

from jobhook import AsyncInMemoryJobStore, InMemoryJobStore, JobStatus, WebhookHandler
from jobhook._signing import callback_token
from jobhook.fastapi import webhook_endpoint

from .conftest import MAX_BODY, TOKEN_SECRET, Delivery, handler_for, signed, snapshot


class AsyncStoreView:
    """Sync reads of an async in-memory store, for assertions."""

    def __init__(self) -> None:
        self.store = AsyncInMemoryJobStore()

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)
        return lambda *args, **kwargs: asyncio.run(method(*args, **kwargs))


@pytest.fixture(params=["sync store", "async store"])
def store(request: pytest.FixtureRequest) -> Any:
    """A store with sync methods for the test, and the store the handler gets."""
    if request.param == "sync store":
        sync = InMemoryJobStore()
        return sync, sync
    view = AsyncStoreView()
    return view, view.store


def fastapi_app(handler: WebhookHandler) -> FastAPI:
    app = FastAPI()
    app.post("/webhooks/jobhook/{job_id}")(webhook_endpoint(handler))
    return app


def starlette_app(handler: WebhookHandler) -> Starlette:
    route = Route("/webhooks/jobhook/{job_id}", webhook_endpoint(handler), methods=["POST"])
    return Starlette(routes=[route])


@pytest.fixture(params=["fastapi", "starlette"])
def client_for(request: pytest.FixtureRequest) -> Iterator[Any]:
    clients: list[TestClient] = []
    build = fastapi_app if request.param == "fastapi" else starlette_app

    def make(handler: WebhookHandler) -> TestClient:
        client = TestClient(build(handler))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


def post(client: TestClient, delivery: Delivery) -> Any:
    headers = {**delivery.headers, "content-type": "application/json"}
    return client.post(delivery.path(), content=delivery.body, headers=headers)


def test_a_signed_delivery_updates_the_job(store: Any, client_for: Any) -> None:
    jobs, inner = store
    job = jobs.create({})
    response = post(client_for(handler_for(inner)), signed(job.id))
    assert response.status_code == 200
    assert response.json() == {"outcome": "applied", "job_id": job.id, "status": "running"}
    assert response.headers["content-type"] == "application/json"
    assert jobs.get(job.id).progress == 40.0


def test_refused_deliveries_leave_the_store_unchanged(
    store: Any, client_for: Any, refusal: tuple[Any, int]
) -> None:
    jobs, inner = store
    make, status = refusal
    job, other = jobs.create({}), jobs.create({})
    client = client_for(handler_for(inner))
    before = snapshot(jobs)
    response = post(client, make(job.id, other.id))
    assert response.status_code == status
    assert response.json()["outcome"] == "rejected"
    assert snapshot(jobs) == before


def test_the_token_query_parameter_reaches_the_handler(store: Any, client_for: Any) -> None:
    jobs, inner = store
    job = jobs.create({})
    client = client_for(handler_for(inner, secret=None, token_secret=TOKEN_SECRET))
    body = b'{"status": "succeeded", "output": {"images": ["1.png"]}}'
    assert post(client, Delivery({}, body, job.id)).status_code == 401
    token = callback_token(TOKEN_SECRET, job.id)
    assert post(client, Delivery({}, body, job.id, token)).status_code == 200
    assert jobs.get(job.id).status is JobStatus.SUCCEEDED


def test_an_unknown_job_is_404_and_kept(store: Any, client_for: Any) -> None:
    jobs, inner = store
    assert post(client_for(handler_for(inner)), signed("job-later")).status_code == 404
    assert [d.job_id for d in jobs.dead_letters()] == ["job-later"]


def test_an_oversized_body_is_413(store: Any, client_for: Any) -> None:
    jobs, inner = store
    job = jobs.create({})
    before = snapshot(jobs)
    big = signed(job.id, b'{"status": "running", "pad": "' + b"x" * MAX_BODY * 4 + b'"}')
    assert post(client_for(handler_for(inner)), big).status_code == 413
    assert snapshot(jobs) == before


def test_a_sync_sql_store_works_behind_the_async_endpoint(tmp_path: Any, client_for: Any) -> None:
    sql = pytest.importorskip("jobhook.stores.sql")
    jobs = sql.SQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}", create_schema=True)
    job = jobs.create({})
    response = post(client_for(handler_for(jobs)), signed(job.id))
    assert response.json()["outcome"] == "applied"
    assert jobs.get(job.id).progress == 40.0
    jobs.close()


@pytest.mark.parametrize("build", [fastapi_app, starlette_app], ids=["fastapi", "starlette"])
def test_a_huge_chunked_body_is_413_and_the_rest_is_never_pulled(
    build: Callable[[WebhookHandler], Any],
) -> None:
    app = build(handler_for(InMemoryJobStore()))
    step, size, pulled = 64 * 1024, 50 * 1024 * 1024, 0
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        # A 50 MB chunked body, as an ASGI server passes it: one message per chunk.
        nonlocal pulled
        if pulled >= size:
            await asyncio.Event().wait()
        pulled += step
        return {"type": "http.request", "body": b"x" * step, "more_body": pulled < size}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/webhooks/jobhook/job-1",
        "raw_path": b"/webhooks/jobhook/job-1",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"testserver"), (b"transfer-encoding", b"chunked")],
        "server": ("testserver", 80),
    }
    asyncio.run(app(scope, receive, send))
    # The server picks the chunk sizes: the endpoint stops at the first one past the limit.
    assert pulled <= MAX_BODY + step
    assert sent[0]["status"] == 413


def test_without_starlette_the_import_error_names_the_extra() -> None:
    script = Path(__file__).parent / "apps" / "blocked_import.py"
    result = subprocess.run(
        [sys.executable, str(script), "starlette", "jobhook.fastapi"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines() == [
        "starlette",
        "jobhook.fastapi needs FastAPI or Starlette: pip install 'jobhook[fastapi]'",
    ]
