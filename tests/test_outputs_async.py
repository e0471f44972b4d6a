"""`jobhook.outputs.AsyncOutputKeeper`: the async stores hold a success until its files
are kept, as `OutputKeeper` does for the sync ones."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Coroutine, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

from jobhook import (
    AsyncGeneratorClient,
    AsyncInMemoryJobStore,
    InMemoryJobStore,
    JobStatus,
    JobUpdate,
    Outcome,
    WebhookHandler,
    backends,
)
from jobhook.exceptions import ValidationError
from jobhook.outputs import AsyncOutputKeeper, LocalStorage, OutputKeeper
from jobhook.reconcile import AsyncReconciler
from jobhook.testing import Chaos, FakeGenerator, Scripts, signed_delivery
from jobhook.testing._png import png_for

from . import test_outputs
from .conftest import build_store, drop_holds
from .test_outputs import (
    HOOK,
    LOOPBACK,
    PNG_SIGNATURE,
    TOKENS,
    Clock,
    Unavailable,
    kept_bytes,
)

T = TypeVar("T")

serve = test_outputs.serve  # the fixture: a loopback HTTP server per handler class


class Async:
    """An async store of one kind, with the event loop its engine lives on."""

    def __init__(self, facade: Any) -> None:
        self.store = facade.inner
        self._facade = facade
        self._runner = facade.runner

    def succeeded(self, job_id: str) -> list[Any]:
        """The job's ``succeeded`` events (through the facade, which waits until every
        committed event is visible on PostgreSQL)."""
        events = self._facade.events(limit=1000)
        return [e for e in events if e.job_id == job_id and e.status is JobStatus.SUCCEEDED]

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coroutine)


@pytest.fixture(
    params=[
        "async-memory",
        "async-sqlite",
        "async-postgres",
        "async-postgres-asyncpg",
        "async-mariadb",
    ]
)
def loop_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Async]:
    facade, close = build_store(request.param, tmp_path)
    yield Async(facade)
    drop_holds(facade)
    close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def storage(tmp_path: Path) -> LocalStorage:
    return LocalStorage(tmp_path / "kept", base_url="https://app.example/files/")


@pytest.fixture
def keeper(loop_store: Async, storage: LocalStorage, clock: Clock) -> Iterator[AsyncOutputKeeper]:
    keeper = AsyncOutputKeeper(
        loop_store.store, storage, policy=LOOPBACK, clock=clock, retry_after=60
    )
    loop_store.run(keeper.create_schema())
    yield keeper
    keeper.close()


@pytest.fixture
def files() -> Iterator[tuple[FakeGenerator, str]]:
    with FakeGenerator() as fake, fake.serve() as url:
        yield fake, url


def test_an_expiring_output_is_kept_before_anyone_hears_of_the_success(
    loop_store: Async,
    keeper: AsyncOutputKeeper,
    storage: LocalStorage,
    files: tuple[FakeGenerator, str],
) -> None:
    file_host, files_url = files
    store = keeper.store
    profile = backends.Replicate("r8_test", model="o/n")
    heard: list[str] = []
    keeper_heard: list[Any] = []

    async def tell(event: Any, job: Any) -> None:
        keeper_heard.append((event.status.value, job.output))

    keeper._listeners = (tell,)
    original = [f"{files_url}/files/job-1/1.png", f"{files_url}/files/job-1/2.png"]

    async def submit_and_deliver() -> None:
        with FakeGenerator(impersonate="replicate") as fake:
            fake.handler = WebhookHandler(
                store,
                backend=profile,
                secret=fake.secret,
                token_secret=TOKENS,
                listeners=[lambda event, job: heard.append(event.status.value)],
            )
            async with httpx.AsyncClient(transport=fake.async_transport) as http:
                client = AsyncGeneratorClient(
                    store, profile, callback_url=HOOK, token_secret=TOKENS, http_client=http
                )
                fake.set_script("job-1", Scripts.pictures(files_url, count=2))
                await client.submit({"prompt": "a red fox"}, job_id="job-1")
                await fake.adeliver_all()
                assert (await store.get("job-1")).status is JobStatus.RUNNING
                assert (await client.refresh("job-1")).status is JobStatus.RUNNING
                await client.aclose()

    loop_store.run(submit_and_deliver())
    assert "succeeded" not in heard
    assert loop_store.succeeded("job-1") == []
    record = loop_store.run(keeper.kept("job-1"))
    assert record is not None
    assert (record.state, record.original_output) == ("keeping", {"images": original})

    assert loop_store.run(keeper.run_once()) == 1
    file_host.expire_files()
    assert httpx.get(original[0]).status_code == 404

    done = loop_store.run(store.get("job-1"))
    assert done.status is JobStatus.SUCCEEDED
    urls = done.output["images"]
    assert urls == [
        "https://app.example/files/job-1/0.png",
        "https://app.example/files/job-1/1.png",
    ]
    for n, url in enumerate(urls, start=1):
        assert kept_bytes(storage, url) == png_for(f"job-1/{n}.png")
    assert len(loop_store.succeeded("job-1")) == 1
    assert keeper_heard == [("succeeded", {"images": urls})]
    record = loop_store.run(keeper.kept("job-1"))
    assert record is not None
    assert record.state == "kept"
    assert [f.source for f in record.files] == original
    assert record.files[0].sha256 == hashlib.sha256(png_for("job-1/1.png")).hexdigest()
    assert loop_store.run(keeper.run_once()) == 0


def test_a_cog_data_uri_delivered_through_ahandle_is_kept(
    loop_store: Async, keeper: AsyncOutputKeeper, storage: LocalStorage
) -> None:
    store = keeper.store
    secret = "whsec_" + base64.b64encode(b"a" * 32).decode()
    handler = WebhookHandler(store, secret=secret)
    loop_store.run(store.create({}, job_id="cog-1"))
    picture = png_for("cog-1/1.png")
    inline = "data:image/png;base64," + base64.b64encode(picture).decode()
    payload = {"job_id": "cog-1", "status": "succeeded", "output": {"images": [inline]}}
    headers, body = signed_delivery(secret, payload)
    assert loop_store.run(handler.ahandle(headers, body)).status == 200
    assert loop_store.run(handler.ahandle(headers, body)).status == 200  # a retry
    assert loop_store.run(store.get("cog-1")).status is JobStatus.PENDING
    assert loop_store.run(keeper.run_once()) == 1
    done = loop_store.run(store.get("cog-1"))
    assert done.status is JobStatus.SUCCEEDED
    [url] = done.output["images"]
    data = kept_bytes(storage, url)
    assert data == picture
    assert data.startswith(PNG_SIGNATURE)
    assert len(loop_store.succeeded("cog-1")) == 1


def test_other_updates_pass_through_and_a_repeated_success_is_a_duplicate(
    loop_store: Async, keeper: AsyncOutputKeeper, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    store = keeper.store
    loop_store.run(store.create({}, job_id="plain"))
    done = loop_store.run(store.apply("plain", JobUpdate(JobStatus.SUCCEEDED, output={"t": 1})))
    assert done.outcome is Outcome.APPLIED
    assert done.event is not None
    assert loop_store.run(keeper.kept("plain")) is None

    loop_store.run(store.create({}, job_id="j"))
    update = JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/files/j/1.png"])
    first = loop_store.run(store.apply("j", update, delivery_id="d-1"))
    again = loop_store.run(store.apply("j", update, delivery_id="d-1"))
    assert (first.outcome, again.outcome) == (Outcome.APPLIED, Outcome.DUPLICATE)
    assert first.event is None
    loop_store.run(keeper.run_once())
    assert loop_store.run(store.apply("j", update, delivery_id="d-1")).outcome is Outcome.DUPLICATE
    assert len(loop_store.succeeded("j")) == 1


def test_a_held_success_for_a_job_canceled_meanwhile_is_dropped(
    loop_store: Async, keeper: AsyncOutputKeeper, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    store = keeper.store
    loop_store.run(store.create({}, job_id="j"))
    loop_store.run(store.apply("j", JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/x/1.png"])))
    loop_store.run(store.apply("j", JobUpdate(JobStatus.CANCELED)))
    loop_store.run(keeper.run_once())
    assert loop_store.run(store.get("j")).status is JobStatus.CANCELED
    record = loop_store.run(keeper.kept("j"))
    assert record is not None
    assert record.state == "dropped"


def test_an_expired_file_fails_the_job_as_output_not_kept(
    loop_store: Async, keeper: AsyncOutputKeeper, files: tuple[FakeGenerator, str]
) -> None:
    fake, url = files
    store = keeper.store
    loop_store.run(store.create({}, job_id="late"))
    loop_store.run(
        store.apply("late", JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/files/late/1.png"]))
    )
    fake.expire_files()
    loop_store.run(keeper.run_once())
    job = loop_store.run(store.get("late"))
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.code == "output_not_kept"
    assert "404" in job.error.message
    assert loop_store.succeeded("late") == []


def test_a_file_host_that_keeps_failing_is_retried_then_the_job_fails(
    loop_store: Async, storage: LocalStorage, clock: Clock, serve: Any
) -> None:
    url = serve(Unavailable)
    keeper = AsyncOutputKeeper(
        loop_store.store, storage, policy=LOOPBACK, clock=clock, max_attempts=2, retry_after=60
    )
    loop_store.run(keeper.create_schema())
    store = keeper.store
    loop_store.run(store.create({}, job_id="flaky"))
    loop_store.run(store.apply("flaky", JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/x.png"])))
    assert loop_store.run(keeper.run_once()) == 0
    record = loop_store.run(keeper.kept("flaky"))
    assert record is not None
    assert record.attempts == 1
    assert "503" in (record.last_error or "")
    assert loop_store.run(keeper.run_once()) == 0  # not due yet
    assert not loop_store.run(store.get("flaky")).terminal
    clock.now += 60
    assert loop_store.run(keeper.run_once()) == 1
    job = loop_store.run(store.get("flaky"))
    assert job.status is JobStatus.FAILED
    assert job.error is not None
    assert job.error.code == "output_not_kept"
    keeper.close()


def test_a_success_the_async_reconciler_finds_by_polling_is_held_too(
    loop_store: Async, keeper: AsyncOutputKeeper, files: tuple[FakeGenerator, str]
) -> None:
    _, files_url = files
    secret = "whsec_" + base64.b64encode(b"r" * 32).decode()
    store = keeper.store

    async def lose_and_poll() -> str:
        lossy = FakeGenerator(secret, script=Scripts.pictures(files_url), chaos=Chaos(drop=1.0))
        lossy.handler = WebhookHandler(store, secret=secret)
        async with httpx.AsyncClient(transport=lossy.async_transport) as http:
            client = AsyncGeneratorClient(
                store,
                "http://fake.invalid",
                callback_url=HOOK,
                status_path=FakeGenerator.status_path,
                http_client=http,
            )
            job = await client.submit({"prompt": "lost"}, job_id="lost-1")
            await lossy.adeliver_all()  # every webhook is lost
            reconciler = AsyncReconciler(
                store,
                client,
                stale_after=timedelta(microseconds=1),
                give_up_after=timedelta(hours=1),
            )
            await reconciler.run_once()
        lossy.close()
        return job.id

    job_id = loop_store.run(lose_and_poll())
    assert loop_store.run(store.get(job_id)).status is not JobStatus.SUCCEEDED
    record = loop_store.run(keeper.kept(job_id))
    assert record is not None
    assert record.state == "keeping"
    assert loop_store.run(keeper.run_once()) == 1
    done = loop_store.run(store.get(job_id))
    assert done.output == {"images": ["https://app.example/files/lost-1/0.png"]}


def test_a_replayed_dead_letter_is_held_and_kept(
    loop_store: Async, keeper: AsyncOutputKeeper, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    store = keeper.store
    secret = "whsec_" + base64.b64encode(b"d" * 32).decode()
    handler = WebhookHandler(store, secret=secret)
    original = f"{url}/files/early/1.png"
    payload = {"job_id": "early", "status": "succeeded", "output": [original]}
    headers, body = signed_delivery(secret, payload)
    assert loop_store.run(handler.ahandle(headers, body)).status == 404  # kept, not lost
    [letter] = loop_store.run(store.dead_letters())
    loop_store.run(store.create({}, job_id="early"))

    replayed = loop_store.run(store.replay_dead_letter(letter.id))
    assert replayed.outcome is Outcome.APPLIED
    assert replayed.event is None
    assert loop_store.run(store.get("early")).status is JobStatus.PENDING
    again = loop_store.run(store.replay_dead_letter(letter.id))
    assert again.outcome is Outcome.DUPLICATE

    assert loop_store.run(keeper.run_once()) == 1
    done = loop_store.run(store.get("early"))
    assert done.status is JobStatus.SUCCEEDED
    assert done.output == ["https://app.example/files/early/0.png"]
    assert len(loop_store.succeeded("early")) == 1
    assert loop_store.run(store.dead_letters()) == []  # marked replayed once kept
    assert loop_store.run(store.get("early")).output == done.output


def test_run_keeps_files_until_stopped(
    loop_store: Async, storage: LocalStorage, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    stop = asyncio.Event()
    keeper = AsyncOutputKeeper(
        loop_store.store, storage, policy=LOOPBACK, listeners=[lambda event, job: stop.set()]
    )

    async def scenario() -> Any:
        await keeper.create_schema()
        await keeper.store.create({}, job_id="bg")
        update = JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/files/bg/1.png"])
        await keeper.store.apply("bg", update)
        await keeper.run(stop, interval=0.01)  # returns once the listener sets stop
        return await keeper.store.get("bg")

    job = loop_store.run(scenario())
    keeper.close()
    assert job.status is JobStatus.SUCCEEDED
    assert kept_bytes(storage, job.output[0]) == png_for("bg/1.png")


def test_each_keeper_refuses_the_other_kind_of_store(storage: LocalStorage) -> None:
    with pytest.raises(ValidationError, match="use AsyncOutputKeeper"):
        OutputKeeper(AsyncInMemoryJobStore(), storage)
    with pytest.raises(ValidationError, match="use OutputKeeper"):
        AsyncOutputKeeper(InMemoryJobStore(), storage)
