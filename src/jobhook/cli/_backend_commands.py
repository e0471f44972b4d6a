"""``jobhook reconcile`` and ``jobhook fake-backend``: the commands that talk to a backend."""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from jobhook._convert import dumps
from jobhook.cli._common import CLIError, db_url, one_line, open_store, print_json
from jobhook.cli._store_commands import add_db_options
from jobhook.exceptions import ValidationError

if TYPE_CHECKING:
    from jobhook.reconcile import ReconcileReport

__all__ = ["DEV_SECRET", "add_backend_commands", "parse_duration"]

#: What ``fake-backend`` signs with unless told otherwise, so that an example app and
#: the fake agree out of the box. Never use it for anything but local development.
DEV_SECRET = "whsec_am9iaG9vay1kZXZlbG9wbWVudC1zZWNyZXQtbm90LWZvci1wcm9kdWN0aW9u"
_FAKE_PROGRESS = (10.0, 30.0, 50.0, 70.0, 90.0)
_DURATION = re.compile(r"(?P<number>\d+(?:\.\d+)?)\s*(?P<unit>s|m|h|d)?")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> timedelta:
    """``90``, ``90s``, ``15m``, ``2h`` or ``1d`` as a timedelta (argparse type)."""
    match = _DURATION.fullmatch(text.strip())
    if match is None or float(match["number"]) <= 0:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (use seconds, or a number with s, m, h or d: 15m)"
        )
    return timedelta(seconds=float(match["number"]) * _UNITS[match["unit"] or "s"])


