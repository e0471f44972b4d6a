"""Image generation with Django and jobhook, in one file.

A user types a prompt on ``/generate-images``; the submit view creates the job and
submits it by id with `GeneratorClient`; the backend's signed webhooks land on
``/webhooks/jobhook/<job_id>`` through jobhook's Django adapter (CSRF-exempt: the
signature authenticates it, while the app's own form keeps its CSRF token); the page
follows each job's progress and result as Server-Sent Events from
``/jobs/<job_id>/events``; notifications are made from the store's event outbox by an
`OutboxConsumer`, once per finished job. An `OutputKeeper` copies each job's pictures
into ``JOBHOOK_FILES_DIR`` before the job may succeed, and the page shows the kept
copies (served at ``/files/``), which outlive the backend's URLs.

Run it against the stub backend (see README.md)::

    jobhook fake-backend & python examples/django_app/app.py runserver 8000
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

import django
import httpx
import sqlalchemy as sa
from django.conf import settings

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

SETTINGS: dict[str, Any] = {
    "DEBUG": True,
    "SECRET_KEY": "django-insecure-example-only",
    "ROOT_URLCONF": __name__,
    "ALLOWED_HOSTS": ["127.0.0.1", "localhost", "testserver", httpx.URL(APP_URL).host],
    "MIDDLEWARE": [
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
    ],
    "TEMPLATES": [
        {
            "BACKEND": "django.template.backends.django.DjangoTemplates",
            "DIRS": [HERE / "templates"],
        }
    ],
}
if not settings.configured:
    settings.configure(**SETTINGS)
    django.setup()

from django.http import (  # noqa: E402  (Django needs its settings first)
    HttpRequest,
    HttpResponse,
    HttpResponseBadRequest,
    HttpResponseRedirect,
    JsonResponse,
)
from django.shortcuts import render  # noqa: E402
from django.urls import path  # noqa: E402
from django.views.decorators.http import require_GET, require_http_methods  # noqa: E402
from django.views.static import serve  # noqa: E402

from jobhook import (  # noqa: E402
    GeneratorClient,
    Job,
    JobEvent,
    JobNotFoundError,
    OutboxConsumer,
    SQLJobStore,
    SubmitError,
    WebhookHandler,
)
from jobhook.django import events_view, webhook_view  # noqa: E402
from jobhook.outputs import FetchPolicy, LocalStorage, OutputKeeper  # noqa: E402

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


plain_store = SQLJobStore(DATABASE_URL, create_schema=True)
# The stub backend serves its pictures on loopback, which only development allows: the
# keeper may fetch from loopback only when the backend itself is there.
on_loopback = httpx.URL(BACKEND_URL).host in ("127.0.0.1", "localhost")
keeper = OutputKeeper(
    plain_store,
    LocalStorage(FILES_DIR, base_url=f"{APP_URL}/files/"),
    policy=FetchPolicy(allow_networks=["127.0.0.0/8"] if on_loopback else ()),
    create_schema=True,
)
store = keeper.store  # a success waits until its pictures are kept
client = GeneratorClient(
    store,
    BACKEND_URL,
    callback_url=f"{APP_URL}/webhooks/jobhook/{{job_id}}",
    status_path="/jobs/{job_id}",
)
handler = WebhookHandler(store, secret=WEBHOOK_SECRET)
notifier = Notifier(plain_store)


def start_keeper(interval: float = 0.2) -> threading.Event:
    """Run the keeper in a thread of this process; set the returned event to stop it."""
    stop = threading.Event()
    threading.Thread(
        target=keeper.run, args=(stop,), kwargs={"interval": interval}, daemon=True
    ).start()
    return stop


def state() -> dict[str, Any]:
    jobs = store.list(owner_id=USER_ID, kind="image", limit=20)
    return {
        "generations": [generation(job) for job in jobs],
        "notifications": notifier.for_user(USER_ID),
    }


@require_http_methods(["GET", "POST"])
def generate_images(request: HttpRequest) -> HttpResponse:
    if request.method == "GET":
        return render(request, "generate_images.html", state())
    prompt = request.POST.get("prompt", "").strip()
    if not prompt:
        return HttpResponseBadRequest("a prompt is required")
    try:
        client.submit({"prompt": prompt}, kind="image", owner_id=USER_ID)
    except SubmitError as exc:
        # The job is stored either way: failed (the page shows why) or, when the
        # backend may have it, pending for the reconciler.
        log.warning("submit failed: %s", exc)
    return HttpResponseRedirect("/generate-images", status=303)


@require_GET
def generation_status(request: HttpRequest) -> JsonResponse:
    return JsonResponse(state(), json_dumps_params={"ensure_ascii": False})


def may_follow(request: HttpRequest, job_id: str) -> bool:
    """Only the job's owner may follow it (a real app asks its login)."""
    try:
        return store.get(job_id).owner_id == USER_ID
    except JobNotFoundError:
        return False


urlpatterns = [
    path("generate-images", generate_images),
    path("generate-images/status", generation_status),
    path("webhooks/jobhook/<str:job_id>", webhook_view(handler)),
    path("jobs/<str:job_id>/events", events_view(plain_store, authorize=may_follow)),
    # The kept copies. Fine for an example; in production the web server serves the
    # directory (or the keeper writes to an S3Storage).
    path("files/<path:path>", serve, {"document_root": FILES_DIR}),
]

if __name__ == "__main__":
    from django.core.management import execute_from_command_line

    print(f"open {APP_URL}/generate-images (backend: {BACKEND_URL})")
    # One keeper, in the process that serves (runserver's autoreloader runs the app in
    # a child process, which it marks with RUN_MAIN).
    if os.environ.get("RUN_MAIN") == "true" or "--noreload" in sys.argv:
        start_keeper()
    execute_from_command_line(sys.argv)
