"""A Django project in one module: `application` for gunicorn, `asgi_application` for
uvicorn. Under ASGI (JOBHOOK_TEST_ASYNC=1) the store is async, so the view is too."""

from __future__ import annotations

import os

import django
from django.conf import settings

settings.configure(
    SECRET_KEY="jobhook-real-server-tests",
    ALLOWED_HOSTS=["127.0.0.1"],
    ROOT_URLCONF=__name__,
    # On, with its default DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MB): the view must be
    # exempt, and must not let Django refuse a body the handler accepts.
    MIDDLEWARE=["django.middleware.csrf.CsrfViewMiddleware"],
)
django.setup()

from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.urls import path  # noqa: E402

from jobhook import AsyncSQLJobStore, SQLJobStore, WebhookHandler  # noqa: E402
from jobhook.django import webhook_view  # noqa: E402

database = os.environ["JOBHOOK_TEST_DATABASE"]
store: AsyncSQLJobStore | SQLJobStore
if os.environ.get("JOBHOOK_TEST_ASYNC") == "1":
    store = AsyncSQLJobStore(f"sqlite+aiosqlite:///{database}")
else:
    store = SQLJobStore(f"sqlite:///{database}")
secret = os.environ["JOBHOOK_TEST_SECRET"]
big = WebhookHandler(store, secret=secret, max_body_bytes=4_000_000)

urlpatterns = [
    path("webhooks/jobhook/<str:job_id>", webhook_view(WebhookHandler(store, secret=secret))),
    path("big/webhooks/jobhook/<str:job_id>", webhook_view(big)),
]

application = get_wsgi_application()
asgi_application = get_asgi_application()
