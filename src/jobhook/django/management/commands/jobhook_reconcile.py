"""``manage.py jobhook_reconcile``: one pass of the `Reconciler` over the jobs."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from jobhook.django import conf


class Command(BaseCommand):  # type: ignore[misc]
    help = "Poll the backend for stale jobs, resubmit unseen ones, time out the oldest."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--stale-after", type=float, default=600.0, help="seconds")
        parser.add_argument("--give-up-after", type=float, default=86_400.0, help="seconds")

    def handle(self, *args: Any, **options: Any) -> None:
        from jobhook.reconcile import Reconciler

        client = conf.client()
        if client is None:
            raise CommandError('JOBHOOK["CLIENT"] is not configured')
        report = Reconciler(
            conf.store(),
            client,
            stale_after=options["stale_after"],
            give_up_after=options["give_up_after"],
        ).run_once()
        if options["verbosity"]:
            self.stdout.write(str(report))
