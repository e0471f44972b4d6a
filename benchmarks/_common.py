"""What every benchmark shares: arguments, interleaved timing, the machine, the table.

Every number a script prints is measured in that one run: the library and its
hand-written baselines take turns, round after round, so that a slow patch of the
machine (other processes, a disk flush) falls on all of them alike. A ratio is the
median of the per-round ratios (the library's round over the baseline's round next to
it), printed with their range.
"""

from __future__ import annotations

import argparse
import os
import platform
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def parse_args(
    description: str, extra: Callable[[argparse.ArgumentParser], None] | None = None
) -> Any:
    """The options every script takes: ``--quick``, ``--rounds``, ``--postgres``, ``--dir``."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: proves it runs, in seconds"
    )
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds per contestant")
    parser.add_argument(
        "--postgres",
        default=os.environ.get("JOBHOOK_BENCH_POSTGRES_URL")
        or os.environ.get("JOBHOOK_TEST_POSTGRES_URL"),
        help="PostgreSQL URL (default: $JOBHOOK_BENCH_POSTGRES_URL, then "
        "$JOBHOOK_TEST_POSTGRES_URL); PostgreSQL runs are skipped without one",
    )
    parser.add_argument("--no-postgres", action="store_true", help="skip PostgreSQL")
    parser.add_argument("--dir", default=None, help="where SQLite files go (default: a temp dir)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if args.no_postgres:
        args.postgres = None
    return args


def psycopg_url(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as libpq wants it (no ``+driver``)."""
    parsed = sa.make_url(url)
    return parsed.set(drivername="postgresql").render_as_string(hide_password=False)


def sqlalchemy_pg_url(url: str) -> str:
    """The URL with the psycopg 3 driver named, as SQLAlchemy wants it."""
    parsed = sa.make_url(url)
    return parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)


def postgres_version(url: str) -> str:
    engine = sa.create_engine(sqlalchemy_pg_url(url))
    try:
        with engine.connect() as conn:
            return str(conn.exec_driver_sql("SHOW server_version").scalar()).split()[0]
    finally:
        engine.dispose()


def machine(pg_url: str | None) -> str:
    """One line: cores, Python, SQLite and PostgreSQL versions."""
    parts = [
        f"{os.cpu_count()} cores",
        f"Python {platform.python_version()}",
        f"SQLite {sqlite3.sqlite_version}",
        f"SQLAlchemy {sa.__version__}",
    ]
    if pg_url:
        parts.append(f"PostgreSQL {postgres_version(pg_url)}")
    return ", ".join(parts)


def interleaved(
    contestants: dict[str, Callable[[int], float]], rounds: int
) -> dict[str, list[float]]:
    """Run each contestant's round ``rounds`` times, taking turns (and alternating the
    order); each call gets the round number and returns seconds per operation."""
    names = list(contestants)
    results: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            results[name].append(contestants[name](r))
    return results


def per_op(started: float, count: int) -> float:
    """Seconds per operation since ``started`` (a `time.perf_counter` value)."""
    return (time.perf_counter() - started) / count


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.3f} ms"


def round_ratios(mine: Sequence[float], theirs: Sequence[float]) -> list[float]:
    """The per-round ratios of two contestants' interleaved rounds."""
    return [a / b for a, b in zip(mine, theirs, strict=True)]


@dataclass
class Target:
    """One target: ``value`` (a ratio) against ``limit``, ``strict`` meaning strictly
    less; ``low``/``high``: the range of the per-round ratios, when there are rounds.
    A ``limit`` of None is a ratio shown for what it explains, judged by nothing."""

    name: str
    value: float
    limit: float | None
    strict: bool = False
    low: float | None = None
    high: float | None = None
    higher_is_better: bool = False

    @classmethod
    def of_rounds(
        cls,
        name: str,
        mine: Sequence[float],
        theirs: Sequence[float],
        limit: float | None,
        *,
        strict: bool = False,
        higher_is_better: bool = False,
    ) -> Target:
        """Judge the median of the per-round ratios ``mine / theirs`` against ``limit``
        (``higher_is_better``: ``theirs / mine``, as for throughput, must reach it)."""
        ratios = round_ratios(theirs, mine) if higher_is_better else round_ratios(mine, theirs)
        return cls(name, median(ratios), limit, strict, min(ratios), max(ratios), higher_is_better)

    @property
    def met(self) -> bool:
        if self.limit is None:
            return True
        if self.higher_is_better:
            return self.value > self.limit if self.strict else self.value >= self.limit
        return self.value < self.limit if self.strict else self.value <= self.limit

    def row(self) -> list[str]:
        if self.higher_is_better:
            sign = ">" if self.strict else ">="
        else:
            sign = "<" if self.strict else "<="
        spread = "" if self.low is None else f" ({self.low:.2f}-{self.high:.2f})"
        if self.limit is None:
            return [self.name, f"{self.value:.2f}x{spread}", "-", "-"]
        return [
            self.name,
            f"{self.value:.2f}x{spread}",
            f"{sign} {self.limit:g}x",
            "PASS" if self.met else "MISS",
        ]


@dataclass
class Report:
    """A titled table of measurements followed by the targets they are judged by."""

    title: str
    header: list[str]
    rows: list[list[str]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)

    def print(self) -> None:
        print()
        print(f"## {self.title}")
        print()
        table(self.header, self.rows)
        if self.targets:
            print()
            header = ["target", "ratio, median (range) of rounds", "limit", "result"]
            table(header, [t.row() for t in self.targets])
        sys.stdout.flush()


def table(header: list[str], rows: list[list[str]]) -> None:
    """Print a Markdown table (it reads as plain text too)."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def summary(targets: list[Target]) -> None:
    """The closing line: how many targets were met."""
    judged = [t for t in targets if t.limit is not None]
    met = sum(t.met for t in judged)
    print()
    print(f"targets met: {met}/{len(judged)}")


#: ``run(database name, SQLAlchemy URL, raw driver connect, args) -> targets``
RunOnDatabase = Callable[[str, str, Callable[[], Any], Any], "list[Target]"]


def main_on_both_databases(name: str, doc: str, run: RunOnDatabase) -> None:
    """Parse the options, then ``run`` on a temporary SQLite file and, when a URL is
    given, on PostgreSQL; print the targets met."""
    import tempfile
    from pathlib import Path

    args = parse_args(doc.splitlines()[0])
    print(f"# {name} ({machine(args.postgres)})")
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "bench.db"
        targets += run(
            "SQLite",
            f"sqlite:///{path}",
            lambda: sqlite3.connect(path, isolation_level=None, timeout=30),
            args,
        )
    if args.postgres:
        import psycopg

        targets += run(
            "PostgreSQL",
            sqlalchemy_pg_url(args.postgres),
            lambda: psycopg.connect(psycopg_url(args.postgres)),
            args,
        )
    else:
        print("\nPostgreSQL skipped: no URL (--postgres or $JOBHOOK_TEST_POSTGRES_URL)")
    summary(targets)
