"""What every subcommand shares: opening the store, user errors, tables and times."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from jobhook._convert import dumps
from jobhook._models import Job

__all__ = [
    "DEFAULT_DB_URL",
    "CLIError",
    "cut",
    "db_url",
    "ellipsis",
    "format_progress",
    "format_time",
    "one_line",
    "open_store",
    "print_json",
    "print_table",
]

DEFAULT_DB_URL = "sqlite:///jobhook.db"
DB_ENV = "JOBHOOK_DATABASE_URL"
_URL_EXAMPLES = (
    "e.g. sqlite:///jobhook.db, postgresql://user@localhost/app or mysql://user@localhost/app"
)


class CLIError(Exception):
    """A mistake or a failure the user can act on: printed as one line, exit status 1."""


def one_line(text: object) -> str:
    """``text`` with its line breaks and runs of spaces folded into single spaces.

    Database drivers write multi-line messages; an error is one line on the terminal.
    """
    return " ".join(str(text).split())


def db_url(args: argparse.Namespace) -> str:
    """The database URL: ``--db``, else ``$JOBHOOK_DATABASE_URL``, else ``sqlite:///jobhook.db``."""
    url: str | None = getattr(args, "db", None)
    return url or os.environ.get(DB_ENV) or DEFAULT_DB_URL


def _sqlite_file(url: Any) -> Path | None:
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:"):
        return None
    return Path(url.database)


def open_store(url_text: str, *, table_prefix: str = "jobhook_", create: bool = False) -> Any:
    """Open the `SQLJobStore` at ``url_text``.

    With ``create``, the SQLite file and the tables are made when missing (``db init``,
    ``demo``); without it, a missing SQLite file is an error instead of a new empty one.
    Raises `CLIError` for a URL that names no supported database or a driver that is
    not installed.
    """
    import sqlalchemy as sa
    from sqlalchemy import exc as sa_exc

    from jobhook.stores.sql import SQLJobStore

    try:
        url = sa.engine.make_url(url_text)
    except sa_exc.ArgumentError:
        raise CLIError(f"not a database URL: {url_text!r} ({_URL_EXAMPLES})") from None
    if url.get_backend_name() not in ("sqlite", "postgresql", "postgres", "mysql", "mariadb"):
        raise CLIError(
            f"unsupported database {url.get_backend_name()!r} in {_safe(url)}: "
            f"jobhook stores jobs in SQLite, PostgreSQL or MariaDB/MySQL ({_URL_EXAMPLES})"
        )
    path = _sqlite_file(url)
    if path is not None and not create and not path.exists():
        init = f"jobhook db init --db {url_text}"
        if table_prefix != "jobhook_":
            init += f" --table-prefix {table_prefix}"
        raise CLIError(f"no database file at {str(path)!r}; create it with `{init}`")
    try:
        store = SQLJobStore(url, table_prefix=table_prefix)
    except ModuleNotFoundError as exc:
        raise CLIError(
            f"the database driver {exc.name!r} is not installed; install jobhook's extra "
            "for your database (`pip install -e '.[postgres]'` or `'.[mysql]'` in a clone "
            "of jobhook)"
        ) from None
    except (sa_exc.ArgumentError, ValueError) as exc:
        raise CLIError(f"cannot use {_safe(url)}: {one_line(exc)}") from None
    if create:
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        try:
            store.create_schema()
        except BaseException:
            store.close()
            raise
    return store


def _safe(url: Any) -> str:
    # Never echo a password back to the terminal (or a CI log).
    return str(url.render_as_string(hide_password=True))


def format_time(value: datetime | None) -> str:
    """A timestamp as ``2024-05-01 12:00:03`` in UTC, or ``-``."""
    if value is None:
        return "-"
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def format_progress(job: Job) -> str:
    """Progress as ``40%`` (or ``-`` when the backend has not reported any)."""
    return "-" if job.progress is None else f"{job.progress:.0f}%"


def print_table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    *,
    out: IO[str] | None = None,
    width: int | None = None,
) -> None:
    """Left-aligned columns under a header row, two spaces apart.

    With ``width``, the widest columns are narrowed until every line fits, and cells
    cut short end with an ellipsis (never below a few characters: a very narrow
    terminal gets lines that wrap rather than columns that say nothing).
    """
    out = out or sys.stdout
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    if width is not None:
        widths = _narrowed(widths, width - 2 * (len(widths) - 1))
    mark = ellipsis(out)
    for row in [headers, *rows]:
        cells = [cut(cell, w, mark).ljust(w) for w, cell in zip(widths, row, strict=True)]
        print("  ".join(cells).rstrip(), file=out)


_NARROWEST = 6


def _narrowed(widths: list[int], room: int) -> list[int]:
    """``widths`` with the widest narrowed, one character at a time, to fit ``room``."""
    widths = list(widths)
    while sum(widths) > room:
        widest = max(range(len(widths)), key=lambda i: (widths[i], i))
        if widths[widest] <= _NARROWEST:
            break
        widths[widest] -= 1
    return widths


def cut(text: str, width: int, mark: str = "…") -> str:
    """``text``, cut to ``width`` characters with ``mark`` at the end when too long."""
    return text if len(text) <= width else text[: max(width - len(mark), 0)] + mark


def ellipsis(out: IO[str]) -> str:
    """``…``, or ``~`` where ``out`` cannot write it (a terminal without Unicode)."""
    try:
        "…".encode(getattr(out, "encoding", None) or "ascii")
    except (LookupError, UnicodeEncodeError):
        return "~"
    return "…"


def print_json(value: Any, *, out: IO[str] | None = None) -> None:
    """One JSON document per line (so ``jq`` and scripts can read the output)."""
    print(dumps(value), file=out or sys.stdout)
