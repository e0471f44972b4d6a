"""The events views behind real servers, over real HTTP: werkzeug's threaded server for
Flask, Django's own threaded test server (WSGI), uvicorn for FastAPI and for Django
under ASGI (each with an async store and with a sync one).

Each server runs in this process, so the test reads its watcher's subscriber count.
Streams are read with httpx as a browser's EventSource would: line by line, as sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from typing import Any

import attrs
import httpx
import pytest

from jobhook import AsyncInMemoryJobStore, InMemoryJobStore, JobUpdate
from jobhook.live import AsyncWatcher, Watcher

JOB_PATH = "/jobs/{}/events"
HEARTBEAT = 0.3
FORBIDDEN = "forbidden-job"


def authorize(request: Any, job_id: str) -> bool:
    return job_id != FORBIDDEN


@attrs.frozen
class Live:
    """A running app: its URL, the store it streams (sync calls), and its watcher."""

    url: str
    store: InMemoryJobStore
    watcher: Watcher | AsyncWatcher


VIEW_OPTIONS: dict[str, Any] = {"authorize": authorize, "heartbeat": HEARTBEAT, "retry": 0.5}


def _flask(store: Any, watcher: Any) -> Any:
    import flask

    from jobhook.flask import events_view

    app = flask.Flask(__name__)
    view = events_view(store, watcher=watcher, **VIEW_OPTIONS)
    app.add_url_rule("/jobs/<job_id>/events", view_func=view)
    owners = events_view(store, watcher=watcher, by_owner=True, **VIEW_OPTIONS)
    app.add_url_rule("/owners/<owner_id>/events", endpoint="owners", view_func=owners)
    return app


def _django(store: Any, watcher: Any) -> Any:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(SECRET_KEY="jobhook-tests", ALLOWED_HOSTS=["*"])
        django.setup()
    from django.test import override_settings
    from django.urls import path

    from jobhook.django import events_view

    view = events_view(store, watcher=watcher, **VIEW_OPTIONS)
    owners = events_view(store, watcher=watcher, by_owner=True, **VIEW_OPTIONS)
    patterns = [
        path("jobs/<str:job_id>/events", view),
        path("owners/<str:owner_id>/events", owners),
    ]
    urls = type("urls", (), {"urlpatterns": patterns})
    override = override_settings(ROOT_URLCONF=urls, ALLOWED_HOSTS=["*"], MIDDLEWARE=[])
    override.enable()
    return override


def _fastapi(store: Any, watcher: Any) -> Any:
    from fastapi import FastAPI

    from jobhook.fastapi import events_endpoint

    app = FastAPI()
    app.get("/jobs/{job_id}/events")(events_endpoint(store, watcher=watcher, **VIEW_OPTIONS))
    owners = events_endpoint(store, watcher=watcher, by_owner=True, **VIEW_OPTIONS)
    app.get("/owners/{owner_id}/events")(owners)
    return app


def _serve_wsgi(app: Any, django_server: bool) -> Iterator[str]:
    if django_server:
        from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler

        server: Any = ThreadedWSGIServer(("127.0.0.1", 0), WSGIRequestHandler)
        server.set_app(app)
        server.daemon_threads = True
        port = server.server_address[1]
    else:
        from werkzeug.serving import make_server

        server = make_server("127.0.0.1", 0, app, threaded=True)
        port = server.server_port
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _serve_asgi(app: Any) -> Iterator[str]:
    import socket

    import uvicorn

    sock = socket.create_server(("127.0.0.1", 0))
    config = uvicorn.Config(app, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.01)
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join()
        sock.close()


SERVERS: dict[str, tuple[tuple[str, ...], bool]] = {
    # name: (what it needs, async store)
    "flask-werkzeug": (("flask",), False),
    "django-wsgi": (("django",), False),
    "fastapi-uvicorn-async": (("fastapi", "uvicorn"), True),
    "fastapi-uvicorn-sync": (("fastapi", "uvicorn"), False),
    "django-asgi-uvicorn": (("django", "uvicorn"), True),
    "django-asgi-uvicorn-sync": (("django", "uvicorn"), False),
}


@pytest.fixture(params=list(SERVERS))
def live(request: pytest.FixtureRequest) -> Iterator[Live]:
    needs, is_async = SERVERS[request.param]
    missing = [name for name in needs if find_spec(name) is None]
    if missing:
        pytest.skip(f"{request.param} needs {', '.join(missing)}, which is not installed")
    store: Any = AsyncInMemoryJobStore() if is_async else InMemoryJobStore()
    sync_store = store._store if is_async else store
    watcher: Any = AsyncWatcher(store, interval=0.05) if is_async else Watcher(store, interval=0.05)
    name = request.param
    if name == "flask-werkzeug":
        for url in _serve_wsgi(_flask(store, watcher), False):
            yield Live(url, sync_store, watcher)
    elif name.startswith("fastapi"):
        for url in _serve_asgi(_fastapi(store, watcher)):
            yield Live(url, sync_store, watcher)
    else:
        override = _django(store, watcher)
        try:
            if name == "django-wsgi":
                from django.core.handlers.wsgi import WSGIHandler

                urls = _serve_wsgi(WSGIHandler(), True)
            else:
                from django.core.handlers.asgi import ASGIHandler

                urls = _serve_asgi(ASGIHandler())
            for url in urls:
                yield Live(url, sync_store, watcher)
        finally:
            override.disable()
    if isinstance(watcher, Watcher):
        watcher.close()


class Stream:
    """An open SSE response, read message by message (comments included)."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.iter_lines()

    def next(self) -> dict[str, Any] | None:
        """The next message's fields (``data`` parsed), a comment as ``{"comment": …}``,
        or None at the end of the stream."""
        fields: dict[str, Any] = {}
        for line in self._lines:
            if line == "":
                if fields:
                    return fields
                continue
            name, _, value = line.partition(":")
            if name == "":
                return {"comment": value.strip()}
            value = value[1:] if value.startswith(" ") else value
            fields[name] = json.loads(value) if name == "data" else value
        return fields or None

    def next_data(self) -> dict[str, Any]:
        while True:
            message = self.next()
            assert message is not None, "the stream ended"
            if "data" in message:
                return message


