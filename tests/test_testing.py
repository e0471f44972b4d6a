"""jobhook.testing: the FakeGenerator keeps the wire contract, its chaos stays
recoverable, the race ends right on every store, and the pytest fixtures work."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from collections import Counter
from typing import Any

import httpx
import pytest

from jobhook import (
    AsyncGeneratorClient,
    AsyncInMemoryJobStore,
    GeneratorClient,
    InMemoryJobStore,
    JobIdMismatchError,
    JobStatus,
    JobStore,
    WebhookHandler,
    verify_webhook,
)
from jobhook.testing import (
    Chaos,
    FakeGenerator,
    Scripts,
    Submission,
    new_webhook_secret,
    signed_delivery,
)

BASE = "http://fake-generator.invalid"
CALLBACK = "http://app.invalid/webhooks/jobhook/{job_id}"
PATHS = {
    "submit_path": FakeGenerator.submit_path,
    "status_path": FakeGenerator.status_path,
    "cancel_path": FakeGenerator.cancel_path,
}


@pytest.fixture
def secret() -> str:
    return new_webhook_secret()


def wire(store: Any, secret: str, **fake_options: Any) -> tuple[FakeGenerator, GeneratorClient]:
    """A fake whose callbacks go into a handler over ``store``, and a client to it."""
    handler = WebhookHandler(store, secret=secret)
    fake = FakeGenerator(secret, handler=handler, **fake_options)
    http = httpx.Client(transport=fake.transport)
    client = GeneratorClient(store, BASE, callback_url=CALLBACK, http_client=http, **PATHS)
    return fake, client


def statuses(store: Any, job_id: str) -> list[JobStatus]:
    return [e.status for e in store.events(limit=1000) if e.job_id == job_id]


# --- the wire contract ---------------------------------------------------------------


def test_manual_delivery_runs_the_default_script(secret: str) -> None:
    store = InMemoryJobStore()
    fake, client = wire(store, secret)
    job = client.submit({"prompt": "a red fox"}, kind="image")

    (submission,) = fake.submissions
    assert submission.job_id == job.id
    assert submission.idempotency_key == job.id
    assert submission.kind == "image"
    assert submission.input == {"prompt": "a red fox"}
    assert submission.callback_url == f"http://app.invalid/webhooks/jobhook/{job.id}"
    assert fake.pending() == 3
    assert store.get(job.id).status is JobStatus.SUBMITTED

    sent = fake.deliver_all()
    assert [r.report.status_code for r in sent if r.report] == [200, 200, 200]
    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.output == {"images": [f"https://fake.invalid/{job.id}/1.png"]}
    assert done.remote_id is not None
    assert statuses(store, job.id) == [
        JobStatus.SUBMITTED,
        JobStatus.RUNNING,
        JobStatus.RUNNING,
        JobStatus.SUCCEEDED,
    ]
    assert fake.final_status(job.id) is JobStatus.SUCCEEDED
    fake.close()


def test_callbacks_are_signed_standard_webhooks(secret: str) -> None:
    seen: list[httpx.Request] = []

    def app(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    receiver = httpx.Client(transport=httpx.MockTransport(app))
    with FakeGenerator(secret, callback_client=receiver, delivery="before_answer") as fake:
        http = httpx.Client(transport=fake.transport)
        answer = http.post(f"{BASE}/jobs", json={"job_id": "j-1", "callback_url": "http://a/cb"})
    assert answer.status_code == 202
    assert len(seen) == 3
    for request in seen:
        verify_webhook(secret, request.headers, request.content)
        assert json.loads(request.content)["job_id"] == "j-1"
    standardwebhooks = pytest.importorskip("standardwebhooks")
    standardwebhooks.Webhook(secret).verify(seen[0].content, dict(seen[0].headers))


@pytest.mark.parametrize(
    ("script", "status", "code"),
    [
        (Scripts.failure("nsfw", "refused"), JobStatus.FAILED, "nsfw"),
        (Scripts.cancellation(), JobStatus.CANCELED, None),
        (Scripts.success(progress=(), output={"text": "hi"}), JobStatus.SUCCEEDED, None),
    ],
)
def test_scripts_decide_how_a_job_ends(
    secret: str, script: Any, status: JobStatus, code: str | None
) -> None:
    store = InMemoryJobStore()
    fake, client = wire(store, secret, script=script)
    job = client.submit({})
    fake.deliver_all()
    done = store.get(job.id)
    assert done.status is status
    assert (done.error.code if done.error else None) == code
    assert fake.final_status(job.id) is status


def test_a_script_per_job(secret: str) -> None:
    store = InMemoryJobStore()
    fake, client = wire(store, secret)
    fake.set_script("bad", Scripts.failure())
    client.submit({}, job_id="good")
    client.submit({}, job_id="bad")
    fake.deliver_all()
    assert store.get("good").status is JobStatus.SUCCEEDED
    assert store.get("bad").status is JobStatus.FAILED


def test_mixed_scripts_are_decided_by_the_job_id() -> None:
    script = Scripts.mixed(seed=3)

    def ending(job_id: str) -> JobStatus:
        sub = Submission(job_id, "http://a/cb", None, {}, None, {})
        return script(sub)[-1].status

    endings = [ending(f"job-{n}") for n in range(200)]
    assert endings == [ending(f"job-{n}") for n in range(200)]
    assert set(endings) == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}


def test_a_repeated_submit_is_the_same_job(secret: str) -> None:
    with FakeGenerator(secret) as fake:
        http = httpx.Client(transport=fake.transport)
        body = {"job_id": "j-1", "callback_url": "http://app/cb"}
        first = http.post(f"{BASE}/jobs", json=body)
        again = http.post(f"{BASE}/jobs", json=body)
        assert first.status_code == 202
        assert again.status_code == 200
        assert again.json() == first.json()
        assert fake.job_ids() == ["j-1"]
        assert len(fake.submissions) == 2
        assert fake.pending() == 3


@pytest.mark.parametrize(
    "body",
    [b"nope", b"[]", b'{"callback_url": "http://a/cb"}', b'{"job_id": "j", "callback_url": "x"}'],
)
def test_a_submit_outside_the_contract_is_refused(secret: str, body: bytes) -> None:
    with FakeGenerator(secret) as fake:
        answer = httpx.Client(transport=fake.transport).post(f"{BASE}/jobs", content=body)
    assert answer.status_code == 400
    assert fake.job_ids() == []


def test_failing_submits_are_retried_by_the_client(secret: str) -> None:
    store = InMemoryJobStore()
    fake, client = wire(store, secret)
    client = GeneratorClient(
        store,
        BASE,
        callback_url=CALLBACK,
        http_client=httpx.Client(transport=fake.transport),
        sleep=lambda _: None,
    )
    fake.fail_next_submits(503, times=2, headers={"Retry-After": "0"})
    job = client.submit({})
    assert job.status is JobStatus.SUBMITTED
    assert len(fake.submissions) == 3
    assert fake.job_ids() == [job.id]


def test_the_original_bug_is_reproduced_and_caught(secret: str) -> None:
    store = InMemoryJobStore()
    fake, client = wire(store, secret, mismatched_ids=True)
    with pytest.raises(JobIdMismatchError) as info:
        client.submit({}, job_id="app-id")
    assert str(info.value.remote_job_id).startswith("fake_")
    sent = fake.deliver_all()
    # The backend's webhooks name its own id: the app never applies them.
    assert {r.payload["job_id"] for r in sent} == {info.value.remote_job_id}
    assert all(r.report and not r.report.delivered for r in sent)
    job = store.get("app-id")
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.code == "job_id_mismatch"


# --- status and cancel endpoints ---------------------------------------------------


def test_the_status_endpoint_tells_what_was_sent_so_far(secret: str) -> None:
    store = InMemoryJobStore()
    fake, client = wire(store, secret)
    job = client.submit({})
    assert client.refresh(job.id).status is JobStatus.SUBMITTED
    fake.deliver_next()
    assert client.refresh(job.id).progress == 30.0
    fake.deliver_all()
    assert client.refresh(job.id).status is JobStatus.SUCCEEDED


def test_cancel_stops_the_script(secret: str) -> None:
    store = InMemoryJobStore()
    fake, client = wire(store, secret)
    job = client.submit({})
    fake.deliver_next()
    assert client.cancel(job.id).status is JobStatus.CANCELED
    sent = fake.deliver_all()
    assert [r.payload["status"] for r in sent] == ["canceled"]
    assert store.get(job.id).status is JobStatus.CANCELED
    assert fake.final_status(job.id) is JobStatus.CANCELED
    assert statuses(store, job.id)[-1] is JobStatus.CANCELED


def test_unknown_jobs_and_routes_answer_404(secret: str) -> None:
    with FakeGenerator(secret) as fake:
        http = httpx.Client(transport=fake.transport)
        assert http.get(f"{BASE}/jobs/nope").status_code == 404
        assert http.post(f"{BASE}/jobs/nope/cancel").status_code == 404
        assert http.get(f"{BASE}/elsewhere").status_code == 404


# --- the race: the webhook wins, on every store --------------------------------------


def test_race_a_webhook_that_beats_the_submit_answer_wins(
    store: JobStore, secret: str, caplog: pytest.LogCaptureFixture
) -> None:
    fake, client = wire(store, secret, delivery="before_answer")
    with caplog.at_level(logging.INFO, logger="jobhook"):
        job = client.submit({"prompt": "fast"})
    assert job.status is JobStatus.SUCCEEDED
    assert store.get(job.id).status is JobStatus.SUCCEEDED
    # `submitted` came last and was judged stale: no event, no step back.
    assert statuses(store, job.id) == [JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.SUCCEEDED]
    assert f"job {job.id}: submitted" in caplog.text
    assert "outcome=stale" in caplog.text
    fake.close()


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("kind", ["async-memory", "async-sqlite"])
async def test_the_race_with_the_async_client(
    kind: str, secret: str, tmp_path: Any, anyio_backend: str
) -> None:
    store: Any
    if kind == "async-memory":
        store = AsyncInMemoryJobStore()
    else:
        from jobhook.stores.sql import AsyncSQLJobStore

        store = AsyncSQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
        await store.create_schema()
    handler = WebhookHandler(store, secret=secret)
    with FakeGenerator(secret, handler=handler, delivery="before_answer") as fake:
        http = httpx.AsyncClient(transport=fake.async_transport)
        async with AsyncGeneratorClient(
            store, BASE, callback_url=CALLBACK, http_client=http
        ) as client:
            job = await client.submit({})
        await http.aclose()
    assert job.status is JobStatus.SUCCEEDED
    events = [e.status for e in await store.events()]
    assert events == [JobStatus.RUNNING, JobStatus.RUNNING, JobStatus.SUCCEEDED]
    await store.close()


# --- chaos ---------------------------------------------------------------------------


def test_chaos_duplicates_reorders_and_drops(secret: str) -> None:
    store = InMemoryJobStore()
    chaos = Chaos(duplicate=0.3, reorder=0.3, drop=0.15, seed=7)
    fake, client = wire(store, secret, chaos=chaos, script=Scripts.mixed(seed=1))
    jobs = [client.submit({"n": n}).id for n in range(40)]
    sent = fake.deliver_all()

    by_id = Counter(r.msg_id for r in sent)
    assert any(count > 1 for count in by_id.values()), "no duplicates were made"
    assert any(r.dropped for r in sent), "nothing was dropped"
    # Every duplicate that arrived after its first copy was recognised.
    for record in sent:
        if record.report and by_id[record.msg_id] > 1:
            assert record.report.delivered

    # Dropped terminal callbacks are recovered from the status endpoint.
    for job_id in jobs:
        if not store.get(job_id).terminal:
            client.refresh(job_id)
    for job_id in jobs:
        job = store.get(job_id)
        assert job.status is fake.final_status(job_id)
        changes = statuses(store, job_id)
        assert changes.count(job.status) == 1
        assert [s for s in changes if s.terminal] == [job.status]


def test_chaos_refuses_impossible_probabilities() -> None:
    with pytest.raises(ValueError):
        Chaos(drop=1.5)


def test_background_delivery_with_delays(secret: str) -> None:
    store = InMemoryJobStore()
    chaos = Chaos(delay=0.02, duplicate=0.2, seed=2)
    fake, client = wire(store, secret, delivery="background", chaos=chaos, workers=3)
    jobs = [client.submit({}).id for _ in range(10)]
    fake.wait_idle(timeout=30)
    fake.close()
    assert {store.get(j).status for j in jobs} == {JobStatus.SUCCEEDED}


# --- loopback HTTP ---------------------------------------------------------------------


def test_serve_answers_over_real_http(secret: str) -> None:
    with FakeGenerator(secret) as fake, fake.serve() as base_url:
        assert base_url.startswith("http://127.0.0.1:")
        with httpx.Client(base_url=base_url) as http:
            submit = http.post("/jobs", json={"job_id": "a b", "callback_url": "http://x/cb"})
            status = http.get("/jobs/a%20b")
            missing = http.get("/jobs/zzz")
    assert submit.status_code == 202
    assert submit.json()["job_id"] == "a b"
    assert status.json() == {"job_id": "a b", "remote_id": submit.json()["remote_id"],
                             "status": "submitted"}  # fmt: skip
    assert missing.status_code == 404


# --- helpers and the pytest plugin --------------------------------------------------


def test_signed_delivery_is_accepted_by_a_handler(secret: str) -> None:
    store = InMemoryJobStore()
    store.create({}, job_id="j-1")
    headers, body = signed_delivery(secret, {"job_id": "j-1", "status": "running"})
    verify_webhook(secret, headers, body)
    answer = WebhookHandler(store, secret=secret).handle(headers, body, job_id="j-1")
    assert answer.status == 200
    assert store.get("j-1").status is JobStatus.RUNNING


def test_the_plugin_fixtures_run_a_whole_job(
    jobhook_client: GeneratorClient,
    fake_generator: FakeGenerator,
    jobhook_store: JobStore,
) -> None:
    job = jobhook_client.submit({"prompt": "x"})
    fake_generator.deliver_all()
    assert jobhook_store.get(job.id).status is JobStatus.SUCCEEDED
    assert jobhook_client.wait(job.id, timeout=1).status is JobStatus.SUCCEEDED


def test_importing_jobhook_testing_does_not_need_pytest() -> None:
    code = (
        "import sys; sys.modules['pytest'] = None\n"
        "import jobhook.testing as t\n"
        "assert t.FakeGenerator and not hasattr(t, 'fake_generator')\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
