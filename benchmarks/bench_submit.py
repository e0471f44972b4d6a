"""``GeneratorClient.submit`` through each backend profile against raw httpx + one
INSERT + one UPDATE doing the same request.

Every contestant talks to the same in-process backend (an ``httpx.MockTransport``
that answers each profile's submit the way that service does: jobhook's contract, Cog,
Replicate, fal, RunPod), so the network is out of the picture and what is left is the
overhead of doing it jobhook's way: create and commit the job first, build the
profile's request, send it, read the answer, record ``submitted`` (with the remote id
the hosted APIs assign, and its outbox event). Each baseline does the same three steps
on the raw driver (``sqlite3`` / ``psycopg``) with plain httpx and the same request,
written by hand. Contestants take turns in one run; the ratio is the median of the
per-round ratios, with their range. Run:

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

from jobhook import GeneratorClient, backends
from jobhook.stores.sql import SQLJobStore

BASE_URL = "https://generator.example"
CALLBACK = "https://app.example/webhooks/jobhook/{job_id}"
PROFILES = {
    "jobhook": backends.Jobhook(BASE_URL),
    "cog": backends.Cog(BASE_URL),
    "replicate": backends.Replicate("r8_token", model="owner/model", base_url=f"{BASE_URL}/v1"),
    "fal": backends.Fal("fal-ai/flux/dev", "fal-key", base_url=BASE_URL, jwks={"keys": []}),
    "runpod": backends.RunPod("endpoint-1", "rp-key", base_url=f"{BASE_URL}/v2"),
}


def backend(request: httpx.Request) -> httpx.Response:
    """Each service's answer to a submit: ours keep the id, hosted ones assign one."""
    path = request.url.path
    if path == "/jobs":
        return httpx.Response(202, json={"job_id": json.loads(request.content)["job_id"]})
    if path.startswith("/predictions/"):
        return httpx.Response(202, json={"id": path.rsplit("/", 1)[1], "status": "starting"})
    assigned = uuid.uuid4().hex
    if path.startswith("/v1/"):
        return httpx.Response(201, json={"id": assigned, "status": "starting"})
    if path.startswith("/v2/"):
        return httpx.Response(200, json={"id": assigned, "status": "IN_QUEUE"})
    return httpx.Response(200, json={"request_id": assigned, "gateway_request_id": assigned})


def raw_request(profile: str, job_id: str, job_input: dict[str, Any]) -> tuple[str, str, Any]:
    """The request each profile sends, written by hand: method, URL, keyword args."""
    callback = CALLBACK.format(job_id=job_id)
    if profile == "jobhook":
        body = {"job_id": job_id, "callback_url": callback, "kind": "image", "input": job_input}
        return "POST", f"{BASE_URL}/jobs", {"json": body, "headers": {"idempotency-key": job_id}}
    if profile == "cog":
        body = {
            "id": job_id,
            "input": job_input,
            "webhook": callback,
            "webhook_events_filter": ["start", "output", "logs", "completed"],
        }
        headers = {"prefer": "respond-async"}
        return "PUT", f"{BASE_URL}/predictions/{job_id}", {"json": body, "headers": headers}
    if profile == "replicate":
        body = {
            "input": job_input,
            "webhook": callback,
            "webhook_events_filter": ["start", "output", "logs", "completed"],
        }
        url = f"{BASE_URL}/v1/models/owner/model/predictions"
        return "POST", url, {"json": body, "headers": {"authorization": "Bearer r8_token"}}
    if profile == "fal":
        url = f"{BASE_URL}/fal-ai/flux/dev"
        options = {
            "json": job_input,
            "params": {"fal_webhook": callback},
            "headers": {"authorization": "Key fal-key"},
        }
        return "POST", url, options
    body = {"input": job_input, "webhook": callback}
    url = f"{BASE_URL}/v2/endpoint-1/run"
    return "POST", url, {"json": body, "headers": {"authorization": "Bearer rp-key"}}


