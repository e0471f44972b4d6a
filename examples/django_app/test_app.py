"""The Django example end to end: page (with its CSRF-protected form), submit to a
fake backend over loopback HTTP, signed webhooks through the app's own CSRF-exempt
route, status polling, the events stream, one notification per finished job, and the
kept picture served after the backend's copy has expired."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

pytest.importorskip("django")

import httpx

from jobhook.testing import FakeGenerator, Scripts, Submission, new_webhook_secret
from jobhook.testing._png import png_for

APP_URL = "http://testserver"
#: Where this test's pictures are served (a file host per test, see `file_host`).
PICTURES: dict[str, str] = {}


def by_prompt(submission: Submission) -> Any:
    """Prompts with "fail" in them fail, as with ``jobhook fake-backend``; the others
    succeed with a picture on the test's file host."""
    if "fail" in submission.input["prompt"]:
        return Scripts.failure("nsfw", "the prompt was refused")(submission)
    return Scripts.pictures(PICTURES["url"])(submission)


@pytest.fixture(autouse=True)
def file_host() -> Iterator[FakeGenerator]:
    """A file host on loopback for this test's pictures (expiring them is the test's)."""
    with FakeGenerator() as host, host.serve() as url:
        PICTURES["url"] = url
        yield host


@pytest.fixture(scope="module")
def wired(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ModuleType, FakeGenerator]]:
    """The app, configured from the environment as in production, and a fake backend
    on loopback whose webhooks go through the app's WSGI handler."""
    from django.core.wsgi import get_wsgi_application
    from django.test import override_settings

    secret = new_webhook_secret()
    db = Path(tmp_path_factory.mktemp("django")) / "jobs.db"
    to_app: dict[str, Any] = {}
    callbacks = httpx.Client(transport=httpx.WSGITransport(app=lambda *a: to_app["wsgi"](*a)))
    fake = FakeGenerator(secret, script=by_prompt, callback_client=callbacks)
    with fake, fake.serve() as backend_url, pytest.MonkeyPatch.context() as env:
        env.setenv("JOBHOOK_BACKEND_URL", backend_url)
        env.setenv("JOBHOOK_DATABASE_URL", f"sqlite:///{db}")
        env.setenv("JOBHOOK_FILES_DIR", str(db.parent / "files"))
        env.setenv("JOBHOOK_WEBHOOK_SECRET", secret)
        env.setenv("APP_URL", APP_URL)
        app = importlib.import_module("examples.django_app.app")
        # Other tests in this process may have configured Django first: apply the
        # app's settings on top, whoever came first.
        with override_settings(**app.SETTINGS):
            to_app["wsgi"] = get_wsgi_application()
            yield app, fake
        app.client.close()
        app.keeper.close()
        app.store.close()
    callbacks.close()


def test_a_prompt_becomes_an_image_and_one_notification(wired: Any, file_host: Any) -> None:
    from django.test import Client

    app, fake = wired
    browser = Client(enforce_csrf_checks=True)
    page = browser.get("/generate-images")
    assert page.status_code == 200
    assert b'name="csrfmiddlewaretoken"' in page.content
    token = page.cookies["csrftoken"].value

    answer = browser.post("/generate-images", {"prompt": "a red fox", "csrfmiddlewaretoken": token})
    assert answer.status_code == 303
    submission = fake.submissions[-1]
    job_id = submission.job_id
    assert submission.callback_url == f"{APP_URL}/webhooks/jobhook/{job_id}"

    sent = [c for c in fake.deliver_all() if c.job_id == job_id]
    # Delivered over WSGI into the CSRF-protected app: the webhook route is exempt.
    assert [c.report.status_code for c in sent if c.report] == [200, 200, 200]
    # The success is held until the picture is kept: nobody hears of it yet.
    row = next(g for g in browser.get("/generate-images/status").json()["generations"])
    assert (row["id"], row["status"]) == (job_id, "running")
    assert "Your image “a red fox” is ready." not in app.notifier.for_user("user-1")

    app.keeper.run_once()  # what the keeper thread does when the app is served
    assert app.keeper.kept(job_id).state == "kept"
    original = app.keeper.kept(job_id).original_output["images"][0]
    file_host.expire_files()
    assert httpx.get(original).status_code == 404  # the backend's copy is gone

    kept_url = f"{APP_URL}/files/{job_id}/0.png"
    status = browser.get("/generate-images/status").json()
    row = next(g for g in status["generations"] if g["id"] == job_id)
    assert (row["status"], row["image"]) == ("succeeded", kept_url)
    assert status["notifications"].count("Your image “a red fox” is ready.") == 1
    again = browser.get("/generate-images/status").json()["notifications"]
    assert again.count("Your image “a red fox” is ready.") == 1
    page_text = browser.get("/generate-images").content.decode()
    assert f'<img class="picture" src="{kept_url}"' in page_text
    picture = browser.get(f"/files/{job_id}/0.png")
    assert picture.status_code == 200
    assert picture["Content-Type"] == "image/png"
    assert b"".join(picture.streaming_content) == png_for(f"{job_id}/1.png")


