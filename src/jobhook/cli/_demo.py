"""``jobhook demo``: the whole flow over real loopback HTTP, checked at the end.

A `FakeGenerator` serves the backend's contract on one port; a `WebhookReceiver` (the
standard library's HTTP server calling `WebhookHandler.handle`) serves the app's
webhook route on another; a `GeneratorClient` creates each job in an SQLite store and
submits it by id. The fake calls back with signed webhooks — duplicated, reordered
and lost with ``--chaos`` — and a `Reconciler` recovers what was lost. The demo then
checks every job against what the backend decided, and its outbox events.

The fake makes real pictures (small PNGs it serves itself); an `OutputKeeper` copies
each into a local directory (``--files``) before the job may succeed, so the table at
the end names kept files, not the backend's URLs.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Any

from jobhook._convert import dumps
from jobhook._models import Job, JobStatus, JobUpdate
from jobhook.cli._common import CLIError, open_store, print_table
from jobhook.cli._progress import ProgressBoard
from jobhook.cli._receiver import WebhookReceiver

__all__ = ["add_demo_command"]

PROMPTS = [
    "a red fox in fresh snow",
    "a lighthouse at dusk, oil painting",
    "a bowl of ramen, studio light",
    "a forbidden prompt",
    "a paper boat on a puddle",
    "a city of glass at noon",
    "an owl reading a map",
    "a tram in the rain, 1950s",
]
#: The prompt the fake refuses, so that a failure is shown (and checked) too.
REFUSED = "a forbidden prompt"
_PROGRESS_STEPS = (10.0, 25.0, 40.0, 55.0, 70.0, 85.0)


def add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``demo``."""
    demo = commands.add_parser(
        "demo",
        help="the whole flow on loopback, in seconds",
        description="Run the whole flow on this machine over real HTTP: a fake generator "
        "backend, a webhook receiver, an SQLite job store, and a few jobs with live "
        "progress bars. Ends with a table of the jobs and of what happened to every "
        "webhook; exits non-zero if any job ends in a status other than the one the "
        "backend reported, or with a missing or doubled notification, or if the jobs "
        "are not finished by --timeout.",
    )
    demo.add_argument("--jobs", type=int, default=6, metavar="N", help="how many (default 6)")
    demo.add_argument(
        "--chaos",
        action="store_true",
        help="duplicate, reorder, delay and drop webhooks, and send one for an unknown job",
    )
    demo.add_argument("--seed", type=int, default=None, help="make a --chaos run repeatable")
    demo.add_argument(
        "--db", metavar="URL", help="keep the jobs in this database (default: a temporary file)"
    )
    demo.add_argument(
        "--step", type=float, default=0.15, metavar="SECONDS", help="time between updates"
    )
    demo.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="stop waiting for the jobs after this long (default 60)",
    )
    demo.add_argument(
        "--files",
        metavar="DIR",
        help="keep the generated pictures in this directory (default: a temporary one)",
    )
    demo.set_defaults(run=run_demo, check=check_demo)


def _script(files_url: dict[str, str]) -> Any:
    """The fake's script: pictures served by the fake at ``files_url["url"]`` (known
    once it serves), and a refusal for `REFUSED`."""
    from jobhook.testing import Scripts

    def script(submission: Any) -> Sequence[JobUpdate]:
        prompt = submission.input.get("prompt") if isinstance(submission.input, dict) else None
        if prompt == REFUSED:
            return Scripts.failure("nsfw", "the prompt was refused", progress=(10.0,))(submission)
        pictures = Scripts.pictures(files_url["url"], progress=_PROGRESS_STEPS)
        return pictures(submission)

    return script


@contextmanager
def _files_dir(directory: str | None) -> Iterator[str]:
    if directory is not None:
        yield directory
        return
    with tempfile.TemporaryDirectory(prefix="jobhook-demo-files-") as temporary:
        yield temporary


@contextmanager
def _demo_db(url: str | None) -> Iterator[str]:
    if url is not None:
        yield url
        return
    with tempfile.TemporaryDirectory(prefix="jobhook-demo-") as directory:
        yield f"sqlite:///{directory}/jobs.db"


def check_demo(args: argparse.Namespace) -> None:
    """``--jobs`` from 1 to 200, ``--step`` not negative, ``--timeout`` positive."""
    if not 1 <= args.jobs <= 200:
        raise CLIError(f"--jobs must be from 1 to 200, got {args.jobs}")
    if args.step < 0:
        raise CLIError("--step must not be negative")
    if args.timeout <= 0:
        raise CLIError("--timeout must be more than 0 seconds")


