"""``jobhook db init|upgrade``, ``jobhook jobs list|show``, ``jobhook dead-letters
list|replay`` (``db prune`` and ``events`` live in `jobhook.cli._outbox_commands`)."""

from __future__ import annotations

import argparse
import sys

from jobhook._convert import converter, job_to_dict, update_to_dict
from jobhook._models import DeadLetter, Job, JobStatus
from jobhook.cli._common import (
    CLIError,
    db_url,
    format_progress,
    format_time,
    open_store,
    print_json,
    print_table,
)
from jobhook.cli._outbox_commands import add_events_command, add_prune_command
from jobhook.exceptions import DeadLetterNotFoundError, JobNotFoundError

__all__ = ["add_store_commands"]

_STATUSES = [s.value for s in JobStatus]


def add_db_options(parser: argparse.ArgumentParser) -> None:
    """``--db`` and ``--table-prefix``, shared by every command that opens the store."""
    parser.add_argument(
        "--db",
        metavar="URL",
        help="database URL (default: $JOBHOOK_DATABASE_URL, else sqlite:///jobhook.db)",
    )
    parser.add_argument(
        "--table-prefix",
        default="jobhook_",
        metavar="PREFIX",
        help="prefix of jobhook's table names (default: jobhook_)",
    )


def add_store_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``db``, ``jobs`` and ``dead-letters`` with their subcommands."""
    db = commands.add_parser("db", help="manage jobhook's tables", description="Manage tables.")
    db_commands = db.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    init = db_commands.add_parser(
        "init",
        help="create the tables (safe to run again)",
        description="Create jobhook's tables and indexes where they do not exist yet. "
        "Existing tables and rows are left alone.",
    )
    add_db_options(init)
    init.set_defaults(run=db_init)
    upgrade = db_commands.add_parser(
        "upgrade",
        help="apply the schema's migrations (Alembic; safe to run again)",
        description="Bring jobhook's tables to the newest revision: create them in an "
        "empty database, or upgrade those an earlier version made, rows kept. Needs "
        "pip install 'jobhook[migrations]'.",
    )
    add_db_options(upgrade)
    upgrade.add_argument("--revision", default="head", help="the revision to reach (default: head)")
    upgrade.set_defaults(run=db_upgrade)
    add_prune_command(db_commands, add_db_options)
    add_events_command(commands, add_db_options)

    jobs = commands.add_parser("jobs", help="look at stored jobs", description="Stored jobs.")
    jobs_commands = jobs.add_subparsers(dest="jobs_command", metavar="COMMAND", required=True)
    listing = jobs_commands.add_parser(
        "list", help="newest jobs first", description="List jobs, newest first."
    )
    add_db_options(listing)
    listing.add_argument("--owner", help="only this owner's jobs")
    listing.add_argument(
        "--status", action="append", choices=_STATUSES, help="only jobs in this status (repeat)"
    )
    listing.add_argument("--kind", help="only jobs of this kind")
    listing.add_argument("--limit", type=_positive_int, default=20, help="how many (default 20)")
    listing.add_argument("--before", metavar="JOB_ID", help="the page after this job")
    listing.add_argument("--json", action="store_true", help="one JSON object per job")
    listing.set_defaults(run=jobs_list)
    show = jobs_commands.add_parser(
        "show", help="one job in full", description="Show every field of one job."
    )
    add_db_options(show)
    show.add_argument("job_id", metavar="JOB_ID")
    show.add_argument("--json", action="store_true", help="as one JSON object")
    show.set_defaults(run=jobs_show)

    dead = commands.add_parser(
        "dead-letters",
        help="webhooks that named an unknown job",
        description="Deliveries whose job id was not in the store are kept as dead "
        "letters. Replay them once the job exists.",
    )
    dead_commands = dead.add_subparsers(dest="dead_command", metavar="COMMAND", required=True)
    dead_list = dead_commands.add_parser(
        "list", help="kept deliveries, oldest first", description="List dead letters."
    )
    add_db_options(dead_list)
    dead_list.add_argument("--job", metavar="JOB_ID", help="only those for this job id")
    dead_list.add_argument("--all", action="store_true", help="include replayed ones")
    dead_list.add_argument("--limit", type=_positive_int, default=100, help="how many")
    dead_list.add_argument("--json", action="store_true", help="one JSON object per line")
    dead_list.set_defaults(run=dead_letters_list)
    replay = dead_commands.add_parser(
        "replay",
        help="apply kept deliveries now",
        description="Apply dead letters to their jobs, under their original delivery "
        "ids (a replay that already applied is a harmless duplicate).",
    )
    add_db_options(replay)
    replay.add_argument("ids", metavar="ID", type=int, nargs="*", help="dead letter ids")
    replay.add_argument("--all", action="store_true", help="replay every pending dead letter")
    replay.set_defaults(run=dead_letters_replay, check=check_replay)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def db_init(args: argparse.Namespace) -> int:
    """Create the tables (idempotent)."""
    url = db_url(args)
    store = open_store(url, table_prefix=args.table_prefix, create=True)
    try:
        print(f"jobhook tables ready in {store.engine.url.render_as_string(hide_password=True)}")
    finally:
        store.close()
    return 0


def db_upgrade(args: argparse.Namespace) -> int:
    """Apply the migrations up to ``--revision``."""
    from jobhook.migrations import upgrade

    url = db_url(args)
    reached = upgrade(url, table_prefix=args.table_prefix, revision=args.revision)
    print(f"jobhook tables at revision {reached}")
    return 0


def jobs_list(args: argparse.Namespace) -> int:
    """Print a page of jobs, newest first."""
    store = open_store(db_url(args), table_prefix=args.table_prefix)
    try:
        try:
            jobs = store.list(
                owner_id=args.owner,
                status=args.status,
                kind=args.kind,
                limit=args.limit,
                before=args.before,
            )
        except JobNotFoundError as exc:
            raise CLIError(f"--before names no job: {exc.job_id!r}") from None
    finally:
        store.close()
    if args.json:
        for job in jobs:
            print_json(job_to_dict(job))
        return 0
    if not jobs:
        print("no jobs")
        return 0
    rows = [
        [
            job.id,
            job.kind,
            job.status.value,
            format_progress(job),
            job.owner_id or "-",
            format_time(job.updated_at),
        ]
        for job in jobs
    ]
    print_table(["ID", "KIND", "STATUS", "PROGRESS", "OWNER", "UPDATED (UTC)"], rows)
    return 0


def jobs_show(args: argparse.Namespace) -> int:
    """Print every field of one job."""
    store = open_store(db_url(args), table_prefix=args.table_prefix)
    try:
        job = store.get(args.job_id)
    finally:
        store.close()
    if args.json:
        print_json(job_to_dict(job))
        return 0
    _print_job(job)
    return 0


def _print_job(job: Job) -> None:
    from jobhook._convert import dumps

    fields = [
        ("id", job.id),
        ("kind", job.kind),
        ("owner", job.owner_id or "-"),
        ("status", job.status.value),
        ("progress", format_progress(job)),
        ("input", dumps(job.input)),
        ("output", "-" if job.output is None else dumps(job.output)),
        ("error", "-" if job.error is None else f"{job.error.code}: {job.error.message}"),
        ("remote id", job.remote_id or "-"),
        ("sequence", "-" if job.sequence is None else str(job.sequence)),
        ("metadata", dumps(job.metadata)),
        ("version", str(job.version)),
        ("created", format_time(job.created_at)),
        ("updated", format_time(job.updated_at)),
        ("completed", format_time(job.completed_at)),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        print(f"{name.ljust(width)}  {value}")


def dead_letters_list(args: argparse.Namespace) -> int:
    """Print kept deliveries, oldest first."""
    store = open_store(db_url(args), table_prefix=args.table_prefix)
    try:
        letters = store.dead_letters(job_id=args.job, include_replayed=args.all, limit=args.limit)
    finally:
        store.close()
    if args.json:
        for letter in letters:
            print_json(_dead_letter_dict(letter))
        return 0
    if not letters:
        print("no dead letters")
        return 0
    rows = [
        [
            str(letter.id),
            letter.job_id,
            letter.update.status.value,
            letter.delivery_id or "-",
            format_time(letter.received_at),
            format_time(letter.replayed_at),
        ]
        for letter in letters
    ]
    print_table(["ID", "JOB ID", "STATUS", "DELIVERY ID", "RECEIVED (UTC)", "REPLAYED"], rows)
    return 0


def _dead_letter_dict(letter: DeadLetter) -> dict[str, object]:
    data: dict[str, object] = converter.unstructure(letter)
    data["update"] = update_to_dict(letter.update)
    return data


def check_replay(args: argparse.Namespace) -> None:
    """Dead letter ids, or ``--all``."""
    if not args.ids and not args.all:
        raise CLIError("name the dead letters to replay (their ids), or pass --all")


def dead_letters_replay(args: argparse.Namespace) -> int:
    """Apply dead letters; exit 1 when any still names a job that does not exist."""
    store = open_store(db_url(args), table_prefix=args.table_prefix)
    missing = 0
    try:
        ids = list(args.ids)
        if args.all:
            ids += [letter.id for letter in store.dead_letters(limit=10_000)]
        for letter_id in ids:
            try:
                result = store.replay_dead_letter(letter_id)
            except DeadLetterNotFoundError:
                raise CLIError(f"no dead letter with id {letter_id}") from None
            if result.job is None:
                missing += 1
                print(
                    f"dead letter {letter_id}: its job does not exist yet; kept for a later replay"
                )
            else:
                print(
                    f"dead letter {letter_id}: {result.outcome.value} "
                    f"(job {result.job.id} is {result.job.status.value})"
                )
    finally:
        store.close()
    if not ids:
        print("no dead letters to replay")
    if missing:
        print(f"jobhook: {missing} dead letter(s) still name unknown jobs", file=sys.stderr)
        return 1
    return 0
