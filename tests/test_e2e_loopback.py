"""End to end over real loopback HTTP: a Flask app mounting the webhook handler, the
FakeGenerator as an HTTP server with chaos on, and a SQLite file store.

Every job must end in the status the FakeGenerator decided, with exactly one event per
change of the job, however the callbacks were duplicated, reordered, delayed or lost.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from jobhook import GeneratorClient, JobStatus, WebhookHandler
from jobhook.testing import Chaos, FakeGenerator, Scripts, new_webhook_secret

flask = pytest.importorskip("flask")
serving = pytest.importorskip("werkzeug.serving")

JOBS = 50


@pytest.fixture
def sql_store(tmp_path: Path) -> Iterator[object]:
    from jobhook.stores.sql import SQLJobStore

    store = SQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}", create_schema=True)
    yield store
    store.close()


@pytest.fixture
def app_url(sql_store: object, secrets: tuple[str, str]) -> Iterator[str]:
    """A Flask app serving the webhook route on a free loopback port."""
    from jobhook.flask import webhook_view

    secret, token_secret = secrets
    handler = WebhookHandler(sql_store, secret=secret, token_secret=token_secret)
    app = flask.Flask("e2e")
    app.add_url_rule(
        "/webhooks/jobhook/<job_id>", view_func=webhook_view(handler), methods=["POST"]
    )
    server = serving.make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join()


@pytest.fixture
def secrets() -> tuple[str, str]:
    return new_webhook_secret(), new_webhook_secret()


def test_fifty_jobs_with_chaos_end_as_the_backend_decided(
    sql_store: object, app_url: str, secrets: tuple[str, str]
) -> None:
    from jobhook.stores.sql import SQLJobStore

    assert isinstance(sql_store, SQLJobStore)
    store = sql_store
    secret, token_secret = secrets
    chaos = Chaos(duplicate=0.3, reorder=0.3, drop=0.1, delay=0.05, seed=20)
    fake = FakeGenerator(
        secret, script=Scripts.mixed(seed=5), delivery="background", chaos=chaos, workers=4
    )
    with fake, fake.serve() as backend_url:
        client = GeneratorClient(
            store,
            backend_url,
            callback_url=f"{app_url}/webhooks/jobhook/{{job_id}}",
            status_path=FakeGenerator.status_path,
            token_secret=token_secret,
        )
        with client, ThreadPoolExecutor(4) as pool:
            jobs = list(pool.map(lambda n: client.submit({"n": n}, kind="image").id, range(JOBS)))
            fake.wait_idle(timeout=60)
            # Lost callbacks are what the status endpoint is for (the reconciler's job).
            lost = [job_id for job_id in jobs if not store.get(job_id).terminal]
            for job_id in lost:
                client.refresh(job_id)

    sent = fake.callbacks
    assert any(record.dropped for record in sent), "chaos dropped nothing"
    assert max(Counter(record.msg_id for record in sent).values()) > 1, "no duplicates"
    assert all(r.report.delivered for r in sent if r.report), "a callback was refused"

    events = store.events(limit=10_000)
    decided: Counter[JobStatus] = Counter()
    for job_id in jobs:
        job = store.get(job_id)
        final = fake.final_status(job_id)
        assert final is not None
        assert job.status is final, f"{job_id} ended {job.status}, the backend said {final}"
        decided[final] += 1
        mine = [e for e in events if e.job_id == job_id]
        # One event per applied change: versions 2, 3, ... with no gap and no repeat,
        # no change twice, and exactly one terminal event.
        assert [e.version for e in mine] == list(range(2, job.version + 1))
        changes = [(e.status, e.progress) for e in mine]
        assert len(changes) == len(set(changes))
        assert [e.status for e in mine if e.status.terminal] == [final]
    # The script really mixed the endings.
    assert set(decided) == {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED}
    assert sum(decided.values()) == JOBS
