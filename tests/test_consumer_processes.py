"""Consumers in separate processes, on SQLite, PostgreSQL and MariaDB/MySQL: a consumer killed with
SIGKILL mid-batch loses and skips nothing; two instances with one name never handle
events at the same time; four writers and two consumers: every event id is handled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from jobhook import SQLJobStore

from .conftest import MYSQL_SKIP_REASON, MYSQL_URL, PG_SKIP_REASON, PG_URL
from .consumer_worker import side_tables

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(params=["sqlite", "postgres", "mariadb"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str]]:
    if request.param == "postgres":
        if not PG_URL:
            pytest.skip(PG_SKIP_REASON)
        url, prefix = PG_URL, f"t{uuid.uuid4().hex[:10]}_"
    elif request.param == "mariadb":
        if not MYSQL_URL:
            pytest.skip(MYSQL_SKIP_REASON)
        url, prefix = MYSQL_URL, f"t{uuid.uuid4().hex[:10]}_"
    else:
        url, prefix = f"sqlite:///{tmp_path / 'jobs.db'}", "jobhook_"
    store = SQLJobStore(url, table_prefix=prefix, create_schema=True)
    side_tables(store.engine, prefix)
    yield url, prefix
    if request.param != "sqlite":
        with store.engine.begin() as conn:
            store.tables.drop(conn)
            conn.exec_driver_sql(f"DROP TABLE {prefix}handled, {prefix}log")
    store.close()


def _spawn(*args: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.consumer_worker", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if args[0] == "consume":
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
    return proc


def _scalar(engine: sa.Engine, sql: str) -> Any:
    with engine.connect() as conn:
        return conn.exec_driver_sql(sql).scalar()


def _wait_until(condition: Any, what: str, timeout: float = 180.0) -> None:
    # A deadline only against hanging forever: no assertion is about time.
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"never happened: {what}")
        time.sleep(0.05)


def _event_ids(engine: sa.Engine, prefix: str) -> set[int]:
    with engine.connect() as conn:
        return {r[0] for r in conn.exec_driver_sql(f"SELECT id FROM {prefix}events")}


def _handled(engine: sa.Engine, prefix: str) -> list[int]:
    with engine.connect() as conn:
        return [r[0] for r in conn.exec_driver_sql(f"SELECT event_id FROM {prefix}handled")]


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=60) == 0


def test_sigkill_mid_batch_skips_nothing(db: tuple[str, str]) -> None:
    url, prefix = db
    _spawn("write", url, prefix, "150").wait()
    engine = SQLJobStore(url, table_prefix=prefix).engine
    first = _spawn("consume", url, prefix, "mail", "50", "1.0")
    _wait_until(lambda: _scalar(engine, f"SELECT count(*) FROM {prefix}log") >= 60, "a start")
    first.send_signal(signal.SIGKILL)
    first.wait()
    # Its lease expires (a second); the next instance resumes from the kept position.
    second = _spawn("consume", url, prefix, "mail", "50", "1.0")
    expected = _event_ids(engine, prefix)
    assert len(expected) == 300
    try:
        _wait_until(lambda: set(_handled(engine, prefix)) == expected, "every event handled")
    finally:
        _stop(second)
    handled = _handled(engine, prefix)
    # The idempotent handler saw each event exactly once; the consumer at least once.
    assert sorted(handled) == sorted(expected)
    with engine.connect() as conn:
        calls = {r[0] for r in conn.exec_driver_sql(f"SELECT event_id FROM {prefix}log")}
    assert calls == expected
    engine.dispose()


def test_four_writers_two_consumers_one_name_no_overlap_nothing_missed(
    db: tuple[str, str],
) -> None:
    url, prefix = db
    engine = SQLJobStore(url, table_prefix=prefix).engine
    a = _spawn("consume", url, prefix, "mail", "20", "3.0")
    b = _spawn("consume", url, prefix, "mail", "20", "3.0")
    writers = [_spawn("write", url, prefix, "50") for _ in range(4)]
    _wait_until(lambda: _scalar(engine, f"SELECT count(*) FROM {prefix}log") >= 100, "a start")
    # Stop whichever holds the lease; the other takes over.
    with engine.connect() as conn:
        holder = conn.exec_driver_sql(f"SELECT owner FROM {prefix}consumers").scalar()
    active, standby = (a, b) if holder and holder.split(":")[1] == str(a.pid) else (b, a)
    _stop(active)
    for writer in writers:
        assert writer.wait(timeout=300) == 0
    expected = _event_ids(engine, prefix)
    assert len(expected) == 400
    try:
        _wait_until(lambda: set(_handled(engine, prefix)) == expected, "every event handled")
    finally:
        _stop(standby)
    with engine.connect() as conn:
        log = conn.exec_driver_sql(
            f"SELECT event_id, owner, started, ended FROM {prefix}log ORDER BY started"
        ).all()
    assert {row[0] for row in log} == expected
    assert len({row[1] for row in log}) == 2  # both instances worked, one after the other
    # No two calls by different instances overlapped in time.
    latest_end: dict[str, float] = {}
    for _, owner, started, ended in log:
        others = [end for who, end in latest_end.items() if who != owner]
        assert all(end <= started for end in others), (owner, started, latest_end)
        latest_end[owner] = max(latest_end.get(owner, 0.0), ended)
    engine.dispose()
