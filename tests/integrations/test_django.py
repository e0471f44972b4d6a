"""The Django adapter, through Django's test client with CSRF checks enforced."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from django.conf import settings
from django.core.handlers.asgi import ASGIHandler
from django.core.handlers.wsgi import WSGIHandler
from django.test import Client, override_settings
from django.urls import path

from jobhook import AsyncInMemoryJobStore, InMemoryJobStore, JobStatus, WebhookHandler
from jobhook._signing import callback_token
from jobhook.django import webhook_view

from .apps.wsgi_input import CountingInput, wsgi_environ
from .conftest import MAX_BODY, SECRET, TOKEN_SECRET, Delivery, handler_for, signed, snapshot

BIG = 50 * 1024 * 1024

if not settings.configured:
    # The test process's one configuration (it also serves the django-* store kinds);
    # each test mounts its own URLs and middleware below.
    from tests.django_stores import setup_django

    setup_django()


@pytest.fixture
def client_for() -> Iterator[Any]:
    """A Django test client for a handler mounted at webhooks/jobhook/<job_id>."""
    overrides: list[override_settings] = []

    def make(handler: WebhookHandler) -> Client:
        # A class stands in for a urls module (Django caches resolvers by urlconf).
        urls = type(
            "urls",
            (),
            {"urlpatterns": [path("webhooks/jobhook/<str:job_id>", webhook_view(handler))]},
        )
        override = override_settings(
            ROOT_URLCONF=urls,
            ALLOWED_HOSTS=["testserver"],
            # The CSRF middleware is on: the view must be exempt, as senders have no token.
            MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
        )
        override.enable()
        overrides.append(override)
        return Client(enforce_csrf_checks=True)

    yield make
    for override in reversed(overrides):
        override.disable()


def post(client: Client, delivery: Delivery) -> Any:
    return client.post(
        delivery.path(),
        data=delivery.body,
        content_type="application/json",
        headers=delivery.headers,
    )


def test_a_signed_delivery_updates_the_job(jobs: InMemoryJobStore, client_for: Any) -> None:
    job = jobs.create({})
    response = post(client_for(handler_for(jobs)), signed(job.id))
    assert response.status_code == 200
    assert response.json() == {"outcome": "applied", "job_id": job.id, "status": "running"}
    assert response["content-type"] == "application/json"
    assert (jobs.get(job.id).status, jobs.get(job.id).progress) == (JobStatus.RUNNING, 40.0)


def test_refused_deliveries_leave_the_store_unchanged(
    jobs: InMemoryJobStore, client_for: Any, refusal: tuple[Any, int]
) -> None:
    make, status = refusal
    job, other = jobs.create({}), jobs.create({})
    client = client_for(handler_for(jobs))
    before = snapshot(jobs)
    response = post(client, make(job.id, other.id))
    assert response.status_code == status
    assert response.json()["outcome"] == "rejected"
    assert snapshot(jobs) == before


def test_the_token_query_parameter_reaches_the_handler(
    jobs: InMemoryJobStore, client_for: Any
) -> None:
    job = jobs.create({})
    client = client_for(handler_for(jobs, secret=None, token_secret=TOKEN_SECRET))
    body = b'{"status": "failed", "error": {"code": "nsfw", "message": "blocked"}}'
    assert post(client, Delivery({}, body, job.id)).status_code == 401
    token = callback_token(TOKEN_SECRET, job.id)
    assert post(client, Delivery({}, body, job.id, token)).status_code == 200
    assert jobs.get(job.id).status is JobStatus.FAILED


def test_an_unknown_job_is_404_and_kept(jobs: InMemoryJobStore, client_for: Any) -> None:
    assert post(client_for(handler_for(jobs)), signed("job-later")).status_code == 404
    assert [d.job_id for d in jobs.dead_letters()] == ["job-later"]


def test_an_oversized_body_is_413(jobs: InMemoryJobStore, client_for: Any) -> None:
    job = jobs.create({})
    before = snapshot(jobs)
    big = signed(job.id, b'{"status": "running", "pad": "' + b"x" * MAX_BODY * 4 + b'"}')
    assert post(client_for(handler_for(jobs)), big).status_code == 413
    assert snapshot(jobs) == before


def test_only_post_is_allowed(jobs: InMemoryJobStore, client_for: Any) -> None:
    assert client_for(handler_for(jobs)).get("/webhooks/jobhook/x").status_code == 405


def test_an_async_store_gets_an_async_view(client_for: Any) -> None:
    store = AsyncInMemoryJobStore()
    job = asyncio.run(store.create({}))
    handler = handler_for(store)
    assert asyncio.iscoroutinefunction(webhook_view(handler))
    response = post(client_for(handler), signed(job.id))
    assert response.json()["outcome"] == "applied"
    assert asyncio.run(store.get(job.id)).progress == 40.0


def call_wsgi(environ: dict[str, Any]) -> tuple[int, Any]:
    """The status and JSON answer of Django's WSGI handler, called as a server calls it."""
    started: list[str] = []
    chunks = WSGIHandler()(environ, lambda status, headers: started.append(status))
    return int(started[0].split()[0]), json.loads(b"".join(chunks))


