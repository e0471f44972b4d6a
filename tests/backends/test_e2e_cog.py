"""jobhook end to end against a real Cog server: `GeneratorClient` + `backends.Cog` submit,
Cog calls back, `WebhookHandler(backend=backends.Cog(...))` applies, on a SQLite store.

The job is created first and Cog runs it under the job's id (``PUT
/predictions/{job_id}``); callbacks are unsigned and carry the job's token in the URL.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from jobhook import GeneratorClient, JobStatus, Reconciler, RetryPolicy, SQLJobStore, backends

from .conftest import TOKEN_SECRET, Answer, App, Receiver, Request, ServerProcess, mount_app
from .test_real_cog import put


@pytest.fixture
def app(cog: ServerProcess, receiver: Receiver, sqlite_store: SQLJobStore) -> App:
    return mount_app(receiver, sqlite_store, backends.Cog(cog.url))


@pytest.fixture
def sent() -> list[httpx.Response]:
    return []


@pytest.fixture
def client(cog: ServerProcess, app: App, sent: list[httpx.Response]) -> Iterator[GeneratorClient]:
    http = httpx.Client(event_hooks={"response": [sent.append]})
    client = GeneratorClient(
        app.store,
        backends.Cog(cog.url),
        callback_url=app.callback_url,
        token_secret=TOKEN_SECRET,
        retry=RetryPolicy(max_attempts=10, backoff=0.1, max_backoff=0.4),
        http_client=http,
    )
    yield client
    client.close()
    http.close()


def test_a_job_runs_under_its_own_id_reports_progress_and_succeeds(
    app: App, client: GeneratorClient, sent: list[httpx.Response]
) -> None:
    job = client.submit({"steps": 8, "delay": 0.15}, kind="image")
    assert job.status in (JobStatus.SUBMITTED, JobStatus.RUNNING)
    [submit] = sent
    assert (submit.request.method, submit.status_code) == ("PUT", 202)
    assert submit.request.url.path == f"/predictions/{job.id}"  # the stored job's id

    done = app.wait(job.id, lambda j: j.terminal)
    assert done.status is JobStatus.SUCCEEDED
    assert done.remote_id is None  # Cog's id is ours
    assert done.output["text"] == "done after 8 steps"
    assert done.output["image"].startswith("data:image/png;base64,")

    events = [e for e in app.store.events(limit=100) if e.job_id == job.id]
    progress = [e.progress for e in events if e.status is JobStatus.RUNNING]
    # Read from the "step n/8" lines in Cog's logs, never backwards.
    assert any(p is not None and 0 < p < 100 for p in progress), progress
    assert [p for p in progress if p is not None] == sorted(p for p in progress if p is not None)
    assert events[-1].status is JobStatus.SUCCEEDED
    # Every callback found its job (no 404, no dead letter) and was answered 200.
    assert app.outcomes(job.id)
    assert {status for status, _ in app.outcomes(job.id)} == {200}
    assert app.store.dead_letters() == []


def test_a_failing_prediction_fails_the_job_with_cogs_error(
    app: App, client: GeneratorClient
) -> None:
    job = client.submit({"mode": "fail"})
    done = app.wait(job.id, lambda j: j.terminal)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.code == "prediction_failed"
    assert done.error.message.endswith("RuntimeError: the model refused")
    assert done.output is None


def test_cancel_cancels_the_prediction_and_its_webhook_agrees(
    app: App, client: GeneratorClient, receiver: Receiver
) -> None:
    job = client.submit({"mode": "long"})
    app.wait(job.id, lambda j: j.status is JobStatus.RUNNING)
    # Cog answers 200 {}: only requested; its canceled webhook says how it ended.
    assert client.cancel(job.id).status is JobStatus.RUNNING
    receiver.wait_for(
        app.path(job.id), lambda rs: any(r.json()["status"] == "canceled" for r in rs)
    )
    assert {status for status, _ in app.outcomes(job.id)} == {200}
    assert app.wait(job.id, lambda j: j.terminal).status is JobStatus.CANCELED


def test_a_busy_server_is_retried_until_the_slot_frees(
    cog: ServerProcess,
    app: App,
    client: GeneratorClient,
    receiver: Receiver,
    sent: list[httpx.Response],
) -> None:
    blocker = f"blocker-{id(app):x}"
    put(cog, blocker, f"{receiver.url}/blocker/{blocker}", mode="long")
    receiver.wait_for(f"/blocker/{blocker}")
    free = threading.Timer(0.6, httpx.post, [f"{cog.url}/predictions/{blocker}/cancel"])
    free.start()
    try:
        job = client.submit({"steps": 1, "delay": 0})
    finally:
        free.join()
    codes = [r.status_code for r in sent]
    # Refused while busy, retried under the same id, taken once the slot was free.
    assert codes == [409] * (len(codes) - 1) + [202]
    assert len(codes) >= 2
    assert {r.request.url.path for r in sent} == {f"/predictions/{job.id}"}
    assert app.wait(job.id, lambda j: j.terminal).status is JobStatus.SUCCEEDED


def test_resubmitting_a_running_job_is_the_same_prediction(
    app: App, client: GeneratorClient, receiver: Receiver, sent: list[httpx.Response]
) -> None:
    # A submit whose answer was lost while the app was down: the job is stored and
    # still pending, Cog runs it, and its first webhooks find the app answering 503.
    app.down = True
    job = app.store.create({"steps": 4, "delay": 0.25})
    first = client.backend.submit_request(job, client.callback_url_for(job.id))
    httpx.request(first.method, first.url, headers=first.headers, content=first.content)
    path = app.path(job.id)
    receiver.wait_for(path)
    app.down = False
    assert app.store.get(job.id).status is JobStatus.PENDING

    # The reconciler resubmits a pending job to an idempotent backend: the same PUT,
    # answered with the running prediction's state.
    time.sleep(0.05)
    report = Reconciler(app.store, client, stale_after=0.05, give_up_after=3600).run_once()
    assert report.resubmitted == (job.id,)
    [again] = sent
    assert again.status_code == 202
    assert again.json()["status"] == "processing"

    done = app.wait(job.id, lambda j: j.terminal)
    assert done.status is JobStatus.SUCCEEDED
    finals = [r for r in receiver.requests(path) if r.json()["status"] == "succeeded"]
    assert len(finals) == 1  # one run
    assert finals[0].json()["logs"].count("step 1/4") == 1


def test_a_running_job_does_not_hold_the_output_events_list(
    app: App, client: GeneratorClient, receiver: Receiver
) -> None:
    # The terminal webhook is lost (answered 404, so Cog stops): what the job holds is
    # what the processing webhooks left, until the reconciler times it out.
    job = app.store.create({"steps": 1, "delay": 0})
    path = app.path(job.id)
    lost = {"succeeded", "failed", "canceled"}

    def lose_terminal(request: Request) -> Answer:
        return (404, {}, b"") if request.json()["status"] in lost else app.serve(request)

    receiver.route(path, lose_terminal)
    client.resubmit(job.id)
    # Recorded once answered: the handler is done with every one of them.
    receiver.wait_for(path, lambda rs: "succeeded" in [r.json()["status"] for r in rs])
    receiver.wait_for(
        path, lambda rs: any("output" in r.json() for r in rs if r.json()["status"] == "processing")
    )
    running = app.store.get(job.id)
    assert running.status is JobStatus.RUNNING
    assert running.output is None
