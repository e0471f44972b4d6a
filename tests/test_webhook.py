"""WebhookHandler: every row of the answer table, against every store where it matters."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobhook import (
    AsyncInMemoryJobStore,
    InMemoryJobStore,
    JobEvent,
    JobStatus,
    JobUpdate,
    Outcome,
    StoreUnavailableError,
    ValidationError,
    WebhookHandler,
    WebhookResponse,
    sign_webhook,
)
from jobhook._signing import callback_token

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
TOKEN_SECRET = "app-callback-token-secret"
NOW = 1_700_000_000


def clock() -> float:
    return float(NOW)


def make_handler(store: Any, **options: Any) -> WebhookHandler:
    options.setdefault("secret", SECRET)
    return WebhookHandler(store, clock=clock, **options)


def signed(data: Any, *, timestamp: int = NOW, msg_id: str | None = None) -> tuple[dict, bytes]:
    raw = data if isinstance(data, bytes) else json.dumps(data).encode()
    return sign_webhook(SECRET, raw, msg_id=msg_id, timestamp=timestamp), raw


def post(
    handler: WebhookHandler, data: Any, *, job_id: str | None = None, **sign: Any
) -> WebhookResponse:
    headers, raw = signed(data, **sign)
    return handler.handle(headers, raw, job_id=job_id)


def state(store: Any, job_id: str) -> tuple[Any, ...]:
    """Everything a delivery could change."""
    job = store.get(job_id)
    return (job.status, job.progress, job.version, job.output, len(store.events(limit=1000)))


# -- applying ----------------------------------------------------------------------


def test_a_signed_delivery_applies_and_names_the_outcome(store: Any) -> None:
    job = store.create({"prompt": "a red fox"})
    handler = make_handler(store)
    answer = post(handler, {"job_id": job.id, "status": "running", "progress": 40}, job_id=job.id)
    assert (answer.status, answer.json()) == (
        200,
        {"outcome": "applied", "job_id": job.id, "status": "running"},
    )
    assert answer.headers["content-type"] == "application/json"
    assert store.get(job.id).progress == 40.0
    [event] = store.events()
    assert (event.job_id, event.status) == (job.id, JobStatus.RUNNING)


def test_the_payload_job_id_is_enough_without_one_in_the_route(store: Any) -> None:
    job = store.create({}, job_id="odd.job~id_1")
    answer = post(make_handler(store), {"job_id": job.id, "status": "succeeded"})
    assert answer.json()["outcome"] == "applied"
    assert store.get(job.id).status is JobStatus.SUCCEEDED


@pytest.mark.parametrize(
    ("first", "second", "outcome"),
    [
        ({"status": "running", "progress": 50}, {"status": "running", "progress": 10}, "stale"),
        ({"status": "succeeded"}, {"status": "failed", "error": {"code": "x"}}, "conflict"),
        ({"status": "succeeded"}, {"status": "running"}, "stale"),
    ],
)
def test_stale_and_conflicting_deliveries_answer_200_and_change_nothing(
    store: Any, first: dict[str, Any], second: dict[str, Any], outcome: str
) -> None:
    job = store.create({})
    handler = make_handler(store)
    assert post(handler, {"job_id": job.id, **first}).status == 200
    before = state(store, job.id)
    answer = post(handler, {"job_id": job.id, **second})
    assert (answer.status, answer.json()["outcome"]) == (200, outcome)
    assert state(store, job.id) == before


def test_a_redelivery_is_a_duplicate(store: Any) -> None:
    job = store.create({})
    handler = make_handler(store)
    headers, raw = signed({"job_id": job.id, "status": "running", "progress": 5})
    assert handler.handle(headers, raw).json()["outcome"] == "applied"
    before = state(store, job.id)
    answer = handler.handle(headers, raw)
    assert (answer.status, answer.json()["outcome"]) == (200, "duplicate")
    assert state(store, job.id) == before


# -- refusals leave the store unchanged -----------------------------------------------


def _unsigned(job_id: str) -> tuple[dict[str, str], bytes, str | None]:
    return {}, json.dumps({"job_id": job_id, "status": "succeeded"}).encode(), job_id


def _tampered(job_id: str) -> tuple[dict[str, str], bytes, str | None]:
    headers, raw = signed({"job_id": job_id, "status": "succeeded", "output": "a"})
    return headers, raw.replace(b'"a"', b'"b"'), job_id


def _stale_timestamp(job_id: str) -> tuple[dict[str, str], bytes, str | None]:
    headers, raw = signed({"job_id": job_id, "status": "succeeded"}, timestamp=NOW - 301)
    return headers, raw, job_id


def _future_timestamp(job_id: str) -> tuple[dict[str, str], bytes, str | None]:
    headers, raw = signed({"job_id": job_id, "status": "succeeded"}, timestamp=NOW + 301)
    return headers, raw, job_id


def _wrong_secret(job_id: str) -> tuple[dict[str, str], bytes, str | None]:
    raw = json.dumps({"job_id": job_id, "status": "succeeded"}).encode()
    return sign_webhook("whsec_c2VjcmV0LWtleS0y", raw, timestamp=NOW), raw, job_id


def _wrong_job(job_id: str) -> tuple[dict[str, str], bytes, str | None]:
    headers, raw = signed({"job_id": "someone-else", "status": "succeeded"})
    return headers, raw, job_id


def _no_job_id(job_id: str) -> tuple[dict[str, str], bytes, str | None]:
    headers, raw = signed({"status": "succeeded"})
    return headers, raw, None


def _bad_status(job_id: str) -> tuple[dict[str, str], bytes, str | None]:
    headers, raw = signed({"job_id": job_id, "status": "done"})
    return headers, raw, job_id


def _not_json(job_id: str) -> tuple[dict[str, str], bytes, str | None]:
    headers, raw = signed(b"status=succeeded")
    return headers, raw, job_id


def _too_large(job_id: str) -> tuple[dict[str, str], bytes, str | None]:
    headers, raw = signed({"job_id": job_id, "status": "succeeded", "output": "x" * 2000})
    return headers, raw, job_id


REFUSALS: dict[str, tuple[Callable[[str], Any], int]] = {
    "unsigned": (_unsigned, 401),
    "tampered": (_tampered, 401),
    "stale timestamp": (_stale_timestamp, 401),
    "future timestamp": (_future_timestamp, 401),
    "wrong secret": (_wrong_secret, 401),
    "wrong job": (_wrong_job, 400),
    "no job id": (_no_job_id, 400),
    "bad status": (_bad_status, 400),
    "not json": (_not_json, 400),
    "too large": (_too_large, 413),
}


@pytest.mark.parametrize(("make", "status"), REFUSALS.values(), ids=REFUSALS.keys())
def test_refused_deliveries_leave_the_store_unchanged(
    store: Any, make: Callable[[str], Any], status: int
) -> None:
    job = store.create({})
    handler = make_handler(store, max_body_bytes=1000)
    before = state(store, job.id)
    headers, raw, route_id = make(job.id)
    answer = handler.handle(headers, raw, job_id=route_id)
    assert answer.status == status
    assert answer.json()["outcome"] == "rejected"
    assert answer.json()["error"]
    assert state(store, job.id) == before
    assert store.dead_letters() == []


@pytest.mark.parametrize("text", ["\\ud800", "a\\u0000b"])
@pytest.mark.parametrize("known", [True, False], ids=["known job", "unknown job"])
def test_text_no_store_can_keep_is_400_in_every_store(store: Any, text: str, known: bool) -> None:
    job_id = store.create({}).id if known else "job-later"
    raw = b'{"job_id": "%s", "status": "succeeded", "output": "%s"}' % (
        job_id.encode(),
        text.encode(),
    )
    answer = make_handler(store).handle(sign_webhook(SECRET, raw, timestamp=NOW), raw)
    assert answer.status == 400
    assert store.events() == []
    assert store.dead_letters() == []


def test_a_delivery_for_job_a_reposted_to_job_b_is_refused(store: Any) -> None:
    job_a, job_b = store.create({}), store.create({})
    handler = make_handler(store)
    headers, raw = signed({"job_id": job_a.id, "status": "succeeded"})
    assert handler.handle(headers, raw, job_id=job_a.id).status == 200
    before = state(store, job_b.id)
    answer = handler.handle(headers, raw, job_id=job_b.id)
    assert answer.status == 400
    assert state(store, job_b.id) == before


def test_with_tokens_a_delivery_for_job_a_reposted_to_job_b_is_refused() -> None:
    store = InMemoryJobStore()
    job_a, job_b = store.create({}), store.create({})
    handler = make_handler(store, token_secret=TOKEN_SECRET, payload_format="replicate")
    headers, raw = signed({"id": "r1", "status": "succeeded"})
    token_a = callback_token(TOKEN_SECRET, job_a.id)
    assert handler.handle(headers, raw, job_id=job_a.id, token=token_a).status == 200
    answer = handler.handle(headers, raw, job_id=job_b.id, token=token_a)
    assert answer.status == 401
    assert store.get(job_b.id).status is JobStatus.PENDING


# -- unknown jobs, dead letters and retries --------------------------------------------


def test_an_unknown_job_is_404_and_kept_as_a_dead_letter(store: Any) -> None:
    handler = make_handler(store)
    headers, raw = signed({"job_id": "job-later", "status": "succeeded", "output": [1]})
    answer = handler.handle(headers, raw, job_id="job-later")
    assert (answer.status, answer.json()["outcome"]) == (404, "not_found")
    [letter] = store.dead_letters()
    assert (letter.job_id, letter.delivery_id, letter.body) == (
        "job-later",
        headers["webhook-id"],
        raw,
    )
    assert letter.update == JobUpdate(JobStatus.SUCCEEDED, output=[1])


def test_retrying_a_404_keeps_one_dead_letter(store: Any) -> None:
    handler = make_handler(store)
    headers, raw = signed({"job_id": "job-later", "status": "succeeded"})
    for _ in range(3):
        assert handler.handle(headers, raw).status == 404
    assert len(store.dead_letters()) == 1


@pytest.mark.parametrize("order", ["replay first", "retry first"])
def test_a_404_delivery_applies_once_after_the_job_exists(store: Any, order: str) -> None:
    handler = make_handler(store)
    headers, raw = signed({"job_id": "job-later", "status": "succeeded", "output": "ok"})
    assert handler.handle(headers, raw).status == 404
    # The 404 did not record the delivery id as seen: the retry is not a "duplicate".
    store.create({}, job_id="job-later")
    [letter] = store.dead_letters()
    if order == "replay first":
        assert store.replay_dead_letter(letter.id).outcome is Outcome.APPLIED
        assert handler.handle(headers, raw).json()["outcome"] == "duplicate"
    else:
        assert handler.handle(headers, raw).json()["outcome"] == "applied"
        assert store.replay_dead_letter(letter.id).outcome is Outcome.DUPLICATE
    job = store.get("job-later")
    assert (job.status, job.output, job.version) == (JobStatus.SUCCEEDED, "ok", 2)
    assert len(store.events()) == 1


# -- the store failing ---------------------------------------------------------------


class FlakyStore:
    """A sync store whose writes fail while ``down`` (or with ``error``)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.down = False
        self.error: Exception | None = None
        self.dead_letters_down = False

    def _check(self) -> None:
        if self.error is not None:
            raise self.error
        if self.down:
            raise StoreUnavailableError("the database is unavailable: connection refused")

    def apply(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.inner.apply(*args, **kwargs)

    def dead_letters(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        return self.inner.dead_letters(*args, **kwargs)

    def add_dead_letter(self, *args: Any, **kwargs: Any) -> Any:
        self._check()
        if self.dead_letters_down:
            raise StoreUnavailableError("the database is unavailable")
        return self.inner.add_dead_letter(*args, **kwargs)


class AsyncFlakyStore(FlakyStore):
    async def apply(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return await FlakyStore.apply(self, *args, **kwargs)

    async def dead_letters(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return await FlakyStore.dead_letters(self, *args, **kwargs)

    async def add_dead_letter(self, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
        return await FlakyStore.add_dead_letter(self, *args, **kwargs)


def run_handler(handler: WebhookHandler, headers: Any, raw: bytes, **kw: Any) -> WebhookResponse:
    """``handle`` for sync stores, ``ahandle`` on a fresh loop for async ones."""
    if handler.async_store:
        return asyncio.run(handler.ahandle(headers, raw, **kw))
    return handler.handle(headers, raw, **kw)


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_store_down_answers_503_writes_nothing_and_the_same_delivery_applies_later(
    mode: str,
) -> None:
    inner = InMemoryJobStore()
    job = inner.create({})
    flaky = FlakyStore(inner) if mode == "sync" else AsyncFlakyStore(AsyncInMemoryJobStore())
    if mode == "async":
        job = asyncio.run(flaky.inner.create({}))
        inner = flaky.inner._store
    handler = make_handler(flaky)
    headers, raw = signed({"job_id": job.id, "status": "succeeded"})
    flaky.down = True
    answer = run_handler(handler, headers, raw)
    assert (answer.status, answer.json()["outcome"]) == (503, "unavailable")
    assert "connection refused" not in answer.body.decode()
    assert state(inner, job.id)[1:] == (None, 1, None, 0)
    flaky.down = False
    assert run_handler(handler, headers, raw).json()["outcome"] == "applied"


def test_a_dead_letter_that_cannot_be_written_answers_503() -> None:
    flaky = FlakyStore(InMemoryJobStore())
    flaky.dead_letters_down = True
    answer = post(make_handler(flaky), {"job_id": "nope", "status": "succeeded"})
    assert answer.status == 503
    assert flaky.inner.dead_letters() == []


def test_an_unexpected_store_error_is_logged_with_its_traceback_and_answers_503(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = FlakyStore(InMemoryJobStore())
    flaky.error = RuntimeError("driver bug")
    with caplog.at_level(logging.INFO, logger="jobhook"):
        answer = post(make_handler(flaky), {"job_id": "j", "status": "succeeded"})
    assert answer.status == 503
    [record] = caplog.records
    assert record.exc_info is not None
    assert record.exc_info[0] is RuntimeError


def test_a_value_the_store_refuses_answers_400() -> None:
    flaky = FlakyStore(InMemoryJobStore())
    flaky.error = ValidationError("output is not JSON-serialisable")
    assert post(make_handler(flaky), {"job_id": "j", "status": "succeeded"}).status == 400


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_sqlite_store_unreachable_answers_503_then_applies_once_back(
    tmp_path: Path, mode: str
) -> None:
    sql = pytest.importorskip("jobhook.stores.sql")
    path = tmp_path / "jobs.db"
    url = f"sqlite:///{path}"
    if mode == "sync":
        store: Any = sql.SQLJobStore(url, create_schema=True)
        job = store.create({})

        def disconnect() -> None:
            store.engine.dispose()

        def call(headers: Any, raw: bytes) -> WebhookResponse:
            return handler.handle(headers, raw)

    else:
        store = sql.AsyncSQLJobStore(url)
        runner = asyncio.Runner()
        runner.run(store.create_schema())
        job = runner.run(store.create({}))

        def disconnect() -> None:
            runner.run(store.engine.dispose())
            if store._threads is not None:  # a SQLite file's operations run in threads
                store._threads.engine.dispose()

        def call(headers: Any, raw: bytes) -> WebhookResponse:
            return runner.run(handler.ahandle(headers, raw))

    handler = make_handler(store)
    headers, raw = signed({"job_id": job.id, "status": "running", "progress": 30})
    # Close every pooled connection, then put a directory where the file was: opening
    # the database now fails, as it would on an unmounted or unreadable volume.
    disconnect()
    path.rename(tmp_path / "away.db")
    path.mkdir()
    try:
        answer = call(headers, raw)
    finally:
        path.rmdir()
        (tmp_path / "away.db").rename(path)
    assert answer.status == 503
    answer = call(headers, raw)
    assert answer.json()["outcome"] == "applied"
    assert call(headers, raw).json()["outcome"] == "duplicate"
    if mode == "sync":
        assert store.get(job.id).progress == 30.0
        store.close()
    else:
        assert runner.run(store.get(job.id)).progress == 30.0
        runner.run(store.close())
        runner.close()


# -- listeners -----------------------------------------------------------------------


def test_listeners_run_once_after_commit_only_for_applied() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    seen: list[tuple[int, JobStatus, JobStatus]] = []

    def listener(event: JobEvent, current: Any) -> None:
        # After commit: the store already shows the change.
        seen.append((event.id, current.status, store.get(event.job_id).status))

    handler = make_handler(store, listeners=[listener])
    headers, raw = signed({"job_id": job.id, "status": "succeeded"})
    handler.handle(headers, raw)
    handler.handle(headers, raw)  # duplicate
    post(handler, {"job_id": job.id, "status": "running"})  # stale
    post(handler, {"job_id": "missing", "status": "running"})  # not found
    assert seen == [(1, JobStatus.SUCCEEDED, JobStatus.SUCCEEDED)]


def test_a_raising_listener_is_logged_and_harmless(caplog: pytest.LogCaptureFixture) -> None:
    store = InMemoryJobStore()
    job = store.create({})
    calls: list[int] = []

    def broken(event: JobEvent, current: Any) -> None:
        raise RuntimeError("mail server down")

    handler = make_handler(store, listeners=[broken, lambda e, j: calls.append(e.id)])
    with caplog.at_level(logging.ERROR, logger="jobhook"):
        answer = post(handler, {"job_id": job.id, "status": "succeeded"})
    assert (answer.status, answer.json()["outcome"]) == (200, "applied")
    assert calls == [1]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert str(record.exc_info[1]) == "mail server down"


def test_ahandle_awaits_async_listeners_and_handle_refuses_to_drop_them_silently(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = AsyncInMemoryJobStore()
    job = asyncio.run(store.create({}))
    seen: list[str] = []

    async def notify(event: JobEvent, current: Any) -> None:
        await asyncio.sleep(0)
        seen.append(current.status.value)

    handler = make_handler(store, listeners=[notify])
    headers, raw = signed({"job_id": job.id, "status": "succeeded"})
    assert asyncio.run(handler.ahandle(headers, raw)).status == 200
    assert seen == ["succeeded"]

    sync_store = InMemoryJobStore()
    sync_job = sync_store.create({})
    sync_handler = make_handler(sync_store, listeners=[notify])
    with caplog.at_level(logging.ERROR, logger="jobhook"):
        assert post(sync_handler, {"job_id": sync_job.id, "status": "succeeded"}).status == 200
    assert "ahandle" in caplog.text
    assert seen == ["succeeded"]


# -- sync and async ------------------------------------------------------------------


def test_handle_with_an_async_store_is_a_clear_type_error() -> None:
    handler = make_handler(AsyncInMemoryJobStore())
    with pytest.raises(TypeError, match="ahandle"):
        handler.handle({}, b"{}")


def test_ahandle_runs_a_sync_store_off_the_event_loop() -> None:
    loop_threads: list[bool] = []

    class Recording(InMemoryJobStore):
        def apply(self, *args: Any, **kwargs: Any) -> Any:
            try:
                asyncio.get_running_loop()
                loop_threads.append(True)
            except RuntimeError:
                loop_threads.append(False)
            return super().apply(*args, **kwargs)

    store = Recording()
    job = store.create({})
    handler = make_handler(store)
    headers, raw = signed({"job_id": job.id, "status": "succeeded"})
    assert asyncio.run(handler.ahandle(headers, raw)).json()["outcome"] == "applied"
    assert loop_threads == [False]


# -- callback tokens -------------------------------------------------------------------


def test_a_token_authenticates_the_route_job_id_for_payloads_without_one() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    handler = make_handler(store, secret=None, token_secret=TOKEN_SECRET)
    raw = json.dumps({"status": "running", "progress": 12}).encode()
    token = callback_token(TOKEN_SECRET, job.id)
    assert handler.handle({}, raw, job_id=job.id, token=token).json()["outcome"] == "applied"
    for bad in (None, "", callback_token(TOKEN_SECRET, "other"), token[:-1]):
        assert handler.handle({}, raw, job_id=job.id, token=bad).status == 401
    assert handler.handle({}, raw, token=token).status == 401  # no route id to check
    assert store.get(job.id).version == 2


def test_with_secret_and_token_secret_both_are_required() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    handler = make_handler(store, token_secret=TOKEN_SECRET)
    headers, raw = signed({"job_id": job.id, "status": "running"})
    token = callback_token(TOKEN_SECRET, job.id)
    assert handler.handle(headers, raw, job_id=job.id).status == 401
    assert handler.handle({}, raw, job_id=job.id, token=token).status == 401
    assert handler.handle(headers, raw, job_id=job.id, token=token).status == 200


def test_a_route_job_id_that_is_not_a_string_is_400() -> None:
    store = InMemoryJobStore()
    handler = make_handler(store, token_secret=TOKEN_SECRET)
    headers, raw = signed({"job_id": "7", "status": "running"})
    assert handler.handle(headers, raw, job_id=7, token="x").status == 400  # type: ignore[arg-type]


def test_signature_alone_does_not_trust_the_route_job_id() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    answer = post(make_handler(store), {"status": "running"}, job_id=job.id)
    assert answer.status == 400
    assert "token_secret" in answer.json()["error"]


def test_replicate_payloads_apply_through_the_route_and_token() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    handler = make_handler(store, token_secret=TOKEN_SECRET, payload_format="replicate")
    headers, raw = signed({"id": "pred-1", "status": "processing", "logs": " 40%|####"})
    token = callback_token(TOKEN_SECRET, job.id)
    assert handler.handle(headers, raw, job_id=job.id, token=token).status == 200
    current = store.get(job.id)
    assert (current.status, current.progress, current.remote_id) == (
        JobStatus.RUNNING,
        40.0,
        "pred-1",
    )


# -- construction, reprs and logs -------------------------------------------------------


def test_a_handler_without_secret_or_token_secret_is_refused() -> None:
    with pytest.raises(ValidationError, match="allow_unsigned"):
        WebhookHandler(InMemoryJobStore())
    handler = WebhookHandler(InMemoryJobStore(), allow_unsigned=True)
    job = handler.store.create({})
    body = json.dumps({"job_id": job.id, "status": "running"}).encode()
    assert handler.handle({}, body).status == 200


@pytest.mark.parametrize(
    "options",
    [
        {"secret": "not-a-secret"},
        {"secret": "whsec_"},
        {"secret": ""},
        {"token_secret": ""},
        {"tolerance": -1},
        {"max_body_bytes": 0},
        {"payload_format": "svix"},
        {"payload_format": "replicate"},  # with a secret but no token: ids unauthenticated
    ],
)
def test_bad_configuration_is_refused_at_construction(options: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make_handler(InMemoryJobStore(), **options)


def test_secrets_stay_out_of_reprs_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    store = InMemoryJobStore()
    job = store.create({})
    handler = make_handler(store, token_secret=TOKEN_SECRET)
    assert SECRET[6:] not in repr(handler)
    assert TOKEN_SECRET not in repr(handler)
    token = callback_token(TOKEN_SECRET, job.id)
    with caplog.at_level(logging.DEBUG, logger="jobhook"):
        post(handler, {"job_id": job.id, "status": "running"}, job_id=job.id)
        handler.handle(*signed({"job_id": job.id, "status": "running"}), job_id=job.id, token=token)
    assert caplog.records
    for text in (SECRET[6:], TOKEN_SECRET, token):
        assert text not in caplog.text


def test_one_log_line_per_decision_names_job_delivery_and_outcome(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = InMemoryJobStore()
    job = store.create({})
    handler = make_handler(store)
    headers, raw = signed({"job_id": job.id, "status": "running"}, msg_id="msg_42")
    with caplog.at_level(logging.DEBUG, logger="jobhook"):
        handler.handle(headers, raw, job_id=job.id)
        handler.handle(headers, raw, job_id=job.id)
        handler.handle({}, raw, job_id=job.id)
    applied, duplicate, rejected = caplog.records
    for record, outcome in ((applied, "applied"), (duplicate, "duplicate"), (rejected, "rejected")):
        message = record.getMessage()
        assert outcome in message
        assert job.id in message
        assert record.jobhook_outcome == outcome  # type: ignore[attr-defined]
    assert "msg_42" in applied.getMessage()
    assert (applied.levelno, rejected.levelno) == (logging.INFO, logging.WARNING)


# -- no input makes the handler raise or answer 500 ----------------------------------------

_fuzz_store = InMemoryJobStore()
_fuzz_async_store = AsyncInMemoryJobStore()
_KNOWN = _fuzz_store.create({}, job_id="known").id
asyncio.run(_fuzz_async_store.create({}, job_id="known"))

header_names = st.sampled_from(
    ["webhook-id", "Webhook-Timestamp", "WEBHOOK-SIGNATURE", "content-type", "x-any"]
)
header_values = st.one_of(
    st.text(max_size=60),
    st.sampled_from(["v1,", "v1,AAAA", "v1a,xyz", str(NOW), "9" * 40, " ", "msg_1"]),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
payloads = st.fixed_dictionaries(
    {},
    optional={
        "job_id": st.sampled_from([_KNOWN, "unknown", "", "x" * 300]) | json_values,
        "status": st.sampled_from([s.value for s in JobStatus]) | json_values,
        "progress": st.floats() | st.integers() | json_values,
        "sequence": st.integers() | json_values,
        "output": json_values,
        "error": st.fixed_dictionaries({"code": st.text(max_size=5)}) | json_values,
        "remote_id": json_values,
    },
)
# Mostly well-formed payloads, so that the fuzzing reaches the store and every answer.
plausible_payloads = st.fixed_dictionaries(
    {
        "job_id": st.sampled_from([_KNOWN, "unknown"]),
        "status": st.sampled_from([s.value for s in JobStatus]),
    },
    optional={
        "progress": st.floats(0, 100),
        "sequence": st.integers(0, 10),
        "output": json_values,
        "error": st.fixed_dictionaries({"code": st.text(max_size=5)}),
    },
)
bodies = st.one_of(
    st.binary(max_size=200),
    payloads.map(lambda p: json.dumps(p).encode()),
    plausible_payloads.map(lambda p: json.dumps(p).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
)


@st.composite
def deliveries(draw: st.DrawFn) -> dict[str, Any]:
    body = draw(bodies)
    try:
        named = json.loads(body).get("job_id")
    except (ValueError, AttributeError):
        named = None
    routes = st.none() | st.sampled_from([_KNOWN, "unknown", ""]) | st.text(max_size=300)
    if isinstance(named, str):
        routes = st.just(named) | routes
    return {
        "headers": draw(st.dictionaries(header_names, header_values, max_size=4)),
        "body": body,
        "sign": draw(st.booleans()),
        "job_id": draw(routes),
        "token": draw(st.none() | st.text(max_size=50)),
        "handler": draw(st.sampled_from(["signed", "token", "both", "unsigned"])),
    }


def _fuzz_handler(kind: str, store: Any) -> WebhookHandler:
    options: dict[str, Any] = {
        "signed": {"secret": SECRET},
        "token": {"secret": None, "token_secret": TOKEN_SECRET},
        "both": {"secret": SECRET, "token_secret": TOKEN_SECRET},
        "unsigned": {"secret": None, "allow_unsigned": True},
    }[kind]
    return make_handler(store, max_body_bytes=150, **options)


def _fuzz_args(delivery: dict[str, Any]) -> tuple[dict[str, str], bytes, dict[str, Any]]:
    headers = dict(delivery["headers"])
    if delivery["sign"]:
        headers.update(sign_webhook(SECRET, delivery["body"], timestamp=NOW))
    token = delivery["token"]
    if token is None and delivery["job_id"] is not None:
        token = callback_token(TOKEN_SECRET, delivery["job_id"])
    return headers, delivery["body"], {"job_id": delivery["job_id"], "token": token}


def _check(answer: WebhookResponse) -> None:
    assert answer.status in {200, 400, 401, 404, 413}
    assert answer.json()["outcome"] in {o.value for o in Outcome} | {"rejected"}


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(delivery=deliveries())
def test_handle_answers_4xx_or_200_for_any_input(delivery: dict[str, Any]) -> None:
    headers, raw, kwargs = _fuzz_args(delivery)
    _check(_fuzz_handler(delivery["handler"], _fuzz_store).handle(headers, raw, **kwargs))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(delivery=deliveries(), sync_store=st.booleans())
def test_ahandle_answers_4xx_or_200_for_any_input(
    delivery: dict[str, Any], sync_store: bool
) -> None:
    headers, raw, kwargs = _fuzz_args(delivery)
    store = _fuzz_store if sync_store else _fuzz_async_store
    handler = _fuzz_handler(delivery["handler"], store)
    _check(asyncio.run(handler.ahandle(headers, raw, **kwargs)))


def test_a_str_body_is_taken_as_its_utf8_bytes() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    text = json.dumps({"job_id": job.id, "status": "succeeded", "output": "Zoë"})
    headers = sign_webhook(SECRET, text.encode(), timestamp=NOW)
    assert make_handler(store).handle(headers, text).status == 200


# -- delivery ids: exactly the id that was verified, and one for every delivery --------


@pytest.mark.parametrize(
    "mutated",
    ["msg_1\xa0", " msg_1", "msg_1\x85", "msg_1 ", "\tmsg_1", "msg_1\x00", "msg_\u20021"],
)
def test_a_replay_with_a_mutated_webhook_id_is_refused_not_applied_again(
    store: Any, mutated: str
) -> None:
    job = store.create({})
    handler = make_handler(store)
    headers, raw = signed({"job_id": job.id, "status": "running"}, msg_id="msg_1")
    assert handler.handle(headers, raw).json()["outcome"] == "applied"
    replay = {**headers, "webhook-id": mutated}
    answer = handler.handle(replay, raw)
    assert answer.status == 401
    assert "webhook-id" in answer.json()["error"]
    assert handler.handle(headers, raw).json()["outcome"] == "duplicate"
    assert [e.delivery_id for e in store.events()] == ["msg_1"]


def test_an_unsigned_handler_refuses_a_malformed_webhook_id_the_same_way(store: Any) -> None:
    job = store.create({})
    handler = make_handler(store, secret=None, token_secret=TOKEN_SECRET)
    token = callback_token(TOKEN_SECRET, job.id)
    body = json.dumps({"status": "running"}).encode()
    answer = handler.handle({"webhook-id": " msg_1"}, body, job_id=job.id, token=token)
    assert answer.status == 400
    assert "webhook-id" in answer.json()["error"]
    assert store.events() == []


def _token_only(store: Any, **options: Any) -> Callable[..., WebhookResponse]:
    handler = make_handler(store, secret=None, token_secret=TOKEN_SECRET, **options)

    def deliver(job_id: str, data: Any, headers: dict[str, str] | None = None) -> WebhookResponse:
        body = data if isinstance(data, bytes) else json.dumps(data).encode()
        token = callback_token(TOKEN_SECRET, job_id)
        return handler.handle(headers or {}, body, job_id=job_id, token=token)

    return deliver


def test_without_a_webhook_id_a_retry_of_the_same_delivery_is_a_duplicate(store: Any) -> None:
    # Cog and RunPod send no webhook-id: the delivery id comes from job id and body.
    job = store.create({})
    deliver = _token_only(store)
    processing = {"status": "running", "progress": 10}
    assert deliver(job.id, processing).json()["outcome"] == "applied"
    assert deliver(job.id, processing).json()["outcome"] == "duplicate"
    assert deliver(job.id, {"status": "running", "progress": 20}).json()["outcome"] == "applied"
    [first, second] = store.events()
    assert first.delivery_id is not None
    assert first.delivery_id.startswith("sha256:")
    assert first.delivery_id != second.delivery_id


def test_without_a_webhook_id_retries_of_a_404_keep_one_dead_letter(store: Any) -> None:
    deliver = _token_only(store)
    for _ in range(3):
        assert deliver("not-yet", {"status": "succeeded"}).status == 404
    [letter] = store.dead_letters()
    assert letter.delivery_id is not None
    store.create({}, job_id="not-yet")
    assert store.replay_dead_letter(letter.id).applied
    assert deliver("not-yet", {"status": "succeeded"}).json()["outcome"] == "duplicate"


def test_delivery_ids_header_requires_the_header() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    deliver = _token_only(store, delivery_ids="header")
    answer = deliver(job.id, {"status": "running"})
    assert answer.status == 400
    assert "webhook-id" in answer.json()["error"]
    assert deliver(job.id, {"status": "running"}, {"webhook-id": "d-1"}).status == 200
    assert [e.delivery_id for e in store.events()] == ["d-1"]


def test_delivery_ids_content_ignores_a_sender_that_renames_each_attempt() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    deliver = _token_only(store, delivery_ids="content")
    body = {"status": "running", "progress": 5}
    assert deliver(job.id, body, {"webhook-id": "attempt-1"}).json()["outcome"] == "applied"
    assert deliver(job.id, body, {"webhook-id": "attempt-2"}).json()["outcome"] == "duplicate"


def test_delivery_ids_may_be_the_apps_own_rule() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    seen: list[tuple[Any, ...]] = []

    def from_header(headers: Any, body: bytes, job_id: str) -> str:
        seen.append((headers.get("x-request-id"), body, job_id))
        return f"req-{headers['x-request-id']}"

    deliver = _token_only(store, delivery_ids=from_header)
    assert deliver(job.id, {"status": "running"}, {"X-Request-Id": "7"}).status == 200
    assert deliver(job.id, {"status": "running"}, {"X-Request-Id": "7"}).json()["outcome"] == (
        "duplicate"
    )
    assert seen[0] == ("7", b'{"status": "running"}', job.id)
    assert [e.delivery_id for e in store.events()] == ["req-7"]


def test_a_malformed_id_from_the_apps_rule_is_its_bug_and_answers_503() -> None:
    store = InMemoryJobStore()
    job = store.create({})
    deliver = _token_only(store, delivery_ids=lambda headers, body, job_id: "has space")
    assert deliver(job.id, {"status": "running"}).status == 503
    assert store.events() == []


def test_delivery_ids_must_be_a_known_source() -> None:
    with pytest.raises(ValidationError, match="delivery_ids"):
        WebhookHandler(InMemoryJobStore(), secret=SECRET, delivery_ids="body")  # type: ignore[arg-type]


# -- values no store can hold: 400 everywhere, nothing written -------------------------


@pytest.mark.parametrize(
    "payload",
    [
        {"status": "running", "sequence": 2**63},
        {"status": "running", "sequence": 2**64 + 1},
        {"status": "running", "remote_id": "r" * 256},
        {"status": "failed", "error": {"code": "c" * 256, "message": "m"}},
        {"status": "running", "remote_id": ""},
    ],
    ids=["sequence-2**63", "sequence-2**64", "remote_id-256", "error.code-256", "remote_id-empty"],
)
def test_values_a_column_cannot_hold_answer_400_in_every_store(store: Any, payload: Any) -> None:
    job = store.create({})
    before = state(store, job.id)
    answer = post(make_handler(store), {"job_id": job.id, **payload})
    assert answer.status == 400, answer.json()
    assert answer.json()["outcome"] == "rejected"
    assert state(store, job.id) == before


def test_the_largest_values_every_store_holds_apply(store: Any) -> None:
    job = store.create({})
    handler = make_handler(store)
    running = {"job_id": job.id, "status": "running", "sequence": 2**63 - 1, "remote_id": "r" * 255}
    assert post(handler, running).json()["outcome"] == "applied"
    failed = {"job_id": job.id, "status": "failed", "error": {"code": "c" * 255}}
    assert post(handler, failed).json()["outcome"] == "applied"
    got = store.get(job.id)
    assert (got.sequence, got.remote_id, got.error.code) == (2**63 - 1, "r" * 255, "c" * 255)


# -- v1a (ED25519) keys and Svix header names ----------------------------------------


def test_a_handler_with_a_public_key_applies_v1a_deliveries_and_records_their_id() -> None:
    from jobhook._signing import new_webhook_keypair

    secret_key, public_key = new_webhook_keypair()
    store = InMemoryJobStore()
    job = store.create({})
    handler = WebhookHandler(store, secret=public_key, clock=clock)
    body = json.dumps({"job_id": job.id, "status": "running", "progress": 5}).encode()
    headers = sign_webhook(secret_key, body, msg_id="msg_v1a", timestamp=NOW)
    assert handler.handle(headers, body).json()["outcome"] == "applied"
    assert handler.handle(headers, body).json()["outcome"] == "duplicate"
    forged = sign_webhook(new_webhook_keypair()[0], body, msg_id="msg_forged", timestamp=NOW)
    assert handler.handle(forged, body).status == 401
    # Svix's header names: the delivery id is the verified svix-id.
    body = json.dumps({"job_id": job.id, "status": "running", "progress": 9}).encode()
    signed_ = sign_webhook(secret_key, body, msg_id="msg_svix", timestamp=NOW)
    svix = {name.replace("webhook-", "svix-"): value for name, value in signed_.items()}
    assert handler.handle(svix, body).json()["outcome"] == "applied"
    assert [e.delivery_id for e in store.events()] == ["msg_v1a", "msg_svix"]
