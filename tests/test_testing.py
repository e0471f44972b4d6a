"""jobhook.testing: the FakeGenerator keeps the wire contract, its chaos stays
recoverable, the race ends right on every store, and the pytest fixtures work."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
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
    JobUpdate,
    RetryPolicy,
    WebhookHandler,
    backends,
    verify_webhook,
)
from jobhook._signing import callback_token
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


# --- impersonating a provider: Cog, Replicate, fal, RunPod ----------------------------

TOKENS = "app-callback-token-secret"
HOOK = "https://app.example/webhooks/{job_id}"
PROVIDERS = ["cog", "replicate", "fal", "runpod"]
HOSTED = ["replicate", "fal", "runpod"]
DEFAULT_OUTPUT = {"images": ["https://fake.invalid/job-1/1.png"]}


class Recorder:
    """A `WebhookHandler` that remembers the outcome of every delivery it answers."""

    def __init__(self, handler: WebhookHandler) -> None:
        self.handler = handler
        self.outcomes: list[str] = []

    def handle(self, headers: Any, body: bytes, **route: Any) -> Any:
        answer = self.handler.handle(headers, body, **route)
        self.outcomes.append(answer.json()["outcome"])
        return answer


@dataclass
class Provider:
    """A fake playing a provider, the app's profile for it, and the app's side."""

    fake: FakeGenerator
    profile: Any
    client: GeneratorClient
    handler: Recorder

    @property
    def store(self) -> Any:
        return self.client.store

    def status(self, job_id: str = "job-1") -> JobStatus:
        return self.store.get(job_id).status


def profile_for(name: str, fake: FakeGenerator) -> Any:
    """The profile an app would configure for the provider the fake plays."""
    if name == "cog":
        return backends.Cog("http://cog.invalid:5000")
    if name == "replicate":
        return backends.Replicate("r8_test", model="black-forest-labs/flux-schnell")
    if name == "fal":
        return backends.Fal("fal-ai/flux/dev", "fal-key", jwks=fake.fal_jwks)
    return backends.RunPod("ep-1", "rp-key")


@pytest.fixture
def provider() -> Iterator[Callable[..., Provider]]:
    """Builds a `Provider` for a name and fake options; closes the fakes it made."""
    fakes: list[FakeGenerator] = []

    def build(name: str, *, hooks: Any = None, **fake_options: Any) -> Provider:
        fake = FakeGenerator(impersonate=name, **fake_options)
        fakes.append(fake)
        profile = profile_for(name, fake)
        signed = {"secret": fake.secret} if name == "replicate" else {}
        store = InMemoryJobStore()
        handler = Recorder(WebhookHandler(store, backend=profile, token_secret=TOKENS, **signed))
        fake.handler = handler  # set afterwards: the handler needs the fake's secret or keys
        http = httpx.Client(transport=fake.transport, event_hooks=hooks or {})
        client = GeneratorClient(
            store,
            profile,
            callback_url=HOOK,
            token_secret=TOKENS,
            retry=RetryPolicy(max_attempts=3, backoff=0),
            http_client=http,
            sleep=lambda _: None,
        )
        return Provider(fake, profile, client, handler)

    yield build
    for fake in fakes:
        fake.close()


def raw(fake: FakeGenerator) -> httpx.Client:
    return httpx.Client(transport=fake.transport)


@pytest.mark.parametrize(
    ("name", "auth", "callbacks"),
    [
        ("cog", None, ["processing", "processing", "succeeded"]),
        ("replicate", "Bearer r8_test", ["processing", "processing", "succeeded"]),
        ("fal", "Key fal-key", ["OK"]),  # fal calls back once, when the request ends
        ("runpod", "Bearer rp-key", ["COMPLETED"]),  # so does RunPod
    ],
)
def test_each_provider_runs_a_job_offline(
    provider: Callable[..., Provider], name: str, auth: str | None, callbacks: list[str]
) -> None:
    p = provider(name)
    job = p.client.submit({"prompt": "a red fox"}, job_id="job-1")

    (submission,) = p.fake.submissions
    assert submission.job_id == "job-1"  # read from the callback URL where none is sent
    assert submission.input == {"prompt": "a red fox"}
    assert submission.headers.get("authorization") == auth
    assert httpx.URL(submission.callback_url).params["token"] == callback_token(TOKENS, "job-1")
    # Cog's prediction id is the job id; the hosted ones assign their own.
    assert (job.remote_id is None) == (name == "cog")
    assert job.remote_id != "job-1"
    assert job.status is JobStatus.SUBMITTED

    sent = p.fake.deliver_all()
    assert [r.payload["status"] for r in sent] == callbacks
    assert p.handler.outcomes == ["applied"] * len(callbacks)
    done = p.store.get("job-1")
    assert done.status is p.fake.final_status("job-1") is JobStatus.SUCCEEDED
    assert done.output == DEFAULT_OUTPUT
    assert done.remote_id == job.remote_id
    progress = [e.progress for e in p.store.events() if e.status is JobStatus.RUNNING]
    # Cog's and Replicate's progress comes from the predictions' logs.
    assert progress == ([30.0, 70.0] if name in ("cog", "replicate") else [])


FAILURE = Scripts.failure("oom", "out of memory")


@pytest.mark.parametrize(
    ("name", "script", "reported", "error"),
    [
        ("cog", FAILURE, "failed", ("prediction_failed", "out of memory")),
        ("replicate", FAILURE, "failed", ("prediction_failed", "out of memory")),
        ("replicate", Scripts.failure("aborted", "deadline"), "aborted", ("aborted", "deadline")),
        ("replicate", Scripts.cancellation(), "canceled", None),
        # fal's `error` is only "Invalid status code: 422"; the reason is in its payload.
        ("fal", FAILURE, "ERROR", ("fal_error", "out of memory")),
        ("runpod", FAILURE, None, ("runpod_failed", "out of memory")),
        ("runpod", Scripts.failure("timed_out", "too slow"), None, ("timed_out", "too slow")),
    ],
)
def test_each_provider_reports_failures_in_its_own_statuses(
    provider: Callable[..., Provider],
    name: str,
    script: Any,
    reported: str | None,
    error: tuple[str, str] | None,
) -> None:
    p = provider(name, script=script)
    p.client.submit({}, job_id="job-1")
    sent = p.fake.deliver_all()
    endings = [r.payload["status"] for r in sent if r.payload["status"] != "processing"]
    if reported is None:
        # A failed RunPod job sends no webhook, as the real one: polling settles it.
        assert endings == []
        assert p.status() is JobStatus.SUBMITTED
        p.client.refresh("job-1")
    else:
        assert endings == [reported]
    job = p.store.get("job-1")
    assert job.status is p.fake.final_status("job-1")
    assert job.status is (JobStatus.FAILED if error else JobStatus.CANCELED)
    assert (job.error.code, job.error.message) == error if job.error else error is None


@pytest.mark.parametrize("name", HOSTED)
def test_refresh_reads_each_hosted_providers_status_endpoint(
    provider: Callable[..., Provider], name: str
) -> None:
    # Every callback is lost: only the status endpoint tells how the job goes.
    p = provider(name, chaos=Chaos(drop=1.0))
    p.client.submit({"prompt": "a fox"}, job_id="job-1")
    queued = JobStatus.RUNNING if name == "replicate" else JobStatus.SUBMITTED  # "starting"
    assert p.client.refresh("job-1").status is queued

    p.fake.deliver_all()
    assert p.handler.outcomes == []
    assert all(record.dropped for record in p.fake.callbacks)
    done = p.client.refresh("job-1")  # fal: the status says COMPLETED, the result has it
    assert done.status is JobStatus.SUCCEEDED
    assert done.output == DEFAULT_OUTPUT


def test_replicate_progress_is_what_the_prediction_reached(
    provider: Callable[..., Provider],
) -> None:
    p = provider("replicate")
    p.client.submit({}, job_id="job-1")
    starting = p.client.refresh("job-1")  # "starting": running, no logs yet
    assert (starting.status, starting.progress) == (JobStatus.RUNNING, None)
    p.fake.deliver_next()
    assert p.client.refresh("job-1").progress == 30.0
    p.fake.deliver_all()
    assert p.handler.outcomes == ["applied"] * 3  # no webhook was stale behind a poll
    assert p.status() is JobStatus.SUCCEEDED


@pytest.mark.parametrize("name", ["fal", "runpod"])
def test_steps_a_provider_does_not_call_back_for_show_in_its_status(
    provider: Callable[..., Provider], name: str
) -> None:
    p = provider(name, script=lambda submission: [JobUpdate(JobStatus.RUNNING, progress=50.0)])
    p.client.submit({}, job_id="job-1")
    assert p.fake.pending() == 0
    assert p.fake.deliver_all() == []  # the step happens, silently
    assert p.client.refresh("job-1").status is JobStatus.RUNNING
    assert p.fake.final_status("job-1") is None


@pytest.mark.parametrize(
    ("name", "answer", "callbacks", "ending"),
    [
        ("cog", {}, ["canceled"], JobStatus.CANCELED),  # the webhook says how it ended
        ("replicate", {"status": "canceled"}, ["canceled"], JobStatus.CANCELED),
        ("fal", {"status": "CANCELLATION_REQUESTED"}, ["ERROR"], JobStatus.FAILED),
        ("runpod", {"status": "CANCELLED"}, [], JobStatus.CANCELED),  # only the answer says it
    ],
)
def test_cancel_in_each_providers_shapes(
    provider: Callable[..., Provider],
    name: str,
    answer: dict[str, str],
    callbacks: list[str],
    ending: JobStatus,
) -> None:
    answers: list[httpx.Response] = []
    p = provider(name, hooks={"response": [answers.append]})
    p.client.submit({}, job_id="job-1")
    p.client.cancel("job-1")
    cancel = answers[-1]
    cancel.read()
    assert cancel.json().items() >= answer.items()
    assert [r.payload["status"] for r in p.fake.deliver_all()] == callbacks
    assert p.status() is ending is p.fake.final_status("job-1")


@pytest.mark.parametrize("name", PROVIDERS)
def test_chaos_duplicates_stay_duplicates_with_every_provider(
    provider: Callable[..., Provider], name: str
) -> None:
    chaos = Chaos(duplicate=0.5, reorder=0.3, seed=11)
    p = provider(name, chaos=chaos, script=Scripts.mixed(seed=2))
    jobs = [p.client.submit({"n": n}, job_id=f"job-{n}").id for n in range(20)]
    sent = p.fake.deliver_all()

    assert all(r.report and r.report.delivered for r in sent)
    copies = Counter(r.msg_id for r in sent)
    assert any(count > 1 for count in copies.values()), "no duplicates were made"
    # A copy of a callback is recognised as one, whatever the provider's delivery id
    # (a webhook-id, fal's request and body, the content of Cog's and RunPod's).
    seen: set[str] = set()
    for record, outcome in zip(sent, p.handler.outcomes, strict=True):
        if record.msg_id in seen:
            assert outcome == "duplicate", record.payload
        seen.add(record.msg_id)

    for job_id in jobs:  # RunPod never calls back for failed or canceled jobs
        if not p.store.get(job_id).terminal:
            p.client.refresh(job_id)
    for job_id in jobs:
        assert p.status(job_id) is p.fake.final_status(job_id)
        assert [s for s in statuses(p.store, job_id) if s.terminal] == [p.status(job_id)]


def test_callbacks_are_authenticated_as_each_provider_does() -> None:
    seen: list[httpx.Request] = []

    def app(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    receiver = httpx.Client(transport=httpx.MockTransport(app))
    for name in PROVIDERS:
        seen.clear()
        options: dict[str, Any] = {"callback_client": receiver, "delivery": "before_answer"}
        with FakeGenerator(impersonate=name, **options) as fake:
            profile = profile_for(name, fake)
            store = InMemoryJobStore()
            client = GeneratorClient(
                store, profile, callback_url=HOOK, token_secret=TOKENS, http_client=raw(fake)
            )
            client.submit({"prompt": "fox"}, job_id="job-1")
        last = seen[-1]
        # To the callback URL exactly as given, its token kept.
        assert str(last.url) == client.callback_url_for("job-1")
        headers = {k.lower(): v for k, v in last.headers.items()}
        if name == "replicate":
            for request in seen:
                verify_webhook(fake.secret, request.headers, request.content)
        elif name == "fal":
            assert profile.verify_callback(headers, last.content, time.time()).startswith("fal:")
            assert headers["x-fal-webhook-request-id"] == json.loads(last.content)["request_id"]
        else:  # Cog and RunPod sign nothing: the URL's token is the authentication
            assert not [h for h in headers if h.startswith(("webhook-", "x-fal-"))]
    receiver.close()


def test_the_fake_answers_as_cog_does() -> None:
    with FakeGenerator(impersonate="cog") as fake, raw(fake) as http:
        url = "http://cog.invalid/predictions/p-1"
        body = {"input": {}, "webhook": "http://app.invalid/hook?token=t"}
        assert http.put(url, json=body).status_code == 400  # no Prefer: respond-async
        prefer = {"prefer": "respond-async"}
        first = http.put(url, json=body, headers=prefer)
        assert (first.status_code, first.json()) == (202, {"id": "p-1", "status": "starting"})
        fake.deliver_next()
        again = http.put(url, json={**body, "input": {"other": 1}}, headers=prefer)
        assert again.status_code == 202  # the same prediction while it runs, as it was
        assert (again.json()["status"], again.json()["input"]) == ("processing", {})
        assert fake.job_ids() == ["p-1"]
        status = http.get(url)
        assert (status.status_code, status.headers["allow"]) == (405, "PUT")  # no status
        assert http.put(url, json={**body, "id": "p-2"}, headers=prefer).status_code == 422
        assert http.get("http://cog.invalid/health-check").json()["status"] == "READY"
        fake.deliver_all()
        assert http.post(f"{url}/cancel").status_code == 404  # ended: Cog forgot it
        rerun = http.put(url, json=body, headers=prefer)
        assert rerun.json()["status"] == "starting"  # a repeat after the end runs again
        assert fake.job_ids() == ["p-1", "p-1"]


def test_the_fake_answers_as_replicate_does() -> None:
    with FakeGenerator(impersonate="replicate", api_key="r8_right") as fake, raw(fake) as http:
        base = "https://api.replicate.com/v1"
        body = {"input": {"prompt": "fox"}, "webhook": "https://app.example/webhooks/j-1"}
        models = f"{base}/models/o/n/predictions"
        assert http.post(models, json=body).status_code == 401
        wrong = {"authorization": "Bearer r8_wrong"}
        assert http.post(models, json=body, headers=wrong).status_code == 401
        auth = {"authorization": "Bearer r8_right"}
        assert http.post(f"{base}/predictions", json=body, headers=auth).status_code == 422
        created = http.post(models, json=body, headers=auth)
        assert created.status_code == 201
        prediction = created.json()
        assert (prediction["status"], prediction["model"]) == ("starting", "o/n")
        assert prediction["urls"]["get"] == f"{base}/predictions/{prediction['id']}"
        assert http.get(prediction["urls"]["get"], headers=auth).json()["id"] == prediction["id"]
        assert http.get(f"{base}/predictions/j-1", headers=auth).status_code == 404  # not its id
        # Replicate takes no idempotency key: the same request again is a second prediction.
        second = http.post(models, json=body, headers=auth).json()
        assert second["id"] != prediction["id"]
        assert fake.job_ids() == ["j-1", "j-1"]


def test_the_fake_answers_as_fal_does() -> None:
    with FakeGenerator(impersonate="fal") as fake, raw(fake) as http:
        hook = {"fal_webhook": "https://app.example/webhooks/j-1"}
        auth = {"authorization": "Key any"}
        submit = "https://queue.fal.run/fal-ai/flux/dev"
        assert http.post(submit, params=hook, json={}).status_code == 401
        queued = http.post(submit, params=hook, json={}, headers=auth).json()
        urls = {"request_id", "gateway_request_id", "status_url", "response_url", "cancel_url"}
        assert set(queued) >= urls
        assert queued["status_url"].startswith("https://queue.fal.run/fal-ai/flux/requests/")
        under_the_path = queued["status_url"].replace("/flux/", "/flux/dev/")
        assert http.get(under_the_path, headers=auth).status_code == 404
        assert http.get(queued["status_url"], headers=auth).json()["status"] == "IN_QUEUE"
        assert http.get(queued["response_url"], headers=auth).status_code == 400  # not yet
        fake.deliver_all()
        assert http.get(queued["status_url"], headers=auth).json()["status"] == "COMPLETED"
        assert http.get(queued["response_url"], headers=auth).json()["images"]
        ended = http.put(queued["cancel_url"], headers=auth)
        assert (ended.status_code, ended.json()) == (400, {"status": "ALREADY_COMPLETED"})


def test_the_fake_answers_as_runpod_does_and_as_its_local_server() -> None:
    with FakeGenerator(impersonate="runpod") as fake, raw(fake) as http:
        body = {"input": {"n": 1}, "webhook": "https://app.example/webhooks/j-1"}
        auth = {"authorization": "Bearer key"}
        run = "https://api.runpod.ai/v2/ep-1/run"
        assert http.post(run, json=body).status_code == 401
        assert http.post(run, json={**body, "input": [1]}, headers=auth).status_code == 400
        queued = http.post(run, json=body, headers=auth).json()
        assert queued["status"] == "IN_QUEUE"
        assert queued["id"].endswith("-u1")
        status = f"https://api.runpod.ai/v2/ep-1/status/{queued['id']}"
        assert http.get(status, headers=auth).json() == {"id": queued["id"], "status": "IN_QUEUE"}
        elsewhere = status.replace("ep-1", "ep-2")
        assert http.get(elsewhere, headers=auth).status_code == 404  # another endpoint's

        local = http.post("http://127.0.0.1:8000/run", json=body).json()  # no key needed
        assert (local["id"][:5], local["status"]) == ("test-", "IN_PROGRESS")
        assert http.get(f"http://127.0.0.1:8000/status/{local['id']}").status_code == 405
        unknown = http.post("http://127.0.0.1:8000/status/nope").json()
        assert unknown == {"id": "nope", "status": "FAILED", "error": "Job ID not found"}
        sent = fake.deliver_all()
        assert sent[-1].payload == {"output": {"images": ["https://fake.invalid/j-1/1.png"]}}


def test_a_webhook_that_beats_the_submit_answer_with_a_hosted_provider(
    provider: Callable[..., Provider],
) -> None:
    p = provider("replicate", delivery="before_answer")
    job = p.client.submit({}, job_id="job-1")
    assert job.status is JobStatus.SUCCEEDED
    assert job.remote_id is not None  # from the predictions the webhooks carried
    assert statuses(p.store, "job-1") == [JobStatus.RUNNING] * 2 + [JobStatus.SUCCEEDED]


def test_cog_with_mismatched_ids_is_the_original_bug_caught(
    provider: Callable[..., Provider],
) -> None:
    p = provider("cog", mismatched_ids=True)
    with pytest.raises(JobIdMismatchError):
        p.client.submit({}, job_id="app-id")
    p.fake.deliver_all()
    assert set(p.handler.outcomes) == {"rejected"}  # the webhooks name another prediction
    assert p.store.get("app-id").error.code == "job_id_mismatch"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_an_async_client_and_handler_with_an_impersonated_provider(
    anyio_backend: str,
) -> None:
    store = AsyncInMemoryJobStore()
    profile = backends.Replicate("r8_test", model="o/n")
    with FakeGenerator(impersonate="replicate") as fake:
        fake.handler = WebhookHandler(
            store, backend=profile, secret=fake.secret, token_secret=TOKENS
        )
        http = httpx.AsyncClient(transport=fake.async_transport)
        async with AsyncGeneratorClient(
            store, profile, callback_url=HOOK, token_secret=TOKENS, http_client=http
        ) as client:
            job = await client.submit({}, job_id="job-1")
            assert len(await fake.adeliver_all()) == 3
            assert (await client.refresh(job.id)).status is JobStatus.SUCCEEDED
        await http.aclose()
    assert (await store.get("job-1")).output == DEFAULT_OUTPUT
    await store.close()


def test_an_impersonated_provider_over_real_http() -> None:
    store = InMemoryJobStore()
    with FakeGenerator(impersonate="runpod") as fake, fake.serve() as base_url:
        profile = backends.RunPod("ep-1", "rp-key", base_url=f"{base_url}/v2")
        fake.handler = WebhookHandler(store, backend=profile, token_secret=TOKENS)
        with GeneratorClient(store, profile, callback_url=HOOK, token_secret=TOKENS) as client:
            job = client.submit({"prompt": "a networked fox"})
            assert client.refresh(job.id).status is JobStatus.SUBMITTED
            fake.deliver_all()
    assert store.get(job.id).status is JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"impersonate": "midjourney"}, "impersonate must be one of"),
        ({"impersonate": "cog", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, "sign"),
        ({"impersonate": "runpod", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, "sign"),
        ({"impersonate": "fal", "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}, "ED25519"),
        ({"impersonate": "fal", "secret": b"short"}, "32-byte"),
        ({"impersonate": "replicate", "mismatched_ids": True}, "assigns its own ids"),
        ({"impersonate": "cog", "api_key": "k"}, "takes no API key"),
    ],
)
def test_impersonations_refuse_options_that_do_not_fit(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        FakeGenerator(**options)


def test_a_replicate_fake_makes_up_its_secret_and_only_a_fal_fake_has_a_jwks() -> None:
    with FakeGenerator(impersonate="replicate") as fake:
        assert isinstance(fake.secret, str)
        assert fake.secret.startswith("whsec_")
        assert not hasattr(fake, "fal_jwks")
        assert "replicate" in repr(fake)


# --- impersonating OpenAI: background Responses, thin events to one URL ---------------

OPENAI_KEY = "sk-test"
MESSAGE = [{"type": "message", "role": "assistant", "content": [{"type": "output_text"}]}]


@dataclass
class OpenAIApp:
    """An OpenAI fake and an app's side: its profile, client and one webhook route."""

    fake: FakeGenerator
    client: GeneratorClient
    handler: Recorder

    @property
    def store(self) -> Any:
        return self.client.store


