"""Store operations as steps: generators that yield statements and receive their rows.

Each operation is written once (`jobhook.stores._operations`) as a generator that
yields ``(statement, parameters)`` and is sent back the statement's rows; the sync and
the async store drive the same generators on their own connections. A constraint
violation is thrown into the generator, which decides what it means (a duplicate job
id is `JobExistsError`).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

__all__ = ["Counted", "Rollback", "Rows", "Step", "Steps", "drive"]

T = TypeVar("T")
#: What every statement hands back to the step that yielded it: its rows, as mappings.
Rows = list[Mapping[str, Any]]
Step = tuple[sa.Executable, Mapping[str, Any] | None]


class Counted(list[Mapping[str, Any]]):
    """What a statement that returns no rows hands back: no rows, and what the driver
    counted (SQLAlchemy's public `CursorResult.rowcount` and `CursorResult.lastrowid`),
    read when a step asks, before the next statement runs."""

    def __init__(self, result: sa.CursorResult[Any]) -> None:
        super().__init__()
        self._result = result

    @property
    def rowcount(self) -> int:
        """Rows the statement matched (MySQL: found, not only changed, rows)."""
        return self._result.rowcount

    @property
    def lastrowid(self) -> Any:
        """MySQL: the value of the statement's ``LAST_INSERT_ID(expr)``, or the id it
        generated."""
        return self._result.lastrowid


Steps = Generator[Step, Rows, T]


class Rollback(Exception):
    """Raised by steps to end the transaction with a rollback and still return a value."""

    def __init__(self, value: Any) -> None:
        super().__init__()
        self.value = value


def drive(steps: Steps[T], execute: Callable[[sa.Executable, Any], Rows]) -> T:
    """Run ``steps`` to their end, each statement through ``execute``; a constraint
    violation (SQLAlchemy's ``IntegrityError``) is thrown into the steps."""
    try:
        statement, params = next(steps)
        while True:
            try:
                rows = execute(statement, params)
            except sa_exc.IntegrityError as exc:
                statement, params = steps.throw(exc)
            else:
                statement, params = steps.send(rows)
    except StopIteration as stop:
        value: T = stop.value
        return value