# A 50 MB body, framed as a server passes it. Django reads no further than a declared
# length; gunicorn says ``wsgi.input_terminated`` because it ends a chunked input itself.
FRAMINGS = {
    "chunked": (None, True, 413),
    "big declared length": (BIG, True, 413),
    "lying length": (100, True, 401),
    "chunked, input not terminated": (None, False, 401),
}


@pytest.mark.parametrize(
    ("content_length", "terminated", "status"), FRAMINGS.values(), ids=FRAMINGS.keys()
)
def test_a_huge_body_is_refused_after_reading_at_most_the_limit_plus_one(
    jobs: InMemoryJobStore,
    client_for: Any,
    content_length: int | None,
    terminated: bool,
    status: int,
) -> None:
    client_for(handler_for(jobs))
    stream = CountingInput(size=BIG)
    environ = wsgi_environ(
        "/webhooks/jobhook/job-1", stream, content_length=content_length, terminated=terminated
    )
    answer = call_wsgi(environ)
    assert stream.bytes_read <= MAX_BODY + 1
    assert (answer[0], answer[1]["outcome"]) == (status, "rejected")


def test_a_chunked_delivery_read_in_short_pieces_applies(
    jobs: InMemoryJobStore, client_for: Any
) -> None:
    job = jobs.create({})
    client_for(handler_for(jobs))
    delivery = signed(job.id)
    stream = CountingInput(delivery.body, most=7)
    status, answer = call_wsgi(wsgi_environ(delivery.path(), stream, delivery.headers))
    assert (status, answer["outcome"]) == (200, "applied")
    assert jobs.get(job.id).progress == 40.0


def _over_djangos_upload_limit(job_id: str) -> Delivery:
    # 3 MB: over DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB by default), which the handler's
    # 4 MB limit, not Django's HTML 400, must decide.
    body = json.dumps({"job_id": job_id, "status": "running", "note": "x" * 3_000_000})
    return signed(job_id, body.encode())


def test_a_body_over_djangos_upload_limit_reaches_the_handler(
    jobs: InMemoryJobStore, client_for: Any
) -> None:
    job = jobs.create({})
    client = client_for(WebhookHandler(jobs, secret=SECRET, max_body_bytes=4_000_000))
    response = post(client, _over_djangos_upload_limit(job.id))
    assert response["content-type"] == "application/json"
    assert (response.status_code, response.json()["outcome"]) == (200, "applied")


def test_under_asgi_a_chunked_body_over_djangos_upload_limit_applies(
    jobs: InMemoryJobStore, client_for: Any
) -> None:
    job = jobs.create({})
    client_for(WebhookHandler(jobs, secret=SECRET, max_body_bytes=4_000_000))
    delivery = _over_djangos_upload_limit(job.id)
    headers = {**delivery.headers, "host": "testserver", "content-type": "application/json"}
    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": delivery.path(),
        "query_string": b"",
        "root_path": "",
        # No content-length: the body comes in chunks, as uvicorn passes a chunked one.
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "server": ("testserver", 80),
    }
    step = 64 * 1024
    messages = [
        {"type": "http.request", "body": delivery.body[i : i + step], "more_body": True}
        for i in range(0, len(delivery.body), step)
    ]
    messages.append({"type": "http.request", "body": b"", "more_body": False})
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # the client stays connected
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(ASGIHandler()(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert sent[0]["status"] == 200, body[:200]
    assert json.loads(body)["outcome"] == "applied"


def test_without_django_the_import_error_names_the_extra() -> None:
    script = Path(__file__).parent / "apps" / "blocked_import.py"
    result = subprocess.run(
        [sys.executable, str(script), "django", "jobhook.django"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines() == [
        "django",
        "jobhook.django needs Django: pip install 'jobhook[django]'",
    ]
