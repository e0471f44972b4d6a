"""Job stores: the protocols and their implementations."""

from jobhook.stores.memory import AsyncInMemoryJobStore, InMemoryJobStore
from jobhook.stores.protocol import AsyncConsumerStore, AsyncJobStore, ConsumerStore, JobStore

__all__ = [
    "AsyncConsumerStore",
    "AsyncInMemoryJobStore",
    "AsyncJobStore",
    "ConsumerStore",
    "InMemoryJobStore",
    "JobStore",
]
