"""``jobhook demo`` (placeholder)."""

from __future__ import annotations

import argparse

__all__ = ["add_demo_command"]


def add_demo_command(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``demo``."""
    demo = commands.add_parser("demo", help="the whole flow on loopback, in seconds")
    demo.set_defaults(run=lambda args: 0)
