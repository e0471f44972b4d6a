"""Image generation with FastAPI and jobhook's async half.

A user types a prompt on ``/generate-images``; the submit route creates the job and
submits it by id with `AsyncGeneratorClient`; the backend's signed webhooks land on
``/webhooks/jobhook/{job_id}`` through jobhook's FastAPI adapter; the page follows each
job's progress and result as Server-Sent Events from ``/jobs/{job_id}/events``;
notifications are made from the store's event outbox by an `AsyncOutboxConsumer`, once
per finished job. With ``files_dir``, an `AsyncOutputKeeper` task copies each job's
pictures there before the job may succeed, and the page shows the kept copies (served
at ``/files/``), which outlive the backend's URLs.

Run it against the stub backend (see README.md)::

    jobhook fake-backend & python examples/fastapi_app/app.py
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import sqlalchemy as sa
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncEngine

from jobhook import (
    AsyncGeneratorClient,
    AsyncJobStore,
    AsyncOutboxConsumer,
    AsyncSQLJobStore,
    Job,
    JobEvent,
    JobNotFoundError,
    SubmitError,
    WebhookHandler,
)
from jobhook.fastapi import events_endpoint, webhook_endpoint
from jobhook.outputs import AsyncOutputKeeper, FetchPolicy, LocalStorage

HERE = Path(__file__).resolve().parent
BACKEND_URL = os.environ.get("JOBHOOK_BACKEND_URL", "http://127.0.0.1:8001")
APP_URL = os.environ.get("APP_URL", "http://127.0.0.1:8000")
DATABASE_URL = os.environ.get("JOBHOOK_DATABASE_URL", f"sqlite:///{HERE / 'jobs.db'}")
FILES_DIR = os.environ.get("JOBHOOK_FILES_DIR", str(HERE / "files"))
# What `jobhook fake-backend` signs with unless told otherwise. In production the
# secret comes from your secret store, shared with the backend and nobody else.
WEBHOOK_SECRET = os.environ.get(
    "JOBHOOK_WEBHOOK_SECRET", "whsec_am9iaG9vay1kZXZlbG9wbWVudC1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u"
)
USER_ID = "user-1"  # a real app takes the user from its login
log = logging.getLogger(__name__)
templates = Jinja2Templates(directory=HERE / "templates")


NOTIFICATIONS = sa.Table(
    "notifications",
    sa.MetaData(),
    # One row per outbox event: the consumer hands an event over at least once, and the
    # key makes a second hand-over change nothing.
    sa.Column("event_id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("user_id", sa.String(255), nullable=False, index=True),
    sa.Column("text", sa.Text, nullable=False),
)


class Notifier:
    """Makes one notification per finished job from the store's outbox, through an
    `AsyncOutboxConsumer`, as a row of the app's own ``notifications`` table (in the
    store's database) keyed by the event's id. The consumer's position is kept in
    jobhook's tables: a restart neither loses a notification nor makes one twice.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.engine: AsyncEngine = store.engine
        self.consumer = AsyncOutboxConsumer(store, "notifications", self.handle)
        self._lock = asyncio.Lock()
        self._created = False

    async def handle(self, event: JobEvent) -> None:
        if not event.status.terminal or event.owner_id is None:
            return
        job = await self.store.get(event.job_id)
        row = {"event_id": event.id, "user_id": event.owner_id, "text": notification(job)}
        try:
            async with self.engine.begin() as conn:
                await conn.execute(NOTIFICATIONS.insert(), row)
        except sa.exc.IntegrityError:
            pass  # made already: the consumer handed this event over again

    async def for_user(self, user_id: str) -> list[str]:
        # Here on each page view; a busy app runs ``consumer.run(stop)`` in a task.
        async with self._lock:
            if not self._created:
                async with self.engine.begin() as conn:
                    await conn.run_sync(NOTIFICATIONS.metadata.create_all)
                self._created = True
            while await self.consumer.run_once() == self.consumer.batch:
                pass
        query = (
            sa.select(NOTIFICATIONS.c.text)
            .where(NOTIFICATIONS.c.user_id == user_id)
            .order_by(NOTIFICATIONS.c.event_id.desc())
        )
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).scalars())


def notification(job: Job) -> str:
    prompt = job.input.get("prompt", "")
    if job.status == "succeeded":
        return f"Your image “{prompt}” is ready."
    reason = job.error.message if job.error else job.status
    return f"Your image “{prompt}” could not be made: {reason}."


