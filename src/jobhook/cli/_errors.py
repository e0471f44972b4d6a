"""What a database failure means, said in one line that names the database.

Drivers describe the same few problems in many words: a file that is not a database,
a PostgreSQL database or role that does not exist, a server that cannot be reached,
tables nobody created. `database_error_message` reads the exception (the store's
`JobhookError`, a SQLAlchemy error, or a driver's own) and its causes, and says which
of those it is, with the advice that fits, naming the database URL without its password.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

from jobhook.cli._common import one_line
from jobhook.exceptions import StoreUnavailableError

__all__ = ["database_error_message", "is_database_error"]

# (module, class) of the errors a database layer raises: SQLAlchemy's, and the DB-API
# base classes of the drivers jobhook uses, in case one escapes unwrapped. Looked up in
# sys.modules so that a command that never opened a database imports none of them.
_DATABASE_ERROR_CLASSES = [
    ("sqlalchemy.exc", "SQLAlchemyError"),
    ("sqlite3", "Error"),
    ("psycopg", "Error"),
    ("psycopg2", "Error"),
    ("asyncpg", "PostgresError"),
]
_BACKGROUND = re.compile(r"\(Background on this error at: [^)]*\)")
_CONNECT_PREFIX = re.compile(
    r'^(connection failed: )?(connection to server (at|on) ".*?"(, port \d+)? failed: )?'
)
_CONNECT_FAILED = (
    r"connection (to server .*)?failed|could not connect|failed to resolve host|"
    r"could not translate host name|connection refused|connect call failed|timeout expired|"
    r"server closed the connection|name or service not known"
)


def is_database_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from SQLAlchemy or a database driver."""
    for module_name, class_name in _DATABASE_ERROR_CLASSES:
        module = sys.modules.get(module_name)
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and isinstance(exc, cls):
            return True
    return False


