"""Output keeping on `DjangoJobStore`: the holds in the ``OutputKeep`` model, the
``KEEPER`` setting, ``manage.py jobhook_keep`` and the admin.

The keeper's own behaviour over a `DjangoJobStore` is tests/test_outputs.py's and
tests/test_outputs_crash.py's (their ``django-*`` kinds)."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("django")

from jobhook import JobStatus, JobUpdate, Outcome
from jobhook.outputs import LocalStorage, OutputKeeper
from jobhook.testing import sign_webhook
from jobhook.testing._png import png_for

from .conftest import build_store

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
PICTURE = png_for("django-keep")
INLINE = "data:image/png;base64," + base64.b64encode(PICTURE).decode()
NOW = datetime(2027, 1, 1, tzinfo=timezone.utc)
KEEPERS: dict[str, OutputKeeper] = {}


def configured_keeper() -> OutputKeeper:
    """What ``JOBHOOK["KEEPER"]`` names in these tests."""
    return KEEPERS["keeper"]


@pytest.fixture(params=["django-sqlite", "django-postgres", "django-mariadb"])
def dstore(request: pytest.FixtureRequest) -> Iterator[Any]:
    store, close = build_store(request.param, None)
    yield store
    close()


@pytest.fixture
def keeper(tmp_path: Path) -> Iterator[OutputKeeper]:
    """A keeper over the SQLite `DjangoJobStore`, named by ``JOBHOOK["KEEPER"]``."""
    from django.test import override_settings

    store, close = build_store("django-sqlite", None)
    storage = LocalStorage(tmp_path / "kept", base_url="https://app.example/media/")
    KEEPERS["keeper"] = OutputKeeper(store, storage)
    conf = {"SECRET": SECRET, "KEEPER": f"{__name__}.configured_keeper"}
    with override_settings(JOBHOOK=conf):
        yield KEEPERS["keeper"]
    KEEPERS.pop("keeper").close()
    close()


def test_holds_are_rows_of_the_outputkeep_model(dstore: Any) -> None:
    from jobhook.django._holds import DjangoHolds
    from jobhook.django.models import OutputKeep

    holds = DjangoHolds(dstore.using)
    update = JobUpdate(JobStatus.SUCCEEDED, output={"images": [INLINE]})
    assert holds.add("j", "d-1", update, NOW) is True
    assert holds.add("j", "d-2", update, NOW) is False  # one hold per job
    row = OutputKeep.objects.using(dstore.using).get(job_id="j")
    assert (row.delivery_id, row.state, row.attempts, row.files) == ("d-1", "keeping", 0, [])
    hold = holds.get("j")
    assert hold is not None
    assert hold.update == update
    assert hold.next_attempt_at == NOW

    holds.save("j", now=NOW, files=[{"index": 0}], attempts=2, last_error="503")
    saved = holds.get("j")
    assert saved is not None
    assert (saved.files, saved.attempts, saved.last_error, saved.state) == (
        [{"index": 0}],
        2,
        "503",
        "keeping",  # what save is not given stays
    )
    assert holds.get("nobody") is None


def test_due_holds_come_oldest_first_up_to_the_limit(dstore: Any) -> None:
    from datetime import timedelta

    from jobhook.django._holds import DjangoHolds

    holds = DjangoHolds(dstore.using)
    update = JobUpdate(JobStatus.SUCCEEDED, output=[INLINE])
    for n, job_id in enumerate(["c", "a", "b"]):
        holds.add(job_id, None, update, NOW + timedelta(seconds=n))
    holds.save("a", now=NOW, next_attempt_at=NOW + timedelta(hours=1))  # not due yet
    holds.save("b", now=NOW, state="kept")  # settled
    later = NOW + timedelta(minutes=1)
    assert [h.job_id for h in holds.due(later, 10)] == ["c"]
    holds.save("b", now=NOW, state="keeping")
    assert [h.job_id for h in holds.due(later, 10)] == ["c", "b"]
    assert [h.job_id for h in holds.due(later, 1)] == ["c"]


def test_concurrent_holds_for_one_job_make_one_row(dstore: Any) -> None:
    from django.db import connections

    from jobhook.django._holds import DjangoHolds

    holds = DjangoHolds(dstore.using)
    update = JobUpdate(JobStatus.SUCCEEDED, output=[INLINE])
    start = threading.Barrier(4)
    added: list[bool] = []

    def hold(n: int) -> None:
        start.wait()
        try:
            added.append(holds.add("raced", f"d-{n}", update, NOW))
        finally:
            connections[dstore.using].close()

    threads = [threading.Thread(target=hold, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(added) == [False, False, False, True]


def test_a_hold_made_in_the_apps_transaction_rolls_back_with_it(dstore: Any) -> None:
    from django.db import transaction

    keeper = OutputKeeper(dstore, LocalStorage("/nonexistent"))
    dstore.create({}, job_id="j")
    update = JobUpdate(JobStatus.SUCCEEDED, output=[INLINE])
    held: list[Outcome] = []
    try:
        with transaction.atomic(using=dstore.using):
            held.append(keeper.store.apply("j", update).outcome)
            raise RuntimeError("the app fails after the hold")
    except RuntimeError:
        pass
    assert held == [Outcome.APPLIED]
    assert keeper.kept("j") is None
    keeper.close()


def test_the_webhook_view_from_settings_holds_and_jobhook_keep_keeps(
    keeper: OutputKeeper,
) -> None:
    from django.core.management import call_command
    from django.test import RequestFactory

    from jobhook.django import webhook_view

    store = keeper.store
    job = store.create({"prompt": "a red fox"})
    body = f'{{"job_id": "{job.id}", "status": "succeeded", "output": ["{INLINE}"]}}'
    request = RequestFactory().post(
        f"/webhooks/{job.id}",
        body,
        content_type="application/json",
        headers=sign_webhook(SECRET, body, msg_id="msg_1"),
    )
    assert webhook_view()(request, job_id=job.id).status_code == 200
    assert store.get(job.id).status is JobStatus.PENDING  # held
    assert keeper.kept(job.id).state == "keeping"

    out = io.StringIO()
    call_command("jobhook_keep", stdout=out)
    assert out.getvalue().strip() == "1 job(s) settled"
    done = store.get(job.id)
    assert done.status is JobStatus.SUCCEEDED
    assert done.output == [f"https://app.example/media/{job.id}/0.png"]
    assert keeper.storage.get(f"{job.id}/0.png") == PICTURE
    succeeded = [e for e in store.events() if e.status is JobStatus.SUCCEEDED]
    assert [e.delivery_id for e in succeeded] == ["msg_1"]


def test_the_admin_replays_a_dead_letter_through_the_keeper_and_lists_holds(
    keeper: OutputKeeper,
) -> None:
    from django.contrib.auth.models import User
    from django.test import Client, override_settings

    store = keeper.store
    update = JobUpdate(JobStatus.SUCCEEDED, output={"images": [INLINE]})
    letter = store.add_dead_letter("early", update, delivery_id="d-early")
    store.create({}, job_id="early")
    User.objects.filter(username="admin").delete()
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    with override_settings(ROOT_URLCONF="tests.django_urls"):
        admin = Client()
        admin.login(username="admin", password="pw")
        answer = admin.post(
            "/admin/jobhook/deadletter/",
            {"action": "replay", "_selected_action": [str(letter.id)]},
            follow=True,
        )
        assert answer.status_code == 200
        # Held, not applied with the provider's file.
        assert store.get("early").status is JobStatus.PENDING
        page = admin.get("/admin/jobhook/outputkeep/")
        assert page.status_code == 200
        assert b"early" in page.content
        assert b"keeping" in page.content
    User.objects.all().delete()
    keeper.run_once()
    assert store.get("early").output == {"images": ["https://app.example/media/early/0.png"]}


def test_jobhook_keep_needs_a_keeper_and_keeper_must_be_one() -> None:
    build_store("django-sqlite", None)[1]()
    from django.core.exceptions import ImproperlyConfigured
    from django.core.management import CommandError, call_command
    from django.test import override_settings

    with override_settings(JOBHOOK={}), pytest.raises(CommandError, match="KEEPER"):
        call_command("jobhook_keep")
    wrong = {"KEEPER": f"{__name__}.SECRET"}
    with override_settings(JOBHOOK=wrong), pytest.raises(ImproperlyConfigured, match="str"):
        call_command("jobhook_keep")
