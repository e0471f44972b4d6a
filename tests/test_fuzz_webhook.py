"""The webhook fuzz harness (``tests/fuzz_webhook.py``) on every store, with a small count.

Each store gets the same seeded deliveries through ``handle`` and through ``ahandle``; the
SQL stores must also answer exactly as the in-memory store does. ``JOBHOOK_FUZZ_CASES`` and
``JOBHOOK_FUZZ_SEED`` run more or other deliveries; a failure message names the seed, the
first case of each broken invariant and, where one exists, a stand-alone reproducer. For
long runs use the script: ``python tests/fuzz_webhook.py --cases 100000 --stores
memory,sqlite,postgres``.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import pytest

from jobhook import InMemoryJobStore, StoreUnavailableError

from . import fuzz_webhook
from .conftest import PG_SKIP_REASON, PG_URL

CASES = int(os.environ.get("JOBHOOK_FUZZ_CASES", "1500"))
SEED = int(os.environ.get("JOBHOOK_FUZZ_SEED", "20240611"))
JOBS = 100
# SQLite on a RAM disk where there is one: the fuzz is about answers, and fsync would
# otherwise take most of the time.
TMPDIR = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@functools.cache
def memory_report(mode: str) -> fuzz_webhook.Report:
    """The in-memory store's run, which the SQL stores' answers are compared with."""
    return fuzz_webhook.run("memory", cases=CASES, seed=SEED, mode=mode, jobs=JOBS)


@pytest.mark.parametrize("mode", fuzz_webhook.MODES)
@pytest.mark.parametrize(
    "store",
    [
        "memory",
        "sqlite",
        pytest.param(
            "postgres",
            marks=[pytest.mark.postgres, pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)],
        ),
    ],
)
def test_no_delivery_breaks_an_invariant(store: str, mode: str) -> None:
    if store == "memory":
        report = memory_report(mode)
    else:
        report = fuzz_webhook.run(
            store,
            cases=CASES,
            seed=SEED,
            mode=mode,
            jobs=JOBS,
            postgres_url=PG_URL,
            reference=memory_report(mode).answers,
            tmpdir=TMPDIR,
        )
    if not report.ok:
        pytest.fail(report.summary(), pytrace=False)
    # The mix reached every answer, so the invariants above were exercised.
    assert set(report.statuses) >= {200, 400, 401, 404, 413}
    assert set(report.outcomes) >= {"applied", "duplicate", "stale", "not_found", "rejected"}


def test_the_same_seed_gives_the_same_deliveries() -> None:
    def stream(seed: int) -> list[tuple[str, bytes, str]]:
        generator = fuzz_webhook.Generator(seed, ["job-1", "job-2"], ["ghost-1"])
        return [(c.kind, c.raw, repr(c.headers)) for c in generator.cases(500)]

    assert stream(3) == stream(3)
    assert stream(3) != stream(4)


# -- the harness finds what it is meant to find ----------------------------------------


def _broken_run(monkeypatch: pytest.MonkeyPatch, apply: Any) -> fuzz_webhook.Report:
    monkeypatch.setattr(InMemoryJobStore, "apply", apply)
    return fuzz_webhook.run("memory", cases=1000, seed=SEED, jobs=50)


def test_it_catches_a_store_that_forgets_delivery_ids(monkeypatch: pytest.MonkeyPatch) -> None:
    apply = InMemoryJobStore.apply

    def forgetful(self: InMemoryJobStore, job_id: str, update: Any, **_: Any) -> Any:
        return apply(self, job_id, update)

    report = _broken_run(monkeypatch, forgetful)
    assert {"replay-applied-again", "replay-not-duplicate"} <= set(report.failures)
    # Its first case reproduces on a fresh store: the snippet sends it twice.
    assert report.reproducers["replay-applied-again"].count("handler.handle(") == 2


def test_it_catches_503_and_a_lost_event(monkeypatch: pytest.MonkeyPatch) -> None:
    apply = InMemoryJobStore.apply
    calls = iter(range(10**9))

    def flaky(self: InMemoryJobStore, job_id: str, update: Any, **kw: Any) -> Any:
        n = next(calls)
        if n % 97 == 96:
            raise StoreUnavailableError("down")
        result = apply(self, job_id, update, **kw)
        if n % 101 == 100 and self._events:
            self._events.pop()  # an applied change whose event is lost
        return result

    report = _broken_run(monkeypatch, flaky)
    assert {"status-503", "applied-answers-vs-events", "event-versions-gap-or-double"} <= set(
        report.failures
    )
    assert "seed=" in report.summary()
