"""Reading the outbox from a durable position kept in the ``Consumer`` model."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from django.db import transaction

from jobhook._ids import utcnow
from jobhook._models import JobEvent

__all__ = ["consume_once", "retry_parked"]

log = logging.getLogger("jobhook")


def consume_once(
    store: Any,
    name: str,
    handle: Callable[[JobEvent], Any],
    *,
    batch: int = 100,
    max_attempts: int = 3,
) -> int:
    """Call ``handle`` for each event after ``name``'s position, in order, moving the
    position past each one; return how many were handled.

    At least once: when ``handle`` raises, the position stays and the error propagates
    (the next run starts with that event again). An event that has failed
    ``max_attempts`` times is parked instead (kept as a ``ParkedEvent``, shown in the
    admin, retried by `retry_parked`) and passed, never skipped silently. Run one
    instance per name.
    """
    from jobhook.django.models import Consumer, ParkedEvent

    consumers = Consumer.objects.using(store.using)
    consumer, _ = consumers.get_or_create(name=name, defaults={"updated_at": utcnow()})
    handled = 0
    for event in store.events(after=consumer.position, limit=batch):
        try:
            handle(event)
        except Exception as exc:
            consumer.failures += 1
            if consumer.failures < max_attempts:
                consumers.filter(name=name).update(
                    failures=consumer.failures, last_error=repr(exc), updated_at=utcnow()
                )
                raise
            log.warning(
                "consumer %s parked event %s (job %s): %r", name, event.id, event.job_id, exc
            )
            with transaction.atomic(using=store.using):
                ParkedEvent.objects.using(store.using).get_or_create(
                    consumer=name,
                    event_id=event.id,
                    defaults={"job_id": event.job_id, "error": repr(exc), "parked_at": utcnow()},
                )
                consumers.filter(name=name).update(
                    position=event.id, failures=0, last_error=None, updated_at=utcnow()
                )
            consumer.failures = 0
            continue
        consumers.filter(name=name).update(
            position=event.id, failures=0, last_error=None, updated_at=utcnow()
        )
        consumer.failures = 0
        handled += 1
    return handled


def retry_parked(store: Any, parked: Any, handle: Callable[[JobEvent], Any]) -> None:
    """Handle a parked event again; it is no longer parked once ``handle`` returns.
    Raises what ``handle`` raises (the event stays parked)."""
    events = store.events(after=parked.event_id - 1, limit=1)
    if events and events[0].id == parked.event_id:
        handle(events[0])
    type(parked).objects.using(store.using).filter(pk=parked.pk).delete()
