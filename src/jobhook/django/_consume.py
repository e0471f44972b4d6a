"""Reading the outbox from a durable position kept in the ``Consumer`` model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from jobhook._ids import utcnow
from jobhook._models import JobEvent
from jobhook.django import models as m

__all__ = ["consume_once"]


def consume_once(
    store: Any, name: str, handle: Callable[[JobEvent], Any], *, batch: int = 100
) -> int:
    """Call ``handle`` for each event after ``name``'s position, in order, and move the
    position past each one it handled; return how many it handled.

    At least once: an event whose ``handle`` raised is not passed, and the error
    propagates (the next run starts with it again). Run one instance per name.
    """
    consumers = m.Consumer.objects.using(store.using)
    consumer, _ = consumers.get_or_create(name=name, defaults={"updated_at": utcnow()})
    handled = 0
    for event in store.events(after=consumer.position, limit=batch):
        handle(event)
        consumers.filter(name=name).update(position=event.id, updated_at=utcnow())
        handled += 1
    return handled
