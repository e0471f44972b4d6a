"""The Flask adapter, through Flask's own test client."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")

import flask
from werkzeug.test import run_wsgi_app

from jobhook import AsyncInMemoryJobStore, InMemoryJobStore, JobStatus, WebhookHandler
from jobhook._signing import callback_token
from jobhook.flask import webhook_view

from .apps.wsgi_input import CountingInput, wsgi_environ
from .conftest import MAX_BODY, TOKEN_SECRET, Delivery, handler_for, signed, snapshot

BIG = 50 * 1024 * 1024


def make_app(handler: WebhookHandler) -> flask.Flask:
    app = flask.Flask(__name__)
    view = webhook_view(handler)
    app.add_url_rule("/webhooks/jobhook/<job_id>", view_func=view, methods=["POST"])
    app.add_url_rule("/webhooks/jobhook", endpoint="no_id", view_func=view, methods=["POST"])
    return app


def make_client(handler: WebhookHandler) -> Any:
    return make_app(handler).test_client()


def call(app: flask.Flask, environ: dict[str, Any]) -> tuple[int, Any]:
    """The status and JSON answer of a raw WSGI call, as a server would make it."""
    body, status, _ = run_wsgi_app(app, environ, buffered=True)
    return int(status.split()[0]), json.loads(b"".join(body))


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


# Framings of a 50 MB body, each as a WSGI server that terminates its input (gunicorn)
# passes it: werkzeug then hands the server's stream over as it is.
FRAMINGS = {
    "chunked": None,
    "big declared length": BIG,
    "lying length": 100,
}


@pytest.mark.parametrize("content_length", FRAMINGS.values(), ids=FRAMINGS.keys())
def test_a_huge_body_is_413_after_reading_at_most_the_limit_plus_one(
    jobs: InMemoryJobStore, content_length: int | None
) -> None:
    stream = CountingInput(size=BIG)
    environ = wsgi_environ("/webhooks/jobhook/job-1", stream, content_length=content_length)
    status, answer = call(make_app(handler_for(jobs)), environ)
    assert stream.bytes_read <= MAX_BODY + 1
    assert (status, answer["outcome"]) == (413, "rejected")


def test_a_chunked_delivery_read_in_short_pieces_applies(jobs: InMemoryJobStore) -> None:
    job = jobs.create({})
    delivery = signed(job.id)
    stream = CountingInput(delivery.body, most=7)
    status, answer = call(
        make_app(handler_for(jobs)), wsgi_environ(delivery.path(), stream, delivery.headers)
    )
    assert (status, answer["outcome"]) == (200, "applied")
    assert jobs.get(job.id).progress == 40.0


def test_without_flask_the_import_error_names_the_extra() -> None:
    script = Path(__file__).parent / "apps" / "blocked_import.py"
    result = subprocess.run(
        [sys.executable, str(script), "flask", "jobhook.flask"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.splitlines() == [
        "flask",
        "jobhook.flask needs Flask: pip install 'jobhook[flask]'",
    ]