def test_the_form_needs_its_csrf_token(wired: Any) -> None:
    from django.test import Client

    _, fake = wired
    before = len(fake.submissions)
    answer = Client(enforce_csrf_checks=True).post("/generate-images", {"prompt": "x"})
    assert answer.status_code == 403
    assert len(fake.submissions) == before


def test_a_failed_generation_shows_why(wired: Any) -> None:
    from django.test import Client

    _, fake = wired
    browser = Client()
    browser.post("/generate-images", {"prompt": "please fail"})
    job_id = fake.submissions[-1].job_id
    fake.deliver_all()
    status = browser.get("/generate-images/status").json()
    row = next(g for g in status["generations"] if g["id"] == job_id)
    assert (row["status"], row["error"]) == ("failed", "the prompt was refused")
    assert any("“please fail” could not be made" in n for n in status["notifications"])


def test_the_webhook_route_refuses_unsigned_deliveries(wired: Any) -> None:
    from django.test import Client

    answer = Client().post(
        "/webhooks/jobhook/some-job",
        data=b'{"job_id":"some-job","status":"succeeded"}',
        content_type="application/json",
    )
    assert answer.status_code == 401


def sse_messages(body: bytes) -> list[dict[str, Any]]:
    """The data of each Server-Sent Event in ``body`` (comments and hints left out)."""
    found = []
    for block in body.decode().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "data" in fields:
            found.append({"id": fields.get("id"), **json.loads(fields["data"])})
    return found


def test_the_owner_follows_a_job_as_server_sent_events(wired: Any) -> None:
    from django.test import Client

    app, fake = wired
    browser = Client()
    browser.post("/generate-images", {"prompt": "a red fox"})
    job_id = fake.submissions[-1].job_id
    fake.deliver_all()
    app.keeper.run_once()
    # The job is finished: the stream sends its state, result included, and ends.
    answer = browser.get(f"/jobs/{job_id}/events")
    assert answer.status_code == 200
    assert answer["Content-Type"] == "text/event-stream"
    (state,) = sse_messages(b"".join(answer.streaming_content))
    assert (state["status"], state["progress"]) == ("succeeded", 100)
    assert state["output"] == {"images": [f"{APP_URL}/files/{job_id}/0.png"]}
    # From the start of the outbox: every event, each with its id, the last one terminal.
    answer = browser.get(f"/jobs/{job_id}/events", headers={"Last-Event-ID": "0"})
    events = sse_messages(b"".join(answer.streaming_content))
    assert (events[0]["status"], events[-1]["status"]) == ("submitted", "succeeded")
    assert all(e["id"] is not None for e in events)


def test_another_users_job_cannot_be_followed(wired: Any) -> None:
    from django.test import Client

    app, _ = wired
    job = app.store.create({"prompt": "secret"}, kind="image", owner_id="someone-else")
    answer = Client().get(f"/jobs/{job.id}/events")
    assert answer.status_code == 403
    assert b"data:" not in answer.content