def generation(job: Job) -> dict[str, Any]:
    """What the page shows of a job."""
    images = job.output.get("images") if isinstance(job.output, dict) else None
    return {
        "id": job.id,
        "prompt": job.input.get("prompt", ""),
        "status": job.status.value,
        "progress": job.progress or 0,
        "image": images[0] if images else None,
        "error": job.error.message if job.error else None,
    }


def create_app(
    store: AsyncJobStore | None = None,
    *,
    backend_url: str = BACKEND_URL,
    app_url: str = APP_URL,
    secret: str = WEBHOOK_SECRET,
    backend_http: httpx.AsyncClient | None = None,
    files_dir: str | Path | None = None,
    fetch_policy: FetchPolicy | None = None,
    keeper_interval: float | None = 0.2,
) -> FastAPI:
    """The app. Tests pass their own store and an ``httpx.AsyncClient`` to a fake.

    With ``files_dir`` the pictures are kept there (fetched under ``fetch_policy``) by
    ``app.state.keeper``, which a task runs every ``keeper_interval`` seconds while the
    app runs (None: no task; the caller runs ``keeper.run_once()``).
    """
    plain: Any = store if store is not None else AsyncSQLJobStore(DATABASE_URL)
    jobs: Any = plain
    keeper: AsyncOutputKeeper | None = None
    storage: LocalStorage | None = None
    if files_dir is not None:
        storage = LocalStorage(files_dir, base_url=f"{app_url}/files/")
        keeper = AsyncOutputKeeper(plain, storage, policy=fetch_policy)
        jobs = keeper.store  # a success waits until its pictures are kept
    client = AsyncGeneratorClient(
        jobs,
        backend_url,
        callback_url=f"{app_url}/webhooks/jobhook/{{job_id}}",
        status_path="/jobs/{job_id}",
        http_client=backend_http,
    )
    handler = WebhookHandler(jobs, secret=secret)
    notifier = Notifier(plain)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if hasattr(plain, "create_schema"):
            await plain.create_schema()
        stop = asyncio.Event()
        keeping = None
        if keeper is not None:
            await keeper.create_schema()
            if keeper_interval is not None:
                keeping = asyncio.create_task(keeper.run(stop, interval=keeper_interval))
        yield
        stop.set()
        if keeping is not None:
            await keeping
        if keeper is not None:
            keeper.close()
        await client.aclose()
        await plain.close()

    app = FastAPI(lifespan=lifespan)
    app.state.keeper = keeper
    if storage is not None:
        # The kept copies, which outlive the backend's URLs.
        app.mount("/files", StaticFiles(directory=storage.directory), name="files")

    async def state() -> dict[str, Any]:
        listed = await jobs.list(owner_id=USER_ID, kind="image", limit=20)
        return {
            "generations": [generation(job) for job in listed],
            "notifications": await notifier.for_user(USER_ID),
        }

    @app.get("/generate-images")
    async def page(request: Request) -> Response:
        return templates.TemplateResponse(request, "generate_images.html", await state())

    @app.post("/generate-images")
    async def submit(request: Request) -> RedirectResponse:
        form = parse_qs((await request.body()).decode())
        prompt = form.get("prompt", [""])[0].strip()
        if not prompt:
            raise HTTPException(400, "a prompt is required")
        try:
            await client.submit({"prompt": prompt}, kind="image", owner_id=USER_ID)
        except SubmitError as exc:
            # The job is stored either way: failed (the page shows why) or, when the
            # backend may have it, pending for the reconciler.
            log.warning("submit failed: %s", exc)
        return RedirectResponse("/generate-images", status_code=303)

    @app.get("/generate-images/status")
    async def status() -> JSONResponse:
        return JSONResponse(await state())

    async def may_follow(request: Request, job_id: str) -> bool:
        """Only the job's owner may follow it (a real app asks its login)."""
        try:
            return (await jobs.get(job_id)).owner_id == USER_ID
        except JobNotFoundError:
            return False

    app.post("/webhooks/jobhook/{job_id}")(webhook_endpoint(handler))
    app.get("/jobs/{job_id}/events")(events_endpoint(plain, authorize=may_follow))
    return app


if __name__ == "__main__":
    import uvicorn

    port = httpx.URL(APP_URL).port or 8000
    print(f"open {APP_URL}/generate-images (backend: {BACKEND_URL})")
    # The stub backend serves its pictures on loopback, which only development allows.
    loopback = FetchPolicy(allow_networks=["127.0.0.0/8"])
    uvicorn.run(create_app(files_dir=FILES_DIR, fetch_policy=loopback), host="127.0.0.1", port=port)
