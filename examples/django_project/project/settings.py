"""Settings of the example project: jobhook as a Django app next to the app's own."""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "django-insecure-example-only")
DEBUG = True
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "jobhook.django",
    "gallery",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "project.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("EXAMPLE_DATABASE", str(BASE_DIR / "db.sqlite3")),
        # Writers wait for each other instead of failing; readers never block them.
        "OPTIONS": {
            "transaction_mode": "IMMEDIATE",
            "timeout": 30,
            "init_command": "PRAGMA journal_mode=WAL;",
        },
    }
}
USE_TZ = True
TIME_ZONE = "UTC"
STATIC_URL = "static/"
# Where the output keeper keeps the generated pictures, and where they are served.
MEDIA_ROOT = os.environ.get("JOBHOOK_FILES_DIR", str(BASE_DIR / "files"))
MEDIA_URL = "/files/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Where the generator backend is (`jobhook fake-backend` by default), and where it
# calls back.
GENERATOR_URL = os.environ.get("JOBHOOK_BACKEND_URL", "http://127.0.0.1:8001")
APP_URL = os.environ.get("APP_URL", "http://127.0.0.1:8000")
JOBHOOK = {
    # What `jobhook fake-backend` signs with unless told otherwise; in production the
    # secret comes from your secret store.
    "SECRET": os.environ.get(
        "JOBHOOK_WEBHOOK_SECRET",
        "whsec_am9iaG9vay1kZXZlbG9wbWVudC1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u",
    ),
    "CLIENT": "gallery.jobs.client",
    "CONSUMERS": {"notify": "gallery.jobs.notify"},
    # The webhook view, the reconciler and the admin's replay go through its guarded
    # store; `manage.py jobhook_keep --interval 1` keeps the files.
    "KEEPER": "gallery.jobs.keeper",
}
