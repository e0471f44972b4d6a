"""``manage.py seed_demo``: a few jobs in every state, and a dead letter (for the
admin's screenshots)."""

from django.core.management.base import BaseCommand

from jobhook import JobError, JobUpdate
from jobhook.django import DjangoJobStore


class Command(BaseCommand):
    help = "Create demo jobs and a dead letter."

    def handle(self, *args, **options):
        store = DjangoJobStore()
        prompts = ["a red fox", "an owl at night", "a whale", "a lighthouse", "a city in fog"]
        updates = [
            [JobUpdate("submitted", remote_id="r-101")],
            [JobUpdate("running", progress=40, remote_id="r-102")],
            [JobUpdate("succeeded", output={"images": ["https://cdn.example/fox.png"]})],
            [JobUpdate("failed", error=JobError("nsfw", "the prompt was refused"))],
            [],
        ]
        for n, (prompt, steps) in enumerate(zip(prompts, updates, strict=True)):
            job = store.create({"prompt": prompt}, kind="image", owner_id=f"user-{n % 2 + 1}")
            for step in steps:
                store.apply(job.id, step, delivery_id=f"msg-{job.id}-{step.status.value}")
        store.add_dead_letter(
            "unknown-job", JobUpdate("succeeded"), delivery_id="msg-unknown", body=b"{}"
        )
        if options["verbosity"]:
            self.stdout.write("seeded")
