# ruff: noqa: PT009, PT027  (Django's test runner: unittest-style assertions)
"""The example project under Django's own test runner (``manage.py test gallery``)."""

from unittest import mock

import httpx
from django.conf import settings
from django.contrib.auth.models import User
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.db import transaction
from django.test import Client, TestCase, TransactionTestCase

from gallery import jobs
from gallery.models import ImageGeneration, Notification
from jobhook import GeneratorClient, JobNotFoundError, JobStatus
from jobhook.testing import Chaos, FakeGenerator, Scripts
from jobhook.testing._png import png_for

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
    own URLconf and middleware, the pictures kept by ``jobhook_keep`` before the jobs
    succeed, and one notification per finished job."""

    def test_prompts_become_images_and_one_notification_each(self):
        wsgi = httpx.Client(transport=httpx.WSGITransport(app=WSGIHandler()))
        fake = FakeGenerator(
            SECRET,
            callback_client=wsgi,
            chaos=Chaos(duplicate=0.4, reorder=0.4, seed=3),
            script=Scripts.pictures(),  # inline, as Cog sends them
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
        generations = list(ImageGeneration.objects.all())
        # Held until their pictures are kept: nobody hears of the successes yet.
        for generation in generations:
            self.assertEqual(jobs.store.get(generation.job_id).status, JobStatus.RUNNING)
        call_command("jobhook_consume", "notify", verbosity=0)
        self.assertEqual(Notification.objects.count(), 0)

        call_command("jobhook_keep", verbosity=0)
        for generation in generations:
            self.assertEqual(jobs.store.get(generation.job_id).status, JobStatus.SUCCEEDED)
        page = browser.get("/")
        self.assertContains(page, "succeeded", count=3)
        job_id = generations[0].job_id
        kept_url = f"{settings.APP_URL}/files/{job_id}/0.png"
        self.assertContains(page, f'<img class="picture" src="{kept_url}"')
        picture = browser.get(f"/files/{job_id}/0.png")
        self.assertEqual(picture.status_code, 200)
        self.assertEqual(picture["Content-Type"], "image/png")
        self.assertEqual(b"".join(picture.streaming_content), png_for(f"{job_id}/1.png"))
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
