"""``jobhook db prune``, ``jobhook events tail`` and ``jobhook events consumers``."""

from __future__ import annotations

import argparse
import re
import time
from datetime import timedelta
from typing import Any

from jobhook._models import JobEvent
from jobhook._outbox import event_to_dict
from jobhook.cli._common import CLIError, db_url, format_time, open_store, print_json, print_table
from jobhook.exceptions import ParkedEventNotFoundError

__all__ = ["add_events_command", "add_prune_command", "parse_duration"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
#: `events consumers` counts a consumer's lag up to this many events.
LAG_CAP = 10_000


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``12h``, ``7d``, ``2w`` (or plain seconds) as a `timedelta`."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"not a duration (like 90s, 15m, 12h, 7d): {text!r}")
    return timedelta(seconds=float(match[1]) * _UNITS[match[2] or "s"])


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def add_prune_command(
    db_commands: argparse._SubParsersAction[argparse.ArgumentParser],
    add_db_options: Any,
) -> None:
    """Register ``db prune``."""
    prune = db_commands.add_parser(
        "prune",
        help="remove old delivery ids, passed events, finished jobs",
        description="Remove delivery ids received before the retention, events older "
        "than it that every registered consumer has passed, and (when asked) finished "
        "jobs, a batch per transaction: safe beside live traffic. Run it on a schedule.",
    )
    add_db_options(prune)
    prune.add_argument(
        "--deliveries-older-than",
        type=parse_duration,
        default=timedelta(days=7),
        metavar="DURATION",
        help="retention of delivery ids and events (default 7d): a sender retrying "
        "later than this is no longer recognised as a duplicate",
    )
    prune.add_argument(
        "--finished-jobs-older-than",
        type=parse_duration,
        metavar="DURATION",
        help="also remove jobs that finished before this (default: keep every job)",
    )
    prune.add_argument("--batch", type=_positive_int, default=1000, help="rows per transaction")
    prune.set_defaults(run=db_prune)


def db_prune(args: argparse.Namespace) -> int:
    """Prune, and say how many rows went."""
    store = open_store(db_url(args), table_prefix=args.table_prefix)
    try:
        report = store.prune(
            deliveries_older_than=args.deliveries_older_than,
            finished_jobs_older_than=args.finished_jobs_older_than,
            batch=args.batch,
        )
    finally:
        store.close()
    print(
        f"pruned {report.deliveries} delivery id(s), {report.events} event(s), {report.jobs} job(s)"
    )
    return 0


def add_events_command(
    commands: argparse._SubParsersAction[argparse.ArgumentParser], add_db_options: Any
) -> None:
    """Register ``events tail`` and ``events consumers``."""
    events = commands.add_parser(
        "events", help="the outbox: events and their consumers", description="The outbox."
    )
    sub = events.add_subparsers(dest="events_command", metavar="COMMAND", required=True)
    tail = sub.add_parser(
        "tail",
        help="print events as they commit",
        description="Print outbox events as they commit, until interrupted. Starts "
        "after the newest event unless --after or --from-start says otherwise.",
    )
    add_db_options(tail)
    start = tail.add_mutually_exclusive_group()
    start.add_argument("--after", type=int, metavar="ID", help="start after this event id")
    start.add_argument("--from-start", action="store_true", help="every kept event first")
    tail.add_argument("--once", action="store_true", help="print what is there, then exit")
    tail.add_argument(
        "--interval", type=float, default=0.5, metavar="SECONDS", help="poll interval"
    )
    tail.add_argument("--json", action="store_true", help="one JSON object per event")
    tail.set_defaults(run=events_tail)
    consumers = sub.add_parser(
        "consumers",
        help="each consumer's position, lag and parked events",
        description="Each OutboxConsumer name with its position, how many events it "
        "has still to handle, who holds its lease, and its parked events. --replay ID "
        "asks its consumer to hand a parked event to its handler again.",
    )
    add_db_options(consumers)
    consumers.add_argument(
        "--replay", type=int, nargs="+", metavar="ID", help="replay these parked events"
    )
    consumers.set_defaults(run=events_consumers)


def _event_line(event: JobEvent) -> list[str]:
    progress = "-" if event.progress is None else f"{event.progress:g}%"
    return [
        str(event.id),
        event.job_id,
        event.status.value,
        progress,
        str(event.version),
        format_time(event.created_at),
    ]


def events_tail(args: argparse.Namespace) -> int:
    """Print events after a position, following new ones unless ``--once``."""
    store = open_store(db_url(args), table_prefix=args.table_prefix)
    try:
        position = _start(store, args)
        while True:
            events = store.events(after=position, limit=500)
            for event in events:
                if args.json:
                    print_json(event_to_dict(event))
                else:
                    # One line per event, as it commits: id, job, status, progress,
                    # version, time.
                    print("  ".join(_event_line(event)), flush=True)
                position = event.id
            if args.once and len(events) < 500:
                return 0
            if len(events) < 500:
                time.sleep(args.interval)
    finally:
        store.close()


def _start(store: Any, args: argparse.Namespace) -> int:
    if args.after is not None:
        return int(args.after)
    if args.from_start or args.once:
        return 0
    position = 0
    while events := store.events(after=position, limit=1000):
        position = events[-1].id
    return position


def events_consumers(args: argparse.Namespace) -> int:
    """Print every consumer and its parked events; replay parked events."""
    store = open_store(db_url(args), table_prefix=args.table_prefix)
    try:
        for parked_id in args.replay or ():
            try:
                parked = store.replay_parked(parked_id)
            except ParkedEventNotFoundError:
                raise CLIError(f"no parked event with id {parked_id}") from None
            print(
                f"parked event {parked_id} (event {parked.event.id}): {parked.state}; "
                f"consumer {parked.consumer!r} hands it over on its next turn"
            )
        if args.replay:
            return 0
        consumers = store.consumers()
        if not consumers:
            print("no consumers")
            return 0
        rows = []
        for info in consumers:
            lag = len(store.events(after=info.position, limit=LAG_CAP))
            rows.append(
                [
                    info.name,
                    str(info.position),
                    f"{lag}+" if lag == LAG_CAP else str(lag),
                    str(info.parked),
                    info.owner or "-",
                    format_time(info.lease_expires_at),
                ]
            )
        print_table(["NAME", "POSITION", "LAG", "PARKED", "OWNER", "LEASE UNTIL (UTC)"], rows)
        parked_rows = [
            [
                str(p.id),
                p.consumer,
                str(p.event.id),
                p.event.job_id,
                p.state,
                str(p.attempts),
                p.error.splitlines()[-1] if p.error else "-",
            ]
            for p in store.parked_events(limit=1000)
            if p.state != "replayed"
        ]
        if parked_rows:
            print()
            print_table(
                ["PARKED ID", "CONSUMER", "EVENT", "JOB ID", "STATE", "ATTEMPTS", "ERROR"],
                parked_rows,
            )
    finally:
        store.close()
    return 0
