"""The async output keeper: `OutputKeeper`'s twin for the async stores."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from jobhook._models import ApplyResult, Job, JobUpdate
from jobhook.exceptions import JobNotFoundError, OutputError, ValidationError
from jobhook.outputs._fetch import FetchPolicy
from jobhook.outputs._files import FileFinder, value_at
from jobhook.outputs._keeper import KeeperCore
from jobhook.outputs._kept import (
    _SUPPORTED,
    KeptOutput,
    Listener,
    is_django_store,
)
from jobhook.outputs._letters import afind_dead_letter
from jobhook.outputs._storage import Storage
from jobhook.stores._outputs import (
    FAILED,
    KEPT,
    AsyncHolds,
    AsyncMemoryHolds,
    AsyncSQLHolds,
    Hold,
)

__all__ = ["AsyncOutputKeeper"]

log = logging.getLogger("jobhook.outputs")


def _async_holds_for(store: Any) -> AsyncHolds:
    from jobhook.stores.memory import AsyncInMemoryJobStore, InMemoryJobStore
    from jobhook.stores.sql import AsyncSQLJobStore, SQLJobStore

    if isinstance(store, AsyncSQLJobStore):
        return AsyncSQLHolds(store.engine, store.tables.prefix)
    if isinstance(store, AsyncInMemoryJobStore):
        return AsyncMemoryHolds()
    sync = isinstance(store, (SQLJobStore, InMemoryJobStore)) or is_django_store(store)
    hint = "; use OutputKeeper" if sync else ""
    raise ValidationError(f"{_SUPPORTED}, not {type(store).__name__}{hint}")


class _AsyncKeepingStore:
    """The async store as the keeper guards it: a success that names files is held."""

    def __init__(self, store: Any, keeper: AsyncOutputKeeper) -> None:
        self._store = store
        self._keeper = keeper

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def __repr__(self) -> str:
        return f"<kept outputs of {self._store!r}>"

    async def apply(
        self, job_id: str, update: JobUpdate, *, delivery_id: str | None = None
    ) -> ApplyResult:
        """As `OutputKeeper.store`'s ``apply``, awaited."""
        held = await self._keeper._hold(job_id, update, delivery_id)
        if held is not None:
            return held
        result: ApplyResult = await self._store.apply(job_id, update, delivery_id=delivery_id)
        return result

    async def replay_dead_letter(
        self, dead_letter_id: int, *, job_id: str | None = None
    ) -> ApplyResult:
        """As `OutputKeeper.store`'s ``replay_dead_letter``, awaited."""
        letter = await afind_dead_letter(self._store, dead_letter_id)
        target = letter.job_id if job_id is None else job_id
        held = await self._keeper._hold(target, letter.update, letter.delivery_id, dead_letter_id)
        if held is not None:
            return held
        result: ApplyResult = await self._store.replay_dead_letter(dead_letter_id, job_id=job_id)
        return result


