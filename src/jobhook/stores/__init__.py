"""Job stores: the protocols and their implementations."""

from jobhook.stores.memory import AsyncInMemoryJobStore, InMemoryJobStore
from jobhook.stores.protocol import AsyncJobStore, JobStore

__all__ = ["AsyncInMemoryJobStore", "AsyncJobStore", "InMemoryJobStore", "JobStore"]
