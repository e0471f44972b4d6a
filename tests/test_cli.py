"""The ``jobhook`` command, run in-process through ``main([...])``: every subcommand,
its output, its exit status, and its one-line errors."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from jobhook import JobStatus, JobUpdate
from jobhook.cli import build_parser, check_arguments, main
from jobhook.stores.sql import SQLJobStore

from .conftest import PG_SKIP_REASON, PG_URL

needs_pg = pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)

Run = tuple[int, str, str]
Runner = Callable[..., Run]


@pytest.fixture
def run(capsys: pytest.CaptureFixture[str]) -> Runner:
    def invoke(*argv: str) -> Run:
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'jobs.db'}"


@pytest.fixture
def store(db: str) -> Iterator[SQLJobStore]:
    store = SQLJobStore(db, create_schema=True)
    yield store
    store.close()


def ids_in(out: str) -> set[str]:
    """The first column of a table, without its header."""
    return {line.split()[0] for line in out.splitlines()[1:]}


def assert_one_line_error(status: int, err: str, *fragments: str) -> None:
    assert status == 1
    assert err.startswith("jobhook: error: ")
    assert err.count("\n") == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in err


# --- help -------------------------------------------------------------------------


def test_python_dash_m_jobhook_help_lists_every_command() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "jobhook", "--help"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0
    for command in ["demo", "fake-backend", "jobs", "dead-letters", "db", "reconcile"]:
        assert command in result.stdout
    assert "jobhook demo" in result.stdout


def test_no_command_says_where_to_start(run: Runner) -> None:
    # Bare `jobhook` is a usage mistake (exit 2, stderr, as argparse's own), but the
    # first one a newcomer makes: it points at the demo instead of "arguments required".
    for argv in [[], ["-v"]]:
        status, out, err = run(*argv)
        assert status == 2
        assert out == ""
        assert err.startswith("usage: jobhook")
        assert "New here? Run `jobhook demo`" in err
        assert "jobhook --help" in err
        assert "required" not in err


def test_the_help_examples_are_complete_commands(run: Runner) -> None:
    # Each example line of `jobhook --help` is a command that parses and has every
    # value its command needs (the reconcile example once lacked --callback-url).
    _, out, _ = run("--help")
    examples = [line.strip() for line in out.splitlines() if line.startswith("  jobhook ")]
    assert len(examples) >= 8
    for example in examples:
        command = example.split("  ")[0]  # the description is two spaces away
        args = build_parser().parse_args(shlex.split(command)[1:])
        check_arguments(args)


def test_each_command_has_help(run: Runner) -> None:
    for argv in [
        ["demo"],
        ["fake-backend"],
        ["reconcile"],
        ["db", "init"],
        ["jobs", "list"],
        ["jobs", "show"],
        ["dead-letters", "list"],
        ["dead-letters", "replay"],
    ]:
        status, out, _ = run(*argv, "--help")
        assert status == 0
        assert out.startswith("usage: jobhook " + " ".join(argv))


# --- db init ----------------------------------------------------------------------


def test_db_init_creates_the_tables_and_can_run_again(run: Runner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sub' / 'app.db'}"
    for _ in range(2):
        status, out, _ = run("db", "init", "--db", url)
        assert status == 0
        assert "tables ready" in out
    store = SQLJobStore(url)
    assert store.list() == []
    store.close()


def test_db_defaults_to_the_environment_then_jobhook_db(
    run: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("JOBHOOK_DATABASE_URL", raising=False)
    status, _, _ = run("db", "init")
    assert status == 0
    assert (tmp_path / "jobhook.db").exists()

    monkeypatch.setenv("JOBHOOK_DATABASE_URL", f"sqlite:///{tmp_path / 'env.db'}")
    status, _, _ = run("db", "init")
    assert status == 0
    assert (tmp_path / "env.db").exists()


def test_db_init_with_a_table_prefix(run: Runner, db: str) -> None:
    status, _, _ = run("db", "init", "--db", db, "--table-prefix", "app_")
    assert status == 0
    store = SQLJobStore(db, table_prefix="app_")
    store.create({"x": 1})
    store.close()
    status, out, _ = run("jobs", "list", "--db", db, "--table-prefix", "app_")
    assert status == 0
    assert "pending" in out


# --- errors the user can act on ----------------------------------------------------


def test_a_bad_database_url_is_one_line(run: Runner) -> None:
    status, _, err = run("jobs", "list", "--db", "not a url")
    assert_one_line_error(status, err, "not a database URL", "sqlite:///")


def test_an_unsupported_database_is_one_line(run: Runner) -> None:
    status, _, err = run("jobs", "list", "--db", "oracle://u:hunter2@host/db")
    assert_one_line_error(status, err, "unsupported database 'oracle'", "MariaDB/MySQL")
    assert "hunter2" not in err


def test_a_missing_sqlite_file_is_not_created_by_a_read(run: Runner, tmp_path: Path) -> None:
    path = tmp_path / "missing.db"
    status, _, err = run("jobs", "list", "--db", f"sqlite:///{path}")
    assert_one_line_error(status, err, "no database file", "jobhook db init")
    assert not path.exists()


def test_missing_tables_point_to_db_init_with_the_url(run: Runner, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    (tmp_path / "empty.db").touch()
    status, _, err = run("jobs", "list", "--db", url)
    assert_one_line_error(status, err, f"`jobhook db init --db {url}`")
    status, _, err = run("jobs", "list", "--db", url, "--table-prefix", "app_")
    assert_one_line_error(status, err, f"`jobhook db init --db {url} --table-prefix app_`")
    path = tmp_path / "missing.db"
    status, _, err = run("jobs", "list", "--db", f"sqlite:///{path}", "--table-prefix", "app_")
    assert_one_line_error(status, err, f"--db sqlite:///{path} --table-prefix app_`")


def test_an_unreachable_database_is_one_line(run: Runner) -> None:
    pytest.importorskip("psycopg")
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    url = "postgresql://nobody:secret@127.0.0.1:1/none"
    status, _, err = run("jobs", "list", "--db", url)
    assert_one_line_error(
        status,
        err,
        "cannot use postgresql://nobody:***@127.0.0.1:1/none",
        "the PostgreSQL server at 127.0.0.1:1 cannot be reached",
        "Connection refused",
    )
    assert "secret" not in err
    assert "db init" not in err


def test_a_file_that_is_not_a_database_is_one_line(run: Runner, tmp_path: Path) -> None:
    path = tmp_path / "notadb.db"
    path.write_bytes(b"this is not sqlite" * 100)
    for argv in [["jobs", "list"], ["jobs", "show", "x"], ["db", "init"], ["dead-letters", "list"]]:
        status, _, err = run(*argv, "--db", f"sqlite:///{path}")
        assert_one_line_error(
            status, err, f"cannot use sqlite:///{path}", "is not an SQLite database"
        )
        assert "db init" not in err
    assert path.read_bytes() == b"this is not sqlite" * 100


def _raise(exc: BaseException) -> Callable[..., None]:
    def fail(*args: object, **kwargs: object) -> None:
        raise exc

    return fail


def test_an_unmapped_database_error_is_one_line_naming_the_url(
    run: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sqlite3

    import sqlalchemy as sa

    from jobhook import StoreUnavailableError
    from jobhook.cli import _store_commands

    url = "postgresql://app:hunter2@db.internal:5432/app"
    monkeypatch.setattr(_store_commands, "open_store", lambda *a, **k: _FakeStore())
    # A SQLAlchemy error that reached the CLI unmapped, with the statement and a link.
    error = sa.exc.OperationalError("SELECT 1", {}, sqlite3.OperationalError("disk I/O error"))
    monkeypatch.setattr(_FakeStore, "list", _raise(error))
    status, _, err = run("jobs", "list", "--db", url)
    assert_one_line_error(
        status, err, "cannot use postgresql://app:***@db.internal:5432/app: disk I/O error"
    )
    assert "hunter2" not in err
    assert "SELECT" not in err
    assert "sqlalche.me" not in err

    # A driver's error that escaped SQLAlchemy altogether.
    monkeypatch.setattr(_FakeStore, "list", _raise(sqlite3.DatabaseError("database is locked")))
    status, _, err = run("jobs", "list", "--db", url)
    assert_one_line_error(status, err, "db.internal:5432/app: database is locked")

    # The store's own error, which does not name the database: the CLI adds it.
    unavailable = StoreUnavailableError("the database is busy,\n try again")
    monkeypatch.setattr(_FakeStore, "list", _raise(unavailable))
    status, _, err = run("jobs", "list", "--db", url)
    assert_one_line_error(
        status, err, "the database is busy, try again (postgresql://app:***@db.internal:5432/app)"
    )

    # An error that is not the database's keeps its own words.
    monkeypatch.setattr(_FakeStore, "list", _raise(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):
        run("jobs", "list", "--db", url)


class _FakeStore:
    def list(self, **kwargs: object) -> list[object]:
        return []

    def close(self) -> None:
        pass


def _pg(user: str, database: str, password: str = "") -> str:
    import sqlalchemy as sa

    assert PG_URL is not None
    url = sa.engine.make_url(PG_URL).set(username=user, password=password or None)
    return url.set(database=database).render_as_string(hide_password=False)


@needs_pg
def test_postgres_a_missing_database_says_so(run: Runner) -> None:
    url = _pg("postgres", "no_such_db", password="hunter2")
    status, _, err = run("jobs", "list", "--db", url)
    assert_one_line_error(
        status, err, "cannot use postgresql", '"no_such_db" does not exist', "createdb"
    )
    assert "hunter2" not in err
    assert "tables" not in err
    assert "db init" not in err


@needs_pg
def test_postgres_a_missing_role_says_so(run: Runner) -> None:
    url = _pg("nobody", "test")
    status, _, err = run("jobs", "list", "--db", url)
    assert_one_line_error(status, err, f"cannot use {url}", 'role "nobody" does not exist')
    assert "tables" not in err
    assert "db init" not in err


@needs_pg
def test_postgres_missing_tables_point_to_db_init_with_the_url(run: Runner) -> None:
    import uuid

    assert PG_URL is not None
    prefix = f"missing{uuid.uuid4().hex[:8]}_"
    status, _, err = run("jobs", "list", "--db", PG_URL, "--table-prefix", prefix)
    assert_one_line_error(status, err, f"`jobhook db init --db {PG_URL} --table-prefix {prefix}`")


def test_a_missing_job_is_one_line(run: Runner, db: str, store: SQLJobStore) -> None:
    status, _, err = run("jobs", "show", "nope", "--db", db)
    assert_one_line_error(status, err, "no job with id 'nope'")


def test_a_bad_option_value_is_a_usage_error(run: Runner, db: str) -> None:
    status, _, err = run("jobs", "list", "--db", db, "--limit", "0")
    assert status == 2
    assert "must be at least 1" in err
    status, _, err = run("jobs", "list", "--db", db, "--status", "done")
    assert status == 2
    assert "invalid choice" in err


# --- jobs list / show -------------------------------------------------------------


def test_jobs_list_shows_newest_first_with_filters(
    run: Runner, db: str, store: SQLJobStore
) -> None:
    old = store.create({"prompt": "old"}, kind="image", owner_id="ann")
    new = store.create({"prompt": "new"}, kind="video", owner_id="bob")
    store.apply(new.id, JobUpdate(JobStatus.RUNNING, progress=40))

    status, out, _ = run("jobs", "list", "--db", db)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "KIND", "STATUS", "PROGRESS", "OWNER", "UPDATED", "(UTC)"]
    assert lines[1].split()[:5] == [new.id, "video", "running", "40%", "bob"]
    assert lines[2].split()[:5] == [old.id, "image", "pending", "-", "ann"]

    _, out, _ = run("jobs", "list", "--db", db, "--owner", "ann")
    assert ids_in(out) == {old.id}
    _, out, _ = run("jobs", "list", "--db", db, "--status", "running")
    assert ids_in(out) == {new.id}
    _, out, _ = run("jobs", "list", "--db", db, "--kind", "image")
    assert ids_in(out) == {old.id}
    _, out, _ = run("jobs", "list", "--db", db, "--limit", "1")
    assert ids_in(out) == {new.id}
    _, out, _ = run("jobs", "list", "--db", db, "--before", new.id)
    assert ids_in(out) == {old.id}


def test_jobs_list_json_and_empty(run: Runner, db: str, store: SQLJobStore) -> None:
    status, out, _ = run("jobs", "list", "--db", db)
    assert (status, out) == (0, "no jobs\n")
    job = store.create({"prompt": "a red fox"})
    _, out, _ = run("jobs", "list", "--db", db, "--json")
    (line,) = out.splitlines()
    data = json.loads(line)
    assert data["id"] == job.id
    assert data["input"] == {"prompt": "a red fox"}
    assert data["status"] == "pending"


def test_jobs_list_before_an_unknown_job_is_one_line(
    run: Runner, db: str, store: SQLJobStore
) -> None:
    status, _, err = run("jobs", "list", "--db", db, "--before", "nope")
    assert_one_line_error(status, err, "--before", "nope")


def test_jobs_show_prints_every_field(run: Runner, db: str, store: SQLJobStore) -> None:
    job = store.create({"prompt": "a red fox"}, kind="image", owner_id="ann")
    store.apply(
        job.id,
        JobUpdate(JobStatus.SUCCEEDED, output={"images": ["https://x/1.png"]}, remote_id="r-9"),
    )
    status, out, _ = run("jobs", "show", job.id, "--db", db)
    assert status == 0
    fields = dict(line.split(None, 1) for line in out.splitlines() if " " in line)
    assert fields["id"].strip() == job.id
    assert fields["status"].strip() == "succeeded"
    assert fields["progress"].strip() == "100%"
    assert json.loads(fields["output"]) == {"images": ["https://x/1.png"]}
    assert fields["owner"].strip() == "ann"
    assert "r-9" in out

    _, out, _ = run("jobs", "show", job.id, "--db", db, "--json")
    assert json.loads(out)["output"] == {"images": ["https://x/1.png"]}


# --- dead letters -----------------------------------------------------------------


def test_dead_letters_list_and_replay(run: Runner, db: str, store: SQLJobStore) -> None:
    status, out, _ = run("dead-letters", "list", "--db", db)
    assert (status, out) == (0, "no dead letters\n")
    update = JobUpdate(JobStatus.SUCCEEDED, output={"images": ["u"]})
    letter = store.add_dead_letter("later", update, delivery_id="msg_1", body=b"{}")

    status, out, _ = run("dead-letters", "list", "--db", db)
    assert status == 0
    assert out.splitlines()[1].split()[:4] == [str(letter.id), "later", "succeeded", "msg_1"]
    _, out, _ = run("dead-letters", "list", "--db", db, "--json")
    assert json.loads(out)["update"] == {"status": "succeeded", "output": {"images": ["u"]}}

    # The job does not exist yet: the letter is kept, and the command says so.
    status, out, err = run("dead-letters", "replay", str(letter.id), "--db", db)
    assert status == 1
    assert "does not exist yet" in out
    assert "still name unknown jobs" in err

    store.create({"prompt": "x"}, job_id="later")
    status, out, _ = run("dead-letters", "replay", "--all", "--db", db)
    assert status == 0
    assert f"dead letter {letter.id}: applied (job later is succeeded)" in out
    assert store.get("later").status is JobStatus.SUCCEEDED

    # Replayed letters leave the default list but stay visible with --all.
    _, out, _ = run("dead-letters", "list", "--db", db)
    assert out == "no dead letters\n"
    _, out, _ = run("dead-letters", "list", "--db", db, "--all")
    assert "later" in out


def test_dead_letters_replay_errors(run: Runner, db: str, store: SQLJobStore) -> None:
    status, _, err = run("dead-letters", "replay", "--db", db)
    assert_one_line_error(status, err, "--all")
    status, _, err = run("dead-letters", "replay", "99", "--db", db)
    assert_one_line_error(status, err, "no dead letter with id 99")


# --- demo -------------------------------------------------------------------------


def test_demo_runs_the_whole_flow_and_checks_it(
    run: Runner, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # wide enough for every cell in full
    pictures = tmp_path / "pictures"
    status, out, err = run("demo", "--jobs", "4", "--step", "0.01", "--files", str(pictures))
    assert status == 0, err
    assert "every job ended as the backend reported" in out
    table = out[out.index("JOB ID") :]
    assert table.count("succeeded") == 3
    assert "nsfw: the prompt was refused" in table  # the demo's refused prompt
    # Each success names its picture, kept in --files: a real PNG.
    kept = sorted(pictures.glob("*/0.png"))
    assert len(kept) == 3
    for picture in kept:
        assert picture.as_uri() in table
        assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "deliveries applied" in out
    assert err == ""


def test_demo_with_chaos_recovers_and_keeps_a_dead_letter(run: Runner, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'demo.db'}"
    status, out, err = run(
        "demo", "--jobs", "8", "--chaos", "--seed", "3", "--step", "0.01", "--db", db
    )
    assert status == 0, err
    counts = {
        line.rsplit(None, 1)[0].strip(): int(line.rsplit(None, 1)[1])
        for line in out.splitlines()
        if line.startswith("  ") and line.rstrip()[-1:].isdigit() and "%" not in line
    }
    assert counts["dead letters (unknown job id)"] == 1
    # With this seed some webhooks are duplicated and some lost for good.
    assert counts["duplicates ignored"] > 0
    assert counts["recovered by the reconciler"] > 0
    store = SQLJobStore(db)
    jobs = store.list(limit=100)
    store.close()
    assert len(jobs) == 8
    assert all(job.terminal for job in jobs)
    status, out, _ = run("dead-letters", "list", "--db", db)
    assert "backend-invented-id-42" in out


def test_demo_fails_when_a_job_ends_wrong(run: Runner, monkeypatch: pytest.MonkeyPatch) -> None:
    from jobhook.testing import FakeGenerator

    # Make the backend claim every job ended canceled: what the store holds is then wrong.
    monkeypatch.setattr(FakeGenerator, "final_status", lambda self, job_id: JobStatus.CANCELED)
    status, _, err = run("demo", "--jobs", "2", "--step", "0.01")
    assert status == 1
    assert "the backend said canceled" in err


def test_demo_refuses_bad_arguments(run: Runner) -> None:
    status, _, err = run("demo", "--jobs", "0")
    assert_one_line_error(status, err, "--jobs")
    status, _, err = run("demo", "--timeout", "0")
    assert_one_line_error(status, err, "--timeout")


def test_demo_that_runs_out_of_time_says_so(run: Runner) -> None:
    # Each job takes ~3 s at this step: the deadline passes with webhooks still coming.
    status, out, err = run("demo", "--jobs", "2", "--step", "0.5", "--timeout", "0.2")
    assert status == 1
    assert err.count("\n") == 1, err
    assert err.startswith("jobhook: demo: timed out after 0.2 s with 2 of 2 jobs unfinished")
    assert "this is not lost updates" in err
    assert "the backend said" not in err  # not reported as jobs that ended wrong
    assert "every job ended" not in out
    assert "JOB ID" in out  # where the jobs had got to


@pytest.mark.parametrize("chaos", [[], ["--chaos", "--seed", "3", "--jobs", "8"]])
def test_demo_fits_the_terminal(
    run: Runner, monkeypatch: pytest.MonkeyPatch, chaos: list[str]
) -> None:
    monkeypatch.setenv("COLUMNS", "60")
    status, out, err = run("demo", "--step", "0.01", *chaos)
    assert status == 0, err
    too_long = [line for line in out.splitlines() if len(line) > 60]
    assert not too_long
    table = out[out.index("JOB ID") :].splitlines()
    assert any(line.endswith("…") for line in table)  # long cells cut, not wrapped
    assert "every job ended as the backend reported" in " ".join(out.split())


def test_print_table_narrows_the_widest_columns(capsys: pytest.CaptureFixture[str]) -> None:
    import io

    from jobhook.cli._common import print_table

    rows = [["01m8ss8w58gfdmfsr9vjz5ve4b", "ok", "https://fake.invalid/a/long/path.png"]]
    print_table(["ID", "STATUS", "RESULT"], rows, width=30)
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 30
    assert lines[1].split() == ["01m8ss8w5…", "ok", "https://f…"]  # 10 + 6 + 10 + 2 * 2
    ascii_only = io.StringIO()  # no encoding: an ASCII terminal gets ~ for the ellipsis
    print_table(["ID", "STATUS", "RESULT"], rows, out=ascii_only, width=30)
    assert ascii_only.getvalue().splitlines()[1].split()[0] == "01m8ss8w5~"
    print_table(["ID", "STATUS", "RESULT"], rows)  # no width: never cut
    assert "https://fake.invalid/a/long/path.png" in capsys.readouterr().out


# --- reconcile --------------------------------------------------------------------


@pytest.fixture
def lost_webhook(db: str, store: SQLJobStore) -> Iterator[tuple[str, str]]:
    """A backend served over loopback, and a job whose every webhook it lost."""
    from jobhook import GeneratorClient, WebhookHandler
    from jobhook.testing import Chaos, FakeGenerator, new_webhook_secret

    secret = new_webhook_secret()
    handler = WebhookHandler(store, secret=secret)
    fake = FakeGenerator(secret, handler=handler, chaos=Chaos(drop=1.0))
    with fake, fake.serve() as url:
        with GeneratorClient(store, url, callback_url=CALLBACK) as client:
            job = client.submit({"prompt": "lost"})
        fake.deliver_all()
        yield url, job.id


CALLBACK = "http://127.0.0.1:9/webhooks/jobhook/{job_id}"


def test_reconcile_recovers_a_lost_webhook(
    run: Runner, db: str, store: SQLJobStore, lost_webhook: tuple[str, str]
) -> None:
    url, job_id = lost_webhook
    time.sleep(0.01)  # so that the job is older than --stale-after
    argv = ["reconcile", "--db", db, "--backend", url, "--callback-url", CALLBACK]
    status, out, err = run(*argv, "--status-path", "/jobs/{job_id}", "--stale-after", "0.005")
    assert status == 0, err
    assert out.splitlines()[0].startswith("checked 1: 1 refreshed (1 finished)")
    assert f"finished: {job_id}" in out
    assert store.get(job_id).status is JobStatus.SUCCEEDED

    status, out, _ = run(*argv, "--stale-after", "0.005", "--json")
    assert status == 0
    assert json.loads(out)["checked"] == 0


def test_reconcile_without_status_path_times_out_old_jobs(
    run: Runner, db: str, store: SQLJobStore, lost_webhook: tuple[str, str]
) -> None:
    url, job_id = lost_webhook
    time.sleep(0.01)
    status, out, _ = run(
        "reconcile", "--db", db, "--backend", url, "--callback-url", CALLBACK,
        "--stale-after", "0.005", "--give-up-after", "0.005",
    )  # fmt: skip
    assert status == 0
    assert f"timed out: {job_id}" in out
    job = store.get(job_id)
    assert job.error is not None
    assert job.error.code == "timed_out"


def test_reconcile_unreachable_backend_is_one_line(
    run: Runner, db: str, store: SQLJobStore
) -> None:
    store.create({}, job_id="j")
    time.sleep(0.01)
    status, _, err = run(
        "reconcile", "--db", db, "--backend", "http://127.0.0.1:1", "--callback-url", CALLBACK,
        "--stale-after", "0.005",
    )  # fmt: skip
    assert_one_line_error(status, err, "cannot reach the backend at http://127.0.0.1:1")


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        ([], "--backend"),
        (["--backend", "http://x.invalid"], "--callback-url"),
        (["--backend", "nope", "--callback-url", CALLBACK], "base_url"),
        (["--backend", "http://x.invalid", "--callback-url", "http://app/"], "{job_id}"),
        (
            ["--backend", "http://x.invalid", "--callback-url", CALLBACK, "--header", "x"],
            "Name: value",
        ),
    ],
)
def test_reconcile_configuration_errors_are_one_line(
    run: Runner,
    db: str,
    store: SQLJobStore,
    monkeypatch: pytest.MonkeyPatch,
    extra: list[str],
    fragment: str,
) -> None:
    monkeypatch.delenv("JOBHOOK_BACKEND_URL", raising=False)
    monkeypatch.delenv("JOBHOOK_CALLBACK_URL", raising=False)
    status, _, err = run("reconcile", "--db", db, *extra)
    assert_one_line_error(status, err, fragment)


def test_reconcile_durations(run: Runner, db: str) -> None:
    from jobhook.cli._backend_commands import parse_duration

    assert parse_duration("90").total_seconds() == 90
    assert parse_duration("15m").total_seconds() == 900
    assert parse_duration("2h").total_seconds() == 7200
    assert parse_duration("1d").total_seconds() == 86400
    status, _, err = run("reconcile", "--db", db, "--stale-after", "soon")
    assert status == 2
    assert "not a duration" in err


# --- fake-backend -----------------------------------------------------------------


def test_fake_backend_serves_the_contract_until_stopped(tmp_path: Path) -> None:
    from jobhook import GeneratorClient, InMemoryJobStore, WebhookHandler
    from jobhook.cli._backend_commands import DEV_SECRET
    from jobhook.cli._receiver import WebhookReceiver

    env = {k: v for k, v in os.environ.items() if k != "JOBHOOK_WEBHOOK_SECRET"}
    process = subprocess.Popen(
        [sys.executable, "-m", "jobhook", "fake-backend", "--port", "0", "--duration", "0.1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline()]
        while "Ctrl-C stops" not in banner[-1]:
            assert banner[-1], f"the fake backend ended early: {banner}"
            banner.append(process.stdout.readline())
        assert banner[0].startswith("fake generator backend on http://127.0.0.1:")
        assert any("whsec_" in line for line in banner)
        url = banner[0].split()[-1]
        store = InMemoryJobStore()
        receiver = WebhookReceiver(WebhookHandler(store, secret=DEV_SECRET)).start()
        with GeneratorClient(
            store, url, callback_url=receiver.callback_url, status_path="/jobs/{job_id}"
        ) as client:
            good = client.submit({"prompt": "a red fox"})
            bad = client.submit({"prompt": "please fail"})
            assert client.wait(good.id, timeout=30, poll_interval=0.05).status == "succeeded"
            failed = client.wait(bad.id, timeout=30, poll_interval=0.05)
        receiver.stop()
        assert failed.status == "failed"
        assert receiver.outcomes["applied"] >= 2
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    assert f"<- submit {good.id}" in out
    assert "stopped" in out


def test_fake_backend_refuses_a_bad_secret(run: Runner) -> None:
    status, _, err = run("fake-backend", "--secret", "hunter2", "--port", "0")
    assert_one_line_error(status, err, "--secret", "whsec_")


def test_progress_bars_plain_and_live() -> None:
    import io

    from jobhook import InMemoryJobStore
    from jobhook.cli._progress import ProgressBoard, bar

    assert bar(None, 4) == "[....]"
    assert bar(50, 4) == "[##..]"
    assert bar(100, 4) == "[####]"
    store = InMemoryJobStore()
    job = store.create({}, job_id="j1")
    running = store.apply("j1", JobUpdate(JobStatus.RUNNING, progress=10)).job
    almost = store.apply("j1", JobUpdate(JobStatus.RUNNING, progress=20)).job
    done = store.apply("j1", JobUpdate(JobStatus.SUCCEEDED)).job

    plain = io.StringIO()
    board = ProgressBoard(plain, {"j1": "a red fox"}, live=False)
    for state in [job, running, almost, done]:
        board.update([state])
    lines = plain.getvalue().splitlines()
    # One line per change of status (10% -> 20% is the same quarter: no new line).
    assert [line.split()[-1] for line in lines] == ["pending", "running", "succeeded"]
    assert "a red fox" in lines[-1]
    assert "100%" in lines[-1]
    assert "\x1b[" not in plain.getvalue()

    narrow = io.StringIO()
    board = ProgressBoard(narrow, {"j1": "a red fox in fresh snow, oil on canvas"}, width=50)
    board.update([running])
    assert 40 < len(narrow.getvalue().splitlines()[0]) <= 50

    live = io.StringIO()
    board = ProgressBoard(live, {"j1": "a red fox"}, live=True)
    board.update([running])
    board.update([done])
    assert live.getvalue().count("\x1b[1F") == 1  # back up one bar, then redraw it
    assert live.getvalue().endswith("succeeded\n")


def test_reconcile_every_runs_until_interrupted(
    run: Runner, db: str, store: SQLJobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import jobhook.cli._backend_commands as commands

    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(commands.time, "sleep", sleep)
    status, out, err = run(
        "reconcile", "--db", db, "--backend", "http://x.invalid", "--callback-url", CALLBACK,
        "--every", "1m",
    )  # fmt: skip
    assert status == 130
    assert waits == [60.0, 60.0]
    assert out.count("checked 0") == 2
    assert "interrupted" in err
