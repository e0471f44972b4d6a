"""The one mapping of database failures onto jobhook's errors, sync and async."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import URL

from jobhook.exceptions import (
    JobhookError,
    StoreUnavailableError,
    ValidationError,
)
from jobhook.stores._schema import (
    engine_options,
)

__all__ = ["DATABASE_ERRORS", "create_engine_for", "store_error"]

T = TypeVar("T")


def _missing_tables(exc: sa_exc.DBAPIError) -> bool:
    # SQLite says "no such table"; PostgreSQL raises UndefinedTable (SQLSTATE 42P01).
    return "no such table" in str(exc.orig) or getattr(exc.orig, "sqlstate", None) == "42P01"


def store_error(exc: Exception, url: URL) -> JobhookError:
    """The one mapping of a database failure onto jobhook's errors (sync and async).

    A value the database refused is a `ValidationError`; everything else (lost or
    refused connections, timeouts, missing tables, a file that is not a database) is
    a `StoreUnavailableError` whose message says what is wrong and where.
    """
    where = url.render_as_string(hide_password=True)
    text = str(getattr(exc, "orig", None) or exc).strip()
    if isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError)):
        return ValidationError(f"the database refused a value: {text}")
    if isinstance(exc, sa_exc.DBAPIError) and _missing_tables(exc):
        return StoreUnavailableError(
            f"the jobhook tables are missing in {where}: call store.create_schema() "
            f"or run `jobhook db init --db {where}` ({text})"
        )
    return StoreUnavailableError(f"the database {where} is unavailable: {text}")


#: What `_store_error` maps: driver errors, pool timeouts, and OSError (which some
#: async drivers raise unwrapped when a connection is refused).
DATABASE_ERRORS = (sa_exc.DBAPIError, sa_exc.TimeoutError, OSError)


def create_engine_for(create: Callable[..., T], url: URL, extra: str) -> T:
    """``create(url, …)``, with a missing driver named along with the extra to install."""
    try:
        return create(url, **engine_options(url))
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            f"{url.drivername} URLs need the {exc.name!r} driver: pip install 'jobhook[{extra}]'",
            name=exc.name,
        ) from exc