def run_demo(args: argparse.Namespace) -> int:
    """Run the demo; 0 when every job ended as the backend said, else 1."""
    from jobhook._client import GeneratorClient
    from jobhook._signing import new_webhook_secret
    from jobhook._webhook import WebhookHandler
    from jobhook.outputs import FetchPolicy, LocalStorage, OutputKeeper
    from jobhook.testing import Chaos, FakeGenerator

    width = shutil.get_terminal_size().columns
    secret = new_webhook_secret()
    chaos = (
        Chaos(duplicate=0.3, reorder=0.3, drop=0.15, delay=args.step * 2, seed=args.seed)
        if args.chaos
        else None
    )
    out = sys.stdout
    with ExitStack() as stack:
        url = stack.enter_context(_demo_db(args.db))
        plain_store = open_store(url, create=True)
        stack.callback(plain_store.close)
        files = stack.enter_context(_files_dir(args.files))
        # The fake serves its pictures on loopback: allowed here, refused by default.
        keeper = OutputKeeper(
            plain_store,
            LocalStorage(files),
            policy=FetchPolicy(allow_networks=["127.0.0.0/8"]),
            create_schema=True,
        )
        stack.callback(keeper.close)
        store = keeper.store  # a success waits until its pictures are kept
        receiver = WebhookReceiver(WebhookHandler(store, secret=secret)).start()
        stack.callback(receiver.stop)
        files_url: dict[str, str] = {}
        fake = stack.enter_context(
            FakeGenerator(
                secret,
                script=_script(files_url),
                delivery="background",
                chaos=chaos,
                workers=4,
                step_interval=args.step,
            )
        )
        backend_url = stack.enter_context(fake.serve())
        files_url["url"] = backend_url
        client = stack.enter_context(
            GeneratorClient(
                store,
                backend_url,
                callback_url=receiver.callback_url,
                submit_path=FakeGenerator.submit_path,
                status_path=FakeGenerator.status_path,
            )
        )
        _print_field("fake generator backend", backend_url, width)
        _print_field("webhook receiver", f"{receiver.url}/webhooks/jobhook/<job_id>", width)
        _print_field("job store", _shown(url, args.db), width)
        shown_files = files if args.files else "a temporary directory (--files DIR to keep them)"
        _print_field("kept pictures", shown_files, width)
        mode = "with chaos: duplicated, reordered, delayed and lost webhooks" if chaos else ""
        print(file=out)
        _print_wrapped(f"submitting {args.jobs} jobs {mode}".rstrip(), width)

        started = time.monotonic()
        labels: dict[str, str] = {}
        for number in range(args.jobs):
            prompt = PROMPTS[number % len(PROMPTS)]
            job = client.submit({"prompt": prompt}, kind="image", owner_id="demo-user")
            labels[job.id] = prompt
        board = ProgressBoard(out, labels, width=width)
        jobs, timed_out = _watch(
            store, fake, keeper, board, list(labels), deadline=started + args.timeout
        )
        recovered: list[str] = []
        if not timed_out:
            if args.chaos:
                _stray_webhook(secret, receiver.callback_url)
            recovered = _recover(store, client, jobs, keeper)
            jobs = [store.get(job_id) for job_id in labels]
            board.update(jobs)
        elapsed = time.monotonic() - started
        problems = [] if timed_out else _check(store, fake, jobs, keeper)
        _summary(jobs, labels, receiver.outcomes, recovered, store, elapsed, width)
        if args.db:
            print(f"\nthe jobs are kept; list them with\n  jobhook jobs list --db {args.db}")
    if timed_out:
        print(f"jobhook: demo: {_timed_out(args.timeout, jobs)}", file=sys.stderr)
        return 1
    if problems:
        for problem in problems:
            print(f"jobhook: demo: {problem}", file=sys.stderr)
        return 1
    print()
    _print_wrapped(
        "every job ended as the backend reported, with exactly one final notification", width
    )
    return 0


def _timed_out(timeout: float, jobs: list[Job]) -> str:
    # Not a wrong ending, and not to be reported as one: the backend was still
    # sending webhooks when the time was up.
    unfinished = sum(not job.terminal for job in jobs)
    return (
        f"timed out after {timeout:g} s with {unfinished} of {len(jobs)} jobs unfinished; "
        "this is not lost updates: the backend was still working on them "
        "(give it longer with --timeout)"
    )


def _print_field(label: str, value: str, width: int) -> None:
    """``label`` and ``value`` in two columns, or ``value`` under it when too wide."""
    line = f"{label:<23} {value}"
    if len(line) <= width:
        print(line)
    else:  # a URL cut short is no use: give it a line of its own
        print(f"{label}\n  {value}")


def _print_wrapped(text: str, width: int) -> None:
    print(textwrap.fill(text, width=max(width, 20)))


def _shown(url: str, chosen: str | None) -> str:
    return url if chosen else "a temporary SQLite file (--db URL to keep the jobs)"


