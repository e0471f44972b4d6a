"""A Flask app for gunicorn, over the SQLite file named by JOBHOOK_TEST_DATABASE."""

from __future__ import annotations

import os

from flask import Flask

from jobhook import SQLJobStore, WebhookHandler
from jobhook.flask import webhook_view

store = SQLJobStore(f"sqlite:///{os.environ['JOBHOOK_TEST_DATABASE']}")
secret = os.environ["JOBHOOK_TEST_SECRET"]

app = Flask(__name__)
app.add_url_rule(
    "/webhooks/jobhook/<job_id>",
    view_func=webhook_view(WebhookHandler(store, secret=secret)),
    methods=["POST"],
)
app.add_url_rule(
    "/big/webhooks/jobhook/<job_id>",
    endpoint="big",
    view_func=webhook_view(WebhookHandler(store, secret=secret, max_body_bytes=4_000_000)),
    methods=["POST"],
)
