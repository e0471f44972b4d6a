"""The Reconciler: lost webhooks recovered by polling, never-seen jobs resubmitted once,
jobs given up on, backends without a status endpoint, and backends that fail."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest

from jobhook import (
    AsyncGeneratorClient,
    AsyncInMemoryJobStore,
    GeneratorClient,
    InMemoryJobStore,
    JobStatus,
    JobUpdate,
    SubmitError,
    ValidationError,
    WebhookHandler,
)
from jobhook._ids import utcnow
from jobhook.reconcile import AsyncReconciler, Reconciler, ReconcileReport
from jobhook.testing import Chaos, FakeGenerator, Scripts, new_webhook_secret

BASE = "http://fake-generator.invalid"
CALLBACK = "http://app.invalid/webhooks/jobhook/{job_id}"
LATER = timedelta(hours=1)  # past stale_after, well before give_up_after


def later(delta: timedelta = LATER) -> Callable[[], datetime]:
    """A reconciler clock that runs ``delta`` ahead of the store's."""
    return lambda: utcnow() + delta


class Wiring:
    """A store, a fake backend calling back into a handler on it, and a client."""

    def __init__(self, store: Any, *, status: bool = True, **fake_options: Any) -> None:
        self.store = store
        self.secret = new_webhook_secret()
        self.fake = FakeGenerator(
            self.secret, handler=WebhookHandler(store, secret=self.secret), **fake_options
        )
        self.http = httpx.Client(transport=self.fake.transport)
        self.client = GeneratorClient(
            store,
            BASE,
            callback_url=CALLBACK,
            submit_path=FakeGenerator.submit_path,
            status_path=FakeGenerator.status_path if status else None,
            http_client=self.http,
            sleep=lambda _: None,
        )

    def reconciler(self, **options: Any) -> Reconciler:
        options.setdefault("stale_after", 60)
        options.setdefault("give_up_after", timedelta(days=1))
        options.setdefault("clock", later())
        return Reconciler(self.store, self.client, **options)

    def submissions(self, job_id: str) -> int:
        return sum(1 for s in self.fake.submissions if s.job_id == job_id)

    def close(self) -> None:
        self.client.close()
        self.http.close()
        self.fake.close()


@pytest.fixture
def wiring() -> Iterator[Callable[..., Wiring]]:
    made: list[Wiring] = []

    def make(store: Any = None, **options: Any) -> Wiring:
        built = Wiring(store if store is not None else InMemoryJobStore(), **options)
        made.append(built)
        return built

    yield make
    for built in made:
        built.close()


def terminal_events(store: Any, job_id: str) -> list[JobStatus]:
    return [e.status for e in store.events(limit=1000) if e.job_id == job_id and e.status.terminal]


# --- lost webhooks ----------------------------------------------------------------


def test_a_lost_webhook_is_recovered_by_polling(store: Any, wiring: Any) -> None:
    w = wiring(store, chaos=Chaos(drop=1.0))
    job = w.client.submit({"prompt": "a red fox"}, kind="image")
    w.fake.deliver_all()  # every callback is lost on the way
    assert store.get(job.id).status is JobStatus.SUBMITTED

    report = w.reconciler().run_once()

    assert report.refreshed == (job.id,)
    assert report.finished == (job.id,)
    assert report.ok
    recovered = store.get(job.id)
    assert recovered.status is JobStatus.SUCCEEDED
    assert recovered.output == {"images": [f"https://fake.invalid/{job.id}/1.png"]}
    # The recovered job notifies exactly once, like a delivered webhook would.
    assert terminal_events(store, job.id) == [JobStatus.SUCCEEDED]
    # A second run finds nothing left to do.
    assert w.reconciler().run_once() == ReconcileReport()


def test_jobs_still_running_are_reported_unchanged(wiring: Any) -> None:
    w = wiring(script=Scripts.success(progress=(40.0,)))
    job = w.client.submit({})
    w.fake.deliver_next()  # running 40: the rest is still to come
    report = w.reconciler().run_once()
    assert report.unchanged == (job.id,)
    assert report.refreshed == ()
    assert w.store.get(job.id).progress == 40.0


def test_only_jobs_unchanged_for_stale_after_are_looked_at(wiring: Any) -> None:
    w = wiring(chaos=Chaos(drop=1.0))
    job = w.client.submit({})
    w.fake.deliver_all()
    report = w.reconciler(stale_after=timedelta(hours=2)).run_once()
    assert report.checked == 0
    assert w.store.get(job.id).status is JobStatus.SUBMITTED


# --- never-seen jobs --------------------------------------------------------------


