"""Faults: the database goes away in the middle of a delivery stream, or the app dies
between two statements of a transaction.

* A TCP proxy between the app and PostgreSQL drops every connection and refuses new
  ones for a while (what a server restart looks like to the app): deliveries get 503,
  `CallbackSender` retries them, and after the outage every one lands exactly once.
* ``pg_terminate_backend`` on the app's own connections (found by the
  ``application_name`` this test gives them; nobody else's are touched) mid-stream.
* A process that dies right after the guarded UPDATE never leaves the job change
  without its event: where they are two statements of one transaction, the transaction
  dies uncommitted (no change, no event, no recorded delivery id); on PostgreSQL's direct
  path they are one statement, which had committed. (`tests/test_sql_store.py` shows
  the same when the event INSERT fails; here the process itself is gone.)
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from jobhook import JobStatus, JobUpdate, Outcome, StoreUnavailableError, WebhookHandler
from jobhook.sender import AsyncCallbackSender, CallbackSender
from jobhook.stores._schema import engine_options, sync_url
from jobhook.stores.sql import AsyncSQLJobStore, SQLJobStore

from .conftest import PG_SKIP_REASON, PG_URL

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
needs_pg = pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)


# -- a database that can be made to go away ---------------------------------------------


class FlakyProxy:
    """A TCP proxy to PostgreSQL whose `cut` drops every connection and refuses new ones
    until `restore`, as a restarting server would."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.down = False
        self.cuts = 0
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                if self.down:
                    client.close()
                    continue
                upstream = socket.create_connection(self.target)
                self._open |= {client, upstream}
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            self._drop(source, sink)

    def _drop(self, *socks: socket.socket) -> None:
        with self._lock:
            for s in socks:
                self._open.discard(s)
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()

    def cut(self) -> None:
        with self._lock:
            self.down = True
            self.cuts += 1
            dropped = list(self._open)
        self._drop(*dropped)

    def restore(self) -> None:
        with self._lock:
            self.down = False

    def close(self) -> None:
        self._closed = True
        self.listener.close()
        with self._lock:
            dropped = list(self._open)
        self._drop(*dropped)


# -- the delivery stream ------------------------------------------------------------------