@pytest.fixture
def openai_app() -> Iterator[Callable[..., OpenAIApp]]:
    fakes: list[FakeGenerator] = []

    def build(*, hooks: Any = None, **fake_options: Any) -> OpenAIApp:
        fake_options.setdefault("script", Scripts.success(output=MESSAGE))
        fake = FakeGenerator(impersonate="openai", api_key=OPENAI_KEY, **fake_options)
        fakes.append(fake)
        profile = backends.OpenAI(
            OPENAI_KEY, model="gpt-test", base_url="https://openai.invalid/v1"
        )
        store = InMemoryJobStore()
        client = GeneratorClient(
            store,
            profile,
            callback_url=HOOK,  # required by the client; OpenAI's submit names no URL
            retry=RetryPolicy(max_attempts=3, backoff=0),
            http_client=httpx.Client(transport=fake.transport, event_hooks=hooks or {}),
            sleep=lambda _: None,
        )
        # One project-wide route, without a job id: the handler fetches what events name.
        handler = WebhookHandler(store, backend=profile, secret=fake.secret, client=client)
        fake.handler = Recorder(handler)
        return OpenAIApp(fake, client, fake.handler)

    yield build
    for fake in fakes:
        fake.close()


def test_openai_runs_a_background_response_offline(
    openai_app: Callable[..., OpenAIApp],
) -> None:
    app = openai_app()
    job = app.client.submit("a red fox, in watercolour", job_id="job-1")
    assert job.status is JobStatus.SUBMITTED
    assert job.remote_id is not None
    assert job.remote_id.startswith("resp_")
    (submission,) = app.fake.submissions
    assert submission.job_id == "job-1"  # from metadata.jobhook_job_id
    assert submission.input == "a red fox, in watercolour"
    assert submission.headers["authorization"] == f"Bearer {OPENAI_KEY}"

    sent = app.fake.deliver_all()  # nothing for the running steps: one thin event at the end
    (event,) = [record.payload for record in sent]
    assert event["type"] == "response.completed"
    assert (event["object"], event["data"]) == ("event", {"id": job.remote_id})
    assert event["id"].startswith("evt_")
    assert isinstance(event["created_at"], int)
    assert app.handler.outcomes == ["applied"]
    done = app.store.get("job-1")
    assert (done.status, done.output) == (JobStatus.SUCCEEDED, MESSAGE)  # fetched
    assert done.status is app.fake.final_status("job-1")


