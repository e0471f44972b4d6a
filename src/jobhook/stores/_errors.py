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
    MYSQL_DIALECTS,
    engine_options,
)

__all__ = ["DATABASE_ERRORS", "create_engine_for", "store_error"]

T = TypeVar("T")


# MySQL/MariaDB error numbers (PyMySQL and aiomysql raise the same errors, errno first).
_MYSQL_NO_SUCH_TABLE = 1146
#: A value a CHECK constraint refused (MariaDB 4025, MySQL 3819) or JSON MySQL refused:
#: PyMySQL raises these as OperationalError.
_MYSQL_REFUSED_VALUE = frozenset({4025, 3819, 3140})
#: Lock wait timeout and deadlock: nothing was written, the caller may retry.
_MYSQL_LOCK_TIMEOUT = frozenset({1205, 1213})


def _mysql_errno(exc: Exception, url: URL) -> int | None:
    """The MySQL error number of a driver error, or None (not MySQL, or none given)."""
    if url.get_backend_name() not in MYSQL_DIALECTS or not isinstance(exc, sa_exc.DBAPIError):
        return None
    args = getattr(exc.orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _missing_tables(exc: sa_exc.DBAPIError, url: URL) -> bool:
    # SQLite says "no such table"; PostgreSQL raises UndefinedTable (SQLSTATE 42P01).
    return (
        "no such table" in str(exc.orig)
        or getattr(exc.orig, "sqlstate", None) == "42P01"
        or _mysql_errno(exc, url) == _MYSQL_NO_SUCH_TABLE
    )


def store_error(exc: Exception, url: URL) -> JobhookError:
    """The one mapping of a database failure onto jobhook's errors (sync and async).

    A value the database refused is a `ValidationError`; everything else (lost or
    refused connections, timeouts, missing tables, a file that is not a database) is
    a `StoreUnavailableError` whose message says what is wrong and where.
    """
    where = url.render_as_string(hide_password=True)
    text = str(getattr(exc, "orig", None) or exc).strip()
    errno = _mysql_errno(exc, url)
    if isinstance(exc, (sa_exc.DataError, sa_exc.IntegrityError)) or errno in _MYSQL_REFUSED_VALUE:
        return ValidationError(f"the database refused a value: {text}")
    if errno in _MYSQL_LOCK_TIMEOUT:
        # Rolled back whole: answered 503 by the webhook handler, so the sender retries.
        return StoreUnavailableError(
            f"the database {where} gave up waiting for a lock (rolled back, nothing "
            f"written; retry): {text}"
        )
    if isinstance(exc, sa_exc.DBAPIError) and _missing_tables(exc, url):
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
