"""The FastAPI example end to end on the async store: page, submit, signed webhooks
through the app's own route, status polling, and one notification per finished job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("jinja2")
pytest.importorskip("aiosqlite")

import httpx
from fastapi.testclient import TestClient

from jobhook import AsyncSQLJobStore
from jobhook.outputs import FetchPolicy
from jobhook.testing import FakeGenerator, Scripts, Submission, new_webhook_secret
from jobhook.testing._png import png_for

from .app import create_app

APP_URL = "http://app.invalid"


def by_prompt(submission: Submission) -> Any:
    """Prompts with "fail" in them fail, as with ``jobhook fake-backend``."""
    if "fail" in submission.input["prompt"]:
        return Scripts.failure("nsfw", "the prompt was refused")(submission)
    return Scripts.success()(submission)


@pytest.fixture
def wired(tmp_path: Path) -> Iterator[tuple[TestClient, FakeGenerator]]:
    """The app on an async SQLite store, and a fake backend whose webhooks go to it."""
    secret = new_webhook_secret()
    store = AsyncSQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    fake_ref: dict[str, FakeGenerator] = {}
    backend = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: fake_ref["fake"].ahandle_request(r))
    )
    app = create_app(
        store, backend_url="http://backend.invalid", app_url=APP_URL, secret=secret,
        backend_http=backend,
    )  # fmt: skip
    # The app's TestClient is an httpx.Client: the fake calls back through it, into the
    # app's own webhook route, on the app's event loop.
    with TestClient(app) as browser:
        fake = FakeGenerator(secret, script=by_prompt, callback_client=browser)
        fake_ref["fake"] = fake
        yield browser, fake
        fake.close()


def test_a_prompt_becomes_an_image_and_one_notification(wired: Any) -> None:
    browser, fake = wired
    page = browser.get("/generate-images")
    assert page.status_code == 200
    assert 'name="prompt"' in page.text

    answer = browser.post("/generate-images", data={"prompt": "a red fox"}, follow_redirects=False)
    assert answer.status_code == 303
    (submission,) = fake.submissions
    assert submission.callback_url == f"{APP_URL}/webhooks/jobhook/{submission.job_id}"

    (row,) = browser.get("/generate-images/status").json()["generations"]
    assert (row["id"], row["status"]) == (submission.job_id, "submitted")

    sent = fake.deliver_all()
    assert [c.report.status_code for c in sent if c.report] == [200, 200, 200]

    status = browser.get("/generate-images/status").json()
    (row,) = status["generations"]
    assert row["status"] == "succeeded"
    assert row["image"] == f"https://fake.invalid/{submission.job_id}/1.png"
    assert status["notifications"] == ["Your image “a red fox” is ready."]
    assert browser.get("/generate-images/status").json()["notifications"] == [
        "Your image “a red fox” is ready."
    ]
    assert (
        f'href="https://fake.invalid/{submission.job_id}/1.png"'
        in browser.get("/generate-images").text
    )


def test_a_failed_generation_shows_why(wired: Any) -> None:
    browser, fake = wired
    browser.post("/generate-images", data={"prompt": "please fail"})
    fake.deliver_all()
    status = browser.get("/generate-images/status").json()
    assert status["generations"][0]["status"] == "failed"
    assert status["generations"][0]["error"] == "the prompt was refused"
    assert "could not be made: the prompt was refused" in status["notifications"][0]


def test_the_webhook_route_refuses_unsigned_deliveries(wired: Any) -> None:
    browser, _ = wired
    answer = browser.post(
        "/webhooks/jobhook/some-job", content=b'{"job_id":"some-job","status":"succeeded"}'
    )
    assert answer.status_code == 401


def test_an_empty_prompt_is_refused(wired: Any) -> None:
    browser, fake = wired
    assert browser.post("/generate-images", data={"prompt": " "}).status_code == 400
    assert fake.submissions == []


def sse_messages(body: str) -> list[dict[str, Any]]:
    """The data of each Server-Sent Event in ``body`` (comments and hints left out)."""
    found = []
    for block in body.split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            found.append({"id": fields.get("id"), **json.loads(fields["data"])})
    return found


def test_the_owner_follows_a_job_as_server_sent_events(wired: Any) -> None:
    browser, fake = wired
    browser.post("/generate-images", data={"prompt": "a red fox"})
    (submission,) = fake.submissions
    fake.deliver_all()
    # The job is finished: the stream sends its state, result included, and ends.
    answer = browser.get(f"/jobs/{submission.job_id}/events")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    (state,) = sse_messages(answer.text)
    assert (state["status"], state["progress"]) == ("succeeded", 100)
    assert state["output"] == {"images": [f"https://fake.invalid/{submission.job_id}/1.png"]}
    # From the start of the outbox: every event, each with its id, the last one terminal.
    answer = browser.get(f"/jobs/{submission.job_id}/events", headers={"Last-Event-ID": "0"})
    events = sse_messages(answer.text)
    assert (events[0]["status"], events[-1]["status"]) == ("submitted", "succeeded")
    assert all(e["id"] is not None for e in events)


def test_a_job_that_is_not_yours_cannot_be_followed(wired: Any) -> None:
    browser, _ = wired
    answer = browser.get("/jobs/not-yours/events")
    assert answer.status_code == 403
    assert "data:" not in answer.text


@pytest.fixture
def keeping(tmp_path: Path) -> Iterator[tuple[TestClient, FakeGenerator, FakeGenerator]]:
    """The app keeping pictures in ``tmp_path / "files"``; a fake backend whose pictures
    are served over loopback HTTP by a second fake (the file host)."""
    secret = new_webhook_secret()
    store = AsyncSQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
    fake_ref: dict[str, FakeGenerator] = {}
    backend = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: fake_ref["fake"].ahandle_request(r))
    )
    with FakeGenerator() as file_host, file_host.serve() as files_url:
        app = create_app(
            store, backend_url="http://backend.invalid", app_url=APP_URL, secret=secret,
            backend_http=backend, files_dir=tmp_path / "files",
            # The file host is on loopback: allowed here, refused by default.
            fetch_policy=FetchPolicy(allow_networks=["127.0.0.0/8"]),
            keeper_interval=None,  # the test runs the keeper's rounds itself
        )  # fmt: skip
        with TestClient(app) as browser:
            fake = FakeGenerator(
                secret, script=Scripts.pictures(files_url), callback_client=browser
            )
            fake_ref["fake"] = fake
            yield browser, fake, file_host
            fake.close()


def test_the_kept_picture_still_loads_after_the_backend_s_file_expired(keeping: Any) -> None:
    browser, fake, file_host = keeping
    browser.post("/generate-images", data={"prompt": "a red fox"})
    (submission,) = fake.submissions
    job_id = submission.job_id
    fake.deliver_all()
    # The success is held until the picture is kept: nobody hears of it yet.
    (row,) = browser.get("/generate-images/status").json()["generations"]
    assert row["status"] == "running"
    assert browser.get("/generate-images/status").json()["notifications"] == []

    keeper = browser.app.state.keeper
    assert browser.portal.call(keeper.run_once) == 1
    record = browser.portal.call(keeper.kept, job_id)
    original = record.original_output["images"][0]
    file_host.expire_files()
    assert httpx.get(original).status_code == 404  # the backend's copy is gone

    kept_url = f"{APP_URL}/files/{job_id}/0.png"
    status = browser.get("/generate-images/status").json()
    (row,) = status["generations"]
    assert (row["status"], row["image"]) == ("succeeded", kept_url)
    assert status["notifications"] == ["Your image “a red fox” is ready."]
    assert f'<img class="picture" src="{kept_url}"' in browser.get("/generate-images").text
    picture = browser.get(f"/files/{job_id}/0.png")
    assert picture.status_code == 200
    assert picture.headers["content-type"] == "image/png"
    assert picture.content == png_for(f"{job_id}/1.png")
    (state,) = sse_messages(browser.get(f"/jobs/{job_id}/events").text)
    assert state["output"] == {"images": [kept_url]}
