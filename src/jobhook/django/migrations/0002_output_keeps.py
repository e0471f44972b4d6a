"""The output keeper's holds: successes waiting until their files are kept."""

from django.db import migrations, models

import jobhook.django.models


class Migration(migrations.Migration):  # type: ignore[misc]
    dependencies = [("jobhook", "0001_initial")]  # noqa: RUF012

    operations = [  # noqa: RUF012
        migrations.CreateModel(
            name="OutputKeep",
            fields=[
                ("job_id", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("delivery_id", models.CharField(blank=True, max_length=255, null=True)),
                (
                    "update",
                    models.JSONField(
                        decoder=jobhook.django.models.JSONDecoder,
                        encoder=jobhook.django.models.JSONEncoder,
                    ),
                ),
                (
                    "files",
                    models.JSONField(
                        decoder=jobhook.django.models.JSONDecoder,
                        encoder=jobhook.django.models.JSONEncoder,
                    ),
                ),
                ("state", models.CharField(max_length=16)),
                ("attempts", models.IntegerField()),
                ("last_error", models.TextField(blank=True, null=True)),
                ("next_attempt_at", models.DateTimeField()),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
                ("dead_letter_id", models.BigIntegerField(blank=True, null=True)),
            ],
            options={
                "indexes": [
                    models.Index(fields=["state", "next_attempt_at"], name="jobhook_keep_due")
                ],
            },
        ),
    ]
