"""Image generation with Flask and jobhook.

A user types a prompt on ``/generate-images``; the submit route creates the job and
submits it by id with `GeneratorClient`; the backend's signed webhooks land on
``/webhooks/jobhook/<job_id>`` through jobhook's Flask adapter; the page follows each
job's progress and result as Server-Sent Events from ``/jobs/<job_id>/events``;
notifications are made from the store's event outbox by an `OutboxConsumer`, once per
finished job. With ``files_dir``, an `OutputKeeper`
copies each job's pictures there before the job may succeed, and the page shows the
kept copies (served at ``/files/``), which outlive the backend's URLs.

Run it against the stub backend (see README.md)::

    jobhook fake-backend & python examples/flask_app/app.py
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
from flask import Flask, abort, jsonify, redirect, render_template, request, send_from_directory
from werkzeug.wrappers import Response

from jobhook import (
    GeneratorClient,
    Job,
    JobEvent,
    JobNotFoundError,
    JobStore,
    OutboxConsumer,
    SQLJobStore,
    SubmitError,
    WebhookHandler,
)
from jobhook.flask import events_view, webhook_view
from jobhook.outputs import FetchPolicy, LocalStorage, OutputKeeper

HERE = Path(__file__).resolve().parent
BACKEND_URL = os.environ.get("JOBHOOK_BACKEND_URL", "http://127.0.0.1:8001")
APP_URL = os.environ.get("APP_URL", "http://127.0.0.1:5000")
DATABASE_URL = os.environ.get("JOBHOOK_DATABASE_URL", f"sqlite:///{HERE / 'jobs.db'}")
FILES_DIR = os.environ.get("JOBHOOK_FILES_DIR", str(HERE / "files"))
# What `jobhook fake-backend` signs with unless told otherwise. In production the
# secret comes from your secret store, shared with the backend and nobody else.
WEBHOOK_SECRET = os.environ.get(
    "JOBHOOK_WEBHOOK_SECRET", "whsec_am9iaG9vay1kZXZlbG9wbWVudC1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u"
)
USER_ID = "user-1"  # a real app takes the user from its login


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
    `OutboxConsumer`, as a row of the app's own ``notifications`` table (in the store's
    database) keyed by the event's id. The consumer's position is kept in jobhook's
    tables: a restart neither loses a notification nor makes one twice.
    """

    def __init__(self, store: Any) -> None:
        self.store = store
        self.engine: sa.Engine = store.engine
        NOTIFICATIONS.metadata.create_all(self.engine)
        self.consumer = OutboxConsumer(store, "notifications", self.handle)
        self._lock = threading.Lock()

    def handle(self, event: JobEvent) -> None:
        if not event.status.terminal or event.owner_id is None:
            return
        job = self.store.get(event.job_id)
        row = {"event_id": event.id, "user_id": event.owner_id, "text": notification(job)}
        try:
            with self.engine.begin() as conn:
                conn.execute(NOTIFICATIONS.insert(), row)
        except sa.exc.IntegrityError:
            pass  # made already: the consumer handed this event over again

    def for_user(self, user_id: str) -> list[str]:
        # Here on each page view; a busy app runs ``consumer.run(stop)`` in a worker.
        with self._lock:
            while self.consumer.run_once() == self.consumer.batch:
                pass
        query = (
            sa.select(NOTIFICATIONS.c.text)
            .where(NOTIFICATIONS.c.user_id == user_id)
            .order_by(NOTIFICATIONS.c.event_id.desc())
        )
        with self.engine.connect() as conn:
            return list(conn.execute(query).scalars())


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
    store: JobStore | None = None,
    *,
    backend_url: str = BACKEND_URL,
    app_url: str = APP_URL,
    secret: str = WEBHOOK_SECRET,
    backend_http: httpx.Client | None = None,
    files_dir: str | Path | None = None,
    fetch_policy: FetchPolicy | None = None,
    keeper_interval: float | None = 0.2,
) -> Flask:
    """The app. Tests pass their own store and an ``httpx.Client`` that reaches a fake.

    With ``files_dir`` the pictures are kept there (fetched under ``fetch_policy``) by
    ``app.extensions["jobhook_keeper"]``, which a thread runs every ``keeper_interval``
    seconds (None: no thread; tests run its rounds themselves);
    ``app.extensions["jobhook_keeper_stop"].set()`` stops it.
    """
    if store is None:
        store = SQLJobStore(DATABASE_URL, create_schema=True)
    app = Flask(__name__, template_folder=str(HERE / "templates"))
    if files_dir is not None:
        storage = LocalStorage(files_dir, base_url=f"{app_url}/files/")
        keeper = OutputKeeper(store, storage, policy=fetch_policy, create_schema=True)
        store = keeper.store  # a success waits until its pictures are kept
        stop = threading.Event()
        app.extensions["jobhook_keeper"] = keeper
        app.extensions["jobhook_keeper_stop"] = stop
        if keeper_interval is not None:
            threading.Thread(
                target=keeper.run, args=(stop,), kwargs={"interval": keeper_interval}, daemon=True
            ).start()

        @app.get("/files/<path:key>")
        def kept_file(key: str) -> Response:
            return send_from_directory(storage.directory, key)

    client = GeneratorClient(
        store,
        backend_url,
        callback_url=f"{app_url}/webhooks/jobhook/{{job_id}}",
        status_path="/jobs/{job_id}",
        http_client=backend_http,
    )
    handler = WebhookHandler(store, secret=secret)
    notifier = Notifier(store)

    @app.get("/generate-images")
    def page() -> str:
        jobs = store.list(owner_id=USER_ID, kind="image", limit=20)
        return render_template(
            "generate_images.html",
            generations=[generation(job) for job in jobs],
            notifications=notifier.for_user(USER_ID),
        )

    @app.post("/generate-images")
    def submit() -> Response:
        prompt = request.form.get("prompt", "").strip()
        if not prompt:
            abort(400, "a prompt is required")
        try:
            client.submit({"prompt": prompt}, kind="image", owner_id=USER_ID)
        except SubmitError as exc:
            # The job is stored either way: failed (the page shows why) or, when the
            # backend may have it, pending for the reconciler.
            app.logger.warning("submit failed: %s", exc)
        return redirect("/generate-images", code=303)

    @app.get("/generate-images/status")
    def status() -> Response:
        jobs = store.list(owner_id=USER_ID, kind="image", limit=20)
        return jsonify(
            generations=[generation(job) for job in jobs],
            notifications=notifier.for_user(USER_ID),
        )

    def may_follow(request: Any, job_id: str) -> bool:
        """Only the job's owner may follow it (a real app asks its login)."""
        try:
            return store.get(job_id).owner_id == USER_ID
        except JobNotFoundError:
            return False

    app.add_url_rule(
        "/webhooks/jobhook/<job_id>", view_func=webhook_view(handler), methods=["POST"]
    )
    app.add_url_rule("/jobs/<job_id>/events", view_func=events_view(store, authorize=may_follow))
    return app


if __name__ == "__main__":
    port = httpx.URL(APP_URL).port or 5000
    print(f"open {APP_URL}/generate-images (backend: {BACKEND_URL})")
    # The stub backend serves its pictures on loopback, which only development allows.
    loopback = FetchPolicy(allow_networks=["127.0.0.0/8"])
    create_app(files_dir=FILES_DIR, fetch_policy=loopback).run(
        host="127.0.0.1", port=port, threaded=True
    )