def database_error_message(
    exc: BaseException, url_text: str | None, *, table_prefix: str = "jobhook_"
) -> str | None:
    """One line saying what is wrong with the database at ``url_text``, and what to do.

    ``None`` when ``exc`` (and every exception it was raised from) is not about the
    database, so that the caller prints the error's own message.
    """
    url = _Where(url_text)
    failure = _Failure(exc, url, table_prefix)
    from_database = any(is_database_error(e) for e in failure.chain)
    if not from_database and not isinstance(exc, StoreUnavailableError):
        return None
    for problem in _PROBLEMS:
        said = problem(failure)
        if said is not None:
            return url.scrub(f"cannot use {url}: {said}")
    if not is_database_error(exc):  # the store's own words, which say what happened
        message = one_line(exc)
        return url.scrub(message if url.safe in message else f"{message} ({url})")
    return url.scrub(f"cannot use {url}: {failure.texts[0]}")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what it wraps (a SQLAlchemy error's ``orig``) and what caused it."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        current = todo.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        todo += [getattr(current, "orig", None), current.__cause__, current.__context__]


def _text(exc: BaseException) -> str:
    # A SQLAlchemy error's own text repeats the statement and adds a link; the
    # driver's is the part that explains.
    orig = getattr(exc, "orig", None)
    text = str(orig if isinstance(orig, BaseException) else exc)
    return one_line(_BACKGROUND.sub("", text))


class _Where:
    """The database a command used, as it may be shown."""

    def __init__(self, url_text: str | None) -> None:
        self.url: Any = None
        if url_text is not None:
            import sqlalchemy as sa
            from sqlalchemy import exc as sa_exc

            try:
                self.url = sa.engine.make_url(url_text)
            except sa_exc.ArgumentError:
                self.url = None
        self.safe = "the database"
        if self.url is not None:
            self.safe = str(self.url.render_as_string(hide_password=True))

    def __str__(self) -> str:
        return self.safe

    @property
    def server(self) -> str:
        if self.url is None or self.url.get_backend_name() == "sqlite":
            return "the database server"
        return f"the PostgreSQL server at {self.url.host or 'localhost'}:{self.url.port or 5432}"

    @property
    def path(self) -> str:
        return str(self.url.database) if self.url is not None else "the file"

    def scrub(self, message: str) -> str:
        # Drivers do not usually repeat a password, but never let one through.
        password = None if self.url is None else self.url.password
        if password and len(str(password)) >= 3:
            message = message.replace(str(password), "***")
        return message

    def createdb(self, name: str) -> str:
        words = ["createdb"]
        if self.url is not None:
            for option, value in [("-h", self.url.host), ("-p", self.url.port)]:
                words += [option, str(value)] if value else []
            words += ["-U", self.url.username] if self.url.username else []
        return " ".join([*words, name])


class _Failure:
    """An exception and its causes, with their texts and error codes, read once."""

    def __init__(self, exc: BaseException, url: _Where, table_prefix: str) -> None:
        self.chain = list(_chain(exc))
        self.texts = [_text(e) for e in self.chain]
        # SQLSTATEs (psycopg's sqlstate, psycopg2's pgcode) and SQLite's error names.
        self.codes = {
            code
            for e in self.chain
            for attribute in ("sqlstate", "pgcode", "sqlite_errorname")
            if isinstance(code := getattr(e, attribute, None), str)
        }
        self.url = url
        self.table_prefix = table_prefix

    def search(self, pattern: str) -> re.Match[str] | None:
        """The first match in the driver's own words, else in those that wrap them."""
        for text in reversed(self.texts):
            match = re.search(pattern, text, re.IGNORECASE)
            if match:
                return match
        return None


def _not_a_database(failure: _Failure) -> str | None:
    path = failure.url.path
    if "SQLITE_NOTADB" in failure.codes or failure.search(r"file is not a database"):
        return f"{path} is not an SQLite database (the file holds something else); check --db"
    if "SQLITE_CORRUPT" in failure.codes or failure.search(r"database disk image is malformed"):
        return f"the SQLite file {path} is damaged (database disk image is malformed)"
    if "SQLITE_CANTOPEN" in failure.codes or failure.search(r"unable to open database file"):
        return f"cannot open the SQLite file {path} (a missing directory, or no permission)"
    return None


def _missing_database(failure: _Failure) -> str | None:
    match = failure.search(r'database "(?P<name>[^"]+)" does not exist')
    if match is None:
        return None
    name = match["name"]
    return (
        f'database "{name}" does not exist on {failure.url.server}; create it '
        f"(`{failure.url.createdb(name)}`) or name an existing database in the URL"
    )


def _missing_role(failure: _Failure) -> str | None:
    match = failure.search(r'role "(?P<name>[^"]+)" does not exist')
    if match is None:
        return None
    return (
        f'role "{match["name"]}" does not exist on {failure.url.server}; name an existing '
        f'user in the URL, or create the role (CREATE ROLE "{match["name"]}" LOGIN)'
    )


def _refused_login(failure: _Failure) -> str | None:
    server = failure.url.server
    match = failure.search(r'password authentication failed for user "(?P<name>[^"]+)"')
    if match is not None:
        return f'{server} refused the password of user "{match["name"]}"'
    if failure.search(r"no password supplied|fe_sendauth"):
        return f"{server} asks for a password and the URL has none"
    if failure.search(r"no pg_hba\.conf entry"):
        return f"{server} refuses connections from this machine for this user and database"
    return None


def _missing_tables(failure: _Failure) -> str | None:
    pattern = r'no such table|relation "[^"]+" does not exist|tables are missing'
    if "42P01" not in failure.codes and failure.search(pattern) is None:
        return None
    prefix = failure.table_prefix
    command = f"jobhook db init --db {failure.url}"
    if prefix != "jobhook_":
        command += f" --table-prefix {prefix}"
    return f"jobhook's tables ({prefix}jobs and others) are not there; create them with `{command}`"


def _cannot_connect(failure: _Failure) -> str | None:
    match = failure.search(_CONNECT_FAILED)
    if match is not None:
        reason = match.string
    else:
        refused = next((e for e in failure.chain if isinstance(e, OSError)), None)
        if refused is None:
            return None
        reason = one_line(refused)
    return f"{failure.url.server} cannot be reached: {_CONNECT_PREFIX.sub('', reason)}"


#: In this order: a missing database or role also fails the connection.
_PROBLEMS: list[Callable[[_Failure], str | None]] = [
    _not_a_database,
    _missing_database,
    _missing_role,
    _refused_login,
    _missing_tables,
    _cannot_connect,
]
