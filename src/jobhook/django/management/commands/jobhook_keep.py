"""``manage.py jobhook_keep``: the output keeper's rounds, once or every few seconds."""

from __future__ import annotations

import logging
import time
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import close_old_connections

from jobhook.django import conf

log = logging.getLogger("jobhook.outputs")


class Command(BaseCommand):  # type: ignore[misc]
    help = (
        'Keep the files of held successes with JOBHOOK["KEEPER"], then let the jobs '
        "succeed: one round, or one every --interval seconds until stopped."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--interval",
            type=float,
            default=None,
            help="run a round every this many seconds until interrupted (default: one round)",
        )
        parser.add_argument("--limit", type=int, default=100, help="holds per round")

    def handle(self, *args: Any, **options: Any) -> None:
        keeper = conf.keeper()
        if keeper is None:
            raise CommandError('JOBHOOK["KEEPER"] is not configured')
        interval, limit = options["interval"], options["limit"]
        if interval is None:
            settled = keeper.run_once(limit=limit)
            if options["verbosity"]:
                self.stdout.write(f"{settled} job(s) settled")
            return
        try:
            while True:
                try:
                    keeper.run_once(limit=limit)
                except Exception:
                    log.exception("the output keeper's round failed; trying again")
                # A worker outlives requests: drop connections the database broke.
                close_old_connections()
                time.sleep(interval)
        except KeyboardInterrupt:
            pass
