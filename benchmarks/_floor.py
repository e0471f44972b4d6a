"""The true floor: the best hand-written webhook handler with jobhook's guarantees.

Each floor handler verifies the Standard Webhooks signature with the standard library,
parses the JSON, and applies the update with the same guarantees as jobhook: the
delivery id is recorded (a repeat is a duplicate; nothing is recorded for a job that
does not exist), the lifecycle rules are decided in the database by one guarded UPDATE,
the outbox event is written in the same commit with an id no reader can skip, and the
answer names the outcome. Nothing more:

* PostgreSQL: one data-modifying statement in autocommit on the raw driver (delivery id
  ``ON CONFLICT DO NOTHING``, guarded UPDATE, outbox INSERT, the previous status
  returned): one round trip, one commit.
* SQLite: one ``BEGIN IMMEDIATE`` transaction on the stdlib driver (or aiosqlite), with
  the ``synchronous`` setting jobhook leaves in place (SQLite's default).

The sync handlers take a DB-API connection (``sqlite3`` with ``isolation_level=None``,
``psycopg`` with ``autocommit=True``); the async ones ``aiosqlite``, psycopg's
``AsyncConnection`` or an ``asyncpg`` connection.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from datetime import datetime, timezone
from typing import Any

RANK = {"pending": 0, "submitted": 1, "running": 2, "succeeded": 3, "failed": 3, "canceled": 3}
TERMINAL = frozenset({"succeeded", "failed", "canceled"})

# The lifecycle rules as one guard: not terminal, rank never goes back, and a running
# update after running never goes back in progress or sequence.
GUARD = """
    status NOT IN ('succeeded', 'failed', 'canceled')
    AND CASE status WHEN 'pending' THEN 0 WHEN 'submitted' THEN 1 ELSE 2 END <= {rank}
    AND ({s} <> 'running' OR status <> 'running' OR (
        (progress IS NULL OR {pr} IS NULL OR progress <= {pr})
        AND (sequence IS NULL OR {seq} IS NULL OR sequence < {seq})))
"""
SETS = """
    status = {s}, progress = COALESCE({pr}, progress), output = COALESCE({o}, output),
    sequence = CASE WHEN sequence IS NULL OR sequence < {seq} THEN COALESCE({seq}, sequence)
                    ELSE sequence END,
    version = version + 1, updated_at = {now},
    completed_at = CASE WHEN {t} THEN {now} ELSE completed_at END