def add_backend_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``reconcile`` and ``fake-backend``."""
    reconcile = commands.add_parser(
        "reconcile",
        help="recover jobs whose webhooks never came",
        description="Look at jobs that have not changed for --stale-after: poll the "
        "backend's status endpoint and apply its answer, resubmit pending jobs the "
        "backend never saw (under the same id: safe), and fail jobs older than "
        "--give-up-after with code timed_out. Run it from cron, or with --every.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  jobhook reconcile --backend http://127.0.0.1:8001 "
        "--status-path '/jobs/{job_id}' \\\n"
        "      --callback-url 'https://app.example/webhooks/jobhook/{job_id}' --every 1m",
    )
    add_db_options(reconcile)
    reconcile.add_argument(
        "--backend",
        metavar="URL",
        default=os.environ.get("JOBHOOK_BACKEND_URL"),
        help="the generator backend's base URL (default: $JOBHOOK_BACKEND_URL)",
    )
    reconcile.add_argument(
        "--callback-url",
        metavar="TEMPLATE",
        default=os.environ.get("JOBHOOK_CALLBACK_URL"),
        help="your webhook URL with {job_id}, sent with resubmits (default: $JOBHOOK_CALLBACK_URL)",
    )
    reconcile.add_argument("--submit-path", default="/jobs", help="default: /jobs")
    reconcile.add_argument(
        "--status-path",
        metavar="TEMPLATE",
        help="the status endpoint, e.g. '/jobs/{job_id}' (without it jobs are not polled)",
    )
    reconcile.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a header for every backend request, e.g. 'Authorization: Bearer …' (repeat)",
    )
    reconcile.add_argument(
        "--token-secret",
        default=os.environ.get("JOBHOOK_TOKEN_SECRET"),
        help="callback token secret, if your callback URLs carry ?token= "
        "(default: $JOBHOOK_TOKEN_SECRET)",
    )
    reconcile.add_argument(
        "--stale-after",
        type=parse_duration,
        default=timedelta(minutes=5),
        metavar="DURATION",
        help="look at jobs unchanged for this long (default: 5m)",
    )
    reconcile.add_argument(
        "--give-up-after",
        type=parse_duration,
        default=timedelta(days=1),
        metavar="DURATION",
        help="fail unfinished jobs this old with code timed_out (default: 1d)",
    )
    reconcile.add_argument(
        "--limit", type=int, default=500, help="at most this many jobs per run (default: 500)"
    )
    reconcile.add_argument(
        "--every", type=parse_duration, metavar="DURATION", help="run again and again, this often"
    )
    reconcile.add_argument("--json", action="store_true", help="print the report as JSON")
    reconcile.set_defaults(run=run_reconcile, check=check_reconcile)

    fake = commands.add_parser(
        "fake-backend",
        help="serve a stub generator backend for local development",
        description="Serve a generator backend that follows jobhook's contract: "
        "POST /jobs takes {job_id, callback_url, kind, input}, then signed webhooks "
        "report running, progress and succeeded (an image URL) to the callback URL. "
        "GET /jobs/{job_id} answers the status. Point your app's GeneratorClient at it.",
    )
    fake.add_argument("--host", default="127.0.0.1", help="default: 127.0.0.1")
    fake.add_argument("--port", type=int, default=8001, help="default: 8001 (0: any free port)")
    fake.add_argument(
        "--secret",
        default=os.environ.get("JOBHOOK_WEBHOOK_SECRET"),
        help="the whsec_… secret to sign webhooks with (default: $JOBHOOK_WEBHOOK_SECRET, "
        "else a fixed development secret, printed at start)",
    )
    fake.add_argument(
        "--duration",
        type=float,
        default=3.0,
        metavar="SECONDS",
        help="how long each job takes (default: 3)",
    )
    fake.add_argument(
        "--chaos", action="store_true", help="duplicate, reorder and drop some webhooks"
    )
    fake.set_defaults(run=run_fake_backend, check=check_fake_backend)


def _headers(lines: list[str]) -> dict[str, str]:
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise CLIError(f"--header must look like 'Name: value', got {line!r}")
        headers[name.strip()] = value.strip()
    return headers


def check_reconcile(args: argparse.Namespace) -> None:
    """``--backend`` and ``--callback-url`` are required (from the options or the environment)."""
    if not args.backend:
        raise CLIError("name the generator backend: --backend URL (or $JOBHOOK_BACKEND_URL)")
    if not args.callback_url:
        raise CLIError(
            "name your webhook URL for resubmits: --callback-url "
            "'https://app.example/webhooks/jobhook/{job_id}' (or $JOBHOOK_CALLBACK_URL)"
        )
    _headers(args.header)


def run_reconcile(args: argparse.Namespace) -> int:
    """One reconcile pass (or one every ``--every``); exit 1 when a job could not be settled."""
    from jobhook._client import GeneratorClient
    from jobhook.reconcile import Reconciler

    store = open_store(db_url(args), table_prefix=args.table_prefix)
    try:
        try:
            client = GeneratorClient(
                store,
                args.backend,
                callback_url=args.callback_url,
                submit_path=args.submit_path,
                status_path=args.status_path,
                headers=_headers(args.header),
                token_secret=args.token_secret,
            )
            reconciler = Reconciler(
                store,
                client,
                stale_after=args.stale_after,
                give_up_after=args.give_up_after,
                limit=args.limit,
            )
        except ValidationError as exc:
            raise CLIError(str(exc)) from None
        with client:
            while True:
                report = reconciler.run_once()
                if args.every is None:
                    return _report(report, args)
                try:
                    _report(report, args)
                except CLIError as exc:  # keep going: the backend may come back
                    print(f"jobhook: error: {exc}", file=sys.stderr)
                time.sleep(args.every.total_seconds())
    finally:
        store.close()


def _report(report: ReconcileReport, args: argparse.Namespace) -> int:
    """Print ``report``; raise `CLIError` when the backend could not be reached."""
    from jobhook._convert import converter

    if args.json:
        print_json(converter.unstructure(report))
    else:
        print(report.summary())
        for label, ids in [
            ("finished", report.finished),
            ("resubmitted", report.resubmitted),
            ("timed out", report.timed_out),
        ]:
            for job_id in ids:
                print(f"  {label}: {job_id}")
    if report.backend_unreachable:
        first = report.errors[0].message if report.errors else ""
        raise CLIError(f"cannot reach the backend at {args.backend}: {one_line(first)}")
    for error in report.errors:
        print(f"jobhook: job {error.job_id}: {one_line(error.message)}", file=sys.stderr)
    return 1 if report.errors else 0


def _fake_script(served: dict[str, str]) -> Any:
    """Pictures served by the fake itself at ``served["url"]``; a refusal for prompts
    with "fail" in them."""
    from jobhook.testing import Scripts

    failure = Scripts.failure("refused", "the fake backend refuses prompts with 'fail'")

    def script(submission: Any) -> Any:
        text = dumps(submission.input).lower()
        if "fail" in text:
            return failure(submission)
        return Scripts.pictures(served["url"], progress=_FAKE_PROGRESS)(submission)

    return script


def check_fake_backend(args: argparse.Namespace) -> None:
    """``--duration`` must not be negative."""
    if args.duration < 0:
        raise CLIError("--duration must not be negative")


def run_fake_backend(args: argparse.Namespace) -> int:
    """Serve the stub backend until interrupted; print each submit and callback."""
    from jobhook._signing import parse_secrets
    from jobhook.testing import Chaos, FakeGenerator

    secret, origin = args.secret, "$JOBHOOK_WEBHOOK_SECRET or --secret"
    if secret is None:
        secret, origin = DEV_SECRET, "the development secret; set --secret in real setups"
    try:
        parse_secrets(secret)
    except ValidationError as exc:
        raise CLIError(f"--secret: {exc}") from None
    chaos = Chaos(duplicate=0.2, reorder=0.2, drop=0.1, delay=0.5) if args.chaos else None
    served: dict[str, str] = {}
    fake = FakeGenerator(
        secret,
        script=_fake_script(served),
        delivery="background",
        chaos=chaos,
        workers=4,
        step_interval=args.duration / (len(_FAKE_PROGRESS) + 1),
    )
    try:
        with _stop_on_sigterm(), fake, fake.serve(args.host, args.port) as url:
            served["url"] = url
            _announce(url, secret, origin, chaos is not None)
            _follow(fake)
    except OSError as exc:
        raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}") from None
    except KeyboardInterrupt:
        print("stopped", flush=True)
    return 0


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """While the block runs, SIGTERM ends it as Ctrl-C does (service managers, tests)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _announce(url: str, secret: str, origin: str, chaos: bool) -> None:
    print(f"fake generator backend on {url}", flush=False)
    print(f"  submit  POST {url}/jobs   {{job_id, callback_url, kind, input}}")
    print(f"  status  GET  {url}/jobs/{{job_id}}")
    print(f"  cancel  POST {url}/jobs/{{job_id}}/cancel")
    print(f"  files   GET  {url}/files/{{job_id}}/1.png   (the pictures it makes)")
    print(f"webhooks are signed with {secret} ({origin})")
    if chaos:
        print("chaos: some webhooks are duplicated, reordered, delayed or lost")
    print("a prompt containing 'fail' fails; Ctrl-C stops", flush=True)


def _follow(fake: Any) -> None:
    """Print every submit and callback as it happens, until interrupted."""
    submits = callbacks = 0
    while True:
        time.sleep(0.1)
        for submission in fake.submissions[submits:]:
            submits += 1
            print(f"<- submit {submission.job_id} {dumps(submission.input)}", flush=True)
        for sent in fake.callbacks[callbacks:]:
            callbacks += 1
            payload = sent.payload
            progress = payload.get("progress")
            what = payload["status"] + (f" {progress:.0f}%" if progress is not None else "")
            if sent.dropped:
                answer = "lost on purpose"
            elif sent.report is not None and sent.report.status_code is not None:
                answer = f"answered {sent.report.status_code}"
            else:
                answer = f"not delivered: {sent.report.error if sent.report else ''}"
            print(f"-> webhook {sent.job_id} {what}: {answer}", flush=True)
