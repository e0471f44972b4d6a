"""The Flask example end to end: page, submit, signed webhooks through the app's own
route, status polling, the events stream, and one notification per finished job."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("flask")

import httpx

from jobhook import SQLJobStore
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
def wired(tmp_path: Path) -> Iterator[tuple[Any, FakeGenerator, SQLJobStore]]:
    """The app on a SQLite store, and a fake backend whose webhooks go to the app."""
    secret = new_webhook_secret()
    store = SQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}", create_schema=True)
    holder: dict[str, Any] = {}
    # The fake calls back over WSGI into the app itself, route and adapter included.
    to_app = httpx.Client(transport=httpx.WSGITransport(app=lambda *a: holder["app"](*a)))
    fake = FakeGenerator(secret, script=by_prompt, callback_client=to_app)
    backend = httpx.Client(transport=fake.transport)
    app = create_app(
        store, backend_url="http://backend.invalid", app_url=APP_URL, secret=secret,
        backend_http=backend,
    )  # fmt: skip
    holder["app"] = app
    yield app, fake, store
    fake.close()
    to_app.close()
    backend.close()
    store.close()


def test_a_prompt_becomes_an_image_and_one_notification(wired: Any) -> None:
    app, fake, _ = wired
    browser = app.test_client()
    page = browser.get("/generate-images")
    assert page.status_code == 200
    assert b'name="prompt"' in page.data

    answer = browser.post("/generate-images", data={"prompt": "a red fox"})
    assert answer.status_code == 303
    (submission,) = fake.submissions
    assert submission.input == {"prompt": "a red fox"}
    assert submission.callback_url == f"{APP_URL}/webhooks/jobhook/{submission.job_id}"

    (row,) = browser.get("/generate-images/status").get_json()["generations"]
    assert (row["id"], row["status"], row["image"]) == (submission.job_id, "submitted", None)

    sent = fake.deliver_all()
    assert [c.report.status_code for c in sent if c.report] == [200, 200, 200]

    status = browser.get("/generate-images/status").get_json()
    (row,) = status["generations"]
    assert row["status"] == "succeeded"
    assert row["progress"] == 100
    assert row["image"] == f"https://fake.invalid/{submission.job_id}/1.png"
    assert status["notifications"] == ["Your image “a red fox” is ready."]
    # Polling again does not notify again.
    assert browser.get("/generate-images/status").get_json()["notifications"] == [
        "Your image “a red fox” is ready."
    ]
    page = browser.get("/generate-images").get_data(as_text=True)
    assert f'href="https://fake.invalid/{submission.job_id}/1.png"' in page


def test_notifications_survive_a_restart_and_are_made_once(wired: Any) -> None:
    """The notification rows and the consumer's position are both in the database: an
    app started again over it shows each notification once, and makes none again."""
    app, fake, store = wired
    app.test_client().post("/generate-images", data={"prompt": "a red fox"})
    fake.deliver_all()
    first = app.test_client().get("/generate-images/status").get_json()["notifications"]
    assert first == ["Your image “a red fox” is ready."]
    again = create_app(store, backend_url="http://backend.invalid", app_url=APP_URL)
    after = again.test_client().get("/generate-images/status").get_json()["notifications"]
    assert after == first
    # The consumer handing the same event over again changes nothing.
    from examples.flask_app.app import Notifier

    notifier = Notifier(store)
    (event,) = [e for e in store.events() if e.status.terminal]
    notifier.handle(event)
    assert notifier.for_user("user-1") == first


def test_a_failed_generation_shows_why(wired: Any) -> None:
    app, fake, _ = wired
    browser = app.test_client()
    browser.post("/generate-images", data={"prompt": "please fail"})
    fake.deliver_all()
    status = browser.get("/generate-images/status").get_json()
    assert status["generations"][0]["status"] == "failed"
    assert status["generations"][0]["error"] == "the prompt was refused"
    assert "could not be made: the prompt was refused" in status["notifications"][0]


def test_the_webhook_route_refuses_unsigned_deliveries(wired: Any) -> None:
    app, _, _ = wired
    answer = app.test_client().post(
        "/webhooks/jobhook/some-job", data=b'{"job_id":"some-job","status":"succeeded"}'
    )
    assert answer.status_code == 401


def test_an_empty_prompt_is_refused(wired: Any) -> None:
    app, fake, _ = wired
    assert app.test_client().post("/generate-images", data={"prompt": " "}).status_code == 400
    assert fake.submissions == []


def sse_messages(body: bytes) -> list[dict[str, Any]]:
    """The data of each Server-Sent Event in ``body`` (comments and hints left out)."""
    found = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            found.append({"id": fields.get("id"), **json.loads(fields["data"])})
    return found


def test_the_owner_follows_a_job_as_server_sent_events(wired: Any) -> None:
    app, fake, _ = wired
    browser = app.test_client()
    browser.post("/generate-images", data={"prompt": "a red fox"})
    (submission,) = fake.submissions
    fake.deliver_all()
    # The job is finished: the stream sends its state, result included, and ends.
    answer = browser.get(f"/jobs/{submission.job_id}/events")
    assert answer.status_code == 200
    assert answer.mimetype == "text/event-stream"
    (state,) = sse_messages(answer.data)
    assert (state["status"], state["progress"]) == ("succeeded", 100)
    assert state["output"] == {"images": [f"https://fake.invalid/{submission.job_id}/1.png"]}
    # From the start of the outbox: every event, each with its id, the last one terminal.
    answer = browser.get(f"/jobs/{submission.job_id}/events", headers={"Last-Event-ID": "0"})
    events = sse_messages(answer.data)
    assert (events[0]["status"], events[-1]["status"]) == ("submitted", "succeeded")
    assert all(e["id"] is not None for e in events)


def test_another_users_job_cannot_be_followed(wired: Any) -> None:
    app, _, store = wired
    job = store.create({"prompt": "secret"}, kind="image", owner_id="someone-else")
    answer = app.test_client().get(f"/jobs/{job.id}/events")
    assert answer.status_code == 403
    assert b"data:" not in answer.data


@pytest.fixture
def keeping(tmp_path: Path) -> Iterator[tuple[Any, FakeGenerator, FakeGenerator]]:
    """The app keeping pictures in ``tmp_path / "files"``; a fake backend whose pictures
    are served over loopback HTTP by a second fake (the file host)."""
    secret = new_webhook_secret()
    store = SQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}", create_schema=True)
    holder: dict[str, Any] = {}
    to_app = httpx.Client(transport=httpx.WSGITransport(app=lambda *a: holder["app"](*a)))
    with FakeGenerator() as file_host, file_host.serve() as files_url:
        fake = FakeGenerator(secret, script=Scripts.pictures(files_url), callback_client=to_app)
        backend = httpx.Client(transport=fake.transport)
        app = create_app(
            store, backend_url="http://backend.invalid", app_url=APP_URL, secret=secret,
            backend_http=backend, files_dir=tmp_path / "files",
            # The file host is on loopback: allowed here, refused by default.
            fetch_policy=FetchPolicy(allow_networks=["127.0.0.0/8"]),
            keeper_interval=None,  # the test runs the keeper's rounds itself
        )  # fmt: skip
        holder["app"] = app
        yield app, fake, file_host
        fake.close()
        backend.close()
    to_app.close()
    store.close()


def test_the_kept_picture_still_loads_after_the_backend_s_file_expired(keeping: Any) -> None:
    app, fake, file_host = keeping
    browser = app.test_client()
    browser.post("/generate-images", data={"prompt": "a red fox"})
    (submission,) = fake.submissions
    job_id = submission.job_id
    fake.deliver_all()
    # The success is held until the picture is kept: nobody hears of it yet.
    status = browser.get("/generate-images/status").get_json()
    assert status["generations"][0]["status"] == "running"
    assert status["notifications"] == []

    keeper = app.extensions["jobhook_keeper"]
    assert keeper.run_once() == 1
    original = keeper.kept(job_id).original_output["images"][0]
    file_host.expire_files()
    assert httpx.get(original).status_code == 404  # the backend's copy is gone

    kept_url = f"{APP_URL}/files/{job_id}/0.png"
    status = browser.get("/generate-images/status").get_json()
    (row,) = status["generations"]
    assert (row["status"], row["image"]) == ("succeeded", kept_url)
    assert status["notifications"] == ["Your image “a red fox” is ready."]
    assert kept_url in browser.get("/generate-images").get_data(as_text=True)
    picture = browser.get(f"/files/{job_id}/0.png")
    assert picture.status_code == 200
    assert picture.mimetype == "image/png"
    assert picture.data == png_for(f"{job_id}/1.png")
    (state,) = sse_messages(browser.get(f"/jobs/{job_id}/events").data)
    assert state["output"] == {"images": [kept_url]}
