# ruff: noqa: PT009, PT027  (Django's test runner: unittest-style assertions)
"""The example project under Django's own test runner (``manage.py test gallery``)."""

from unittest import mock

import httpx
from django.contrib.auth.models import User
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.db import transaction
from django.test import Client, TestCase, TransactionTestCase

from gallery import jobs
from gallery.models import ImageGeneration, Notification
from jobhook import GeneratorClient, JobNotFoundError, JobStatus
from jobhook.testing import Chaos, FakeGenerator, Scripts

SECRET = "whsec_am9iaG9vay1kZXZlbG9wbWVudC1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u"


class OneTransaction(TestCase):
    def test_the_row_and_the_job_commit_together(self):
        with transaction.atomic():
            job = jobs.store.create({"prompt": "a red fox"}, owner_id="user-1")
            ImageGeneration.objects.create(prompt="a red fox", author_id="user-1", job_id=job.id)
        self.assertEqual(jobs.store.get(job.id).status, JobStatus.PENDING)
        self.assertTrue(ImageGeneration.objects.filter(job_id=job.id).exists())

    def test_a_failure_after_the_job_rolls_both_back(self):
        created = []
        with self.assertRaises(RuntimeError), transaction.atomic():
            created.append(jobs.store.create({"prompt": "an owl"}, owner_id="user-1"))
            ImageGeneration.objects.create(
                prompt="an owl", author_id="user-1", job_id=created[0].id
            )
            raise RuntimeError("the app fails after the job was created")
        with self.assertRaises(JobNotFoundError):
            jobs.store.get(created[0].id)
        self.assertFalse(ImageGeneration.objects.exists())


class Flow(TransactionTestCase):
    """Prompt, submit, signed webhooks (duplicated and reordered) through the project's
    own URLconf and middleware, and one notification per finished job."""

    def test_prompts_become_images_and_one_notification_each(self):
        wsgi = httpx.Client(transport=httpx.WSGITransport(app=WSGIHandler()))
        fake = FakeGenerator(
            SECRET,
            callback_client=wsgi,
            chaos=Chaos(duplicate=0.4, reorder=0.4, seed=3),
            script=Scripts.success(),
        )
        client = GeneratorClient(
            jobs.store,
            "http://generator.invalid",
            callback_url="http://testserver/webhooks/jobhook/{job_id}",
            status_path="/jobs/{job_id}",
            http_client=httpx.Client(transport=fake.transport),
        )
        browser = Client(enforce_csrf_checks=False)
        with mock.patch.object(jobs, "client", return_value=client):
            for prompt in ("a red fox", "an owl", "a whale"):
                self.assertEqual(browser.post("/generate", {"prompt": prompt}).status_code, 302)
        sent = fake.deliver_all()
        self.assertTrue(any(s.report and s.report.delivered for s in sent))
        for generation in ImageGeneration.objects.all():
            self.assertEqual(jobs.store.get(generation.job_id).status, JobStatus.SUCCEEDED)
        page = browser.get("/")
        self.assertContains(page, "succeeded", count=3)
        for _ in range(2):
            call_command("jobhook_consume", "notify", verbosity=0)
        self.assertEqual(Notification.objects.count(), 3)
        client.close()
        fake.close()


class Admin(TestCase):
    def setUp(self):
        call_command("seed_demo", verbosity=0)
        User.objects.create_superuser("admin", "admin@example.com", "pw")
        self.client.login(username="admin", password="pw")

    def test_the_jobhook_pages_render(self):
        for page in ("job", "deadletter", "consumer"):
            answer = self.client.get(f"/admin/jobhook/{page}/")
            self.assertEqual(answer.status_code, 200, page)
        self.assertContains(self.client.get("/admin/jobhook/job/?status__exact=failed"), "nsfw")