def stream_for(job_ids: list[str], rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
    """(delivery id, payload): per job submitted, running x3, succeeded; shuffled, and
    one delivery in five sent a second time."""
    stream = []
    for job_id in job_ids:
        updates: list[dict[str, Any]] = [{"status": "submitted"}]
        updates += [{"status": "running", "progress": 25 * s, "sequence": s} for s in (1, 2, 3)]
        updates.append({"status": "succeeded", "output": {"url": f"{job_id}.png"}})
        stream += [(f"{job_id}-{k}", {"job_id": job_id, **u}) for k, u in enumerate(updates)]
    stream += rng.sample(stream, k=len(stream) // 5)
    rng.shuffle(stream)
    return stream


class Receiver:
    """The app's webhook route, in process: an httpx transport around the handler that
    records every answer and can run a fault before handling a request."""

    def __init__(self, handler: WebhookHandler) -> None:
        self.handler = handler
        self.answers: list[tuple[str, int, str]] = []
        self.before: Callable[[int], None] = lambda n: None
        self._lock = threading.Lock()

    def __call__(self, request: httpx.Request) -> httpx.Response:
        with self._lock:
            n = len(self.answers)
        self.before(n)
        job_id = request.url.path.rsplit("/", 1)[-1]
        response = self.handler.handle(request.headers, request.content, job_id=job_id)
        with self._lock:
            self.answers.append(
                (request.headers["webhook-id"], response.status, response.json()["outcome"])
            )
        return httpx.Response(response.status, content=response.body, headers=response.headers)

    def statuses(self) -> Counter[int]:
        return Counter(status for _, status, _ in self.answers)


def check_exactly_once(
    store: SQLJobStore, job_ids: list[str], answers: list[tuple[str, int, str]]
) -> None:
    """Every job succeeded; one event per applied change; none lost, none doubled."""
    for job_id in job_ids:
        job = store.get(job_id)
        assert job.status is JobStatus.SUCCEEDED
        assert job.output == {"url": f"{job_id}.png"}
    events = read_events(store, expected=sum(store.get(j).version - 1 for j in job_ids))
    assert len({(e.job_id, e.version) for e in events}) == len(events), "an event was doubled"
    delivery_ids = [e.delivery_id for e in events]
    assert len(set(delivery_ids)) == len(delivery_ids), "a delivery was applied twice"
    for job_id in job_ids:
        versions = sorted(e.version for e in events if e.job_id == job_id)
        assert versions == list(range(2, store.get(job_id).version + 1)), "an update was lost"
    # A 200 "applied" answer always has its event (an applied change whose answer was
    # lost to the outage shows up as a later "duplicate": also exactly once).
    answered = {d for d, _, outcome in answers if outcome == "applied"}
    assert answered <= set(delivery_ids)


def read_events(store: SQLJobStore, *, expected: int) -> list[Any]:
    """All events; waits while an older transaction elsewhere on the server still hides
    the newest (readers only see events older than every open transaction)."""
    deadline = time.monotonic() + 30
    while True:
        events = store.events(limit=1000)
        if len(events) >= expected or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


@pytest.fixture
def pg_tables() -> Iterator[tuple[str, str]]:
    """(URL, table prefix) of fresh tables on the test server, dropped afterwards."""
    if not PG_URL:
        pytest.skip(PG_SKIP_REASON)
    prefix = f"f{uuid.uuid4().hex[:8]}_"
    admin = SQLJobStore(PG_URL, table_prefix=prefix, create_schema=True)
    yield PG_URL, prefix
    admin.metadata.drop_all(admin.engine)
    admin.close()


def app_store(url: str, prefix: str, **connect_args: Any) -> SQLJobStore:
    """The app's store, on an engine of its own (so that its connections are its own)."""
    parsed = sync_url(url)
    options = engine_options(parsed)
    options["connect_args"] = {**options.get("connect_args", {}), **connect_args}
    return SQLJobStore(sa.create_engine(parsed, **options), table_prefix=prefix)


# -- the tests ----------------------------------------------------------------------------


@pytest.mark.postgres
def test_deliveries_during_a_database_outage_get_503_and_land_once_after(
    pg_tables: tuple[str, str],
) -> None:
    url, prefix = pg_tables
    parsed = sa.make_url(url)
    proxy = FlakyProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    store = app_store(url, prefix)
    proxied = SQLJobStore(
        sa.create_engine(
            sync_url(parsed.set(host="127.0.0.1", port=proxy.port)),
            **engine_options(sync_url(url)),
        ),
        table_prefix=prefix,
    )
    receiver = Receiver(WebhookHandler(proxied, secret=SECRET))
    job_ids = [store.create({"n": n}).id for n in range(24)]
    stream = stream_for(job_ids, random.Random(5))
    outage_503s = 0
    lock = threading.Lock()

    def before(n: int) -> None:
        if n == len(stream) // 3:  # a third of the way in, the database goes away
            proxy.cut()

    def sleep(_seconds: float) -> None:
        # The sender backs off after a 503; the database comes back after a dozen.
        nonlocal outage_503s
        with lock:
            if proxy.down:
                outage_503s += 1
                if outage_503s >= 12:
                    proxy.restore()

    receiver.before = before
    http = httpx.Client(transport=httpx.MockTransport(receiver))
    sender = CallbackSender(SECRET, http_client=http, max_attempts=20, sleep=sleep)
    reports: list[Any] = []

    def send(part: list[tuple[str, dict[str, Any]]]) -> None:
        for delivery_id, payload in part:
            url = f"https://app.example/webhooks/jobhook/{payload['job_id']}"
            reports.append(sender.send(url, payload, msg_id=delivery_id))

    try:
        senders = [threading.Thread(target=send, args=(stream[i::4],)) for i in range(4)]
        for t in senders:
            t.start()
        for t in senders:
            t.join()
    finally:
        proxy.close()
        proxied.close()
        http.close()
    assert proxy.cuts == 1
    statuses = receiver.statuses()
    assert statuses[503] >= 12, "the outage was not seen"
    assert set(statuses) == {200, 503}, "only 200s and, during the outage, 503s"
    assert len(reports) == len(stream)
    assert all(r.delivered for r in reports), "a retried delivery never landed"
    check_exactly_once(store, job_ids, receiver.answers)
    store.close()


@pytest.mark.postgres
def test_the_async_store_rides_out_the_same_outage(pg_tables: tuple[str, str]) -> None:
    """`AsyncSQLJobStore`, `ahandle` and `AsyncCallbackSender` through the same outage."""
    url, prefix = pg_tables
    parsed = sa.make_url(url)
    proxy = FlakyProxy(parsed.host or "127.0.0.1", parsed.port or 5432)
    store = app_store(url, prefix)
    proxied = AsyncSQLJobStore(parsed.set(host="127.0.0.1", port=proxy.port), table_prefix=prefix)
    handler = WebhookHandler(proxied, secret=SECRET)
    job_ids = [store.create({"n": n}).id for n in range(12)]
    stream = stream_for(job_ids, random.Random(3))
    answers: list[tuple[str, int, str]] = []
    outage_503s = 0

    async def route(request: httpx.Request) -> httpx.Response:
        if len(answers) == len(stream) // 3:
            proxy.cut()
        job_id = request.url.path.rsplit("/", 1)[-1]
        response = await handler.ahandle(request.headers, request.content, job_id=job_id)
        answers.append((request.headers["webhook-id"], response.status, response.json()["outcome"]))
        return httpx.Response(response.status, content=response.body, headers=response.headers)

    async def sleep(_seconds: float) -> None:
        nonlocal outage_503s
        if proxy.down:
            outage_503s += 1
            if outage_503s >= 12:
                proxy.restore()

    async def main() -> list[Any]:
        async with httpx.AsyncClient(transport=httpx.MockTransport(route)) as http:
            sender = AsyncCallbackSender(SECRET, http_client=http, max_attempts=20, sleep=sleep)

            async def send(part: list[tuple[str, dict[str, Any]]]) -> list[Any]:
                return [
                    await sender.send(
                        f"https://app.example/webhooks/jobhook/{p['job_id']}", p, msg_id=d
                    )
                    for d, p in part
                ]

            parts = await asyncio.gather(*(send(stream[i::4]) for i in range(4)))
            await proxied.close()
            return [report for part in parts for report in part]

    try:
        reports = asyncio.run(main())
    finally:
        proxy.close()
    statuses = Counter(status for _, status, _ in answers)
    assert statuses[503] >= 12, "the outage was not seen"
    assert set(statuses) == {200, 503}
    assert all(r.delivered for r in reports)
    check_exactly_once(store, job_ids, answers)
    store.close()


@pytest.mark.postgres
def test_connections_killed_mid_stream_cost_a_retry_not_an_update(
    pg_tables: tuple[str, str],
) -> None:
    url, prefix = pg_tables
    name = f"jobhook-faults-{uuid.uuid4().hex[:8]}"
    store = app_store(url, prefix, application_name=name)
    admin = sa.create_engine(sync_url(url))
    receiver = Receiver(WebhookHandler(store, secret=SECRET))
    job_ids = [store.create({"n": n}).id for n in range(10)]
    stream = stream_for(job_ids, random.Random(9))
    killed = 0

    def before(n: int) -> None:
        nonlocal killed
        if n % 10 == 5:
            with admin.connect() as conn:
                # Only this test's connections: they carry its application_name.
                killed += len(
                    conn.execute(
                        sa.text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = :name AND pid <> pg_backend_pid()"
                        ),
                        {"name": name},
                    ).all()
                )

    receiver.before = before
    http = httpx.Client(transport=httpx.MockTransport(receiver))
    sender = CallbackSender(SECRET, http_client=http, max_attempts=5, sleep=lambda s: None)
    try:
        reports = [
            sender.send(
                f"https://app.example/webhooks/jobhook/{p['job_id']}", p, msg_id=delivery_id
            )
            for delivery_id, p in stream
        ]
    finally:
        http.close()
        admin.dispose()
    assert killed > 0
    assert receiver.statuses()[503] > 0, "no delivery met a killed connection"
    assert set(receiver.statuses()) == {200, 503}
    assert all(r.delivered for r in reports)
    check_exactly_once(store, job_ids, receiver.answers)
    store.close()


def crash_after_update(url: str, prefix: str, job_id: str) -> None:
    """Apply one update, and die as soon as the guarded UPDATE has run."""
    import os

    from sqlalchemy import event

    store = SQLJobStore(url, table_prefix=prefix)

    @event.listens_for(store.engine, "after_cursor_execute")
    def die(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if f"UPDATE {prefix}jobs" in statement:
            os._exit(17)

    store.apply(job_id, JobUpdate("succeeded", output={"x": 1}), delivery_id="d-1")
    os._exit(0)  # not reached when the UPDATE ran


@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgres", marks=needs_pg)])
def test_a_crash_between_update_and_event_leaves_nothing_half_done(
    kind: str, tmp_path: Any
) -> None:
    if kind == "sqlite":
        url, prefix = f"sqlite:///{tmp_path / 'crash.db'}", "jobhook_"
    else:
        assert PG_URL is not None
        url, prefix = PG_URL, f"c{uuid.uuid4().hex[:8]}_"
    store = SQLJobStore(url, table_prefix=prefix, create_schema=True)
    try:
        job = store.create({"prompt": "fox"})
        process = multiprocessing.get_context("spawn").Process(
            target=crash_after_update, args=(url, prefix, job.id)
        )
        process.start()
        process.join(timeout=120)
        assert process.exitcode == 17, "the process did not die after the UPDATE"

        after, events_after = store.get(job.id), store.events()
        retry = store.apply(job.id, JobUpdate("succeeded", output={"x": 1}), delivery_id="d-1")
        if kind == "postgres":
            # There the delivery id, the UPDATE and the event are one statement that
            # commits on its own (autocommit): the process died after
            # all of it was done.
            assert (after.status, after.version, after.output) == (
                JobStatus.SUCCEEDED,
                2,
                {"x": 1},
            )
            assert retry.outcome is Outcome.DUPLICATE
        else:
            # The transaction died uncommitted: no change, no event, no delivery id.
            assert (after.status, after.version, after.output) == (JobStatus.PENDING, 1, None)
            assert events_after == []
            # The sender's retry applies, once.
            assert retry.outcome is Outcome.APPLIED
        again = store.apply(job.id, JobUpdate("succeeded", output={"x": 1}), delivery_id="d-1")
        assert again.outcome is Outcome.DUPLICATE
        # Either way: the change and its one event, never one without the other.
        assert [e.delivery_id for e in read_events(store, expected=1)] == ["d-1"]
        assert store.get(job.id).version == 2
    finally:
        if kind == "postgres":
            store.metadata.drop_all(store.engine)
        store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("path", ["driver", "core"])
def test_a_database_restart_costs_one_failure_not_one_per_pooled_connection(
    pg_tables: tuple[str, str], path: str
) -> None:
    url, prefix = pg_tables
    name = f"jobhook-blip-{uuid.uuid4().hex[:8]}"
    store = app_store(url, prefix, application_name=name)
    if path == "core":
        sa.event.listen(store.engine, "before_cursor_execute", lambda *args: None)
    job = store.create({})
    # Fill the pool: five connections, all checked in.
    held = [store.engine.raw_connection() for _ in range(5)]
    for connection in held:
        connection.close()
    admin = sa.create_engine(sync_url(url))
    with admin.connect() as conn:
        killed = conn.execute(
            sa.text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = :name AND pid <> pg_backend_pid()"
            ),
            {"name": name},
        ).all()
    admin.dispose()
    assert len(killed) == 5
    failures = 0
    for _ in range(8):
        try:
            store.get(job.id)
        except StoreUnavailableError:
            failures += 1
    store.close()
    store.engine.dispose()
    assert failures == 1