"""

PG_APPLY = """
WITH prev AS (SELECT status FROM {p}jobs WHERE id = %(j)s),
d AS (
    INSERT INTO {p}deliveries (id, job_id, received_at)
    SELECT %(d)s, %(j)s, %(now)s WHERE EXISTS (SELECT 1 FROM prev)
    ON CONFLICT (id) DO NOTHING RETURNING 1
),
u AS (
    UPDATE {p}jobs SET {sets}
    WHERE id = %(j)s AND EXISTS (SELECT 1 FROM d) AND {guard}
    RETURNING id, owner_id, kind, status, progress, version
),
e AS (
    INSERT INTO {p}events
        (id, job_id, owner_id, kind, status, progress, version, delivery_id, created_at)
    SELECT txid_current(), id, owner_id, kind, status, progress, version, %(d)s, %(now)s
    FROM u RETURNING id
)
SELECT (SELECT status FROM prev), (SELECT count(*) FROM d), (SELECT id FROM e)
"""

PG_NAMES = {
    "s": "%(s)s::text",
    "pr": "%(pr)s::float8",
    "o": "%(o)s::jsonb",
    "seq": "%(seq)s::bigint",
    "t": "%(t)s::bool",
    "now": "%(now)s::timestamptz",
    "rank": "%(rank)s::int",
}
SQLITE_NAMES = {
    "s": ":s",
    "pr": ":pr",
    "o": ":o",
    "seq": ":seq",
    "t": ":t",
    "now": ":now",
    "rank": ":rank",
}


def pg_apply(prefix: str) -> str:
    """PostgreSQL's one statement, with psycopg's ``%(name)s`` parameters."""
    return PG_APPLY.format(p=prefix, sets=SETS.format(**PG_NAMES), guard=GUARD.format(**PG_NAMES))


def asyncpg_query(sql: str) -> tuple[str, list[str]]:
    """``%(name)s`` parameters as asyncpg's ``$n``, and the names in their order."""
    names: list[str] = []

    def number(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in names:
            names.append(name)
        return f"${names.index(name) + 1}"

    return re.sub(r"%\((\w+)\)s", number, sql), names


#: The same parameters for SQLAlchemy's `text()` (``:name``; ``::type`` would not parse).
SA_PG_NAMES = {
    "s": "CAST(:s AS text)",
    "pr": "CAST(:pr AS float8)",
    "o": "CAST(:o AS jsonb)",
    "seq": "CAST(:seq AS bigint)",
    "t": "CAST(:t AS bool)",
    "now": "CAST(:now AS timestamptz)",
    "rank": "CAST(:rank AS int)",
}


#: The event's columns taken from the updated row, in the row's order.
EVENT_COLUMNS = ("job_id", "owner_id", "kind", "status", "progress", "version")


def sa_pg_apply(prefix: str) -> str:
    """PostgreSQL's one statement with SQLAlchemy `text()` parameters."""
    sql = PG_APPLY.format(
        p=prefix, sets=SETS.format(**SA_PG_NAMES), guard=GUARD.format(**SA_PG_NAMES)
    )
    return re.sub(r"%\((\w+)\)s", r":\1", sql)


class SQLiteStatements:
    """The SQLite floor's statements (named parameters)."""

    def __init__(self, prefix: str) -> None:
        p = prefix
        self.insert_delivery = (
            f"INSERT INTO {p}deliveries (id, job_id, received_at) "
            f"SELECT :d, :j, :now WHERE EXISTS (SELECT 1 FROM {p}jobs WHERE id = :j) "
            f"ON CONFLICT (id) DO NOTHING"
        )
        self.update = (
            f"UPDATE {p}jobs SET {SETS.format(**SQLITE_NAMES)} "
            f"WHERE id = :j AND {GUARD.format(**SQLITE_NAMES)} "
            f"RETURNING id, owner_id, kind, status, progress, version"
        )
        self.insert_event = (
            f"INSERT INTO {p}events "
            f"(job_id, owner_id, kind, status, progress, version, delivery_id, created_at) "
            f"VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
        )
        self.status = f"SELECT status FROM {p}jobs WHERE id = ?"


def verify(key: bytes, headers: dict[str, str], body: bytes, tolerance: int = 300) -> bool:
    """Standard Webhooks v1 with the standard library."""
    msg_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    signatures = headers.get("webhook-signature")
    if not (msg_id and timestamp and signatures) or not timestamp.isdigit():
        return False
    if abs(time.time() - int(timestamp)) > tolerance:
        return False
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    expected = base64.b64encode(mac)
    for signature in signatures.split():
        version, _, value = signature.partition(",")
        if version == "v1" and hmac.compare_digest(value.encode(), expected):
            return True
    return False


def parse(key: bytes, headers: dict[str, str], body: bytes, *, sqlite: bool) -> Any:
    """The status to answer (int), or the parameters of the apply."""
    if not verify(key, headers, body):
        return 401
    try:
        data = json.loads(body)
        job_id, status = data["job_id"], data["status"]
        rank = RANK[status]
    except (ValueError, KeyError, TypeError):
        return 400
    progress = data.get("progress")
    if progress is None and status == "succeeded":
        progress = 100.0
    output = data.get("output")
    now = datetime.now(timezone.utc)
    return {
        "j": job_id,
        "d": headers["webhook-id"],
        "s": status,
        "pr": None if progress is None else float(progress),
        "o": None if output is None else json.dumps(output),
        "seq": data.get("sequence"),
        "t": status in TERMINAL,
        # SQLite has no timestamp type: the text SQLAlchemy would store.
        "now": now.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else now,
        "rank": rank,
    }


def pg_answer(row: Any) -> int:
    """The answer from the one statement's row (previous status, recorded, event id):
    404 for an unknown job; applied, duplicate (not recorded) or refused are all 200."""
    return 404 if row[0] is None else 200


class SyncFloor:
    """The floor on a sync DB-API connection."""

    def __init__(self, conn: Any, prefix: str, secret: str, *, sqlite: bool) -> None:
        self.conn = conn
        self.sqlite = sqlite
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        if sqlite:
            self.sql = SQLiteStatements(prefix)
        else:
            conn.autocommit = True
            self.pg = pg_apply(prefix)
            self.cursor = conn.cursor()

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        params = parse(self.key, headers, body, sqlite=self.sqlite)
        if isinstance(params, int):
            return params
        if not self.sqlite:
            self.cursor.execute(self.pg, params)
            return pg_answer(self.cursor.fetchone())
        conn, sql = self.conn, self.sql
        conn.execute("BEGIN IMMEDIATE")  # the write lock up front: no upgrade deadlock
        try:
            if conn.execute(sql.insert_delivery, params).rowcount == 0:
                found = conn.execute(sql.status, (params["j"],)).fetchone()
                conn.execute("COMMIT")
                return 200 if found else 404
            row = conn.execute(sql.update, params).fetchone()
            if row is None:
                conn.execute(sql.status, (params["j"],)).fetchone()  # says stale or conflict
            else:
                conn.execute(sql.insert_event, (*row[:6], params["d"], params["now"]))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        return 200


class SQLAlchemyFloor:
    """The floor's statements, unchanged, run through SQLAlchemy's `Connection.execute`
    on an engine set up as jobhook's (a pooled connection per delivery, autocommit on
    PostgreSQL, ``BEGIN IMMEDIATE`` on SQLite): what running the floor's work through
    SQLAlchemy's public API costs before any library code, and so the nearest any
    library that runs every statement on `Connection.execute` can come to the floor."""

    def __init__(self, engine: Any, prefix: str, secret: str, *, sqlite: bool) -> None:
        import sqlalchemy as sa

        self.engine = engine
        self.sqlite = sqlite
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        if sqlite:
            raw = SQLiteStatements(prefix)
            self.insert_delivery = sa.text(raw.insert_delivery)
            self.update = sa.text(raw.update)
            self.insert_event = sa.text(
                raw.insert_event.replace(
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    "VALUES (:job_id, :owner_id, :kind, :status, :progress, :version, :d, :now)",
                )
            )
            self.status = sa.text(raw.status.replace("?", ":j"))
        else:
            self.pg = sa.text(sa_pg_apply(prefix))

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        params = parse(self.key, headers, body, sqlite=self.sqlite)
        if isinstance(params, int):
            return params
        with self.engine.connect() as conn:
            if not self.sqlite:
                row = conn.execute(self.pg, params).fetchone()
                conn.commit()  # autocommit: sends nothing
                return pg_answer(row)
            with conn.begin():  # the driver begins IMMEDIATE at the first write
                if conn.execute(self.insert_delivery, params).rowcount == 0:
                    found = conn.execute(self.status, params).fetchone()
                    return 200 if found else 404
                row = conn.execute(self.update, params).fetchone()
                if row is None:
                    conn.execute(self.status, params).fetchone()  # says stale or conflict
                else:
                    event = dict(zip(EVENT_COLUMNS, row, strict=True))
                    conn.execute(
                        self.insert_event, {**event, "d": params["d"], "now": params["now"]}
                    )
        return 200


class AsyncSQLAlchemyFloor:
    """PostgreSQL's floor statement, unchanged, through SQLAlchemy's
    `AsyncConnection.execute` on an async engine set up as jobhook's (autocommit): the
    async twin of `SQLAlchemyFloor`."""

    def __init__(self, engine: Any, prefix: str, secret: str) -> None:
        import sqlalchemy as sa

        self.engine = engine
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        self.pg = sa.text(sa_pg_apply(prefix))

    async def handle(self, headers: dict[str, str], body: bytes) -> int:
        params = parse(self.key, headers, body, sqlite=False)
        if isinstance(params, int):
            return params
        async with self.engine.connect() as conn:
            row = (await conn.execute(self.pg, params)).fetchone()
            await conn.commit()  # autocommit: sends nothing
        return pg_answer(row)


class AsyncFloor:
    """The floor on an async driver: ``aiosqlite``, psycopg's ``AsyncConnection``
    (``autocommit=True``) or ``asyncpg``."""

    def __init__(self, conn: Any, prefix: str, secret: str, *, driver: str) -> None:
        self.conn = conn
        self.driver = driver
        self.key = base64.b64decode(secret.removeprefix("whsec_"))
        if driver == "aiosqlite":
            self.sql = SQLiteStatements(prefix)
        elif driver == "asyncpg":
            self.pg, self.names = asyncpg_query(pg_apply(prefix))
        else:
            self.pg = pg_apply(prefix)

    async def handle(self, headers: dict[str, str], body: bytes) -> int:
        params = parse(self.key, headers, body, sqlite=self.driver == "aiosqlite")
        if isinstance(params, int):
            return params
        if self.driver == "asyncpg":
            row = await self.conn.fetchrow(self.pg, *(params[n] for n in self.names))
            return pg_answer(tuple(row))
        if self.driver == "psycopg":
            cursor = await self.conn.execute(self.pg, params)
            return pg_answer(await cursor.fetchone())
        conn, sql = self.conn, self.sql
        await conn.execute("BEGIN IMMEDIATE")
        try:
            cursor = await conn.execute(sql.insert_delivery, params)
            if cursor.rowcount == 0:
                found = await (await conn.execute(sql.status, (params["j"],))).fetchone()
                await conn.execute("COMMIT")
                return 200 if found else 404
            row = await (await conn.execute(sql.update, params)).fetchone()
            if row is None:
                await (await conn.execute(sql.status, (params["j"],))).fetchone()
            else:
                await conn.execute(sql.insert_event, (*row[:6], params["d"], params["now"]))
        except BaseException:
            await conn.execute("ROLLBACK")
            raise
        await conn.execute("COMMIT")
        return 200
