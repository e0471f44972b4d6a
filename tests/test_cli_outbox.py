"""``jobhook db prune``, ``jobhook events tail`` and ``jobhook events consumers``."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobhook import JobStatus, JobUpdate, OutboxConsumer
from jobhook.cli import main
from jobhook.stores.sql import SQLJobStore

Run = tuple[int, str, str]
Runner = Callable[..., Run]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Runner:
    def invoke(*argv: str) -> Run:
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def store(db: str) -> Iterator[SQLJobStore]:
    store = SQLJobStore(db, create_schema=True)
    yield store
    store.close()


def _event(store: SQLJobStore, delivery_id: str | None = None) -> int:
    job = store.create({"p": 1})
    result = store.apply(job.id, JobUpdate(JobStatus.SUCCEEDED), delivery_id=delivery_id)
    assert result.event is not None
    return result.event.id


def test_db_prune_reports_what_went(run: Runner, db: str, store: SQLJobStore) -> None:
    _event(store, "d-1")
    status, out, _ = run("db", "prune", "--db", db)
    assert (status, out) == (0, "pruned 0 delivery id(s), 0 event(s), 0 job(s)\n")
    status, out, _ = run(
        "db", "prune", "--db", db, "--deliveries-older-than", "0s",
        "--finished-jobs-older-than", "0s", "--batch", "1",
    )  # fmt: skip
    assert (status, out) == (0, "pruned 1 delivery id(s), 0 event(s), 1 job(s)\n")


def test_db_prune_refuses_a_bad_duration(run: Runner, db: str) -> None:
    status, _, err = run("db", "prune", "--db", db, "--deliveries-older-than", "soon")
    assert status == 2
    assert "not a duration" in err


def test_events_tail_once_prints_every_event(run: Runner, db: str, store: SQLJobStore) -> None:
    ids = [_event(store) for _ in range(2)]
    status, out, _ = run("events", "tail", "--db", db, "--once")
    assert status == 0
    assert [line.split()[0] for line in out.splitlines()] == [str(i) for i in ids]
    assert "succeeded" in out
    status, out, _ = run("events", "tail", "--db", db, "--once", "--json", "--after", str(ids[0]))
    assert [json.loads(line)["id"] for line in out.splitlines()] == [ids[1]]


def test_events_tail_follows_new_commits(db: str, store: SQLJobStore) -> None:
    before = _event(store)  # before the tail starts: not printed
    tail = subprocess.Popen(
        [sys.executable, "-m", "jobhook", "events", "tail", "--db", db, "--interval", "0.05"],
        stdout=subprocess.PIPE,
        text=True,
    )
    # Events keep committing until the tail prints one (it starts after the newest
    # event it finds, which may be any of these).
    written: list[int] = []
    printed = threading.Event()

    def write() -> None:
        while not printed.wait(0.05):
            written.append(_event(store))

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert tail.stdout is not None
        line = tail.stdout.readline()
    finally:
        printed.set()
        writer.join()
        tail.terminate()
        tail.wait()
    first = int(line.split()[0])
    assert first > before
    assert first in written
    assert "succeeded" in line


def test_events_consumers_shows_position_lag_and_parked_and_replays(
    run: Runner, db: str, store: SQLJobStore
) -> None:
    status, out, _ = run("events", "consumers", "--db", db)
    assert (status, out) == (0, "no consumers\n")
    ids = [_event(store) for _ in range(3)]

    def handle(event: object) -> None:
        if getattr(event, "id", None) == ids[0]:
            raise RuntimeError("smtp refused")

    OutboxConsumer(store, "mail", handle, batch=2, max_attempts=1).run_once()
    status, out, _ = run("events", "consumers", "--db", db)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["NAME", "POSITION", "LAG", "PARKED"]
    assert lines[1].split()[:4] == ["mail", str(ids[1]), "1", "1"]
    assert "smtp refused" in out
    (parked,) = store.parked_events()
    status, out, _ = run("events", "consumers", "--db", db, "--replay", str(parked.id))
    assert status == 0
    assert "replay" in out
    assert store.parked_events()[0].state == "replay"
    status, _, err = run("events", "consumers", "--db", db, "--replay", "999")
    assert (status, err) == (1, "jobhook: error: no parked event with id 999\n")
