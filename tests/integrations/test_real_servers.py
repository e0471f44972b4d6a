"""The adapters behind real servers, over real HTTP: gunicorn for WSGI, uvicorn for ASGI.

Test clients hand the view a body they already hold; real servers stream it, chunked or
not. Each app (``apps/``) mounts two handlers on one SQLite file that the test shares:
the default ``max_body_bytes`` (1 MiB) and, under ``/big``, 4 MB. A worker's peak
memory is read from ``/proc`` (its high-water mark, reset before each measured request).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from jobhook import SQLJobStore, sign_webhook

from .conftest import SECRET

APPS = Path(__file__).parent / "apps"
MiB = 1 << 20


@attrs.frozen
class Server:
    """How to start one app: the server's module, its command-line tail, what it needs."""

    server: str  # "gunicorn" or "uvicorn", run as ``python -m``
    arguments: tuple[str, ...]
    needs: tuple[str, ...]
    env: dict[str, str] = attrs.field(factory=dict)

    def command(self, fd: int) -> list[str]:
        if self.server == "gunicorn":
            # One sync worker, a child of the master: the process whose memory counts.
            bind = ["--bind", f"fd://{fd}", "--workers", "1", "--worker-class", "sync"]
        else:
            bind = ["--fd", str(fd)]
        return [sys.executable, "-m", self.server, *bind, "--log-level", "warning"]


SERVERS = {
    "flask-gunicorn": Server("gunicorn", ("flask_server:app",), ("gunicorn", "flask")),
    "django-gunicorn": Server("gunicorn", ("django_server:application",), ("gunicorn", "django")),
    "fastapi-uvicorn": Server(
        "uvicorn", ("fastapi_server:app",), ("uvicorn", "fastapi", "aiosqlite")
    ),
    "django-uvicorn": Server(
        "uvicorn",
        ("--lifespan", "off", "django_server:asgi_application"),
        ("uvicorn", "django", "aiosqlite"),
        {"JOBHOOK_TEST_ASYNC": "1"},
    ),
}


@attrs.frozen
class Running:
    url: str
    worker: int  # the pid that handles requests
    store: SQLJobStore
    log: Path


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


def _wait_until_serving(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    # The socket is listening before the server starts, so connections queue until a
    # worker accepts them: any HTTP answer (405 for a GET) means ready.
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"the server exited with {process.returncode}:\n{log.read_text()}")
        try:
            httpx.get(f"{url}/webhooks/jobhook/ready", timeout=0.5)
        except httpx.TransportError:
            continue
        return
    pytest.fail(f"the server did not answer within 20 s:\n{log.read_text()}")


@pytest.fixture(scope="module", params=list(SERVERS))
def server(request: pytest.FixtureRequest, tmp_path_factory: Any) -> Iterator[Running]:
    spec = SERVERS[request.param]
    missing = [name for name in spec.needs if find_spec(name) is None]
    if missing:
        pytest.skip(f"{request.param} needs {', '.join(missing)}, which is not installed")
    if not Path("/proc/self/status").exists():
        pytest.skip("measuring a worker's memory needs Linux's /proc")
    tmp = tmp_path_factory.mktemp(request.param)
    store = SQLJobStore(f"sqlite:///{tmp / 'jobs.db'}", create_schema=True)
    env = {
        **os.environ,
        **spec.env,
        "JOBHOOK_TEST_DATABASE": str(tmp / "jobs.db"),
        "JOBHOOK_TEST_SECRET": SECRET,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(APPS), os.environ.get("PYTHONPATH")])),
    }
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    log = tmp / "server.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*spec.command(listener.fileno()), *spec.arguments],
            cwd=APPS,
            env=env,
            pass_fds=[listener.fileno()],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    listener.close()
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_serving(process, url, log)
        worker = _children(process.pid)[0] if spec.server == "gunicorn" else process.pid
        yield Running(url, worker, store, log)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        store.close()


def _peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def _reset_peak(pid: int) -> int:
    """Reset the process's peak RSS to its current RSS (Linux ≥ 4.0) and return it."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return _peak_kib(pid)


def _chunked(body: bytes, size: int = 64 * 1024) -> Iterator[bytes]:
    # A generator as content: httpx sends it with Transfer-Encoding: chunked.
    for start in range(0, len(body), size):
        yield body[start : start + size]


def _update(job_id: str, **fields: Any) -> bytes:
    return json.dumps({"job_id": job_id, "status": "running", "progress": 40, **fields}).encode()


def test_an_honest_chunked_delivery_applies(server: Running) -> None:
    server.store.create({}, job_id="job-1")
    body = _update("job-1")
    response = httpx.post(
        f"{server.url}/webhooks/jobhook/job-1",
        content=_chunked(body, size=16),
        headers={**sign_webhook(SECRET, body), "content-type": "application/json"},
        timeout=10,
    )
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert "content-length" not in response.request.headers
    assert (response.status_code, response.json()["outcome"]) == (200, "applied")
    assert server.store.get("job-1").progress == 40.0


def test_a_3_mb_body_under_the_handlers_limit_applies(server: Running) -> None:
    # Over Django's DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB): the handler's 4 MB decides.
    server.store.create({}, job_id="job-3mb")
    body = _update("job-3mb", note="x" * 3_000_000)
    response = httpx.post(
        f"{server.url}/big/webhooks/jobhook/job-3mb",
        content=body,
        headers={**sign_webhook(SECRET, body), "content-type": "application/json"},
        timeout=10,
    )
    assert response.headers["content-type"] == "application/json", response.text[:200]
    assert (response.status_code, response.json()["outcome"]) == (200, "applied")
    assert server.store.get("job-3mb").progress == 40.0


def test_a_50_mb_chunked_body_is_refused_without_being_held(server: Running) -> None:
    before = _reset_peak(server.worker)
    response = httpx.post(
        f"{server.url}/webhooks/jobhook/job-1",
        content=_chunked(b"x" * (50 * MiB)),
        headers={"content-type": "application/json"},
        timeout=20,
    )
    growth_kib = _peak_kib(server.worker) - before
    assert response.status_code == 413
    assert response.json()["outcome"] == "rejected"
    # The adapter holds 1 MiB + 1 byte (twice, while joining); Django under ASGI also
    # spools 2.5 MB in memory before its temporary file goes to disk. 50 MB would show.
    assert growth_kib < 8 * 1024, f"the worker's peak memory grew by {growth_kib} KiB"
