"""``manage.py jobhook_prune``: remove old delivery ids, events every consumer has
passed, and (when asked) finished jobs, in small batches."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobhook.django import conf


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        "Remove delivery ids and events older than --days that every consumer has passed, "
        "and finished jobs older than --jobs-days when given; safe beside live traffic."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--days", type=float, default=7.0, help="keep delivery ids and events this long"
        )
        parser.add_argument(
            "--jobs-days", type=float, default=None, help="also remove finished jobs this old"
        )
        parser.add_argument("--batch", type=int, default=1000, help="rows per transaction")

    def handle(self, *args: Any, **options: Any) -> None:
        jobs_days = options["jobs_days"]
        report = conf.store().prune(
            deliveries_older_than=timedelta(days=options["days"]),
            finished_jobs_older_than=None if jobs_days is None else timedelta(days=jobs_days),
            batch=options["batch"],
        )
        if options["verbosity"]:
            self.stdout.write(
                f"removed {report.deliveries} delivery ids, {report.events} events, "
                f"{report.jobs} jobs"
            )
