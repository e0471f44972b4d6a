"""jobhook's tables, and the outbox counter row MySQL and MariaDB use."""

from typing import Any

from django.db import migrations, models

import jobhook.django.models
from jobhook.django.models import _CONDITION


def add_counter(apps: Any, schema_editor: Any) -> None:
    apps.get_model("jobhook", "Counter").objects.using(schema_editor.connection.alias).create(
        name="events", value=0
    )


class Migration(migrations.Migration):  # type: ignore[misc]
    initial = True

    dependencies: list[tuple[str, str]] = []  # noqa: RUF012

    operations = [  # noqa: RUF012
        migrations.CreateModel(
            name="Consumer",
            fields=[
                ("name", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("position", models.BigIntegerField(default=0)),
                ("updated_at", models.DateTimeField()),
                ("failures", models.IntegerField(default=0)),
                ("last_error", models.TextField(blank=True, null=True)),
            ],
        ),
        migrations.CreateModel(
            name="ParkedEvent",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("consumer", models.CharField(max_length=255)),
                ("event_id", models.BigIntegerField()),
                ("job_id", models.CharField(max_length=255)),
                ("error", models.TextField()),
                ("parked_at", models.DateTimeField()),
            ],
            options={
                "constraints": [
                    models.UniqueConstraint(
                        fields=("consumer", "event_id"), name="jobhook_parked_once"
                    )
                ],
            },
        ),
        migrations.CreateModel(
            name="Counter",
            fields=[
                ("name", models.CharField(max_length=32, primary_key=True, serialize=False)),
                ("value", models.BigIntegerField(default=0)),
            ],
        ),
        migrations.CreateModel(
            name="DeadLetter",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("job_id", models.CharField(db_index=True, max_length=255)),
                (
                    "delivery_id",
                    models.CharField(blank=True, max_length=255, null=True, unique=True),
                ),
                (
                    "update",
                    models.JSONField(
                        decoder=jobhook.django.models.JSONDecoder,
                        encoder=jobhook.django.models.JSONEncoder,
                    ),
                ),
                ("body", models.BinaryField()),
                ("reason", models.CharField(max_length=255)),
                ("received_at", models.DateTimeField()),
                ("replayed_at", models.DateTimeField(blank=True, null=True)),
            ],
        ),
        migrations.CreateModel(
            name="Delivery",
            fields=[
                ("id", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("job_id", models.CharField(max_length=255)),
                ("received_at", models.DateTimeField()),
            ],
            options={
                "verbose_name_plural": "deliveries",
            },
        ),
        migrations.CreateModel(
            name="Event",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("job_id", models.CharField(max_length=255)),
                ("owner_id", models.CharField(blank=True, max_length=255, null=True)),
                ("kind", models.CharField(max_length=255)),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending", "pending"),
                            ("submitted", "submitted"),
                            ("running", "running"),
                            ("succeeded", "succeeded"),
                            ("failed", "failed"),
                            ("canceled", "canceled"),
                        ],
                        max_length=16,
                    ),
                ),
                ("progress", models.FloatField(blank=True, null=True)),
                ("version", models.IntegerField()),
                ("delivery_id", models.CharField(blank=True, max_length=255, null=True)),
                ("created_at", models.DateTimeField()),
            ],
        ),
        migrations.CreateModel(
            name="Job",
            fields=[
                ("id", models.CharField(max_length=255, primary_key=True, serialize=False)),
                ("kind", models.CharField(max_length=255)),
                ("owner_id", models.CharField(blank=True, max_length=255, null=True)),
                (
                    "input",
                    models.JSONField(
                        blank=True,
                        decoder=jobhook.django.models.JSONDecoder,
                        encoder=jobhook.django.models.JSONEncoder,
                        null=True,
                    ),
                ),
                (
                    "status",
                    models.CharField(
                        choices=[
                            ("pending", "pending"),
                            ("submitted", "submitted"),
                            ("running", "running"),
                            ("succeeded", "succeeded"),
                            ("failed", "failed"),
                            ("canceled", "canceled"),
                        ],
                        max_length=16,
                    ),
                ),
                ("progress", models.FloatField(blank=True, null=True)),
                (
                    "output",
                    models.JSONField(
                        blank=True,
                        decoder=jobhook.django.models.JSONDecoder,
                        encoder=jobhook.django.models.JSONEncoder,
                        null=True,
                    ),
                ),
                ("error_code", models.CharField(blank=True, max_length=255, null=True)),
                ("error_message", models.TextField(blank=True, null=True)),
                ("remote_id", models.CharField(blank=True, max_length=255, null=True)),
                ("sequence", models.BigIntegerField(blank=True, null=True)),
                (
                    "metadata",
                    models.JSONField(
                        blank=True,
                        decoder=jobhook.django.models.JSONDecoder,
                        default=dict,
                        encoder=jobhook.django.models.JSONEncoder,
                    ),
                ),
                ("version", models.IntegerField()),
                ("created_at", models.DateTimeField()),
                ("updated_at", models.DateTimeField()),
                ("completed_at", models.DateTimeField(blank=True, null=True)),
            ],
            options={
                "indexes": [
                    models.Index(fields=["owner_id", "created_at", "id"], name="jobhook_job_owner"),
                    models.Index(fields=["created_at", "id"], name="jobhook_job_created"),
                    models.Index(fields=["status", "updated_at"], name="jobhook_job_stale"),
                    models.Index(
                        fields=["remote_id", "created_at", "id"], name="jobhook_job_remote"
                    ),
                ],
                "constraints": [
                    models.CheckConstraint(
                        **{
                            _CONDITION: models.Q(
                                (
                                    "status__in",
                                    [
                                        "pending",
                                        "submitted",
                                        "running",
                                        "succeeded",
                                        "failed",
                                        "canceled",
                                    ],
                                )
                            )
                        },
                        name="jobhook_job_status",
                    ),
                    models.CheckConstraint(
                        **{
                            _CONDITION: models.Q(
                                ("progress__isnull", True),
                                models.Q(("progress__gte", 0), ("progress__lte", 100)),
                                _connector="OR",
                            )
                        },
                        name="jobhook_job_progress",
                    ),
                ],
            },
        ),
        migrations.RunPython(add_counter, migrations.RunPython.noop),
    ]