@pytest.mark.parametrize(
    ("script", "event", "ending", "error"),
    [
        (FAILURE, "response.failed", JobStatus.FAILED, ("oom", "out of memory")),
        (
            Scripts.failure("incomplete", "max_output_tokens"),
            "response.incomplete",
            JobStatus.FAILED,
            ("incomplete", "max_output_tokens"),
        ),
        (Scripts.cancellation(), "response.cancelled", JobStatus.CANCELED, None),
    ],
)
def test_openai_failures_end_as_their_events_say(
    openai_app: Callable[..., OpenAIApp],
    script: Any,
    event: str,
    ending: JobStatus,
    error: tuple[str, str] | None,
) -> None:
    app = openai_app(script=script)
    app.client.submit("x", job_id="job-1")
    assert [record.payload["type"] for record in app.fake.deliver_all()] == [event]
    job = app.store.get("job-1")
    assert job.status is ending is app.fake.final_status("job-1")
    assert ((job.error.code, job.error.message) if job.error else None) == error


def test_openai_events_survive_chaos(openai_app: Callable[..., OpenAIApp]) -> None:
    app = openai_app(chaos=Chaos(duplicate=0.5, reorder=0.3, seed=5), script=Scripts.mixed())
    jobs = [app.client.submit({"n": n}, job_id=f"job-{n}").id for n in range(20)]
    sent = app.fake.deliver_all()
    copies = Counter(record.msg_id for record in sent)
    assert any(count > 1 for count in copies.values()), "no duplicates were made"
    seen: set[str] = set()
    for record, outcome in zip(sent, app.handler.outcomes, strict=True):
        assert outcome == ("duplicate" if record.msg_id in seen else "applied")
        seen.add(record.msg_id)
    for job_id in jobs:
        assert app.store.get(job_id).status is app.fake.final_status(job_id)
        assert len([s for s in statuses(app.store, job_id) if s.terminal]) == 1


