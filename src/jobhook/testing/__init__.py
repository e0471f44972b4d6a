"""Testing helpers: a fake generator backend, signed deliveries and pytest fixtures.

`FakeGenerator` keeps jobhook's contract, or plays a provider's wire shapes with
``impersonate="cog" | "replicate" | "fal" | "runpod" | "openai"`` (a profile's
``name``).

This module is also a pytest plugin (entry point ``jobhook``), so an app's tests get
these fixtures once jobhook is installed; override any of them in a ``conftest.py``
(e.g. ``jobhook_store`` with the app's own store) and the others follow:

- ``jobhook_secret``: a fresh ``whsec_…`` webhook secret.
- ``jobhook_store``: an empty `InMemoryJobStore`.
- ``jobhook_handler``: a `WebhookHandler` over ``jobhook_store`` verifying with
  ``jobhook_secret``.
- ``fake_generator``: a `FakeGenerator` (``manual`` delivery) whose callbacks go
  straight into ``jobhook_handler``; call ``fake_generator.deliver_all()``.
- ``jobhook_client``: a `GeneratorClient` over ``jobhook_store`` that reaches
  ``fake_generator`` in-process, with its status and cancel endpoints.

Importing this module does not need pytest; the fixtures exist only when it is there.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import httpx

from jobhook._convert import dumps
from jobhook._signing import new_webhook_secret, sign_webhook
from jobhook.testing._fake import FakeGenerator, SentCallback
from jobhook.testing._scripts import Chaos, Script, Scripts, Submission

__all__ = [
    "Chaos",
    "FakeGenerator",
    "Script",
    "Scripts",
    "SentCallback",
    "Submission",
    "new_webhook_secret",
    "sign_webhook",
    "signed_delivery",
]

#: The base URL the ``jobhook_client`` fixture uses for ``fake_generator``.
FAKE_BASE_URL = "http://fake-generator.invalid"
#: The callback URL template of the ``jobhook_client`` fixture.
FAKE_CALLBACK_URL = "http://app.invalid/webhooks/jobhook/{job_id}"


def signed_delivery(
    secret: str | bytes,
    payload: Mapping[str, Any] | bytes,
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> tuple[dict[str, str], bytes]:
    """The headers and body of a signed callback, as a backend would send it.

    ``payload`` is a JSON object (serialised here) or the exact body bytes. Feed the
    pair to ``handler.handle(headers, body)`` or to a test client's ``post``.
    """
    body = payload if isinstance(payload, bytes) else dumps(payload, field="payload").encode()
    headers = sign_webhook(secret, body, msg_id=msg_id, timestamp=timestamp)
    return {**headers, "content-type": "application/json"}, body


try:
    import pytest
except ImportError:  # pytest is optional: the helpers above work without it
    pass
else:
    from jobhook import GeneratorClient, InMemoryJobStore, JobStore, WebhookHandler

    @pytest.fixture
    def jobhook_secret() -> str:
        """A fresh ``whsec_…`` webhook secret."""
        return new_webhook_secret()

    @pytest.fixture
    def jobhook_store() -> Iterator[JobStore]:
        """An empty in-memory job store."""
        store = InMemoryJobStore()
        yield store
        store.close()

    @pytest.fixture
    def jobhook_handler(jobhook_store: JobStore, jobhook_secret: str) -> WebhookHandler:
        """A webhook handler over ``jobhook_store`` that verifies ``jobhook_secret``."""
        return WebhookHandler(jobhook_store, secret=jobhook_secret)

    @pytest.fixture
    def fake_generator(
        jobhook_secret: str, jobhook_handler: WebhookHandler
    ) -> Iterator[FakeGenerator]:
        """A fake backend whose callbacks go into ``jobhook_handler`` on ``deliver_all()``."""
        with FakeGenerator(jobhook_secret, handler=jobhook_handler) as fake:
            yield fake

    @pytest.fixture
    def jobhook_client(
        jobhook_store: JobStore, fake_generator: FakeGenerator
    ) -> Iterator[GeneratorClient]:
        """A client over ``jobhook_store`` that reaches ``fake_generator`` in-process."""
        http = httpx.Client(transport=fake_generator.transport)
        client = GeneratorClient(
            jobhook_store,
            FAKE_BASE_URL,
            callback_url=FAKE_CALLBACK_URL,
            submit_path=FakeGenerator.submit_path,
            status_path=FakeGenerator.status_path,
            cancel_path=FakeGenerator.cancel_path,
            http_client=http,
        )
        with client:
            yield client
        http.close()
