"""kill -9 of the output keeper mid-copy: on restart every file is kept exactly once,
and no one hears of the success before all of them are (on a SQLJobStore, and on a
DjangoJobStore on SQLite, PostgreSQL and MariaDB)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from jobhook import JobStatus, JobUpdate, SQLJobStore
from jobhook.outputs import LocalStorage, OutputKeeper
from jobhook.testing._png import png_for

KEEPER = textwrap.dedent(
    """
    import json, sys
    from jobhook.outputs import FetchPolicy, LocalStorage, OutputKeeper

    kind, where, kept = sys.argv[1:4]
    if kind == "sql":
        from jobhook import SQLJobStore

        store = SQLJobStore(where)
    else:  # a DjangoJobStore on the test's database, configured as the test's is
        import django
        from django.conf import settings

        database = json.loads(where)
        if database["ENGINE"].endswith("mysql"):
            import pymysql

            pymysql.version_info = (2, 2, 1, "final", 0)
            pymysql.install_as_MySQLdb()
        settings.configure(
            DATABASES={"default": database}, INSTALLED_APPS=["jobhook.django"], USE_TZ=True
        )
        django.setup()
        from jobhook.django import DjangoJobStore

        store = DjangoJobStore()
    keeper = OutputKeeper(
        store, LocalStorage(kept), policy=FetchPolicy(allow_networks=["127.0.0.0/8"])
    )
    print("settled", keeper.run_once(), flush=True)
    """
)


class FileHost:
    """Serves ``/f/<n>.png``; the first request for ``/f/2.png`` sends half the file
    and then hangs until `release` (the keeper is killed meanwhile)."""

    def __init__(self) -> None:
        self.requests: Counter[str] = Counter()
        self.hanging = threading.Event()
        self.released = threading.Event()
        host = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                host.requests[self.path] += 1
                data = png_for(self.path)
                self.send_response(200)
                self.send_header("content-type", "image/png")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                if self.path == "/f/2.png" and host.requests[self.path] == 1:
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    host.hanging.set()
                    host.released.wait(60)
                    return
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.released.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def host() -> Iterator[FileHost]:
    server = FileHost()
    yield server
    server.close()


def start_keeper(where: list[str], kept: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", KEEPER, *where, str(kept)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture(params=["sqlite", "django-sqlite", "django-postgres", "django-mariadb"])
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, list[str]]]:
    """A store, and how the keeper's process reaches the same database."""
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'jobs.db'}"
        store = SQLJobStore(db, create_schema=True)
        yield store, ["sql", db]
        store.close()
        return
    from .django_stores import ALIASES, _configured, build_django_store

    store, close = build_django_store(request.param)
    database = _configured["databases"][ALIASES[request.param]]
    yield store, ["django", json.dumps(database)]
    close()


def wait_until(condition: threading.Event, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not condition.wait(0.05):
        if process.poll() is not None:
            pytest.fail(f"the keeper ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail("the keeper never asked for the second file")


def test_a_keeper_killed_mid_copy_resumes_and_keeps_every_file_once(
    tmp_path: Path, host: FileHost, stored: tuple[Any, list[str]]
) -> None:
    store, db = stored
    kept = tmp_path / "kept"
    keeper = OutputKeeper(store, LocalStorage(kept), create_schema=True)
    guarded = keeper.store
    guarded.create({"prompt": "three foxes"}, job_id="job-1")
    sources = [f"{host.url}/f/{n}.png" for n in (1, 2, 3)]
    guarded.apply(
        "job-1", JobUpdate(JobStatus.SUCCEEDED, output={"images": sources}), delivery_id="d-9"
    )

    first = start_keeper(db, kept)
    wait_until(host.hanging, first)  # file 1 is kept, file 2 half read
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL

    record = keeper.kept("job-1")
    assert record is not None
    assert record.state == "keeping"
    assert [f.source for f in record.files] == [sources[0]]
    assert store.get("job-1").status is not JobStatus.SUCCEEDED
    assert [e.status for e in store.events() if e.status is JobStatus.SUCCEEDED] == []

    host.released.set()
    second = start_keeper(db, kept)
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    assert "settled 1" in out

    done = store.get("job-1")
    assert done.status is JobStatus.SUCCEEDED
    assert done.output == {"images": [(kept / f"job-1/{i}.png").as_uri() for i in range(3)]}
    succeeded = [e for e in store.events() if e.status is JobStatus.SUCCEEDED]
    assert len(succeeded) == 1
    assert succeeded[0].delivery_id == "d-9"
    # Each file is in the storage once, whole; none was fetched again once kept.
    assert sorted(p.name for p in (kept / "job-1").iterdir()) == ["0.png", "1.png", "2.png"]
    for i, n in enumerate((1, 2, 3)):
        assert (kept / f"job-1/{i}.png").read_bytes() == png_for(f"/f/{n}.png")
    assert host.requests == Counter({"/f/1.png": 1, "/f/2.png": 2, "/f/3.png": 1})
    keeper.close()
