"""Live progress: open SSE streams per process, outbox reads per wake-up, commit-to-client
latency.

`jobhook.fastapi.events_endpoint` over an `AsyncSQLJobStore` (SQLite, and PostgreSQL
when a URL is given) runs under uvicorn in this process; N clients (httpx, one
connection each, in this process too) follow N/100 jobs, a hundred streams per job.
Each round commits one update to every job through a second, sync store (another
connection, as a webhook worker would), and every stream's message is timed from its
job's commit to its arrival. Rounds alternate between the watcher's own interval
(0.25 s) and an explicit `wake()` after each commit (what a LISTEN/NOTIFY source would
do).

Targets: every stream opens and gets every event; the watcher reads the outbox at most
once per wake-up (plus pages past 500 events) however many streams are open.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Report, Target, machine, parse_args, sqlalchemy_pg_url, summary

from jobhook import AsyncSQLJobStore, JobUpdate, SQLJobStore
from jobhook.live import AsyncWatcher

PER_JOB = 100


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class Server:
    """uvicorn in a thread, serving the events endpoint of ``store`` with ``watcher``."""

    def __init__(self, store: Any, watcher: AsyncWatcher) -> None:
        import uvicorn
        from fastapi import FastAPI

        from jobhook.fastapi import events_endpoint

        app = FastAPI()
        endpoint = events_endpoint(store, authorize=lambda r, j: True, watcher=watcher)
        app.get("/jobs/{job_id}/events")(endpoint)
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=4096)
        config = uvicorn.Config(app, log_level="warning", lifespan="off", backlog=4096)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> str:
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()


async def follow(
    client: httpx.AsyncClient,
    url: str,
    job_id: str,
    opened: asyncio.Event,
    arrivals: dict[int, list[float]],
    counts: list[int],
) -> None:
    """One stream: record the arrival time of every event by version."""
    async with client.stream("GET", f"{url}/jobs/{job_id}/events") as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                if not opened.is_set():
                    counts[0] += 1
                    opened.set()
                    continue  # the snapshot
                version = int(line.split('"version":', 1)[1].split(",", 1)[0])
                arrivals.setdefault(version, []).append(time.perf_counter())


async def measure(name: str, async_url: str, sync_url: str, streams: int, rounds: int) -> Any:
    prefix = f"sse_{uuid.uuid4().hex[:6]}_"  # tables of its own, dropped at the end
    writer = SQLJobStore(sync_url, table_prefix=prefix, create_schema=True)
    store = AsyncSQLJobStore(async_url, table_prefix=prefix)
    watcher = AsyncWatcher(store)
    reads = {"events": 0, "polls": 0}
    events, poll = store.events, watcher.poll

    async def counted_events(**kwargs: Any) -> Any:
        if kwargs.get("limit") != 1:  # the tail search's one-event probes are not wake-ups
            reads["events"] += 1
        return await events(**kwargs)

    async def counted_poll() -> int:
        reads["polls"] += 1
        return await poll()

    store.events = counted_events  # type: ignore[method-assign]
    watcher.poll = counted_poll  # type: ignore[method-assign]
    jobs = [writer.create({}).id for _ in range(max(streams // PER_JOB, 1))]
    rss_before = _rss_mib()
    with Server(store, watcher) as url:
        limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
        timeout = httpx.Timeout(60.0)
        async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:
            arrivals: list[dict[int, list[float]]] = []
            opened: list[asyncio.Event] = []
            counts = [0]
            tasks = []
            for n in range(streams):
                arrivals.append({})
                opened.append(asyncio.Event())
                job_id = jobs[n % len(jobs)]
                tasks.append(
                    asyncio.create_task(
                        follow(client, url, job_id, opened[-1], arrivals[-1], counts)
                    )
                )
            for event in opened:
                await event.wait()
            rss_open = _rss_mib()
            subscribers = watcher.subscribers
            latencies: dict[str, list[float]] = {"interval": [], "wake()": []}
            reads["events"] = reads["polls"] = 0
            for r in range(rounds):
                mode = "interval" if r % 2 == 0 else "wake()"
                version = r + 2
                committed: dict[str, float] = {}
                for job_id in jobs:
                    await asyncio.to_thread(
                        writer.apply, job_id, JobUpdate("running", progress=r % 100)
                    )
                    committed[job_id] = time.perf_counter()
                    if mode == "wake()":
                        watcher.wake()
                while not all(version in a and a[version] for a in arrivals):
                    await asyncio.sleep(0.005)
                for n, a in enumerate(arrivals):
                    latencies[mode].append(a[version][0] - committed[jobs[n % len(jobs)]])
            polls, event_reads = reads["polls"], reads["events"]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
    await watcher.aclose()
    await store.close()
    writer.metadata.drop_all(writer.engine)
    writer.close()
    return {
        "name": name,
        "streams": counts[0],
        "subscribers": subscribers,
        "rss": rss_open - rss_before,
        "latencies": latencies,
        "reads_per_wake": event_reads / max(polls, 1),
        "polls": polls,
    }


def _ms(values: list[float], q: float) -> str:
    if not values:
        return "-"
    ordered = sorted(values)
    return f"{ordered[min(int(q * len(ordered)), len(ordered) - 1)] * 1000:.1f} ms"


def main() -> None:
    args = parse_args(
        __doc__.splitlines()[0],
        lambda p: p.add_argument("--streams", type=int, default=None, help="open streams"),
    )
    streams = args.streams or (20 if args.quick else 1000)
    rounds = args.rounds or (2 if args.quick else 10)
    print(f"# bench_sse ({machine(args.postgres)}), {streams} streams, {rounds} rounds")
    import tempfile

    databases = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        db = Path(tmp) / "sse.db"
        databases.append(("SQLite", f"sqlite+aiosqlite:///{db}", f"sqlite:///{db}"))
        if args.postgres:
            pg = sqlalchemy_pg_url(args.postgres)
            databases.append(("PostgreSQL", pg, pg))
        results = [asyncio.run(measure(*d, streams, rounds)) for d in databases]
    report = Report(
        "Open streams, reads per wake-up, commit-to-client latency",
        ["database", "streams open", "RSS per stream", "wake-ups", "reads / wake-up"]
        + [f"{mode} p50 / p95" for mode in ("interval", "wake()")],
    )
    targets = []
    for result in results:
        report.rows.append(
            [
                result["name"],
                f"{result['streams']} ({result['subscribers']} subscribed)",
                f"{result['rss'] * 1024 / max(result['streams'], 1):.1f} KiB",
                str(result["polls"]),
                f"{result['reads_per_wake']:.2f}",
            ]
            + [
                f"{_ms(result['latencies'][m], 0.5)} / {_ms(result['latencies'][m], 0.95)}"
                for m in ("interval", "wake()")
            ]
        )
        targets.append(Target(f"{result['name']}: reads per wake-up", result["reads_per_wake"], 1))
        targets.append(
            Target(f"{result['name']}: streams open / asked", streams / result["streams"], 1)
        )
    report.targets = targets
    report.print()
    print()
    print("RSS per stream counts both ends (server and client share this process).")
    summary(targets)


if __name__ == "__main__":
    main()
