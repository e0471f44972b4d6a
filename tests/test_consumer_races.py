"""Concurrent lease claims on every SQL backend: 8 threads (or tasks), each its own
owner, claim one consumer name at once, new and then with an expired lease; exactly
one wins each round, and a loser cannot move the position."""

from __future__ import annotations

import asyncio
import threading
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from jobhook._ids import utcnow

from .conftest import SyncFacade

WORKERS = 8
ROUNDS = 5
LEASE = 60.0


def _expire(store: Any, name: str) -> None:
    """Move the lease of ``name`` into the past, as if its owner had died."""
    engine, consumers = store.engine, store.tables.consumers
    statement = (
        sa.update(consumers)
        .where(consumers.c.name == name)
        .values(lease_expires_at=utcnow() - timedelta(hours=1))
    )
    if isinstance(store, SyncFacade):

        async def expire() -> None:
            async with engine.begin() as conn:
                await conn.execute(statement)

        store.runner.run(expire())
    else:
        with engine.begin() as conn:
            conn.execute(statement)


def _check_round(store: Any, name: str, owners: list[str], won: dict[str, int | None]) -> str:
    winners = [owner for owner, position in won.items() if position is not None]
    assert len(winners) == 1, won
    [winner] = winners
    [info] = [c for c in store.consumers() if c.name == name]
    assert info.owner == winner
    # Every loser is refused a write; the winner's position is untouched by them.
    before = info.position
    for owner in owners:
        if owner != winner:
            assert store.advance_consumer(name, owner, before + 100, lease=LEASE) is False
    [info] = [c for c in store.consumers() if c.name == name]
    assert (info.owner, info.position) == (winner, before)
    return winner


@pytest.mark.parametrize("kind", ["sqlite", "sqlite-lent", "postgres", "postgres-lent", "mariadb"])
def test_threads_claim_one_name_one_wins_each_round(make_store: Any, kind: str) -> None:
    store = make_store(kind)
    errors: list[BaseException] = []
    name = "mail"

    def claim(owner: str, barrier: threading.Barrier, won: dict[str, int | None]) -> None:
        barrier.wait()
        try:
            won[owner] = store.claim_consumer(name, owner, lease=LEASE)
        except BaseException as exc:  # collected: a deadlock may not escape
            errors.append(exc)

    for round_ in range(ROUNDS):
        owners = [f"r{round_}-w{n}" for n in range(WORKERS)]
        won: dict[str, int | None] = {}
        barrier = threading.Barrier(WORKERS)
        threads = [threading.Thread(target=claim, args=(o, barrier, won)) for o in owners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        winner = _check_round(store, name, owners, won)
        assert store.advance_consumer(name, winner, 10 * (round_ + 1), lease=LEASE)
        # The winner dies: the next round races for an expired lease.
        _expire(store, name)
    [info] = store.consumers()
    assert info.position == 10 * ROUNDS


@pytest.mark.parametrize("kind", ["async-sqlite", "async-postgres", "async-mariadb"])
def test_tasks_claim_one_name_one_wins_each_round(make_store: Any, kind: str) -> None:
    facade: SyncFacade = make_store(kind)
    store = facade.inner
    for round_ in range(ROUNDS):
        owners = [f"r{round_}-t{n}" for n in range(WORKERS)]

        async def main(owners: list[str]) -> list[int | None]:
            claims = (store.claim_consumer("mail", o, lease=LEASE) for o in owners)
            return list(await asyncio.gather(*claims))

        won = dict(zip(owners, facade.runner.run(main(owners)), strict=True))
        winner = _check_round(facade, "mail", owners, won)
        assert facade.advance_consumer("mail", winner, 10 * (round_ + 1), lease=LEASE)
        _expire(facade, "mail")
    [info] = facade.consumers()
    assert info.position == 10 * ROUNDS
