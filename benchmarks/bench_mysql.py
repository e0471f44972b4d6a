"""Webhook path on MariaDB/MySQL (verify, parse, apply, commit): jobhook against the floor.

The same signed deliveries as `bench_webhook` (a running update and a terminal one per
job, shuffled, one in ten sent twice) go through:

* jobhook: ``WebhookHandler(SQLJobStore(url), secret=…).handle(headers, body)``;
* the floor: stdlib ``hmac`` verify, ``json.loads``, and `_floor_mysql.floor_apply` on a
  raw PyMySQL connection (one transaction with the same guarantees: delivery id, guarded
  UPDATE, outbox event with a commit-ordered id, the previous status).

On a MariaDB server, jobhook runs twice: through the URL given (``mysql+pymysql://``:
the portable MySQL apply) and through a ``mariadb+pymysql://`` URL (MariaDB's
``INSERT … RETURNING``). All use jobhook's tables in the same database and take turns,
round after round; each ratio is the median of the per-round ratios. Run:

    python benchmarks/bench_mysql.py --mysql mysql+pymysql://root@127.0.0.1:3306/test
    python benchmarks/bench_mysql.py --quick    # seconds ($JOBHOOK_TEST_MYSQL_URL)
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pymysql
import sqlalchemy as sa
from _common import SECRET, Report, Target, interleaved, machine, median, ms, parse_args, summary
from _floor import verify
from _floor_mysql import floor_apply
from bench_webhook import Delivery, OrmHandler, check_done, plan, seed_jobs, sign

from jobhook._webhook import WebhookHandler
from jobhook.stores.sql import SQLJobStore


def pymysql_connect(url: str) -> Any:
    """A raw PyMySQL connection to the database a SQLAlchemy URL names."""
    u = sa.make_url(url)
    return pymysql.connect(
        host=u.host or "127.0.0.1",
        port=u.port or 3306,
        user=u.username or "root",
        password=u.password or "",
        database=u.database,
        charset="utf8mb4",
        autocommit=False,
    )


class FloorHandler:
    """The floor's webhook path: verify, parse, `floor_apply`."""

    def __init__(self, conn: Any, prefix: str) -> None:
        self.conn = conn
        self.prefix = prefix
        self.key = base64.b64decode(SECRET.removeprefix("whsec_"))

    def handle(self, headers: dict[str, str], body: bytes) -> int:
        if not verify(self.key, headers, body):
            return 401
        try:
            data = json.loads(body)
            job_id = data.pop("job_id")
            data["status"]  # a payload without a status is refused
        except (ValueError, KeyError, TypeError, AttributeError):
            return 400
        previous = floor_apply(self.conn, job_id, headers["webhook-id"], data, prefix=self.prefix)
        return 404 if previous is None else 200


