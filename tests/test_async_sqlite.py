"""`AsyncSQLJobStore` on a SQLite file of its own: operations run in worker threads."""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import create_async_engine

from jobhook import JobUpdate, Outcome, StoreUnavailableError
from jobhook.stores.sql import AsyncSQLJobStore

TRACE: contextvars.ContextVar[str | None] = contextvars.ContextVar("trace", default=None)


def test_operations_run_off_the_event_loop_and_never_block_it(tmp_path: Path) -> None:
    """While another process holds SQLite's write lock, an apply waits for it in a
    worker thread; the event loop keeps running other tasks meanwhile."""

    async def main() -> None:
        store = AsyncSQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
        await store.create_schema()
        job = await store.create({"prompt": "fox"})
        blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        tick_task = asyncio.create_task(ticker())
        apply = asyncio.create_task(store.apply(job.id, JobUpdate("running"), delivery_id="d1"))
        await asyncio.sleep(0.4)
        assert not apply.done()  # waiting for the lock
        blocker.execute("ROLLBACK")
        blocker.close()
        assert (await apply).applied
        tick_task.cancel()
        assert ticks >= 10, ticks  # the loop ran while the write waited
        assert (await store.get(job.id)).status == "running"
        await store.close()

    asyncio.run(main())


def test_the_callers_context_reaches_the_statements(tmp_path: Path) -> None:
    """Context variables (a tracing span, say) set by the caller are the ones the
    statements run under, in the worker thread."""
    seen: list[tuple[str | None, str]] = []

    async def main() -> None:
        store = AsyncSQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
        await store.create_schema()
        threads = store._threads
        assert threads is not None
        sa.event.listen(
            threads.engine,
            "before_cursor_execute",
            lambda *a: seen.append((TRACE.get(), threading.current_thread().name)),
        )
        TRACE.set("span-1")
        await store.create({"prompt": "fox"})
        await store.close()

    asyncio.run(main())
    assert seen
    assert all(trace == "span-1" for trace, _ in seen)
    assert all(name.startswith("jobhook-sqlite") for _, name in seen)


def test_a_writer_blocked_past_the_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    async def main() -> None:
        store = AsyncSQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
        await store.create_schema()
        job = await store.create({})
        assert store._threads is not None
        sa.event.listen(
            store._threads.engine,
            "checkout",
            lambda dbapi, record, proxy: dbapi.execute("PRAGMA busy_timeout = 50"),
        )
        blocker = sqlite3.connect(tmp_path / "jobs.db", isolation_level=None)
        blocker.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(StoreUnavailableError, match="locked"):
                await store.apply(job.id, JobUpdate("running"))
        finally:
            blocker.execute("ROLLBACK")
            blocker.close()
        assert (await store.apply(job.id, JobUpdate("running"))).applied
        await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("url", ["sqlite+aiosqlite://", "sqlite+aiosqlite:///:memory:"])
def test_an_in_memory_database_stays_on_its_one_connection(url: str) -> None:
    """An in-memory database exists in one connection only: no second engine."""

    async def main() -> None:
        store = AsyncSQLJobStore(url)
        assert store._threads is None
        await store.create_schema()
        job = await store.create({"prompt": "fox"})
        result = await store.apply(job.id, JobUpdate("succeeded", output="x"), delivery_id="d")
        assert result.outcome is Outcome.APPLIED
        assert [e.status for e in await store.events()] == ["succeeded"]
        await store.close()

    asyncio.run(main())


def test_a_lent_engine_runs_every_statement_on_itself(tmp_path: Path) -> None:
    """An app's own `AsyncEngine` is used as given: its listeners see every statement."""
    statements: list[Any] = []

    async def main() -> None:
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'jobs.db'}")
        sa.event.listen(
            engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2])
        )
        store = AsyncSQLJobStore(engine)
        assert store._threads is None
        await store.create_schema()
        job = await store.create({})
        await store.apply(job.id, JobUpdate("running"), delivery_id="d1")
        await store.close()
        await engine.dispose()

    asyncio.run(main())
    assert any("UPDATE jobhook_jobs" in sql for sql in statements)


def test_close_waits_for_the_operations_handed_to_the_threads(tmp_path: Path) -> None:
    async def main() -> None:
        store = AsyncSQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
        await store.create_schema()
        jobs = [await store.create({"n": i}) for i in range(20)]
        pending = [
            asyncio.create_task(store.apply(j.id, JobUpdate("running"), delivery_id=f"d{j.id}"))
            for j in jobs
        ]
        await asyncio.sleep(0)  # every apply is handed to a worker thread
        await store.close()  # the ones handed over still end, and commit
        results = await asyncio.gather(*pending)
        assert all(r.applied for r in results)

    asyncio.run(main())
    check = AsyncSQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")

    async def count() -> int:
        n = len(await check.events(limit=100))
        await check.close()
        return n

    assert asyncio.run(count()) == 20


def test_a_forked_process_gets_threads_and_connections_of_its_own(tmp_path: Path) -> None:
    """A store made before ``fork()`` works in the child: the parent's worker threads
    do not exist there, and its SQLite connections stay the parent's."""
    import multiprocessing

    async def make() -> AsyncSQLJobStore:
        store = AsyncSQLJobStore(f"sqlite:///{tmp_path / 'jobs.db'}")
        await store.create_schema()
        await store.create({"prompt": "parent"}, job_id="parent")
        return store

    store = asyncio.run(make())
    context = multiprocessing.get_context("fork")
    child = context.Process(target=_child_creates, args=(store,))
    child.start()
    child.join(60)
    assert child.exitcode == 0

    async def read() -> list[str]:
        ids = sorted(job.id for job in await store.list())
        await store.close()
        return ids

    assert asyncio.run(read()) == ["child", "parent"]


def _child_creates(store: AsyncSQLJobStore) -> None:
    async def main() -> None:
        await store.create({"prompt": "child"}, job_id="child")
        assert (await store.get("parent")).input == {"prompt": "parent"}

    asyncio.run(asyncio.wait_for(main(), 30))
