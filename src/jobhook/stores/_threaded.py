"""SQLite for the async store: the sync engine's statements in worker threads.

SQLAlchemy's aiosqlite adapter sends every DB-API call (cursor, execute, fetch, close,
commit) to aiosqlite's thread and back: four or more hops per statement, and three
statements per delivery. An `AsyncSQLJobStore` that makes its own engine for a SQLite
file runs each operation instead as the sync store does, `_run_on` on a sync engine of
the stdlib driver, in one of a few worker threads: one hop per operation, and nothing
in between blocks the event loop. It is the same code on the same public
`Connection.execute`; only the thread differs.

What runs in the thread is the whole operation; a caller cancelled while it runs stops
waiting for it, and the operation still ends (commits or rolls back) in its thread, as
an aiosqlite statement already sent does. The caller's context variables go with it,
so tracing spans opened around the call are the statements' parents.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL

__all__ = ["WORKERS", "SQLiteThreads", "threads_for"]

T = TypeVar("T")

#: Worker threads (and at most as many pooled connections) per store. SQLite runs one
#: writer at a time; WAL readers run beside it.
WORKERS = 4


class SQLiteThreads:
    """A sync engine on the same SQLite file, and the threads that use it."""

    def __init__(self, engine: sa.Engine) -> None:
        self.engine = engine
        self._pid = os.getpid()
        self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="jobhook-sqlite")

    async def run(self, work: Callable[..., T], *args: Any) -> T:
        """``work(connection, *args)`` on a pooled connection, in a worker thread."""
        if os.getpid() != self._pid:
            self._after_fork()
        call = functools.partial(contextvars.copy_context().run, self._on_connection, work, *args)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _after_fork(self) -> None:
        # A forked process has none of its parent's threads, and must not use the
        # parent's SQLite connections: new threads, and the pool left to the parent.
        self._pid = os.getpid()
        self._executor = ThreadPoolExecutor(WORKERS, thread_name_prefix="jobhook-sqlite")
        self.engine.dispose(close=False)

    def _on_connection(self, work: Callable[..., T], *args: Any) -> T:
        with self.engine.connect() as conn:
            return work(conn, *args)

    async def close(self) -> None:
        """Wait for the running operations, then close the connections."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        self.engine.dispose()


def threads_for(url: URL, make_engine: Callable[[URL], sa.Engine]) -> SQLiteThreads | None:
    """The worker threads for an async store's own engine on ``url``: only a SQLite
    file through aiosqlite (an in-memory database lives in one connection, which a
    second engine would not see)."""
    if url.get_backend_name() != "sqlite" or url.get_driver_name() != "aiosqlite":
        return None
    database = url.database or ""
    if (
        database in ("", ":memory:")
        or "mode=memory" in database
        or url.query.get("mode") == "memory"
    ):
        return None
    return SQLiteThreads(make_engine(url.set(drivername="sqlite+pysqlite")))
