"""The ``jobhook`` command: a loopback demo, a stub backend, and tools for the job store.

``main(argv)`` parses the arguments, runs one subcommand and returns the exit status:
0 on success, 1 for a failure the user can act on (printed as one line, never a
traceback), 2 for a usage mistake (argparse's own message; bare ``jobhook``, with no
command, prints its usage and where to start), 130 when interrupted.

A database error is one line too, naming the database URL (without its password) and
saying what is wrong: see `jobhook.cli._errors`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from jobhook.__about__ import __version__
from jobhook.cli._common import CLIError, db_url, one_line
from jobhook.cli._errors import database_error_message, is_database_error
from jobhook.cli._store_commands import add_store_commands
from jobhook.exceptions import JobhookError

__all__ = ["build_parser", "check_arguments", "main"]

_NEW_HERE = """\
New here? Run `jobhook demo`: it starts a fake generator backend and a webhook
receiver on this machine, submits a few jobs, and shows every webhook land."""

_DESCRIPTION = f"""\
jobhook keeps the jobs your app hands to a generator backend (images, video,
transcription) in a database, submits them by id, and applies the backend's
signed webhooks exactly once.

{_NEW_HERE}"""

_EPILOG = """\
examples:
  jobhook demo                           the whole flow on loopback, in seconds
  jobhook demo --chaos                   ... losing and doubling webhooks
  jobhook fake-backend --port 8001       a stub backend to develop against
  jobhook db init --db sqlite:///app.db  create the tables
  jobhook jobs list --status running     what is in flight
  jobhook jobs show JOB_ID               one job in full
  jobhook dead-letters list              webhooks that named an unknown job
  jobhook events tail                    print events as they commit
  jobhook events consumers               each consumer's position, lag, parked events
  jobhook db prune --deliveries-older-than 7d
                                         remove what is no longer needed
  jobhook reconcile --backend URL --callback-url 'https://app/webhooks/{job_id}'
                                         recover jobs whose webhooks never came

The database is --db URL, else $JOBHOOK_DATABASE_URL, else sqlite:///jobhook.db.
Run `jobhook COMMAND --help` for the options of each command."""


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``jobhook`` command, with every subcommand."""
    from jobhook.cli._backend_commands import add_backend_commands
    from jobhook.cli._demo import add_demo_command

    parser = argparse.ArgumentParser(
        prog="jobhook",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"jobhook {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log every decision jobhook makes (stderr)"
    )
    # Not required: bare `jobhook` gets a friendlier answer than argparse's (see main).
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    add_demo_command(commands)
    add_backend_commands(commands)
    add_store_commands(commands)
    return parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    def add_argument(self, action: argparse.Action) -> None:
        super().add_argument(action)
        if isinstance(action, argparse._SubParsersAction):
            # argparse measures command names without their extra indent, which puts
            # the help of "dead-letters" and "fake-backend" on a line of its own.
            self._action_max_length += 2


def check_arguments(args: argparse.Namespace) -> None:
    """Raise `CLIError` when parsed ``args`` lack a value their command needs.

    What argparse cannot say alone (a value that may also come from the environment,
    one of two options); `main` calls it before running the command, and the docs'
    tests call it on every command line the docs show.
    """
    check = getattr(args, "check", None)
    if check is not None:
        check(args)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``jobhook`` command with ``argv`` (default: ``sys.argv[1:]``)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a usage error already printed
        return exc.code if isinstance(exc.code, int) else 2
    if args.command is None:
        # A usage mistake like any other (exit 2, on stderr), but one a newcomer makes
        # first: say where to start rather than "the following arguments are required".
        parser.print_usage(sys.stderr)
        print(f"\n{_NEW_HERE}\n\nRun `jobhook --help` for every command.", file=sys.stderr)
        return 2
    log = logging.getLogger("jobhook")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    # Quiet by default: the commands report what happened themselves.
    handler.setLevel(logging.INFO if args.verbose else logging.ERROR)
    previous_level = log.level
    log.addHandler(handler)
    if args.verbose:
        log.setLevel(logging.INFO)
    try:
        check_arguments(args)
        status: int = args.run(args)
        return status
    except CLIError as exc:
        return _fail(str(exc))
    except JobhookError as exc:
        url, prefix = _database(args)
        return _fail(database_error_message(exc, url, table_prefix=prefix) or one_line(exc))
    except Exception as exc:
        if not is_database_error(exc):
            raise
        # What the store did not map (or a driver error raised outside it) is still
        # the user's database speaking: one line, never a traceback.
        url, prefix = _database(args)
        return _fail(database_error_message(exc, url, table_prefix=prefix) or one_line(exc))
    except KeyboardInterrupt:
        print("jobhook: interrupted", file=sys.stderr)
        return 130
    finally:
        log.removeHandler(handler)
        log.setLevel(previous_level)


def _database(args: argparse.Namespace) -> tuple[str | None, str]:
    """The database URL the command used (None: the demo's temporary one), its prefix."""
    prefix: str = getattr(args, "table_prefix", "jobhook_")
    if args.command == "demo":
        return args.db, prefix
    return (db_url(args) if hasattr(args, "db") else None), prefix


def _fail(message: str) -> int:
    print(f"jobhook: error: {message}", file=sys.stderr)
    return 1
