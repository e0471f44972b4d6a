"""The Flask adapter, through Flask's own test client."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("flask")

import flask

from jobhook import AsyncInMemoryJobStore, InMemoryJobStore, JobStatus, WebhookHandler
from jobhook._signing import callback_token
from jobhook.flask import webhook_view

from .conftest import MAX_BODY, TOKEN_SECRET, Delivery, handler_for, signed, snapshot


def make_client(handler: WebhookHandler) -> Any:
    app = flask.Flask(__name__)
    view = webhook_view(handler)
    app.add_url_rule("/webhooks/jobhook/<job_id>", view_func=view, methods=["POST"])
    app.add_url_rule("/webhooks/jobhook", endpoint="no_id", view_func=view, methods=["POST"])
    return app.test_client()


def post(client: Any, delivery: Delivery, path: str | None = None) -> Any:
    return client.post(
        path or delivery.path(),
        data=delivery.body,
        headers={**delivery.headers, "content-type": "application/json"},
    )


def test_a_signed_delivery_updates_the_job(jobs: InMemoryJobStore) -> None:
    job = jobs.create({})
    response = post(make_client(handler_for(jobs)), signed(job.id))
    assert response.status_code == 200
    assert response.get_json() == {"outcome": "applied", "job_id": job.id, "status": "running"}
    assert response.headers["content-type"] == "application/json"
    assert (jobs.get(job.id).status, jobs.get(job.id).progress) == (JobStatus.RUNNING, 40.0)


def test_refused_deliveries_leave_the_store_unchanged(
    jobs: InMemoryJobStore, refusal: tuple[Any, int]
) -> None:
    make, status = refusal
    job, other = jobs.create({}), jobs.create({})
    client = make_client(handler_for(jobs))
    before = snapshot(jobs)
    response = post(client, make(job.id, other.id))
    assert response.status_code == status
    assert response.get_json()["outcome"] == "rejected"
    assert snapshot(jobs) == before


def test_the_token_query_parameter_reaches_the_handler(jobs: InMemoryJobStore) -> None:
    job = jobs.create({})
    client = make_client(handler_for(jobs, secret=None, token_secret=TOKEN_SECRET))
    delivery = Delivery({}, b'{"status": "succeeded"}', job.id)
    assert post(client, delivery).status_code == 401
    token = callback_token(TOKEN_SECRET, job.id)
    response = post(client, Delivery({}, delivery.body, job.id, token))
    assert response.status_code == 200
    assert jobs.get(job.id).status is JobStatus.SUCCEEDED


def test_a_route_without_job_id_uses_the_payloads(jobs: InMemoryJobStore) -> None:
    job = jobs.create({})
    response = post(make_client(handler_for(jobs)), signed(job.id), path="/webhooks/jobhook")
    assert response.get_json()["outcome"] == "applied"


def test_an_unknown_job_is_404_and_kept(jobs: InMemoryJobStore) -> None:
    response = post(make_client(handler_for(jobs)), signed("job-later"))
    assert response.status_code == 404
    assert [d.job_id for d in jobs.dead_letters()] == ["job-later"]


def test_an_oversized_body_is_413_before_it_is_read(jobs: InMemoryJobStore) -> None:
    job = jobs.create({})
    before = snapshot(jobs)
    big = signed(job.id, b'{"status": "running", "pad": "' + b"x" * MAX_BODY * 4 + b'"}')
    assert post(make_client(handler_for(jobs)), big).status_code == 413
    assert snapshot(jobs) == before


def test_only_post_is_routed(jobs: InMemoryJobStore) -> None:
    assert make_client(handler_for(jobs)).get("/webhooks/jobhook/x").status_code == 405


def test_an_async_store_is_refused_when_the_view_is_built() -> None:
    with pytest.raises(TypeError, match="sync store"):
        webhook_view(handler_for(AsyncInMemoryJobStore()))
