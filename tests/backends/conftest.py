"""Real generator backends on loopback: a Cog model server and RunPod's local API server.

Each server is a subprocess started once for this package on 127.0.0.1 and a free port
(the tests use fresh ids, so they do not see each other's work), its output written to a
file that is shown under a failing test's report. ``receiver`` is a small HTTP server in
this process that the backends' webhooks reach: it records every request and answers
``200 {}`` unless a test routes a path to a responder of its own; `mount_app` routes one
to a `WebhookHandler` over a test's store, as an app would mount it.

The tests skip (with the reason) only when ``cog`` or ``runpod`` is not installed; CI
installs both through the ``test`` extra.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.util import find_spec
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import attrs
import httpx
import pytest

from jobhook import Job, SQLJobStore, WebhookHandler
from jobhook.backends import Backend

HERE = Path(__file__).parent
COG_MODEL = HERE / "cog_model" / "predict.py"
RUNPOD_HANDLER = HERE / "runpod_worker" / "handler.py"
STARTUP_TIMEOUT = 30.0


# --- the webhook receiver ------------------------------------------------------------------


@attrs.frozen
class Request:
    """One request as the receiver saw it; header names are lower-cased."""

    method: str
    target: str  # path and query, exactly as requested
    headers: dict[str, str]
    body: bytes
    at: float  # time.monotonic() when it arrived

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def json(self) -> Any:
        return json.loads(self.body)


#: What a route answers: status, headers, body.
Answer = tuple[int, dict[str, str], bytes]
Responder = Callable[[Request], Answer]


class Receiver:
    """Records every request on a loopback port; answers ``200 {}`` unless routed.

    ``route(prefix, responder)`` makes requests whose path starts with ``prefix`` answered
    by ``responder`` (the longest prefix wins). Thread-safe.
    """

    def __init__(self) -> None:
        self._requests: list[Request] = []
        self._routes: dict[str, Responder] = {}
        self._changed = threading.Condition()
        receiver = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                receiver._serve(self)

            do_PUT = do_GET = do_POST

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.daemon_threads = True
        self._thread = threading.Thread(
            target=self.server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="backends-receiver",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def route(self, prefix: str, responder: Responder) -> None:
        with self._changed:
            self._routes[prefix] = responder

    def requests(self, prefix: str = "/") -> list[Request]:
        """The requests so far whose path starts with ``prefix``, in arrival order."""
        with self._changed:
            return [r for r in self._requests if r.path.startswith(prefix)]

    def wait_for(
        self,
        prefix: str,
        until: Callable[[list[Request]], bool] = bool,
        *,
        timeout: float = 10.0,
    ) -> list[Request]:
        """Wait until the requests under ``prefix`` satisfy ``until``; return them."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                seen = [r for r in self._requests if r.path.startswith(prefix)]
                if until(seen):
                    return seen
                left = deadline - time.monotonic()
                if left <= 0:
                    pytest.fail(f"waited {timeout} s for requests under {prefix}, got {seen!r}")
                self._changed.wait(left)

    def _serve(self, http: BaseHTTPRequestHandler) -> None:
        length = int(http.headers.get("content-length") or 0)
        body = http.rfile.read(length) if length > 0 else b""
        request = Request(
            method=http.command,
            target=http.path,
            headers={name.lower(): value for name, value in http.headers.items()},
            body=body,
            at=time.monotonic(),
        )
        with self._changed:
            matches = [p for p in self._routes if request.path.startswith(p)]
            responder = self._routes[max(matches, key=len)] if matches else None
        if responder is None:
            status, headers, answer = 200, {"content-type": "application/json"}, b"{}"
        else:
            status, headers, answer = responder(request)
        # Recorded before answering, so a sender that got its answer finds it recorded.
        with self._changed:
            self._requests.append(request)
            self._changed.notify_all()
        try:
            http.send_response(status)
            for name, value in headers.items():
                http.send_header(name, value)
            http.send_header("content-length", str(len(answer)))
            http.end_headers()
            http.wfile.write(answer)
        except ConnectionError:
            pass  # a fire-and-forget sender (coglet's progress webhooks) may not wait


@pytest.fixture(scope="package")
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


# --- an app: a store and a WebhookHandler mounted in the receiver --------------------------

TOKEN_SECRET = "backends-suite-token-secret"


@attrs.define
class App:
    """One test's app: its store and handler, served under a prefix of its own.

    ``answers`` holds ``(job_id, status, outcome)`` for every delivery the handler
    answered, in order.
    """

    store: SQLJobStore
    handler: WebhookHandler
    callback_url: str
    answers: list[tuple[str, int, str | None]] = attrs.field(factory=list)
    #: While true the route answers 503 without calling the handler (the app is down).
    down: bool = False
    #: The route itself: hand it a request to have the handler answer it.
    serve: Responder = attrs.field(default=lambda request: (500, {}, b""), repr=False)

    def wait(self, job_id: str, until: Callable[[Job], bool], timeout: float = 10.0) -> Job:
        """Poll the store until the job satisfies ``until``; return it."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.store.get(job_id)
            if until(job):
                return job
            if time.monotonic() > deadline:
                pytest.fail(f"job {job_id} is still {job!r} after {timeout} s")
            time.sleep(0.02)

    def path(self, job_id: str) -> str:
        """The callback route's path for ``job_id`` (what the receiver records)."""
        return urlsplit(self.callback_url.format(job_id=job_id)).path

    def outcomes(self, job_id: str) -> list[tuple[int, str | None]]:
        return [(status, outcome) for job, status, outcome in self.answers if job == job_id]


