"""The output keeper's holds keep what every store keeps: job ids exactly (``Job-1`` is
not ``job-1``), text in any script, and time to the microsecond. On every store kind
of `tests/test_outputs.py`, MariaDB included."""

from __future__ import annotations

from typing import Any

from jobhook import JobStatus, JobUpdate, Outcome
from jobhook.outputs import LocalStorage, OutputKeeper
from jobhook.testing import FakeGenerator
from jobhook.testing._png import png_for

from . import test_outputs
from .test_outputs import LOOPBACK, Clock, Unavailable, kept_bytes

plain_store = test_outputs.plain_store
keeper = test_outputs.keeper
clock = test_outputs.clock
storage = test_outputs.storage
files = test_outputs.files
serve = test_outputs.serve


def test_job_ids_that_differ_only_in_case_are_held_and_kept_apart(
    keeper: OutputKeeper, storage: LocalStorage, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    store = keeper.store
    for job_id in ("fox", "Fox"):
        store.create({}, job_id=job_id)
        output = {"images": [f"{url}/files/{job_id}/1.png"], "prompt": "un renard roux 🦊"}
        held = store.apply(job_id, JobUpdate(JobStatus.SUCCEEDED, output=output))
        assert held.outcome is Outcome.APPLIED
        assert held.event is None

    assert keeper.run_once() == 2
    for job_id in ("fox", "Fox"):
        done = store.get(job_id)
        assert done.status is JobStatus.SUCCEEDED
        assert done.output["prompt"] == "un renard roux 🦊"
        [kept] = done.output["images"]
        assert kept_bytes(storage, kept) == png_for(f"{job_id}/1.png")
        assert keeper.kept(job_id).original_output["images"] == [f"{url}/files/{job_id}/1.png"]


def test_holds_are_kept_oldest_first_to_the_microsecond(
    keeper: OutputKeeper, clock: Clock, files: tuple[FakeGenerator, str]
) -> None:
    _, url = files
    store = keeper.store
    for job_id, at in (("b", 0.25), ("a", 0.75)):  # "b" is held first, within one second
        clock.now = 1_800_000_000 + at
        store.create({}, job_id=job_id)
        store.apply(job_id, JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/files/{job_id}/1.png"]))

    assert keeper.run_once(limit=1) == 1
    assert store.get("b").status is JobStatus.SUCCEEDED
    assert store.get("a").status is JobStatus.PENDING
    assert keeper.run_once(limit=1) == 1
    assert store.get("a").status is JobStatus.SUCCEEDED


def test_a_retry_waits_for_its_time_to_the_microsecond(
    plain_store: Any, storage: LocalStorage, clock: Clock, serve: Any
) -> None:
    url = serve(Unavailable)
    keeper = OutputKeeper(
        plain_store, storage, policy=LOOPBACK, clock=clock, retry_after=60, create_schema=True
    )
    store = keeper.store
    clock.now = 1_800_000_000.5
    store.create({}, job_id="flaky")
    store.apply("flaky", JobUpdate(JobStatus.SUCCEEDED, output=[f"{url}/x.png"]))
    assert keeper.run_once() == 0
    assert keeper.kept("flaky").attempts == 1  # the next one is due 60 s later

    clock.now = 1_800_000_060.25
    keeper.run_once()
    assert keeper.kept("flaky").attempts == 1
    clock.now = 1_800_000_060.5
    keeper.run_once()
    assert keeper.kept("flaky").attempts == 2
    keeper.close()
