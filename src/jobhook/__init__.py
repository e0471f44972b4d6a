"""jobhook: create the job first, submit it by id, apply signed webhooks exactly once."""

from jobhook.__about__ import __version__
from jobhook._client import AsyncGeneratorClient, GeneratorClient
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
    PayloadError,
    SignatureError,
    StoreUnavailableError,
    SubmitError,
    ValidationError,
)
from jobhook.reconcile import AsyncReconciler, Reconciler, ReconcileReport
from jobhook.sender import CallbackSender
from jobhook.stores import AsyncInMemoryJobStore, AsyncJobStore, InMemoryJobStore, JobStore
from jobhook.stores.sql import AsyncSQLJobStore, SQLJobStore

__all__ = [
    "ApplyResult",
    "AsyncGeneratorClient",
    "AsyncInMemoryJobStore",
    "AsyncJobStore",
    "AsyncReconciler",
    "AsyncSQLJobStore",
    "BackendError",
    "CallbackSender",
    "ClientError",
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
    "JobUpdate",
    "JobhookError",
    "Outcome",
    "PayloadError",
    "ReconcileReport",
    "Reconciler",
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