def test_a_lost_openai_event_is_recovered_by_refresh(
    openai_app: Callable[..., OpenAIApp],
) -> None:
    app = openai_app(chaos=Chaos(drop=1.0))
    app.client.submit("x", job_id="job-1")
    assert app.client.refresh("job-1").status is JobStatus.SUBMITTED  # "queued"
    assert all(record.dropped for record in app.fake.deliver_all())
    assert app.handler.outcomes == []
    done = app.client.refresh("job-1")
    assert (done.status, done.output) == (JobStatus.SUCCEEDED, MESSAGE)


def test_an_openai_event_that_beats_the_submit_answer(
    openai_app: Callable[..., OpenAIApp],
) -> None:
    app = openai_app(delivery="before_answer")
    job = app.client.submit("x", job_id="job-1")
    assert app.handler.outcomes == ["not_found"]  # no job had the response id yet
    assert (job.status, job.output) == (JobStatus.SUCCEEDED, MESSAGE)  # replayed


def test_openai_cancel(openai_app: Callable[..., OpenAIApp]) -> None:
    answers: list[httpx.Response] = []
    app = openai_app(hooks={"response": [answers.append]})
    app.client.submit("x", job_id="job-1")
    app.client.cancel("job-1")
    answers[-1].read()
    assert answers[-1].json()["status"] == "cancelled"
    assert [record.payload["type"] for record in app.fake.deliver_all()] == ["response.cancelled"]
    assert app.store.get("job-1").status is JobStatus.CANCELED is app.fake.final_status("job-1")


