"""The Django adapter, through Django's test client with CSRF checks enforced."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("django")

import django
from django.conf import settings
from django.test import Client, override_settings
from django.urls import path

from jobhook import AsyncInMemoryJobStore, InMemoryJobStore, JobStatus, WebhookHandler
from jobhook._signing import callback_token
from jobhook.django import webhook_view

from .conftest import MAX_BODY, TOKEN_SECRET, Delivery, handler_for, signed, snapshot

if not settings.configured:
    # Minimal settings; each test mounts its own URLs and middleware below.
    settings.configure(SECRET_KEY="jobhook-tests", ALLOWED_HOSTS=["testserver"])
    django.setup()


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
