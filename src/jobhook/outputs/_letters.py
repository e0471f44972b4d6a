"""One dead letter by id, for the keepers' guarded ``replay_dead_letter``.

The stores answer ``dead_letters()`` as a list; a replay needs one letter, to decide
whether its success is to be held before anything is applied.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from jobhook._models import DeadLetter
from jobhook.exceptions import DeadLetterNotFoundError
from jobhook.stores._errors import DATABASE_ERRORS, store_error
from jobhook.stores._rows import dead_letter_from_row

__all__ = ["afind_dead_letter", "find_dead_letter"]


def _select(store: Any, dead_letter_id: int) -> Any:
    letters = store.tables.dead_letters
    return sa.select(letters).where(letters.c.id == dead_letter_id)


def _pick(letters: list[DeadLetter], dead_letter_id: int) -> DeadLetter:
    for letter in letters:
        if letter.id == dead_letter_id:
            return letter
    raise DeadLetterNotFoundError(dead_letter_id)


def find_dead_letter(store: Any, dead_letter_id: int) -> DeadLetter:
    """The dead letter ``dead_letter_id`` of a sync store. Raises
    `DeadLetterNotFoundError`, or `StoreUnavailableError` when the database fails."""
    from jobhook.stores.sql import SQLJobStore

    if isinstance(store, SQLJobStore):
        try:
            with store.engine.connect() as conn:
                row = conn.execute(_select(store, dead_letter_id)).mappings().first()
        except DATABASE_ERRORS as exc:
            raise store_error(exc, store.engine.url) from exc
        return _pick([] if row is None else [dead_letter_from_row(row)], dead_letter_id)
    # Ids grow from 1, so letter n is among the first n.
    letters = store.dead_letters(include_replayed=True, limit=max(dead_letter_id, 1))
    return _pick(letters, dead_letter_id)


async def afind_dead_letter(store: Any, dead_letter_id: int) -> DeadLetter:
    """`find_dead_letter` for an async store."""
    from jobhook.stores.sql import AsyncSQLJobStore

    if isinstance(store, AsyncSQLJobStore):
        try:
            async with store.engine.connect() as conn:
                row = (await conn.execute(_select(store, dead_letter_id))).mappings().first()
        except DATABASE_ERRORS as exc:
            raise store_error(exc, store.engine.url) from exc
        return _pick([] if row is None else [dead_letter_from_row(row)], dead_letter_id)
    letters = await store.dead_letters(include_replayed=True, limit=max(dead_letter_id, 1))
    return _pick(letters, dead_letter_id)
