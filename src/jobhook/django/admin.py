"""The admin: jobs (filters, search, resubmit and cancel), dead letters (replay), the
output keeper's holds, and the outbox consumers' positions. Jobs are read-only here:
they change through the store, by the lifecycle rules."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages

from jobhook.django import conf
from jobhook.django import models as m

__all__ = [
    "ConsumerAdmin",
    "DeadLetterAdmin",
    "JobAdmin",
    "OutputKeepAdmin",
    "ParkedEventAdmin",
]


class _ReadOnly(admin.ModelAdmin):  # type: ignore[misc]
    def has_add_permission(self, request: Any) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return False


def _each(modeladmin: Any, request: Any, queryset: Any, verb: str, call: Any) -> None:
    done = failed = 0
    for pk in queryset.values_list("pk", flat=True):
        try:
            call(pk)
        except Exception as exc:  # one job's failure is reported, the others go on
            failed += 1
            modeladmin.message_user(request, f"{pk}: {exc}", messages.ERROR)
        else:
            done += 1
    if done:
        modeladmin.message_user(request, f"{verb} {done} item(s).", messages.SUCCESS)


@admin.register(m.Job)
class JobAdmin(_ReadOnly):
    """Jobs, newest first; filter by status, kind and owner; search by id and remote id.
    Resubmit and cancel go through ``JOBHOOK["CLIENT"]`` when it is configured."""

    list_display = (
        "id",
        "kind",
        "owner_id",
        "status",
        "progress",
        "error_code",
        "remote_id",
        "updated_at",
    )
    list_filter = ("status", "kind", "owner_id")
    search_fields = ("=id", "=remote_id")
    ordering = ("-created_at", "-id")
    date_hierarchy = "created_at"
    actions = ("resubmit", "cancel")

    def get_actions(self, request: Any) -> Any:
        actions = super().get_actions(request)
        if conf.client() is None:
            actions.pop("resubmit", None)
            actions.pop("cancel", None)
        return actions

    @admin.action(description="Resubmit the selected jobs to the backend")  # type: ignore[untyped-decorator]
    def resubmit(self, request: Any, queryset: Any) -> None:
        _each(self, request, queryset, "Resubmitted", conf.client().resubmit)

    @admin.action(description="Cancel the selected jobs at the backend")  # type: ignore[untyped-decorator]
    def cancel(self, request: Any, queryset: Any) -> None:
        _each(self, request, queryset, "Canceled", conf.client().cancel)


@admin.register(m.DeadLetter)
class DeadLetterAdmin(_ReadOnly):
    """Deliveries that named an unknown job; replay applies them once the job exists."""

    list_display = ("id", "job_id", "delivery_id", "reason", "received_at", "replayed_at")
    list_filter = ("reason", ("replayed_at", admin.EmptyFieldListFilter))
    search_fields = ("=job_id", "=delivery_id")
    exclude = ("body",)
    actions = ("replay",)

    @admin.action(description="Replay the selected dead letters")  # type: ignore[untyped-decorator]
    def replay(self, request: Any, queryset: Any) -> None:
        from jobhook.django._store import DjangoJobStore

        # Through the keeper when there is one: a success with files waits for them.
        keeper = conf.keeper()
        store = keeper.store if keeper is not None else DjangoJobStore(using=queryset.db)

        def replay_one(pk: int) -> None:
            result = store.replay_dead_letter(pk)
            self.message_user(request, f"dead letter {pk}: {result.outcome.value}")

        _each(self, request, queryset, "Replayed", replay_one)


@admin.register(m.OutputKeep)
class OutputKeepAdmin(_ReadOnly):
    """Successes held until their files are kept: where each is, and why it waits."""

    list_display = ("job_id", "state", "attempts", "last_error", "next_attempt_at", "updated_at")
    list_filter = ("state",)
    search_fields = ("=job_id",)
    ordering = ("-created_at",)


@admin.register(m.Consumer)
class ConsumerAdmin(_ReadOnly):
    """Outbox readers and the last event id each has handled."""

    list_display = ("name", "position", "failures", "last_error", "updated_at")


@admin.register(m.ParkedEvent)
class ParkedEventAdmin(_ReadOnly):
    """Events a consumer failed on too often and passed; retry hands them to it again."""

    list_display = ("event_id", "consumer", "job_id", "error", "parked_at")
    list_filter = ("consumer",)
    search_fields = ("=job_id",)
    actions = ("retry",)

    def has_delete_permission(self, request: Any, obj: Any = None) -> bool:
        return True  # dismissing a parked event is the operator's call

    @admin.action(description="Hand the selected events to their consumer again")  # type: ignore[untyped-decorator]
    def retry(self, request: Any, queryset: Any) -> None:
        from jobhook.django._consume import retry_parked
        from jobhook.django._store import DjangoJobStore

        store = DjangoJobStore(using=queryset.db)

        def retry_one(pk: int) -> None:
            parked = queryset.model.objects.using(queryset.db).get(pk=pk)
            retry_parked(store, parked, conf.consumer(parked.consumer))

        _each(self, request, queryset, "Handled", retry_one)
