"""jobhook: create the job first, submit it by id, apply signed webhooks exactly once.

The SQL stores (SQLAlchemy) and the HTTP halves (httpx: the clients, the sender, the
reconciler) load on first use (PEP 562), so an app that only verifies and applies
webhooks does not import them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from jobhook.__about__ import __version__
from jobhook._models import (
    ApplyResult,
    DeadLetter,
    Job,
    JobError,
    JobEvent,
    JobStatus,
    JobUpdate,
    Outcome,
)
from jobhook._outbox import ConsumerInfo, ParkedEvent, PruneReport
from jobhook._signing import sign_webhook, verify_webhook
from jobhook._webhook import WebhookHandler, WebhookResponse
from jobhook.exceptions import (
    BackendError,
    ClientError,
    DeadLetterNotFoundError,
    JobExistsError,
    JobhookError,
    JobIdMismatchError,
    JobNotFoundError,
    ParkedEventNotFoundError,
    PayloadError,
    SignatureError,
    StoreUnavailableError,
    SubmitError,
    ValidationError,
)
from jobhook.stores import AsyncInMemoryJobStore, AsyncJobStore, InMemoryJobStore, JobStore

if TYPE_CHECKING:
    from jobhook._client import AsyncGeneratorClient, GeneratorClient
    from jobhook._http import RetryPolicy
    from jobhook.consumer import AsyncOutboxConsumer, OutboxConsumer
    from jobhook.reconcile import AsyncReconciler, Reconciler, ReconcileReport
    from jobhook.sender import CallbackSender
    from jobhook.stores._adopt import JobTable
    from jobhook.stores._bound import BoundSQLJobStore
    from jobhook.stores.sql import AsyncSQLJobStore, SQLJobStore

#: Public names whose modules load on first use, and where they live.
_LAZY = {
    "AsyncGeneratorClient": "jobhook._client",
    "GeneratorClient": "jobhook._client",
    "AsyncOutboxConsumer": "jobhook.consumer",
    "OutboxConsumer": "jobhook.consumer",
    "AsyncReconciler": "jobhook.reconcile",
    "Reconciler": "jobhook.reconcile",
    "ReconcileReport": "jobhook.reconcile",
    "CallbackSender": "jobhook.sender",
    "RetryPolicy": "jobhook._http",
    "AsyncSQLJobStore": "jobhook.stores.sql",
    "SQLJobStore": "jobhook.stores.sql",
    "BoundSQLJobStore": "jobhook.stores._bound",
    "JobTable": "jobhook.stores._adopt",
}

__all__ = [
    "ApplyResult",
    "AsyncGeneratorClient",
    "AsyncInMemoryJobStore",
    "AsyncJobStore",
    "AsyncOutboxConsumer",
    "AsyncReconciler",
    "AsyncSQLJobStore",
    "BackendError",
    "BoundSQLJobStore",
    "CallbackSender",
    "ClientError",
    "ConsumerInfo",
    "DeadLetter",
    "DeadLetterNotFoundError",
    "GeneratorClient",
    "InMemoryJobStore",
    "Job",
    "JobError",
    "JobEvent",
    "JobExistsError",
    "JobIdMismatchError",
    "JobNotFoundError",
    "JobStatus",
    "JobStore",
    "JobTable",
    "JobUpdate",
    "JobhookError",
    "OutboxConsumer",
    "Outcome",
    "ParkedEvent",
    "ParkedEventNotFoundError",
    "PayloadError",
    "PruneReport",
    "ReconcileReport",
    "Reconciler",
    "RetryPolicy",
    "SQLJobStore",
    "SignatureError",
    "StoreUnavailableError",
    "SubmitError",
    "ValidationError",
    "WebhookHandler",
    "WebhookResponse",
    "__version__",
    "sign_webhook",
    "verify_webhook",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'jobhook' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