def mount_app(receiver: Receiver, store: SQLJobStore, backend: Backend) -> App:
    """Serve ``WebhookHandler(store, backend=backend, token_secret=…)`` at a fresh
    ``/<app>/webhooks/jobhook/<job_id>?token=…`` route of ``receiver``."""
    prefix = f"/app-{uuid.uuid4().hex[:8]}/webhooks/jobhook/"
    handler = WebhookHandler(store, backend=backend, token_secret=TOKEN_SECRET)
    app = App(store, handler, f"{receiver.url}{prefix}{{job_id}}")

    def respond(request: Request) -> Answer:
        if app.down:
            return 503, {}, b""
        job_id = unquote(request.path[len(prefix) :])
        token = parse_qs(urlsplit(request.target).query).get("token", [None])[0]
        answer = handler.handle(request.headers, request.body, job_id=job_id, token=token)
        outcome = json.loads(answer.body).get("outcome")
        app.answers.append((job_id, answer.status, outcome))
        return answer.status, dict(answer.headers), answer.body

    app.serve = respond
    receiver.route(prefix, respond)
    return app


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[SQLJobStore]:
    store = SQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}", create_schema=True)
    yield store
    store.close()


# --- backend server processes --------------------------------------------------------------


@attrs.define
class ServerProcess:
    """A backend server running as a subprocess (in a session of its own) and its log."""

    name: str
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def output(self, limit: int = 30_000) -> str:
        text = self.log.read_text(errors="replace")
        return text if len(text) <= limit else "…" + text[-limit:]

    def stop(self) -> None:
        # The server runs in its own session, so this reaches its workers too (coglet's
        # Python worker, RunPod's ping process), and nothing else.
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start(name: str, command: list[str], *, cwd: Path, env: dict[str, str]) -> ServerProcess:
    port = _free_port()
    log = cwd / f"{name}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [arg.replace("{port}", str(port)) for arg in command],
            cwd=cwd,
            env={key: value.replace("{port}", str(port)) for key, value in env.items()},
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServerProcess(name, f"http://127.0.0.1:{port}", process, log)


def _wait_ready(server: ServerProcess, path: str, ready: Callable[[httpx.Response], bool]) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(
                f"the {server.name} server exited with {server.process.returncode}:\n"
                f"{server.output()}"
            )
        try:
            if ready(httpx.get(server.url + path, timeout=1.0)):
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    server.stop()
    pytest.fail(
        f"the {server.name} server was not ready in {STARTUP_TIMEOUT} s:\n{server.output()}"
    )


def _needs(module: str) -> None:
    if find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install 'jobhook[test]')")


def _base_env() -> dict[str, str]:
    # The venv's bin first: coglet spawns its worker as `python` from PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("COG_", "RUNPOD_"))}
    return {**env, "PATH": path, "PYTHONUNBUFFERED": "1"}


def _cog_ready(answer: httpx.Response) -> bool:
    status = answer.json().get("status") if answer.status_code == 200 else None
    if status in {"SETUP_FAILED", "DEFUNCT"}:
        pytest.fail(f"the Cog model did not set up: {answer.text}")
    return status == "READY"


@pytest.fixture(scope="package")
def cog_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """``python -m cog.server.http`` (coglet) serving ``cog_model/predict.py``, one slot."""
    _needs("cog")
    cwd = tmp_path_factory.mktemp("cog")
    (cwd / "predict.py").write_bytes(COG_MODEL.read_bytes())
    server = _start(
        "cog",
        [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
        cwd=cwd,
        env={**_base_env(), "PORT": "{port}", "COG_PREDICT_TYPE_STUB": "predict.py:Runner"},
    )
    _wait_ready(server, "/health-check", _cog_ready)
    yield server
    server.stop()


@pytest.fixture
def cog(cog_server: ServerProcess) -> ServerProcess:
    """``cog_server`` once its one slot is free (the last test's prediction has ended)."""
    deadline = time.monotonic() + 10
    while httpx.get(cog_server.url + "/health-check").json()["status"] != "READY":
        if time.monotonic() > deadline:
            pytest.fail(f"the Cog server stayed busy:\n{cog_server.output()}")
        time.sleep(0.05)
    return cog_server


@pytest.fixture(scope="package")
def runpod_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """RunPod's local test API (``--rp_serve_api``) over ``runpod_worker/handler.py``."""
    _needs("runpod")
    cwd = tmp_path_factory.mktemp("runpod")
    server = _start(
        "runpod",
        [
            *(sys.executable, str(RUNPOD_HANDLER), "--rp_serve_api"),
            *("--rp_api_host", "127.0.0.1", "--rp_api_port", "{port}"),
        ],
        cwd=cwd,
        env=_base_env(),
    )
    # Any answer from the app (its OpenAPI document) means uvicorn is serving.
    _wait_ready(server, "/openapi.json", lambda answer: answer.status_code == 200)
    yield server
    server.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Show the servers' output and the received requests under a failing test."""
    report = yield
    if report.failed:
        shown: set[int] = set()
        for value in getattr(item, "funcargs", {}).values():
            if id(value) in shown:
                continue
            shown.add(id(value))
            if isinstance(value, ServerProcess):
                report.sections.append(
                    (f"{value.name} server output ({value.log})", value.output())
                )
            elif isinstance(value, Receiver):
                lines = [f"{r.method} {r.target} {r.body[:300]!r}" for r in value.requests()]
                report.sections.append(("requests the receiver got", "\n".join(lines)))
    return report