def run(url: str, args: Any) -> list[Target]:
    n_jobs = 30 if args.quick else 200
    rounds = args.rounds or (2 if args.quick else 15)
    run_id = uuid.uuid4().hex[:6]
    prefix = f"bench_{run_id}_"
    # jobhook through the URL as given, and, on a MariaDB server, through a mariadb://
    # URL too (MariaDB's own apply: INSERT … RETURNING), on the same tables.
    urls = {"j": sa.make_url(url)}
    if is_mariadb(url) and urls["j"].get_backend_name() != "mariadb":
        urls["m"] = urls["j"].set(drivername="mariadb+pymysql")
    stores = {k: SQLJobStore(u, table_prefix=prefix, create_schema=True) for k, u in urls.items()}
    store = stores["j"]
    handlers = {k: WebhookHandler(s, secret=SECRET) for k, s in stores.items()}
    jobs = store.tables.jobs
    raw_conn = pymysql_connect(url)
    floor = FloorHandler(raw_conn, prefix)
    template = plan(n_jobs)

    def turn(name: str, handle: Callable[[Delivery], int]) -> Callable[[int], float]:
        def one_round(r: int) -> float:
            tag = f"{run_id}{name}{r}"
            seed_jobs(store.engine, jobs, tag, n_jobs)
            deliveries = sign(tag, template)
            started = time.perf_counter()
            for delivery in deliveries:
                if handle(delivery) != 200:
                    raise SystemExit(f"{name}: a delivery was refused")
            elapsed = (time.perf_counter() - started) / len(deliveries)
            check_done(store.engine, jobs, tag, n_jobs)
            return elapsed

        return one_round

    def jobhook(handler: WebhookHandler) -> Callable[[Delivery], int]:
        return lambda d: handler.handle(d[1], d[2], job_id=d[0]).status

    contestants = {k: turn(k, jobhook(h)) for k, h in handlers.items()}
    contestants["f"] = turn("f", lambda d: floor.handle(d[1], d[2]))
    orm_engine = sa.create_engine(url)
    orm = OrmHandler(orm_engine, jobs)
    contestants["o"] = turn("o", lambda d: orm.handle(d[1], d[2]))
    try:
        results = interleaved(contestants, rounds)
        ev = store.tables.events
        with store.engine.connect() as conn:
            n_events = {
                name: conn.execute(
                    sa.select(sa.func.count()).where(ev.c.job_id.like(f"{run_id}{name}%"))
                ).scalar_one()
                for name in contestants
                if name != "o"  # the ORM handler writes no event
            }
    finally:
        raw_conn.close()
        orm_engine.dispose()
        with store.engine.begin() as conn:
            store.tables.drop(conn)
        for s in stores.values():
            s.close()
    # Each wrote one event per applied delivery: the floor did the same work.
    if len(set(n_events.values())) != 1 or not n_events["f"]:
        raise SystemExit(f"outbox events differ: {n_events}")
    floor_t = median(results["f"])
    report = Report(
        f"Webhook path on MariaDB/MySQL: {len(template)} deliveries per round, {rounds} rounds",
        ["implementation", "per delivery (median)", "deliveries/s"],
    )
    for k in handlers:
        lib_t = median(results[k])
        name = f"jobhook WebhookHandler + SQLJobStore ({urls[k].drivername}://)"
        report.rows.append([name, ms(lib_t), f"{1 / lib_t:,.0f}"])
        target = f"{urls[k].drivername}: jobhook / floor (median of per-round ratios)"
        report.targets.append(Target.of_rounds(target, results[k], results["f"], 1.5))
        report.targets.append(
            Target.of_rounds(
                f"{urls[k].drivername}: jobhook / ORM handler",
                results[k],
                results["o"],
                1.0,
                strict=True,
            )
        )
    report.rows.append(
        ["floor: raw PyMySQL, hmac, one transaction", ms(floor_t), f"{1 / floor_t:,.0f}"]
    )
    orm_t = median(results["o"])
    report.rows.append(["the usual ORM handler", ms(orm_t), f"{1 / orm_t:,.0f}"])
    report.print()
    return report.targets


def is_mariadb(url: str) -> bool:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return "mariadb" in str(conn.exec_driver_sql("SELECT VERSION()").scalar()).lower()
    finally:
        engine.dispose()


def main() -> None:
    def extra(parser: Any) -> None:
        parser.add_argument(
            "--mysql",
            default=os.environ.get("JOBHOOK_BENCH_MYSQL_URL")
            or os.environ.get("JOBHOOK_TEST_MYSQL_URL"),
            help="MariaDB/MySQL URL (default: $JOBHOOK_BENCH_MYSQL_URL, then "
            "$JOBHOOK_TEST_MYSQL_URL)",
        )

    args = parse_args((__doc__ or "bench_mysql").splitlines()[0], extra)
    if not args.mysql:
        print(f"# bench_mysql ({machine(None)})")
        print("\nMariaDB/MySQL skipped: no URL (--mysql or $JOBHOOK_TEST_MYSQL_URL)")
        summary([])
        return
    engine = sa.create_engine(args.mysql)
    with engine.connect() as conn:
        version = conn.exec_driver_sql("SELECT VERSION()").scalar()
    engine.dispose()
    print(f"# bench_mysql ({machine(None)}, MariaDB/MySQL {version})")
    summary(run(args.mysql, args))


if __name__ == "__main__":
    sys.exit(main())
