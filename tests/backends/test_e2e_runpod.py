"""jobhook end to end against RunPod's local API server: `GeneratorClient` +
`backends.RunPod.local(url)` submit, the simulator calls back, `WebhookHandler` applies.

RunPod picks the job's id (stored as ``remote_id``); the job id travels only in the
callback URL, authenticated by its token. The simulator runs a job when its status is
asked for (``POST /status/{id}``), posts ``{"output": …}`` for a completed job and nothing
for a failed one, which polling (`refresh`, the `Reconciler`) settles.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest

from jobhook import GeneratorClient, JobStatus, Reconciler, SQLJobStore, backends

from .conftest import TOKEN_SECRET, App, Receiver, ServerProcess, mount_app
from .test_real_runpod import RUNPOD_ID


@pytest.fixture
def app(runpod_server: ServerProcess, receiver: Receiver, sqlite_store: SQLJobStore) -> App:
    return mount_app(receiver, sqlite_store, backends.RunPod.local(runpod_server.url))


@pytest.fixture
def client(runpod_server: ServerProcess, app: App) -> Iterator[GeneratorClient]:
    client = GeneratorClient(
        app.store,
        backends.RunPod.local(runpod_server.url),
        callback_url=app.callback_url,
        token_secret=TOKEN_SECRET,
    )
    yield client
    client.close()


def test_a_job_is_submitted_gets_runpods_id_and_succeeds_by_webhook(
    runpod_server: ServerProcess, app: App, client: GeneratorClient
) -> None:
    job = client.submit({"prompt": "a red fox"}, kind="image")
    assert job.status is JobStatus.SUBMITTED
    assert job.remote_id is not None
    assert RUNPOD_ID.fullmatch(job.remote_id)
    assert app.store.get_by_remote_id(job.remote_id).id == job.id

    # The simulator runs it now; its webhook, not this answer, settles the job.
    httpx.post(f"{runpod_server.url}/status/{job.remote_id}")
    done = app.wait(job.id, lambda j: j.terminal)
    assert done.status is JobStatus.SUCCEEDED
    assert done.output == {"text": "hello a red fox", "worker_job_id": job.remote_id}
    assert app.outcomes(job.id) == [(200, "applied")]


def test_refresh_runs_the_job_and_applies_its_answer(app: App, client: GeneratorClient) -> None:
    job = client.submit({"prompt": "an owl"})
    done = client.refresh(job.id)  # POST /status/{remote_id}: the simulator runs it
    assert done.status is JobStatus.SUCCEEDED
    assert done.output == {"text": "hello an owl", "worker_job_id": job.remote_id}
    # The webhook that follows changes nothing.
    app.wait(job.id, lambda j: bool(app.outcomes(job.id)))
    assert app.outcomes(job.id)[0][0] == 200
    assert app.store.get(job.id).output == done.output


def test_a_failed_job_sends_no_webhook_and_refresh_fails_it(
    app: App, client: GeneratorClient
) -> None:
    job = client.submit({"mode": "fail"})
    done = client.refresh(job.id)
    assert done.status is JobStatus.FAILED
    assert done.error is not None
    assert done.error.code == "runpod_failed"
    assert json.loads(done.error.message)["error_message"] == "the worker refused"
    assert app.outcomes(job.id) == []


def test_the_reconciler_settles_a_failed_job(app: App, client: GeneratorClient) -> None:
    job = client.submit({"mode": "error"})
    time.sleep(0.01)  # stale
    report = Reconciler(app.store, client, stale_after=0.001, give_up_after=3600).run_once()
    assert job.id in report.finished
    failed = app.store.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert (failed.error.code, failed.error.message) == ("runpod_failed", "the prompt was refused")


def test_polling_a_job_the_simulator_forgot_does_not_undo_its_success(
    runpod_server: ServerProcess, app: App, client: GeneratorClient
) -> None:
    # Once run, the simulator answers FAILED "Job ID not found" about that id.
    job = client.submit({"prompt": "a hare"})
    httpx.post(f"{runpod_server.url}/status/{job.remote_id}")
    app.wait(job.id, lambda j: j.terminal)
    again = client.refresh(job.id)
    assert again.status is JobStatus.SUCCEEDED
    assert again.output == {"text": "hello a hare", "worker_job_id": job.remote_id}
