"""A FastAPI app for uvicorn, over the SQLite file named by JOBHOOK_TEST_DATABASE."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from jobhook import AsyncSQLJobStore, WebhookHandler
from jobhook.fastapi import webhook_endpoint

store = AsyncSQLJobStore(f"sqlite+aiosqlite:///{os.environ['JOBHOOK_TEST_DATABASE']}")
secret = os.environ["JOBHOOK_TEST_SECRET"]


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    await store.close()


app = FastAPI(lifespan=lifespan)
app.post("/webhooks/jobhook/{job_id}")(webhook_endpoint(WebhookHandler(store, secret=secret)))
big = WebhookHandler(store, secret=secret, max_body_bytes=4_000_000)
app.post("/big/webhooks/jobhook/{job_id}")(webhook_endpoint(big))
