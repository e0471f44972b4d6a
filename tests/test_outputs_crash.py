"""kill -9 of the output keeper mid-copy: on restart every file is kept exactly once,
and no one hears of the success before all of them are. The sync keeper on a sync store
and the async keeper on an async one, each on SQLite, PostgreSQL and MariaDB, and the
sync keeper on a DjangoJobStore on each of them."""

from __future__ import annotations

import inspect
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

from jobhook import JobStatus, JobUpdate
from jobhook.outputs import AsyncOutputKeeper, LocalStorage, OutputKeeper
from jobhook.testing._png import png_for

from .conftest import build_store, drop_holds

#: The keeper process: ``python -c KEEPER sql|async <url> <table prefix> <directory>``,
#: or ``django <database settings as JSON> - <directory>``.
KEEPER = textwrap.dedent(
    """
    import asyncio
    import sys
    from jobhook import AsyncSQLJobStore, SQLJobStore
    from jobhook.outputs import AsyncOutputKeeper, FetchPolicy, LocalStorage, OutputKeeper

    kind, url, prefix, directory = sys.argv[1:5]
    policy = FetchPolicy(allow_networks=["127.0.0.0/8"])


    async def keep_async():
        store = AsyncSQLJobStore(url, table_prefix=prefix)
        keeper = AsyncOutputKeeper(store, LocalStorage(directory), policy=policy)
        settled = await keeper.run_once()
        await store.close()
        return settled


    def django_store():
        # A DjangoJobStore on the test's database, configured as the test's is.
        import json

        import django
        from django.conf import settings

        database = json.loads(url)
        if database["ENGINE"].endswith("mysql"):
            import pymysql

            pymysql.version_info = (2, 2, 1, "final", 0)
            pymysql.install_as_MySQLdb()
        settings.configure(
            DATABASES={"default": database}, INSTALLED_APPS=["jobhook.django"], USE_TZ=True
        )
        django.setup()
        from jobhook.django import DjangoJobStore

        return DjangoJobStore()


    if kind == "async":
        settled = asyncio.run(keep_async())
    elif kind == "django":
        settled = OutputKeeper(django_store(), LocalStorage(directory), policy=policy).run_once()
    else:
        keeper = OutputKeeper(
            SQLJobStore(url, table_prefix=prefix), LocalStorage(directory), policy=policy
        )
        settled = keeper.run_once()
    print("settled", settled, flush=True)
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
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()
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


def wait_until(condition: threading.Event, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 60
    while not condition.wait(0.05):
        if process.poll() is not None:
            pytest.fail(f"the keeper ended early: {process.communicate()}")
        if time.monotonic() > deadline:
            pytest.fail("the keeper never asked for the second file")


@pytest.fixture(
    params=[
        "sqlite",
        "postgres",
        "mariadb",
        "async-sqlite",
        "async-postgres",
        "async-mariadb",
        "django-sqlite",
        "django-postgres",
        "django-mariadb",
    ]
)
def stored(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, list[str]]]:
    """A SQL store (an async one behind the tests' sync facade) on a fresh database file
    or under a table prefix of its own, or a DjangoJobStore, and how the keeper's
    process reaches it."""
    if request.param.startswith("django-"):
        from .django_stores import ALIASES, _configured, build_django_store

        django_store, close_django = build_django_store(request.param)
        database = _configured["databases"][ALIASES[request.param]]
        yield django_store, ["django", json.dumps(database), "-"]
        close_django()
        return
    store, close = build_store(request.param, tmp_path)
    inner = getattr(store, "inner", store)
    kind = "async" if request.param.startswith("async-") else "sql"
    url = inner.engine.url.render_as_string(hide_password=False)
    yield store, [kind, url, inner.tables.prefix]
    drop_holds(store)
    close()


def test_a_keeper_killed_mid_copy_resumes_and_keeps_every_file_once(
    tmp_path: Path, host: FileHost, stored: tuple[Any, list[str]]
) -> None:
    store, db = stored
    kept = tmp_path / "kept"
    keeper: Any
    if db[0] == "async":
        keeper = AsyncOutputKeeper(store.inner, LocalStorage(kept))
    else:
        keeper = OutputKeeper(store, LocalStorage(kept))

    def run(value: Any) -> Any:
        """``value``, awaited on the async store's event loop when it is a coroutine."""
        return store.runner.run(value) if inspect.isawaitable(value) else value

    run(keeper.create_schema())
    guarded = keeper.store
    run(guarded.create({"prompt": "three foxes"}, job_id="job-1"))
    sources = [f"{host.url}/f/{n}.png" for n in (1, 2, 3)]
    update = JobUpdate(JobStatus.SUCCEEDED, output={"images": sources})
    run(guarded.apply("job-1", update, delivery_id="d-9"))

    first = start_keeper(db, kept)
    wait_until(host.hanging, first)  # file 1 is kept, file 2 half read
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    assert first.returncode == -signal.SIGKILL

    record = run(keeper.kept("job-1"))
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
    assert run(keeper.kept("job-1")).state == "kept"
    keeper.close()