class AsyncOutputKeeper(KeeperCore):
    """The async twin of `OutputKeeper`, for an `AsyncInMemoryJobStore` or an
    `AsyncSQLJobStore` (any other raises `ValidationError`).

    The same arguments, rules and guarantees; `store` is awaited like the plain async
    store (give it to `WebhookHandler.ahandle`, the `AsyncGeneratorClient`, the
    `AsyncReconciler`), and `create_schema`, `kept`, `run_once` and `run` are
    coroutines. Files are fetched and written in a worker thread, through the same
    fetcher and `FetchPolicy` checks as `OutputKeeper`'s, so the event loop never waits
    on them. Run one keeper per store.
    """

    def __init__(
        self,
        store: Any,
        storage: Storage,
        *,
        files: FileFinder | None = None,
        backend: Any = None,
        policy: FetchPolicy | None = None,
        max_attempts: int = 5,
        retry_after: float = 30.0,
        clock: Callable[[], float] = time.time,
        listeners: Iterable[Listener] = (),
        http_client: httpx.Client | None = None,
        holds: AsyncHolds | None = None,
    ) -> None:
        self._holds = holds if holds is not None else _async_holds_for(store)
        super().__init__(
            store,
            storage,
            files=files,
            backend=backend,
            policy=policy,
            max_attempts=max_attempts,
            retry_after=retry_after,
            clock=clock,
            listeners=listeners,
            http_client=http_client,
        )
        self._guarded = _AsyncKeepingStore(store, self)

    @property
    def store(self) -> Any:
        """The guarded async store: the plain store's methods, with ``apply`` and
        ``replay_dead_letter`` holding back successes whose files are not kept yet."""
        return self._guarded

    async def create_schema(self) -> None:
        """Create the holds table when missing (SQL stores; idempotent)."""
        await self._holds.create_schema()

    @property
    def metadata(self) -> Any:
        """The holds table's SQLAlchemy `MetaData` (SQL stores); None in memory."""
        return getattr(self._holds, "metadata", None)

    async def _hold(
        self,
        job_id: str,
        update: JobUpdate,
        delivery_id: str | None,
        dead_letter_id: int | None = None,
    ) -> ApplyResult | None:
        if not self._holds_back(update):
            return None
        try:
            job: Job = await self._plain.get(job_id)
        except JobNotFoundError:
            return None
        if job.terminal:
            return None
        added = await self._holds.add(job_id, delivery_id, update, self._now(), dead_letter_id)
        return self._held(job, added)

    async def kept(self, job_id: str) -> KeptOutput | None:
        """What the keeper did for ``job_id``; None when nothing was held for it."""
        return self._report(await self._holds.get(job_id))

    async def run_once(self, *, limit: int = 100) -> int:
        """Work on every hold that is due; return how many were settled."""
        settled = 0
        for hold in await self._holds.due(self._now(), limit):
            try:
                if await self._keep(hold):
                    settled += 1
            except Exception as exc:
                log.exception("job %s: keeping its output failed", hold.job_id)
                await self._retry(hold, f"{type(exc).__name__}: {exc}")
        return settled

    async def run(self, stop: asyncio.Event, *, interval: float = 1.0) -> None:
        """Await `run_once` every ``interval`` seconds until ``stop`` is set; a failing
        round is logged and tried again."""
        while not stop.is_set():
            try:
                await self.run_once()
            except Exception:
                log.exception("the output keeper's round failed; trying again")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def _keep(self, hold: Hold) -> bool:
        paths, files = self._to_keep(hold)
        for index, path in enumerate(paths):
            if files[index] is not None:
                continue  # kept before a restart
            url = value_at(hold.update.output, path)
            try:
                files[index] = await asyncio.to_thread(self._copy, hold, index, url)
            except (OutputError, OSError) as exc:
                final, reason = self._copy_failure(index, exc)
                return await (self._give_up(hold, reason) if final else self._retry(hold, reason))
            await self._holds.save(hold.job_id, now=self._now(), files=files)
        update = self._kept_update(hold, paths, files)
        result = await self._apply(hold, update, hold.delivery_id)
        state = self._settled(result, KEPT, update)
        await self._holds.save(hold.job_id, now=self._now(), state=state)
        await self._close_letter(hold)
        return True

    async def _apply(self, hold: Hold, update: JobUpdate, delivery_id: str | None) -> ApplyResult:
        result: ApplyResult = await self._plain.apply(hold.job_id, update, delivery_id=delivery_id)
        for answer in self._applied(hold, update, result):
            if inspect.isawaitable(answer):
                try:
                    await answer
                except Exception:
                    log.exception("output keeper listener failed")
        return result

    async def _close_letter(self, hold: Hold) -> None:
        if hold.dead_letter_id is not None:
            try:
                await self._plain.replay_dead_letter(hold.dead_letter_id, job_id=hold.job_id)
            except Exception:
                log.exception(
                    "job %s: marking dead letter %s replayed failed",
                    hold.job_id,
                    hold.dead_letter_id,
                )

    async def _give_up(self, hold: Hold, reason: str) -> bool:
        update, delivery_id = self._failure(hold, reason)
        result = await self._apply(hold, update, delivery_id)
        await self._holds.save(
            hold.job_id,
            now=self._now(),
            state=self._settled(result, FAILED, update),
            attempts=hold.attempts + 1,
            last_error=reason,
        )
        await self._close_letter(hold)
        return True

    async def _retry(self, hold: Hold, reason: str) -> bool:
        plan = self._retry_plan(hold, reason)
        if plan is None:
            return await self._give_up(hold, f"{reason} (after {hold.attempts + 1} attempts)")
        await self._holds.save(hold.job_id, **plan)
        return False
