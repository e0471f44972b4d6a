"""``GeneratorClient.submit`` against raw httpx + one INSERT + one UPDATE.

Both sides talk to the same in-process backend (an ``httpx.MockTransport`` that
answers ``202 {"job_id": …}``), so the network is out of the picture and what is left
is the overhead of doing it jobhook's way: create and commit the job first, POST it
with its id, record ``submitted`` (and its outbox event). The baseline does the same
three steps on the raw driver (``sqlite3`` / ``psycopg``) with plain httpx. Run:

    python benchmarks/bench_submit.py [--quick]
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import httpx
from _common import (
    Report,
    Target,
    interleaved,
    main_on_both_databases,
    median,
    ms,
    per_op,
)

from jobhook import GeneratorClient
from jobhook.stores.sql import SQLJobStore

BASE_URL = "https://generator.example"
CALLBACK = "https://app.example/webhooks/jobhook/{job_id}"


def backend(request: httpx.Request) -> httpx.Response:
    """A backend that keeps the id it is given, as the wire contract says."""
    job_id = json.loads(request.content)["job_id"]
    return httpx.Response(202, json={"job_id": job_id, "status": "submitted"})


class RawSubmit:
    """The hand-written submit: INSERT (commit), POST, UPDATE (commit)."""

    def __init__(self, conn: Any, prefix: str, http: httpx.Client, *, sqlite: bool) -> None:
        self.conn, self.http, self.sqlite = conn, http, sqlite
        p = "?" if sqlite else "%s"
        self.insert = (
            f"INSERT INTO {prefix}jobs (id, kind, owner_id, input, status, metadata, version, "
            f"created_at, updated_at) VALUES ({p}, {p}, {p}, {p}, 'pending', '{{}}', 1, {p}, {p})"
        )
        self.update = (
            f"UPDATE {prefix}jobs SET status = 'submitted', version = version + 1, "
            f"updated_at = {p} WHERE id = {p} AND status = 'pending'"
        )

    def now(self) -> Any:
        now = datetime.now(timezone.utc)
        return now.strftime("%Y-%m-%d %H:%M:%S.%f") if self.sqlite else now

    def transaction(self, statement: str, params: tuple[Any, ...]) -> None:
        if self.sqlite:
            self.conn.execute("BEGIN IMMEDIATE")
            self.conn.execute(statement, params)
            self.conn.execute("COMMIT")
        else:
            self.conn.execute(statement, params)
            self.conn.commit()

    def submit(self, job_input: dict[str, Any], owner_id: str) -> str:
        job_id = uuid.uuid4().hex
        now = self.now()
        self.transaction(self.insert, (job_id, "image", owner_id, json.dumps(job_input), now, now))
        response = self.http.post(
            f"{BASE_URL}/jobs",
            json={
                "job_id": job_id,
                "callback_url": CALLBACK.format(job_id=job_id),
                "kind": "image",
                "input": job_input,
            },
            headers={"idempotency-key": job_id},
        )
        response.raise_for_status()
        self.transaction(self.update, (self.now(), job_id))
        return job_id


def run(db: str, url: str, raw_connect: Callable[[], Any], args: Any) -> list[Target]:
    n = 10 if args.quick else 20
    rounds = args.rounds or (4 if args.quick else 200)
    prefix = "bench_" if db == "SQLite" else f"bench_{uuid.uuid4().hex[:6]}_"
    store = SQLJobStore(url, table_prefix=prefix, create_schema=True)
    http = httpx.Client(transport=httpx.MockTransport(backend))
    client = GeneratorClient(store, BASE_URL, callback_url=CALLBACK, http_client=http)
    raw_conn = raw_connect()
    raw = RawSubmit(raw_conn, prefix, http, sqlite=db == "SQLite")

    def lib_round(r: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            job = client.submit({"prompt": f"a red fox {i}"}, kind="image", owner_id="user-1")
            if job.status.value != "submitted":
                raise SystemExit("jobhook: a submit did not end submitted")
        return per_op(started, n)

    def raw_round(r: int) -> float:
        started = time.perf_counter()
        for i in range(n):
            raw.submit({"prompt": f"a red fox {i}"}, "user-1")
        return per_op(started, n)

    try:
        results = interleaved({"jobhook": lib_round, "raw": raw_round}, rounds)
    finally:
        raw_conn.close()
        http.close()
        if db != "SQLite":
            store.metadata.drop_all(store.engine)
        store.close()
    lib_t, raw_t = median(results["jobhook"]), median(results["raw"])
    report = Report(
        f"submit on {db}: {n} submits per round, {rounds} rounds",
        ["implementation", "per submit (median)", "submits/s"],
    )
    report.rows = [
        ["jobhook GeneratorClient.submit", ms(lib_t), f"{1 / lib_t:,.0f}"],
        ["raw httpx + INSERT + UPDATE", ms(raw_t), f"{1 / raw_t:,.0f}"],
    ]
    report.targets = [Target(f"{db}: submit / raw", lib_t / raw_t, 1.3)]
    report.print()
    return report.targets


def main() -> None:
    main_on_both_databases("bench_submit", __doc__ or "bench_submit", run)


if __name__ == "__main__":
    sys.exit(main())
