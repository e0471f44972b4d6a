"""The Django app: ``INSTALLED_APPS += ["jobhook.django"]``."""

from __future__ import annotations

from django.apps import AppConfig


class JobhookConfig(AppConfig):  # type: ignore[misc]
    """jobhook's models, migrations, admin and management commands, labelled
    ``jobhook`` (tables ``jobhook_job``, ``jobhook_delivery``, ``jobhook_event``,
    ``jobhook_deadletter``, ``jobhook_consumer``, ``jobhook_parkedevent``,
    ``jobhook_counter``, ``jobhook_outputkeep``)."""

    name = "jobhook.django"
    label = "jobhook"
    verbose_name = "jobhook"
    default_auto_field = "django.db.models.BigAutoField"