def test_a_pending_job_the_backend_never_saw_is_resubmitted_once(wiring: Any) -> None:
    w = wiring()
    # 502 three times: the request may have arrived, so the submit is ambiguous.
    w.fake.fail_next_submits(502, times=3)
    with pytest.raises(SubmitError) as caught:
        w.client.submit({"prompt": "x"}, job_id="job-1")
    assert caught.value.ambiguous
    assert w.store.get("job-1").status is JobStatus.PENDING
    assert "job-1" not in w.fake.job_ids()

    report = w.reconciler().run_once()

    assert report.resubmitted == ("job-1",)
    assert w.fake.job_ids() == ["job-1"]
    assert w.store.get("job-1").status is JobStatus.SUBMITTED
    submitted = w.fake.submissions[-1]
    assert submitted.idempotency_key == "job-1"
    assert submitted.callback_url == CALLBACK.format(job_id="job-1")

    sent = w.submissions("job-1")
    again = w.reconciler().run_once()
    assert again.resubmitted == ()
    assert again.unchanged == ("job-1",)
    assert w.submissions("job-1") == sent

    w.fake.deliver_all()
    assert w.store.get("job-1").status is JobStatus.SUCCEEDED


def test_a_pending_job_the_backend_has_is_polled_not_resubmitted(wiring: Any) -> None:
    w = wiring(chaos=Chaos(drop=1.0))
    # The backend took the job, but the app crashed before recording "submitted" (and
    # every webhook was lost): the row says pending, the backend has finished.
    w.store.create({"prompt": "x"}, job_id="job-2")
    elsewhere = GeneratorClient(InMemoryJobStore(), BASE, callback_url=CALLBACK, http_client=w.http)
    elsewhere.submit({"prompt": "x"}, job_id="job-2")
    w.fake.deliver_all()
    assert w.store.get("job-2").status is JobStatus.PENDING

    report = w.reconciler().run_once()

    assert report.resubmitted == ()
    assert report.finished == ("job-2",)
    assert w.submissions("job-2") == 1
    assert w.store.get("job-2").status is JobStatus.SUCCEEDED


def test_a_resubmit_the_backend_refuses_fails_the_job(wiring: Any) -> None:
    w = wiring()
    w.store.create({}, job_id="job-3")  # the app crashed before submitting
    w.fake.fail_next_submits(422, json={"error": "prompt too long"})
    report = w.reconciler().run_once()
    assert report.resubmitted == ()
    (error,) = report.errors
    assert error.job_id == "job-3"
    assert "prompt too long" in error.message
    job = w.store.get("job-3")
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.code == "submit_rejected"


# --- giving up --------------------------------------------------------------------


def test_a_job_past_give_up_after_fails_as_timed_out(wiring: Any) -> None:
    w = wiring(script=Scripts.success(progress=(40.0,)))
    job = w.client.submit({})
    w.fake.deliver_next()
    report = w.reconciler(clock=later(timedelta(days=2))).run_once()
    assert report.timed_out == (job.id,)
    assert report.unchanged == ()
    failed = w.store.get(job.id)
    assert failed.status is JobStatus.FAILED
    assert failed.error is not None
    assert failed.error.code == "timed_out"
    assert "running" in failed.error.message
    assert terminal_events(w.store, job.id) == [JobStatus.FAILED]
    # The backend's late success no longer changes the job: the first final status wins.
    w.fake.deliver_all()
    assert w.store.get(job.id).status is JobStatus.FAILED


def test_an_old_job_the_backend_finished_is_not_timed_out(wiring: Any) -> None:
    w = wiring(chaos=Chaos(drop=1.0))
    job = w.client.submit({})
    w.fake.deliver_all()
    report = w.reconciler(clock=later(timedelta(days=2))).run_once()
    assert report.timed_out == ()
    assert report.finished == (job.id,)
    assert w.store.get(job.id).status is JobStatus.SUCCEEDED


def test_an_old_pending_job_is_timed_out_not_resubmitted(wiring: Any) -> None:
    w = wiring(status=False)
    w.store.create({}, job_id="old")
    report = w.reconciler(clock=later(timedelta(days=2))).run_once()
    assert report.timed_out == ("old",)
    assert report.resubmitted == ()
    assert w.fake.submissions == []


# --- a backend without a status endpoint ------------------------------------------


def test_without_a_status_endpoint_pending_jobs_are_resubmitted(wiring: Any) -> None:
    w = wiring(status=False)
    w.store.create({"prompt": "x"}, job_id="never-sent")
    submitted = w.client.submit({"prompt": "y"})
    report = w.reconciler().run_once()
    # The pending job is sent; the submitted one has nothing to be asked about.
    assert report.checked == 2
    assert report.resubmitted == ("never-sent",)
    assert report.refreshed == report.unchanged == report.timed_out == ()
    assert w.store.get("never-sent").status is JobStatus.SUBMITTED
    assert w.store.get(submitted.id).status is JobStatus.SUBMITTED
    assert w.submissions("never-sent") == 1


