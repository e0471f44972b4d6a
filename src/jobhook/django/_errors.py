"""How `DjangoJobStore` meets database errors: Django's mapped onto jobhook's, and an
operation the database rolled back for a deadlock run again (`_mapped`); `_Rollback`
ends a transaction with a rollback and still returns its answer."""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from django.db import DatabaseError, DataError, IntegrityError, OperationalError, connections

from jobhook._models import ApplyResult
from jobhook.exceptions import JobhookError, StoreUnavailableError, ValidationError

T = TypeVar("T")

_ATTEMPTS = 5


class _Rollback(Exception):
    """Ends the transaction with a rollback and still returns ``value``."""

    def __init__(self, value: ApplyResult) -> None:
        super().__init__()
        self.value = value


def _retryable(exc: DatabaseError) -> bool:
    """A deadlock or serialization failure: the transaction was rolled back whole."""
    cause = exc.__cause__
    if getattr(cause, "sqlstate", None) in ("40P01", "40001"):
        return True
    return bool(exc.args) and exc.args[0] in (1213, 1205)  # MySQL deadlock, lock wait


class _OnDatabase(Protocol):
    using: str


def _mapped(method: Callable[..., T]) -> Callable[..., T]:
    """Map Django's database errors onto jobhook's, and retry an operation the database
    rolled back for a deadlock (only when it is not inside the caller's transaction)."""

    @functools.wraps(method)
    def wrapper(self: _OnDatabase, *args: Any, **kwargs: Any) -> T:
        attempt = 0
        while True:
            attempt += 1
            try:
                return method(self, *args, **kwargs)
            except JobhookError:
                raise
            except (DataError, IntegrityError) as exc:
                raise ValidationError(f"the database refused a value: {exc}") from exc
            except DatabaseError as exc:
                if (
                    isinstance(exc, OperationalError)
                    and _retryable(exc)
                    and attempt < _ATTEMPTS
                    and not connections[self.using].in_atomic_block
                ):
                    # The database rolled the whole transaction back: run it again.
                    time.sleep(random.uniform(0, 0.01 * attempt))
                    continue
                raise StoreUnavailableError(
                    f"the database {self.using!r} is unavailable, or its jobhook tables are "
                    f"missing (run `manage.py migrate jobhook`): {exc}"
                ) from exc

    return wrapper