def _watch(
    store: Any,
    fake: Any,
    keeper: Any,
    board: ProgressBoard,
    job_ids: list[str],
    *,
    deadline: float,
) -> tuple[list[Job], bool]:
    """Redraw the bars until every job is final or the fake has nothing left to send,
    keeping the pictures of each success on the way.

    Returns the jobs, and whether ``deadline`` passed first (the fake still had
    webhooks to send: some jobs are not final yet, and nothing was lost).
    """
    while True:
        keeper.run_once()
        jobs = [store.get(job_id) for job_id in job_ids]
        board.update(jobs)
        if all(job.terminal for job in jobs):
            return jobs, False
        if time.monotonic() > deadline:
            return jobs, True
        try:
            fake.wait_idle(timeout=0.1)
        except TimeoutError:
            continue
        # Idle: every callback was sent or lost. Whatever is not final now never will be
        # by webhook; one last look, then the reconciler takes over.
        keeper.run_once()
        jobs = [store.get(job_id) for job_id in job_ids]
        board.update(jobs)
        return jobs, False


def _stray_webhook(secret: str, callback_url: str) -> None:
    """Send a callback for a job id the app never stored: the original bug."""
    from jobhook.sender import CallbackSender

    job_id = "backend-invented-id-42"
    payload = {"job_id": job_id, "status": "succeeded", "output": {"images": []}}
    with CallbackSender(secret, max_attempts=1) as sender:
        sender.send(callback_url.replace("{job_id}", job_id), payload)


def _recover(store: Any, client: Any, jobs: list[Job], keeper: Any) -> list[str]:
    """Run the reconciler over the jobs whose last webhook was lost, then keep the
    pictures of the successes it found; the ids of the jobs that ended so."""
    from jobhook.reconcile import Reconciler

    unfinished = [job.id for job in jobs if not job.terminal]
    if not unfinished:
        return []
    # The backend is idle, so any unfinished job is one whose webhooks were lost:
    # treat every job as stale at once instead of waiting minutes as in production.
    reconciler = Reconciler(
        store, client, stale_after=timedelta(microseconds=1), give_up_after=timedelta(hours=1)
    )
    reconciler.run_once()
    keeper.run_once()  # a success found by polling waits for its pictures too
    return [job_id for job_id in unfinished if store.get(job_id).terminal]


def _check(store: Any, fake: Any, jobs: list[Job], keeper: Any) -> list[str]:
    """Every way a job could have ended wrong, as sentences (empty: all is well)."""
    problems = []
    terminal_events: dict[str, int] = {job.id: 0 for job in jobs}
    after = 0
    while batch := store.events(after=after, limit=500):
        for event in batch:
            if event.status.terminal and event.job_id in terminal_events:
                terminal_events[event.job_id] += 1
        after = batch[-1].id
    for job in jobs:
        expected = fake.final_status(job.id)
        if job.status is not expected:
            problems.append(f"job {job.id} is {job.status}, the backend said {expected}")
        elif job.status is JobStatus.SUCCEEDED and not job.output:
            problems.append(f"job {job.id} succeeded without its output")
        elif job.status is JobStatus.SUCCEEDED and not _pictures_kept(job, keeper):
            problems.append(f"job {job.id} succeeded, but its pictures are not kept")
        if terminal_events[job.id] != 1:
            problems.append(
                f"job {job.id} has {terminal_events[job.id]} final notifications, not 1"
            )
    return problems


def _pictures_kept(job: Job, keeper: Any) -> bool:
    """True when the job's output names kept PNG files, and only those."""
    record = keeper.kept(job.id)
    if record is None or record.state != "kept" or not record.files:
        return False
    urls = [kept.url for kept in record.files]
    if job.output.get("images") != urls:
        return False
    return all(keeper.storage.get(kept.key).startswith(b"\x89PNG") for kept in record.files)


def _summary(
    jobs: list[Job],
    labels: dict[str, str],
    outcomes: Any,
    recovered: list[str],
    store: Any,
    elapsed: float,
    width: int,
) -> None:
    print()
    rows = []
    for job in jobs:
        if job.error is not None:
            result = f"{job.error.code}: {job.error.message}"
        elif isinstance(job.output, dict) and job.output.get("images"):
            result = str(job.output["images"][0])
        else:
            result = "-" if job.output is None else dumps(job.output)
        if job.id in recovered:  # first, so that a narrow terminal still shows it
            result = f"recovered by polling: {result}"
        rows.append([job.id, labels[job.id], job.status.value, result])
    # No progress column: the bars above showed it, and the room is the result's.
    print_table(["JOB ID", "PROMPT", "STATUS", "RESULT"], rows, width=width)
    dead = len(store.dead_letters(limit=10_000))
    counts = [
        ("deliveries applied", outcomes["applied"]),
        ("duplicates ignored", outcomes["duplicate"]),
        ("stale ignored", outcomes["stale"] + outcomes["conflict"]),
        ("dead letters (unknown job id)", dead),
        ("recovered by the reconciler", len(recovered)),
    ]
    print()
    for name, count in counts:
        print(f"  {name:<30} {count}")
    print(f"\n{len(jobs)} jobs in {elapsed:.1f}s")