def open_stream(
    client: httpx.Client, live: Live, job_id: str, headers: dict[str, str] | None = None
) -> Any:
    return client.stream("GET", live.url + JOB_PATH.format(job_id), headers=headers or {})


def wait_for(condition: Callable[[], bool]) -> None:
    # Waits without asserting how long anything took; the suite's timeout bounds it.
    while not condition():
        time.sleep(0.02)


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=httpx.Timeout(10.0)) as http:
        yield http


def test_events_arrive_as_they_commit_and_the_stream_ends_after_the_last(
    live: Live, client: httpx.Client
) -> None:
    job = live.store.create({"prompt": "fox"})
    with open_stream(client, live, job.id) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["x-accel-buffering"] == "no"
        stream = Stream(response)
        assert stream.next() == {"retry": "500"}
        first = stream.next_data()
        assert "id" not in first  # a snapshot: a reconnect gets a fresh one
        assert (first["event"], first["data"]["status"]) == ("job", "pending")
        for progress in (25, 75):
            event = live.store.apply(job.id, JobUpdate("running", progress=progress)).event
            message = stream.next_data()
            assert message["id"] == str(event.id)
            assert (message["data"]["status"], message["data"]["progress"]) == (
                "running",
                float(progress),
            )
        live.store.apply(job.id, JobUpdate("succeeded", output={"images": ["1.png"]}))
        last = stream.next_data()
        assert last["data"]["output"] == {"images": ["1.png"]}
        assert last["data"]["terminal"] is True
        assert stream.next() is None
    wait_for(lambda: live.watcher.subscribers == 0)


