"""`jobhook.django` as a Django app: migrations, the app's own transaction, the admin,
the settings, the management commands and the webhook view over `DjangoJobStore`.

The store's behaviour itself is the contract suite's (kinds ``django-*``)."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest

pytest.importorskip("django")

import httpx

from jobhook import GeneratorClient, JobNotFoundError, JobStatus, JobUpdate, Outcome
from jobhook.testing import FakeGenerator, sign_webhook

from .conftest import build_store

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


@pytest.fixture(params=["django-sqlite", "django-postgres", "django-mariadb"])
def dstore(request: pytest.FixtureRequest) -> Iterator[Any]:
    store, close = build_store(request.param, None)
    yield store
    close()


@pytest.fixture
def sqlite_store() -> Iterator[Any]:
    store, close = build_store("django-sqlite", None)
    yield store
    close()


def test_import_jobhook_django_needs_no_app_registry() -> None:
    # webhook_view is importable before settings exist; the store loads when used.
    code = (
        "import sys, jobhook, jobhook.django\n"
        "print('jobhook.django.models' in sys.modules, 'django' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["False", "True"]
    code = "import sys, jobhook\nprint('django' in sys.modules)\n"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "False"


def test_migrations_match_the_models_and_unapply(dstore: Any) -> None:
    from django.core.management import call_command
    from django.db import connections

    # The shipped migration makes exactly what the models say.
    call_command("makemigrations", "jobhook", check=True, dry_run=True, verbosity=0)
    tables = set(connections[dstore.using].introspection.table_names())
    assert {"jobhook_job", "jobhook_delivery", "jobhook_event", "jobhook_deadletter"} <= tables
    assert "jobhook_outputkeep" in tables  # the output keeper's holds (0002)
    # And it unapplies and applies again from empty.
    call_command("migrate", "jobhook", "zero", database=dstore.using, verbosity=0)
    assert "jobhook_outputkeep" not in connections[dstore.using].introspection.table_names()
    assert "jobhook_job" not in connections[dstore.using].introspection.table_names()
    call_command("migrate", "jobhook", database=dstore.using, verbosity=0)
    job = dstore.create({"prompt": "a red fox"})
    assert dstore.apply(job.id, JobUpdate("running", progress=5)).event is not None


def test_a_job_and_the_apps_row_commit_together_or_not_at_all(dstore: Any) -> None:
    from django.contrib.auth.models import User
    from django.db import transaction

    with transaction.atomic(using=dstore.using):
        user = User.objects.db_manager(dstore.using).create(username="ada")
        kept = dstore.create({"prompt": "a red fox"}, owner_id=str(user.pk))
    assert dstore.get(kept.id).owner_id == str(user.pk)

    lost: list[Any] = []
    with (  # noqa: PT012
        pytest.raises(RuntimeError, match="after the job"),
        transaction.atomic(using=dstore.using),
    ):
        User.objects.db_manager(dstore.using).create(username="grace")
        lost.append(dstore.create({"prompt": "a blue fox"}))
        raise RuntimeError("the app fails after the job was created")
    with pytest.raises(JobNotFoundError):
        dstore.get(lost[0].id)
    assert not User.objects.db_manager(dstore.using).filter(username="grace").exists()
    User.objects.db_manager(dstore.using).all().delete()


def test_a_taken_id_inside_the_apps_transaction_leaves_it_usable(dstore: Any) -> None:
    from django.db import transaction

    from jobhook import JobExistsError

    dstore.create({}, job_id="order-1")
    with transaction.atomic(using=dstore.using):
        with pytest.raises(JobExistsError):
            dstore.create({}, job_id="order-1")
        dstore.create({}, job_id="order-2")  # the transaction goes on
    assert dstore.get("order-2").status is JobStatus.PENDING


def test_webhook_view_from_settings_applies_through_the_django_store(sqlite_store: Any) -> None:
    from django.test import RequestFactory, override_settings

    from jobhook.django import webhook_view

    job = sqlite_store.create({"prompt": "a red fox"})
    body = f'{{"job_id": "{job.id}", "status": "succeeded", "output": ["fox.png"]}}'
    with override_settings(JOBHOOK={"SECRET": SECRET}):
        view = webhook_view()
    factory = RequestFactory()

    def post() -> Any:
        request = factory.post(
            f"/webhooks/{job.id}",
            body,
            content_type="application/json",
            headers=sign_webhook(SECRET, body, msg_id="msg_1"),
        )
        return view(request, job_id=job.id)

    assert post().status_code == 200
    again = post()
    assert again.status_code == 200
    assert b"duplicate" in again.content
    assert sqlite_store.get(job.id).output == ["fox.png"]


def test_webhook_view_without_secrets_is_refused() -> None:
    build_store("django-sqlite", None)[1]()
    from django.core.exceptions import ImproperlyConfigured
    from django.test import override_settings

    from jobhook.django import webhook_view

    with override_settings(JOBHOOK={}), pytest.raises(ImproperlyConfigured, match="SECRET"):
        webhook_view()


# -- the admin ------------------------------------------------------------------------


@pytest.fixture
def admin_client(sqlite_store: Any) -> Iterator[Any]:
    from django.contrib.auth.models import User
    from django.test import Client, override_settings

    User.objects.filter(username="admin").delete()
    User.objects.create_superuser("admin", "admin@example.com", "pw")
    with override_settings(ROOT_URLCONF="tests.django_urls"):
        client = Client()
        client.login(username="admin", password="pw")
        yield client
    User.objects.all().delete()


def test_admin_lists_filters_and_searches_jobs(admin_client: Any, sqlite_store: Any) -> None:
    fox = sqlite_store.create({"prompt": "fox"}, kind="image", owner_id="u1", job_id="job-fox")
    sqlite_store.create({"prompt": "owl"}, kind="video", owner_id="u2", job_id="job-owl")
    sqlite_store.apply(fox.id, JobUpdate("submitted", remote_id="r-77"))

    page = admin_client.get("/admin/jobhook/job/")
    assert page.status_code == 200
    assert b"job-fox" in page.content
    assert b"job-owl" in page.content
    filtered = admin_client.get("/admin/jobhook/job/?status__exact=submitted")
    assert b"job-fox" in filtered.content
    assert b"job-owl" not in filtered.content
    by_kind = admin_client.get("/admin/jobhook/job/?kind__exact=video")
    assert b"job-owl" in by_kind.content
    assert b"job-fox" not in by_kind.content
    by_remote = admin_client.get("/admin/jobhook/job/?q=r-77")
    assert b"job-fox" in by_remote.content
    assert b"job-owl" not in by_remote.content
    # No client configured: no resubmit or cancel action is offered.
    assert b'value="cancel"' not in page.content
    assert admin_client.get(f"/admin/jobhook/job/{fox.id}/change/").status_code == 200


def test_admin_replays_a_dead_letter_once_its_job_exists(
    admin_client: Any, sqlite_store: Any
) -> None:
    letter = sqlite_store.add_dead_letter(
        "late-job", JobUpdate("succeeded", output=["a.png"]), delivery_id="msg_9"
    )
    assert admin_client.get("/admin/jobhook/deadletter/").status_code == 200
    sqlite_store.create({}, job_id="late-job")
    answer = admin_client.post(
        "/admin/jobhook/deadletter/",
        {"action": "replay", "_selected_action": [str(letter.id)]},
        follow=True,
    )
    assert answer.status_code == 200
    assert b"applied" in answer.content
    assert sqlite_store.get("late-job").status is JobStatus.SUCCEEDED
    assert sqlite_store.dead_letters() == []


def test_admin_cancels_and_resubmits_through_the_configured_client(
    admin_client: Any, sqlite_store: Any
) -> None:
    from django.test import override_settings

    with FakeGenerator(SECRET) as fake:
        client = GeneratorClient(
            sqlite_store,
            "http://fake.invalid",
            callback_url="http://app.invalid/webhooks/{job_id}",
            cancel_path=FakeGenerator.cancel_path,
            http_client=httpx.Client(transport=fake.transport),
        )
        job = client.submit({"prompt": "a red fox"})
        with override_settings(JOBHOOK={"SECRET": SECRET, "CLIENT": client}):
            page = admin_client.get("/admin/jobhook/job/")
            assert b'value="cancel"' in page.content
            answer = admin_client.post(
                "/admin/jobhook/job/",
                {"action": "cancel", "_selected_action": [job.id]},
                follow=True,
            )
        assert answer.status_code == 200
        assert sqlite_store.get(job.id).status is JobStatus.CANCELED

        # A job whose submit never left (it stays pending) is resubmitted under its id.
        stuck = sqlite_store.create({"prompt": "an owl"})
        with override_settings(JOBHOOK={"SECRET": SECRET, "CLIENT": client}):
            admin_client.post(
                "/admin/jobhook/job/",
                {"action": "resubmit", "_selected_action": [stuck.id]},
                follow=True,
            )
        assert [s.job_id for s in fake.submissions] == [job.id, stuck.id]
        assert sqlite_store.get(stuck.id).status is JobStatus.SUBMITTED
        client.close()


# -- management commands --------------------------------------------------------------

NOTIFIED: list[str] = []


def notify(event: Any) -> None:
    """A consumer for ``jobhook_consume``: fails once on a job named ``flaky``."""
    if event.job_id == "flaky" and "flaky" not in NOTIFIED:
        NOTIFIED.append("flaky")
        raise RuntimeError("the notification service is down")
    NOTIFIED.append(f"{event.job_id}:{event.status.value}")


def test_consume_command_hands_each_event_once_in_order(sqlite_store: Any) -> None:
    from django.core.management import call_command
    from django.test import override_settings

    NOTIFIED.clear()
    for job_id in ("a", "flaky", "b"):
        sqlite_store.create({}, job_id=job_id)
        sqlite_store.apply(job_id, JobUpdate("succeeded"))
    conf = {"SECRET": SECRET, "CONSUMERS": {"notify": f"{__name__}.notify"}}
    out = io.StringIO()
    with override_settings(JOBHOOK=conf):
        with pytest.raises(RuntimeError, match="down"):
            call_command("jobhook_consume", "notify", stdout=out)
        assert NOTIFIED == ["a:succeeded", "flaky"]  # stopped at the failing event
        call_command("jobhook_consume", "notify", stdout=out)
        call_command("jobhook_consume", "notify", stdout=out)
    # At least once: the failed event came again, and nothing came twice after it.
    assert NOTIFIED == ["a:succeeded", "flaky", "flaky:succeeded", "b:succeeded"]
    assert "notify: 0 event(s) handled" in out.getvalue()


ALWAYS_FAILING: set[str] = set()


def notify_or_fail(event: Any) -> None:
    """A consumer that fails on the jobs in ``ALWAYS_FAILING``."""
    if event.job_id in ALWAYS_FAILING:
        raise RuntimeError(f"cannot notify about {event.job_id}")
    NOTIFIED.append(event.job_id)


def test_an_event_that_keeps_failing_is_parked_then_retried_from_the_admin(
    admin_client: Any, sqlite_store: Any
) -> None:
    from django.core.management import call_command
    from django.test import override_settings

    from jobhook.django.models import ParkedEvent

    NOTIFIED.clear()
    ALWAYS_FAILING.clear()
    ALWAYS_FAILING.add("poison")
    for job_id in ("first", "poison", "last"):
        sqlite_store.create({}, job_id=job_id)
        sqlite_store.apply(job_id, JobUpdate("succeeded"))
    conf = {"SECRET": SECRET, "CONSUMERS": {"n": f"{__name__}.notify_or_fail"}}
    with override_settings(JOBHOOK=conf):
        for _ in range(2):  # retried, not passed
            with pytest.raises(RuntimeError, match="poison"):
                call_command("jobhook_consume", "n", "--max-attempts=3", verbosity=0)
        call_command("jobhook_consume", "n", "--max-attempts=3", verbosity=0)  # parked
        assert NOTIFIED == ["first", "last"]
        [parked] = ParkedEvent.objects.all()
        assert (parked.consumer, parked.job_id) == ("n", "poison")
        assert "cannot notify" in parked.error
        assert b"poison" in admin_client.get("/admin/jobhook/parkedevent/").content

        ALWAYS_FAILING.clear()  # the notification service is back
        answer = admin_client.post(
            "/admin/jobhook/parkedevent/",
            {"action": "retry", "_selected_action": [str(parked.pk)]},
            follow=True,
        )
    assert answer.status_code == 200
    assert NOTIFIED == ["first", "last", "poison"]
    assert not ParkedEvent.objects.exists()


def test_reconcile_command_needs_a_client_and_times_out_old_jobs(sqlite_store: Any) -> None:
    from django.core.management import CommandError, call_command
    from django.test import override_settings

    with override_settings(JOBHOOK={"SECRET": SECRET}), pytest.raises(CommandError):
        call_command("jobhook_reconcile")
    job = sqlite_store.create({}, job_id="forgotten")
    sqlite_store.apply(job.id, JobUpdate("submitted"))
    from jobhook.django.models import Job

    long_ago = job.created_at - timedelta(days=2)
    Job.objects.filter(id=job.id).update(created_at=long_ago, updated_at=long_ago)
    with FakeGenerator(SECRET) as fake:
        client = GeneratorClient(
            sqlite_store,
            "http://fake.invalid",
            callback_url="http://app.invalid/webhooks/{job_id}",
            status_path=FakeGenerator.status_path,
            http_client=httpx.Client(transport=fake.transport),
        )
        out = io.StringIO()
        with override_settings(JOBHOOK={"SECRET": SECRET, "CLIENT": client}):
            call_command(
                "jobhook_reconcile", "--stale-after=60", "--give-up-after=3600", stdout=out
            )
        client.close()
    assert sqlite_store.get("forgotten").status is JobStatus.FAILED
    assert out.getvalue().strip()


def test_apply_in_the_apps_transaction_rolls_back_with_it(dstore: Any) -> None:
    from django.db import transaction

    job = dstore.create({})
    with pytest.raises(RuntimeError), transaction.atomic(using=dstore.using):  # noqa: PT012
        assert dstore.apply(job.id, JobUpdate("running", progress=5)).applied
        assert dstore.apply(job.id, JobUpdate("running", progress=9)).applied
        raise RuntimeError("the app fails afterwards")
    assert dstore.get(job.id).status is JobStatus.PENDING
    assert dstore.events() == []
    result = dstore.apply(job.id, JobUpdate("running", progress=5))
    assert result.outcome is Outcome.APPLIED


def test_prune_removes_what_no_one_needs_and_keeps_the_rest(dstore: Any) -> None:
    """Old delivery ids go (a retry within retention stays a duplicate); events go
    only once every consumer has passed them; finished jobs only when asked."""
    from datetime import timedelta

    from django.core.management import call_command
    from django.test import override_settings

    from jobhook.django.models import Consumer, Delivery, Event

    for n in range(5):
        job = dstore.create({}, job_id=f"p{n}")
        assert dstore.apply(job.id, JobUpdate("succeeded"), delivery_id=f"d{n}").applied
    # Nothing is old enough yet: a retried delivery is still a duplicate.
    report = dstore.prune(deliveries_older_than=timedelta(hours=1), batch=2)
    assert (report.deliveries, report.events, report.jobs) == (0, 0, 0)
    assert dstore.apply("p0", JobUpdate("succeeded"), delivery_id="d0").outcome is (
        Outcome.DUPLICATE
    )
    # Everything is old now, but no consumer is registered: no event goes.
    report = dstore.prune(deliveries_older_than=timedelta(0), batch=2)
    assert (report.deliveries, report.events) == (5, 0)
    assert Delivery.objects.using(dstore.using).count() == 0
    ids = [e.id for e in dstore.events()]
    from django.utils import timezone

    Consumer.objects.using(dstore.using).create(
        name="notify", position=ids[2], updated_at=timezone.now()
    )
    report = dstore.prune(
        deliveries_older_than=timedelta(0), finished_jobs_older_than=timedelta(0), batch=2
    )
    assert report.events == 3  # up to the consumer's position, never past it
    assert [e.id for e in dstore.events()] == ids[3:]
    assert report.jobs == 5
    assert Event.objects.using(dstore.using).count() == 2
    with override_settings(JOBHOOK={"SECRET": SECRET, "DATABASE": dstore.using}):
        out = io.StringIO()
        call_command("jobhook_prune", "--days", "0", stdout=out)
    assert "removed 0 delivery ids, 0 events, 0 jobs" in out.getvalue()
