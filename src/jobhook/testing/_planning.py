"""When each callback of a job leaves, and what chaos does to it: pure, given the RNG."""

from __future__ import annotations

import random
import time
import uuid
from typing import Any

import attrs

from jobhook._models import JobUpdate
from jobhook.testing._scripts import Chaos
from jobhook.testing._wires import FakeJob, Wire

__all__ = ["Planned", "plan"]


@attrs.frozen(eq=False)
class Planned:
    """One step of a job, to be sent (or silently passed) at ``due``."""

    due: float
    job: FakeJob
    payload: dict[str, Any] | None  # None: the backend sends nothing for this step
    msg_id: str
    dropped: bool
    step: int  # index of the script step, -1 for a cancel callback
    retried: bool


def plan(
    job: FakeJob,
    steps: list[tuple[int, JobUpdate]],
    wire: Wire,
    *,
    rng: random.Random,
    chaos: Chaos | None,
    step_interval: float,
) -> list[Planned]:
    """The callbacks for ``steps`` in the order they leave, with ``chaos`` applied.

    Steps the backend sends nothing for stay in place and are never duplicated or
    dropped: they only move the job on when their turn comes. A duplicate is the same
    callback again (same id, same body).
    """
    items = [
        (index, update, f"msg_{uuid.uuid4().hex}", wire.callback(job, index, update))
        for index, update in steps
    ]
    if chaos is not None:
        for i in range(len(items) - 1):
            both = items[i][3] is not None and items[i + 1][3] is not None
            if both and rng.random() < chaos.reorder:
                items[i], items[i + 1] = items[i + 1], items[i]
        for i in range(len(items) - 1, -1, -1):
            if items[i][3] is not None and rng.random() < chaos.duplicate:
                items.insert(rng.randint(i + 1, len(items)), items[i])
    now = time.monotonic()
    planned = []
    for position, (index, update, msg_id, payload) in enumerate(items):
        odds = chaos if payload is not None else None
        extra = rng.uniform(0, odds.delay) if odds is not None and odds.delay else 0.0
        dropped = odds is not None and rng.random() < odds.drop
        due = now + position * step_interval + extra
        retried = wire.retried(job, update)
        planned.append(Planned(due, job, payload, msg_id, dropped, index, retried))
    return planned
