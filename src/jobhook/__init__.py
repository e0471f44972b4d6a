"""jobhook: create the job first, submit it by id, apply signed webhooks exactly once."""

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
from jobhook.stores import AsyncInMemoryJobStore, AsyncJobStore, InMemoryJobStore, JobStore

__all__ = [
    "ApplyResult",
    "AsyncInMemoryJobStore",
    "AsyncJobStore",
    "BackendError",
    "ClientError",
    "DeadLetter",
    "DeadLetterNotFoundError",
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
    "SignatureError",
    "StoreUnavailableError",
    "SubmitError",
    "ValidationError",
    "__version__",
]
