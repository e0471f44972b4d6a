"""jobhook's tables as Django models: the same columns as the SQLAlchemy schema.

Apps read them (the admin does); they write through `DjangoJobStore`, which keeps the
lifecycle rules, the delivery inbox and the outbox consistent. Writing these rows
directly bypasses the rules.
"""

from __future__ import annotations

import json
from typing import Any

import django
from django.db import models

from jobhook._convert import dumps, loads
from jobhook._models import JobStatus

__all__ = [
    "Consumer",
    "Counter",
    "DeadLetter",
    "Delivery",
    "Event",
    "Job",
    "OutputKeep",
    "ParkedEvent",
]

# CheckConstraint(check=...) became condition=... in Django 5.1.
_CONDITION = "condition" if django.VERSION >= (5, 1) else "check"

STATUS_CHOICES = [(s.value, s.value) for s in JobStatus]
NON_TERMINAL = [s.value for s in JobStatus if not s.terminal]


class JSONEncoder(json.JSONEncoder):
    """jobhook's one way of writing JSON (the values are checked before they get here)."""

    def encode(self, o: Any) -> str:
        return dumps(o)


class JSONDecoder(json.JSONDecoder):
    """jobhook's one way of reading JSON: whole numbers with an exponent come back as
    ints, as on every other store."""

    def decode(self, s: str, _w: Any = None) -> Any:
        return loads(s)


def _json(**kwargs: Any) -> Any:
    return models.JSONField(encoder=JSONEncoder, decoder=JSONDecoder, **kwargs)


class Job(models.Model):  # type: ignore[misc]
    """A job, as `jobhook.Job` describes it."""

    id = models.CharField(max_length=255, primary_key=True)
    kind = models.CharField(max_length=255)
    owner_id = models.CharField(max_length=255, null=True, blank=True)
    input = _json(null=True, blank=True)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES)
    progress = models.FloatField(null=True, blank=True)
    output = _json(null=True, blank=True)
    error_code = models.CharField(max_length=255, null=True, blank=True)
    error_message = models.TextField(null=True, blank=True)
    remote_id = models.CharField(max_length=255, null=True, blank=True)
    sequence = models.BigIntegerField(null=True, blank=True)
    metadata = _json(default=dict, blank=True)
    version = models.IntegerField()
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [  # noqa: RUF012
            # list(owner_id=...) newest first, and list() without an owner.
            models.Index(fields=["owner_id", "created_at", "id"], name="jobhook_job_owner"),
            models.Index(fields=["created_at", "id"], name="jobhook_job_created"),
            # stale(): non-terminal jobs by last update.
            models.Index(fields=["status", "updated_at"], name="jobhook_job_stale"),
            # get_by_remote_id(): newest first among jobs sharing one.
            models.Index(fields=["remote_id", "created_at", "id"], name="jobhook_job_remote"),
        ]
        constraints = [  # noqa: RUF012
            models.CheckConstraint(
                **{_CONDITION: models.Q(status__in=[s.value for s in JobStatus])},
                name="jobhook_job_status",
            ),
            models.CheckConstraint(
                **{
                    _CONDITION: models.Q(progress__isnull=True)
                    | models.Q(progress__gte=0, progress__lte=100)
                },
                name="jobhook_job_progress",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.id} ({self.status})"


class Delivery(models.Model):  # type: ignore[misc]
    """The inbox: one row per delivery id applied (its primary key is the unique key)."""

    id = models.CharField(max_length=255, primary_key=True)
    job_id = models.CharField(max_length=255)
    received_at = models.DateTimeField()

    class Meta:
        verbose_name_plural = "deliveries"


class Event(models.Model):  # type: ignore[misc]
    """The outbox: one row per applied change, ids in the order readers may see them."""

    id = models.BigAutoField(primary_key=True)
    job_id = models.CharField(max_length=255)
    owner_id = models.CharField(max_length=255, null=True, blank=True)
    kind = models.CharField(max_length=255)
    status = models.CharField(max_length=16, choices=STATUS_CHOICES)
    progress = models.FloatField(null=True, blank=True)
    version = models.IntegerField()
    delivery_id = models.CharField(max_length=255, null=True, blank=True)
    created_at = models.DateTimeField()


class DeadLetter(models.Model):  # type: ignore[misc]
    """A delivery that named an unknown job, kept to be applied later."""

    id = models.BigAutoField(primary_key=True)
    job_id = models.CharField(max_length=255, db_index=True)
    delivery_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    update = _json()
    body = models.BinaryField()
    reason = models.CharField(max_length=255)
    received_at = models.DateTimeField()
    replayed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"dead letter {self.id} for {self.job_id}"


class Consumer(models.Model):  # type: ignore[misc]
    """A named reader of the outbox and the last event id it has handled."""

    name = models.CharField(max_length=255, primary_key=True)
    position = models.BigIntegerField(default=0)
    updated_at = models.DateTimeField()
    #: How often the event after ``position`` has failed so far, and how.
    failures = models.IntegerField(default=0)
    last_error = models.TextField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.name} at {self.position}"


class ParkedEvent(models.Model):  # type: ignore[misc]
    """An event a consumer failed on too often: passed, kept here to be handled again."""

    id = models.BigAutoField(primary_key=True)
    consumer = models.CharField(max_length=255)
    event_id = models.BigIntegerField()
    job_id = models.CharField(max_length=255)
    error = models.TextField()
    parked_at = models.DateTimeField()

    class Meta:
        constraints = [  # noqa: RUF012
            models.UniqueConstraint(fields=["consumer", "event_id"], name="jobhook_parked_once")
        ]

    def __str__(self) -> str:
        return f"event {self.event_id} parked by {self.consumer}"


class Counter(models.Model):  # type: ignore[misc]
    """MySQL and MariaDB: the outbox id counter. Each apply increments it in its own
    transaction, so its row lock orders event ids as their transactions commit."""

    name = models.CharField(max_length=32, primary_key=True)
    value = models.BigIntegerField(default=0)


class OutputKeep(models.Model):  # type: ignore[misc]
    """A success held back until the files its output names are kept (one per job):
    the same columns as the SQL stores' ``output_keeps`` table. The output keeper
    writes it; see `jobhook.outputs.OutputKeeper`."""

    job_id = models.CharField(max_length=255, primary_key=True)
    delivery_id = models.CharField(max_length=255, null=True, blank=True)
    #: The success as the provider reported it.
    update = _json()
    #: One entry per file: null until it is kept, then the kept file.
    files = _json()
    state = models.CharField(max_length=16)
    attempts = models.IntegerField()
    last_error = models.TextField(null=True, blank=True)
    next_attempt_at = models.DateTimeField()
    created_at = models.DateTimeField()
    updated_at = models.DateTimeField()
    dead_letter_id = models.BigIntegerField(null=True, blank=True)

    class Meta:
        indexes = [  # noqa: RUF012
            # The keeper's round: holds still keeping whose next attempt is due.
            models.Index(fields=["state", "next_attempt_at"], name="jobhook_keep_due"),
        ]

    def __str__(self) -> str:
        return f"{self.job_id} ({self.state})"