def test_the_fake_answers_as_openai_does() -> None:
    seen: list[httpx.Request] = []

    def app(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200)

    hook = "https://app.example/openai/webhook"
    receiver = httpx.Client(transport=httpx.MockTransport(app))
    options: dict[str, Any] = {"api_key": "sk-right", "webhook_url": hook}
    fake = FakeGenerator(impersonate="openai", callback_client=receiver, **options)
    with fake, raw(fake) as http:
        url = "https://api.openai.com/v1/responses"
        body = {
            "model": "m",
            "input": "fox",
            "background": True,
            "metadata": {"jobhook_job_id": "j-1"},
        }
        assert http.post(url, json=body).status_code == 401
        wrong = http.post(url, json=body, headers={"authorization": "Bearer sk-wrong"})
        assert (wrong.status_code, wrong.json()["error"]["code"]) == (401, "invalid_api_key")
        auth = {"authorization": "Bearer sk-right"}
        foreground = http.post(url, json={**body, "background": False}, headers=auth)
        assert foreground.status_code == 400  # webhooks come for background responses only
        no_model = {"input": "fox", "background": True}
        assert http.post(url, json=no_model, headers=auth).status_code == 400
        created = http.post(url, json=body, headers=auth)
        assert created.status_code == 200
        response = created.json()
        queued = {"object": "response", "status": "queued", "output": []}
        assert response.items() >= queued.items()
        assert response["id"].startswith("resp_")
        assert response["metadata"] == body["metadata"]
        get = f"{url}/{response['id']}"
        assert http.get(get, headers=auth).json()["status"] == "queued"
        assert http.get(f"{url}/j-1", headers=auth).status_code == 404  # not its id
        fake.deliver_all()
        done = http.get(get, headers=auth).json()
        output = {"images": ["https://fake.invalid/j-1/1.png"]}  # the default script's
        assert (done["status"], done["output"]) == ("completed", output)
        ended = http.post(f"{get}/cancel", headers=auth)
        assert ended.json()["status"] == "completed"  # already ended: as it ended
        assert http.post(f"{url}/resp_nope/cancel", headers=auth).status_code == 404

        # Not idempotent: the same request again is a second response.
        fake.set_script("j-1", lambda submission: [JobUpdate(JobStatus.RUNNING)])
        again = http.post(url, json=body, headers=auth).json()["id"]
        assert again != response["id"]
        assert fake.job_ids() == ["j-1", "j-1"]
        assert fake.deliver_all() == []  # no event while a response runs
        assert http.get(f"{url}/{again}", headers=auth).json()["status"] == "in_progress"
        canceled = http.post(f"{url}/{again}/cancel", headers=auth).json()
        assert canceled["status"] == "cancelled"
        fake.deliver_all()
    receiver.close()
    events = []
    for request in seen:  # terminal states only, to the one project-wide URL
        assert str(request.url) == hook
        verify_webhook(fake.secret, request.headers, request.content)
        events.append(json.loads(request.content))
    assert [(e["type"], e["data"]) for e in events] == [
        ("response.completed", {"id": response["id"]}),
        ("response.cancelled", {"id": again}),
    ]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"impersonate": "replicate", "webhook_url": "https://app.example/hook"}, "project-wide"),
        ({"impersonate": "openai", "webhook_url": "/hook"}, "http"),
        ({"impersonate": "openai", "mismatched_ids": True}, "assigns its own ids"),
    ],
)
def test_openai_options_that_do_not_fit_are_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FakeGenerator(**options)