def test_a_reconnect_with_last_event_id_gets_exactly_the_missed_events(
    live: Live, client: httpx.Client
) -> None:
    job = live.store.create({})
    with open_stream(client, live, job.id) as response:
        stream = Stream(response)
        stream.next_data()  # the snapshot
        live.store.apply(job.id, JobUpdate("running", progress=10))
        seen = stream.next_data()["id"]
    for progress in (20, 30, 40):
        live.store.apply(job.id, JobUpdate("running", progress=progress))
    other = live.store.create({})
    live.store.apply(other.id, JobUpdate("running", progress=99))

    with open_stream(client, live, job.id, {"Last-Event-ID": seen}) as response:
        stream = Stream(response)
        missed = [stream.next_data()["data"]["progress"] for _ in range(3)]
        assert missed == [20.0, 30.0, 40.0]
        live.store.apply(job.id, JobUpdate("succeeded"))
        assert stream.next_data()["data"]["status"] == "succeeded"
        assert stream.next() is None
    # The query parameter is read when there is no header (EventSource's first connect).
    path = JOB_PATH.format(job.id) + f"?last_event_id={seen}"
    with client.stream("GET", live.url + path) as response:
        got = [m["data"]["progress"] for m in iter(Stream(response).next, None) if "data" in m]
        assert got == [20.0, 30.0, 40.0, 100.0]
    wait_for(lambda: live.watcher.subscribers == 0)


def test_unauthorized_is_403_with_no_event(live: Live, client: httpx.Client) -> None:
    live.store.create({}, job_id=FORBIDDEN)
    response = client.get(live.url + JOB_PATH.format(FORBIDDEN))
    assert response.status_code == 403
    assert response.json() == {"error": "forbidden"}
    assert live.watcher.subscribers == 0


def test_unknown_job_is_404_and_a_finished_stream_is_204(live: Live, client: httpx.Client) -> None:
    assert client.get(live.url + JOB_PATH.format("missing")).status_code == 404
    job = live.store.create({})
    event = live.store.apply(job.id, JobUpdate("canceled")).event
    response = client.get(
        live.url + JOB_PATH.format(job.id), headers={"Last-Event-ID": str(event.id)}
    )
    assert (response.status_code, response.content) == (204, b"")


def test_an_idle_stream_sends_heartbeats(live: Live, client: httpx.Client) -> None:
    job = live.store.create({})
    with open_stream(client, live, job.id) as response:
        stream = Stream(response)
        stream.next_data()
        assert stream.next() == {"comment": "keep-alive"}
        assert stream.next() == {"comment": "keep-alive"}
        live.store.apply(job.id, JobUpdate("running", progress=5))
        assert stream.next_data()["data"]["progress"] == 5.0


def test_a_disconnect_frees_the_subscription(live: Live, client: httpx.Client) -> None:
    job = live.store.create({})
    with open_stream(client, live, job.id) as response:
        stream = Stream(response)  # kept: a collected reader closes the connection
        stream.next_data()
        assert live.watcher.subscribers == 1
    # A WSGI server notices at its next write (a heartbeat); an ASGI one at once.
    wait_for(lambda: live.watcher.subscribers == 0)


def test_an_owners_stream_follows_all_their_jobs(live: Live, client: httpx.Client) -> None:
    mine = live.store.create({}, owner_id="u1")
    theirs = live.store.create({}, owner_id="u2")
    with client.stream("GET", live.url + "/owners/u1/events") as response:
        assert response.status_code == 200
        stream = Stream(response)
        assert stream.next() == {"retry": "500"}
        # No snapshot: the owner's events from now on. Wait until it is subscribed.
        wait_for(lambda: live.watcher.subscribers == 1)
        live.store.apply(theirs.id, JobUpdate("running", progress=1))
        live.store.apply(mine.id, JobUpdate("succeeded"))
        first = stream.next_data()
        assert (first["data"]["job_id"], first["data"]["status"]) == (mine.id, "succeeded")
        later = live.store.create({}, owner_id="u1")  # the stream goes on after a job ends
        live.store.apply(later.id, JobUpdate("running", progress=7))
        second = stream.next_data()
        assert (second["data"]["job_id"], second["data"]["progress"]) == (later.id, 7.0)
    live.store.apply(later.id, JobUpdate("running", progress=8))
    headers = {"Last-Event-ID": second["id"]}
    with client.stream("GET", live.url + "/owners/u1/events", headers=headers) as response:
        stream = Stream(response)
        assert stream.next_data()["data"]["progress"] == 8.0
    assert client.get(live.url + f"/owners/{FORBIDDEN}/events").status_code == 403
