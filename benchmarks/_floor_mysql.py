"""The floor for an apply on MariaDB/MySQL: the best hand-written code on raw PyMySQL
with jobhook's guarantees, against jobhook's tables.

One transaction: the job row locked (``SELECT … FOR UPDATE``, which also gives the
status before the delivery), the delivery id recorded against its unique key (``INSERT
IGNORE``), one guarded ``UPDATE … WHERE id = %s AND <lifecycle rules>`` that also
advances the one-row counter (``LAST_INSERT_ID(last_id + 1)``: the counter row stays
locked until commit, so ids are handed out in commit order, as jobhook does), and, when
it updated the row, the outbox event under that id, written by ``INSERT … SELECT`` from
the updated row. Four statements and a COMMIT.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any

__all__ = ["floor_apply"]

_TERMINAL = ("succeeded", "failed", "canceled")
_RANK = {"pending": 0, "submitted": 1, "running": 2, "succeeded": 3, "failed": 3, "canceled": 3}

_statements: dict[str, dict[str, str]] = {}


def _sql(prefix: str) -> dict[str, str]:
    """The statements for one table prefix, built once."""
    sql = _statements.get(prefix)
    if sql is None:
        jobs = f"{prefix}jobs"
        guarded = (
            f"UPDATE {jobs}, {prefix}event_ids SET status = %s, "
            "progress = COALESCE(%s, progress), "
            "output = COALESCE(%s, output), "
            "sequence = CASE WHEN %s IS NOT NULL AND (sequence IS NULL OR sequence < %s) "
            "THEN %s ELSE sequence END, "
            "version = version + 1, updated_at = %s, "
            "completed_at = CASE WHEN %s THEN %s ELSE completed_at END, "
            f"{prefix}event_ids.last_id = LAST_INSERT_ID({prefix}event_ids.last_id + 1) "
            f"WHERE {jobs}.id = %s AND {prefix}event_ids.id = 1 "
            "AND status NOT IN ('succeeded', 'failed', 'canceled') "
            "AND CASE status WHEN 'pending' THEN 0 WHEN 'submitted' THEN 1 ELSE 2 END <= %s "
            # Running after running: progress and sequence never go back.
            "AND (%s <> 'running' OR status <> 'running' OR "
            "((%s IS NULL OR progress IS NULL OR progress <= %s) "
            "AND (%s IS NULL OR sequence IS NULL OR sequence < %s)))"
        )
        sql = _statements[prefix] = {
            "lock": f"SELECT status FROM {jobs} WHERE id = %s FOR UPDATE",
            "delivery": (
                f"INSERT IGNORE INTO {prefix}deliveries (id, job_id, received_at) "
                "VALUES (%s, %s, %s)"
            ),
            "update": guarded,
            "event": (
                f"INSERT INTO {prefix}events (id, job_id, owner_id, kind, status, progress, "
                "version, delivery_id, created_at) SELECT LAST_INSERT_ID(), id, owner_id, "
                f"kind, status, progress, version, %s, %s FROM {jobs} WHERE id = %s"
            ),
        }
    return sql


def floor_apply(
    conn: Any,
    job_id: str,
    delivery_id: str | None,
    update_fields: dict[str, Any],
    *,
    prefix: str = "jobhook_",
) -> str | None:
    """Apply ``update_fields`` (``status``, and optionally ``progress``, ``output``,
    ``sequence``) to a job in one transaction on a PyMySQL connection (autocommit off).

    Returns the job's status before this delivery, or None when there is no such job
    (then nothing is written). A duplicate delivery id or an update the rules refuse
    changes nothing but the recorded delivery id.
    """
    sql = _sql(prefix)
    status = update_fields["status"]
    progress = update_fields.get("progress")
    if progress is None and status == "succeeded":
        progress = 100.0
    output = update_fields.get("output")
    sequence = update_fields.get("sequence")
    now = datetime.now(timezone.utc).replace(tzinfo=None)
    with conn.cursor() as cur:
        try:
            cur.execute(sql["lock"], (job_id,))
            row = cur.fetchone()
            if row is None:
                conn.rollback()
                return None
            previous: str = row[0]
            if delivery_id is not None:
                cur.execute(sql["delivery"], (delivery_id, job_id, now))
                if cur.rowcount == 0:  # seen before: nothing changes
                    conn.commit()
                    return previous
            terminal = status in _TERMINAL
            cur.execute(
                sql["update"],
                (
                    status,
                    progress,
                    None if output is None else json.dumps(output),
                    sequence,
                    sequence,
                    sequence,
                    now,
                    terminal,
                    now,
                    job_id,
                    _RANK[status],
                    status,
                    progress,
                    progress,
                    sequence,
                    sequence,
                ),
            )
            if cur.rowcount:  # matched: the job and the counter row
                cur.execute(sql["event"], (delivery_id, now, job_id))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
    return previous
