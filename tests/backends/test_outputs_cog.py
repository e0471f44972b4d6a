"""A real Cog server's inline output (a ``data:`` URI: Cog without an upload URL) is kept
as a file before the job is told to have succeeded."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobhook import GeneratorClient, JobStatus, RetryPolicy, SQLJobStore, backends
from jobhook.outputs import LocalStorage, OutputKeeper

from .conftest import TOKEN_SECRET, App, Receiver, ServerProcess, mount_app


@pytest.fixture
def keeper(sqlite_store: SQLJobStore, tmp_path: Path) -> Iterator[OutputKeeper]:
    keeper = OutputKeeper(
        sqlite_store,
        LocalStorage(tmp_path / "kept", base_url="https://app.example/files/"),
        backend=backends.Cog("http://unused"),
        create_schema=True,
    )
    yield keeper
    keeper.close()


def test_a_cog_data_uri_output_is_kept_before_the_job_succeeds(
    cog: ServerProcess, receiver: Receiver, keeper: OutputKeeper, tmp_path: Path
) -> None:
    profile = backends.Cog(cog.url)
    app: App = mount_app(receiver, keeper.store, profile)
    with GeneratorClient(
        keeper.store,
        profile,
        callback_url=app.callback_url,
        token_secret=TOKEN_SECRET,
        retry=RetryPolicy(max_attempts=10, backoff=0.1, max_backoff=0.4),
    ) as client:
        job = client.submit({"steps": 2, "delay": 0.05}, kind="image")

    deadline = time.monotonic() + 30
    while keeper.kept(job.id) is None:  # Cog's completed webhook has not come yet
        assert time.monotonic() < deadline, app.answers
        time.sleep(0.05)
    held = app.store.get(job.id)
    assert held.status is JobStatus.RUNNING
    assert [e for e in app.store.events(limit=100) if e.status is JobStatus.SUCCEEDED] == []
    inline = keeper.kept(job.id).original_output["image"]
    assert inline.startswith("data:image/png;base64,")

    assert keeper.run_once() == 1
    done = app.store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.output["text"] == "done after 2 steps"
    assert done.output["image"] == f"https://app.example/files/{job.id}/0.png"
    png = (tmp_path / "kept" / job.id / "0.png").read_bytes()
    assert png == base64.b64decode(inline.split(",", 1)[1])
    assert png.startswith(b"\x89PNG")
    assert {status for status, _ in app.outcomes(job.id)} == {200}
    succeeded = [e for e in app.store.events(limit=100) if e.status is JobStatus.SUCCEEDED]
    assert len(succeeded) == 1
