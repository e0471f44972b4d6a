"""``manage.py jobhook_consume <name>``: hand the outbox's new events to a consumer."""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from jobhook.django import conf


class Command(BaseCommand):  # type: ignore[misc]
    help = 'Call JOBHOOK["CONSUMERS"][name] for each new outbox event, in order.'

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("name")
        parser.add_argument("--batch", type=int, default=100)
        parser.add_argument(
            "--max-attempts",
            type=int,
            default=3,
            help="park an event after it failed this often (default: 3)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        from jobhook.django._consume import consume_once

        name = options["name"]
        handled = consume_once(
            conf.store(),
            name,
            conf.consumer(name),
            batch=options["batch"],
            max_attempts=options["max_attempts"],
        )
        if options["verbosity"]:
            self.stdout.write(f"{name}: {handled} event(s) handled")