def test_without_a_status_endpoint_old_jobs_still_time_out(wiring: Any) -> None:
    w = wiring(status=False)
    job = w.client.submit({})
    report = w.reconciler(clock=later(timedelta(days=2))).run_once()
    assert report.timed_out == (job.id,)


# --- a failing backend ------------------------------------------------------------


def test_an_unreachable_backend_stops_polling_but_still_times_out(wiring: Any) -> None:
    store = InMemoryJobStore()
    young = store.create({}, job_id="young")
    store.apply(young.id, JobUpdate(JobStatus.SUBMITTED))
    store.create({}, job_id="young-2")
    requests: list[httpx.Request] = []

    def refuse(request: httpx.Request) -> httpx.Response:
        requests.append(request)
        raise httpx.ConnectError("connection refused", request=request)

    http = httpx.Client(transport=httpx.MockTransport(refuse))
    client = GeneratorClient(
        store,
        BASE,
        callback_url=CALLBACK,
        status_path=FakeGenerator.status_path,
        http_client=http,
        sleep=lambda _: None,
    )
    report = Reconciler(
        store, client, stale_after=60, give_up_after=timedelta(days=1), clock=later()
    ).run_once()
    assert report.backend_unreachable
    assert [e.job_id for e in report.errors] == ["young"]
    assert "ConnectError" in report.errors[0].message
    assert {r.url.path for r in requests} == {"/jobs/young"}  # the others were not tried
    assert store.get("young-2").status is JobStatus.PENDING

    report = Reconciler(
        store, client, stale_after=60, give_up_after=60, clock=later(timedelta(days=2))
    ).run_once()
    assert set(report.timed_out) == {"young", "young-2"}
    assert report.errors == ()
    http.close()


def test_a_backend_error_is_reported_and_the_run_goes_on(wiring: Any) -> None:
    w = wiring(chaos=Chaos(drop=1.0))
    first = w.client.submit({})
    second = w.client.submit({})
    w.fake.deliver_all()
    answers = iter([httpx.Response(500, json={"error": "database on fire"})])

    def flaky(request: httpx.Request) -> httpx.Response:
        return next(answers, None) or w.fake.handle_request(request)

    w.client = GeneratorClient(
        w.store,
        BASE,
        callback_url=CALLBACK,
        status_path=FakeGenerator.status_path,
        http_client=httpx.Client(transport=httpx.MockTransport(flaky)),
        max_attempts=1,
    )
    report = w.reconciler().run_once()
    assert [e.job_id for e in report.errors] == [first.id]
    assert "database on fire" in report.errors[0].message
    assert not report.backend_unreachable
    assert report.finished == (second.id,)
    assert "1 errors" in report.summary()


# --- arguments and the async twin -------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"stale_after": 0, "give_up_after": 60},
        {"stale_after": 60, "give_up_after": timedelta(seconds=-1)},
        {"stale_after": "5m", "give_up_after": 60},
        {"stale_after": 60, "give_up_after": 60, "limit": 0},
    ],
)
def test_bad_arguments_are_refused(wiring: Any, options: dict[str, Any]) -> None:
    w = wiring()
    with pytest.raises(ValidationError):
        Reconciler(w.store, w.client, **options)


def test_limit_caps_the_jobs_of_one_run(wiring: Any) -> None:
    w = wiring(status=False)
    for number in range(3):
        w.store.create({}, job_id=f"j{number}")
    assert w.reconciler(limit=2).run_once().checked == 2


def test_async_reconciler_recovers_a_lost_webhook() -> None:
    async def scenario() -> None:
        store = AsyncInMemoryJobStore()
        secret = new_webhook_secret()
        fake = FakeGenerator(
            secret, handler=WebhookHandler(store, secret=secret), chaos=Chaos(drop=1.0)
        )
        async with httpx.AsyncClient(transport=fake.async_transport) as http:
            client = AsyncGeneratorClient(
                store,
                BASE,
                callback_url=CALLBACK,
                status_path=FakeGenerator.status_path,
                http_client=http,
            )
            lost = await client.submit({"prompt": "x"})
            await fake.adeliver_all()
            await store.create({}, job_id="never-sent")
            reconciler = AsyncReconciler(
                store, client, stale_after=60, give_up_after=86400, clock=later()
            )
            report = await reconciler.run_once()
        fake.close()
        assert report.finished == (lost.id,)
        assert report.resubmitted == ("never-sent",)
        assert (await store.get(lost.id)).status is JobStatus.SUCCEEDED
        assert (await store.get("never-sent")).status is JobStatus.SUBMITTED

    asyncio.run(scenario())