class RawSubmit:
    """The hand-written submit: INSERT (commit), the request, UPDATE (commit)."""

    def __init__(self, conn: Any, prefix: str, http: httpx.Client, *, sqlite: bool) -> None:
        self.conn, self.http, self.sqlite = conn, http, sqlite
        p = "?" if sqlite else "%s"
        self.insert = (
            f"INSERT INTO {prefix}jobs (id, kind, owner_id, input, status, metadata, version, "
            f"created_at, updated_at) VALUES ({p}, {p}, {p}, {p}, 'pending', '{{}}', 1, {p}, {p})"
        )
        self.update = (
            f"UPDATE {prefix}jobs SET status = 'submitted', remote_id = {p}, "
            f"version = version + 1, updated_at = {p} WHERE id = {p} AND status = 'pending'"
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

    def submit(self, profile: str, job_input: dict[str, Any], owner_id: str) -> str:
        job_id = uuid.uuid4().hex
        now = self.now()
        self.transaction(self.insert, (job_id, "image", owner_id, json.dumps(job_input), now, now))
        method, url, options = raw_request(profile, job_id, job_input)
        response = self.http.request(method, url, **options)
        response.raise_for_status()
        answer = response.json()
        remote_id = None
        if profile in ("replicate", "runpod"):
            remote_id = answer["id"]
        elif profile == "fal":
            remote_id = answer["request_id"]
        self.transaction(self.update, (remote_id, self.now(), job_id))
        return job_id


def run(db: str, url: str, raw_connect: Callable[[], Any], args: Any) -> list[Target]:
    n = 5 if args.quick else 20
    rounds = args.rounds or (2 if args.quick else 60)
    prefix = "bench_" if db == "SQLite" else f"bench_{uuid.uuid4().hex[:6]}_"
    store = SQLJobStore(url, table_prefix=prefix, create_schema=True)
    http = httpx.Client(transport=httpx.MockTransport(backend))
    clients = {
        name: GeneratorClient(store, profile, callback_url=CALLBACK, http_client=http)
        for name, profile in PROFILES.items()
    }
    raw_conn = raw_connect()
    raw = RawSubmit(raw_conn, prefix, http, sqlite=db == "SQLite")

    def lib_round(name: str) -> Callable[[int], float]:
        client = clients[name]

        def one_round(r: int) -> float:
            started = time.perf_counter()
            for i in range(n):
                job = client.submit({"prompt": f"a red fox {i}"}, kind="image", owner_id="u-1")
                if job.status.value != "submitted":
                    raise SystemExit(f"jobhook ({name}): a submit did not end submitted")
            return per_op(started, n)

        return one_round

    def raw_round(name: str) -> Callable[[int], float]:
        def one_round(r: int) -> float:
            started = time.perf_counter()
            for i in range(n):
                raw.submit(name, {"prompt": f"a red fox {i}"}, "u-1")
            return per_op(started, n)

        return one_round

    contestants: dict[str, Callable[[int], float]] = {}
    for name in PROFILES:
        contestants[f"jobhook {name}"] = lib_round(name)
        contestants[f"raw {name}"] = raw_round(name)
    try:
        results = interleaved(contestants, rounds)
    finally:
        raw_conn.close()
        http.close()
        if db != "SQLite":
            store.metadata.drop_all(store.engine)
        store.close()
    report = Report(
        f"submit on {db}: {n} submits per round, {rounds} rounds, contestants interleaved",
        ["profile", "jobhook (median)", "raw (median)", "ratio (median)", "ratio range"],
    )
    for name in PROFILES:
        lib, base = results[f"jobhook {name}"], results[f"raw {name}"]
        ratios = sorted(a / b for a, b in zip(lib, base, strict=True))
        ratio = median(ratios)
        report.rows.append(
            [
                name,
                ms(median(lib)),
                ms(median(base)),
                f"{ratio:.2f}x",
                f"{ratios[0]:.2f}-{ratios[-1]:.2f}x",
            ]
        )
        report.targets.append(Target(f"{db}: submit via {name} / raw", ratio, 1.3))
    report.print()
    return report.targets


def main() -> None:
    main_on_both_databases("bench_submit", __doc__ or "bench_submit", run)


if __name__ == "__main__":
    sys.exit(main())
