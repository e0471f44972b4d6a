"""The documentation is true: its examples run and its API reference is complete.

Every fenced ``python`` block in ``docs/**/*.md`` and ``README.md`` runs. The blocks of
one page run in order, in one namespace, in a fresh temporary directory that is also on
``sys.path``. A block whose info string has ``title="name.py"`` is a file of the example:
it is written to that directory instead (later blocks may import it), and when its name
starts with ``test_`` it is run with pytest in a subprocess, as a reader would run it.

A block is left out only with a stated reason, in an HTML comment on the line before it:
``<!-- skip: needs a running server -->``.

``json`` blocks must parse (one document, or one document per line), and every
``jobhook …`` command line in a ``bash`` or ``console`` block must be accepted by the
command's own argument parser.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import importlib.util
import inspect
import io
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import jobhook

from .conftest import PG_SKIP_REASON, PG_URL

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]
REFERENCE_PAGES = [DOCS / "reference.md"]
PYTHON = {"python", "py"}
# Modules whose ``__all__`` is public API (besides ``jobhook`` itself), imported only
# when they exist, so that the check grows as they land.
PUBLIC_MODULES = [
    "jobhook.backends",
    "jobhook.testing",
    "jobhook.sender",
    "jobhook.reconcile",
    "jobhook.outputs",
    "jobhook.flask",
    "jobhook.fastapi",
    "jobhook.django",
    "jobhook.live",
]

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)(?P<info>.*)$")
_SKIP = re.compile(r"^\s*<!--\s*skip:(?P<reason>.*?)-->\s*$")
_TITLE = re.compile(r"""title=["'](?P<title>[^"']+)["']""")


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    page: Path
    line: int  # 1-based line of the first line of code
    lang: str
    title: str | None
    code: str
    skip: str | None  # the stated reason, or None to run it

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def parse_blocks(page: Path) -> list[Block]:
    """The fenced code blocks of ``page``, with their skip reasons and titles."""
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    previous = ""  # the last non-blank line before the current one
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if not match:
            if lines[i].strip():
                previous = lines[i]
            i += 1
            continue
        fence = match["fence"]
        skip = _SKIP.match(previous)
        start = i + 1
        body: list[str] = []
        i += 1
        while i < len(lines):
            stripped = lines[i].strip()
            if stripped.startswith(fence[0] * len(fence)) and not stripped.strip(fence[0]):
                break
            body.append(lines[i])
            i += 1
        title = _TITLE.search(match["info"])
        blocks.append(
            Block(
                page=page,
                line=start + 1,
                lang=match["lang"].lower(),
                title=title["title"] if title else None,
                # Blocks inside admonitions and tabs are indented as a whole.
                code=textwrap.dedent("\n".join(body)),
                skip=skip["reason"].strip() if skip else None,
            )
        )
        previous = ""
        i += 1
    return blocks


def _python_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang in PYTHON for b in parse_blocks(p))]


def _page_id(page: Path) -> str:
    return str(page.relative_to(ROOT))


def _close_leftovers(namespace: dict[str, Any]) -> None:
    # Examples may leave stores open (a reader's script would just exit); close what
    # jobhook objects remain so that their connections do not outlive the test.
    for value in namespace.values():
        module = getattr(type(value), "__module__", "")
        close = getattr(value, "close", None)
        if not module.startswith("jobhook.") or inspect.isclass(value) or close is None:
            continue
        if inspect.iscoroutinefunction(close):
            asyncio.run(close())
        else:
            close()


def _run_pytest_file(path: Path, block: Block) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", path.name],
        cwd=path.parent,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        pytest.fail(
            f"{block.where}: {path.name} failed under pytest\n{result.stdout}\n{result.stderr}"
        )


@pytest.fixture
def example_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory on sys.path; modules imported from it are forgotten after."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        origin = getattr(sys.modules[name], "__file__", None) or ""
        if origin.startswith(str(tmp_path)):
            del sys.modules[name]


@pytest.mark.parametrize("page", _python_pages(), ids=_page_id)
def test_python_blocks_run(page: Path, example_dir: Path) -> None:
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    try:
        for block in parse_blocks(page):
            if block.lang not in PYTHON or block.skip is not None:
                continue
            if block.title and block.title.endswith(".py"):
                path = example_dir / block.title
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(block.code + "\n", encoding="utf-8")
                if path.name.startswith("test_"):
                    _run_pytest_file(path, block)
                continue
            # Pad with blank lines so that tracebacks point at the Markdown line.
            source = "\n" * (block.line - 1) + block.code
            exec(compile(source, str(page), "exec"), namespace)
    finally:
        _close_leftovers(namespace)


def test_skips_state_a_reason() -> None:
    for page in PAGES:
        for block in parse_blocks(page):
            if block.skip is not None:
                assert block.skip, f"{block.where}: a skip marker needs a reason"


def test_skip_markers_precede_a_block() -> None:
    # A marker that lost its block (an edited page) would silently skip the next one.
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for number, line in enumerate(lines, 1):
            if not _SKIP.match(line):
                continue
            following = next((rest for rest in lines[number:] if rest.strip()), "")
            assert _FENCE.match(following), (
                f"{page.relative_to(ROOT)}:{number}: skip marker not followed by a code block"
            )


def test_json_blocks_parse() -> None:
    for page in PAGES:
        for block in parse_blocks(page):
            if block.lang != "json" or block.skip is not None:
                continue
            try:
                json.loads(block.code)
            except json.JSONDecodeError:
                for line in block.code.splitlines():
                    if line.strip():
                        try:
                            json.loads(line)
                        except json.JSONDecodeError as exc:
                            pytest.fail(f"{block.where}: not JSON: {exc}\n{line}")


SHELL = {"bash", "console", "sh", "shell"}
_ASSIGNMENT = re.compile(r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)=(?P<value>.*)$", re.DOTALL)
# `jobhook …` in running text (not in a fenced block): a command line, or a command's name.
_INLINE_COMMAND = re.compile(r"`(?P<command>(?:python -m )?jobhook(?: [^`]*)?)`")


@dataclass(frozen=True)
class Command:
    """One shell command line of the docs, with the variables set before it."""

    words: list[str]
    env: dict[str, str]


def _shell_commands(code: str, *, prompts: bool = False) -> list[Command]:
    """The command lines of a shell block, continuations joined, split like a shell.

    With ``prompts`` (a ``console`` block), only lines after a ``$ `` prompt are
    commands; the others are their output. ``NAME=value`` before a command, and
    ``export NAME=value`` lines, are the environment of the commands they apply to.
    """
    commands = []
    exported: dict[str, str] = {}
    for line in code.replace("\\\n", " ").splitlines():
        line = line.strip()
        if prompts:
            if not line.startswith("$ "):
                continue
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        words = shlex.split(line, comments=True)
        env = dict(exported)
        if words[:1] == ["export"]:
            for word in words[1:]:
                if match := _ASSIGNMENT.match(word):
                    exported[match["name"]] = match["value"]
            continue
        while words and (match := _ASSIGNMENT.match(words[0])):
            env[match["name"]] = match["value"]
            words.pop(0)
        if words:
            commands.append(Command(words, env))
    return commands


def _jobhook_arguments(words: list[str]) -> list[str] | None:
    if words[0] == "jobhook" or words[0].endswith("/jobhook"):
        return words[1:]
    if words[:3] == ["python", "-m", "jobhook"]:
        return words[3:]
    return None


def _command_problem(arguments: list[str], env: dict[str, str]) -> str | None:
    """Why ``jobhook <arguments>`` would not run as written, or None when it would.

    It must parse, and have every value its command needs (`check_arguments`): a
    command that argparse accepts but that stops at once, such as ``jobhook reconcile``
    without ``--backend``, is wrong in the docs too. ``env`` is the environment the
    docs give the command; nothing else is taken from the reader's (the parser reads
    its defaults from ``JOBHOOK_*`` variables when it is built).
    """
    from jobhook.cli import build_parser, check_arguments
    from jobhook.cli._common import CLIError

    saved = {name: value for name, value in os.environ.items() if name.startswith("JOBHOOK_")}
    for name in saved:
        del os.environ[name]
    os.environ.update(env)
    try:
        with contextlib.redirect_stderr(io.StringIO()) as usage:
            try:
                args = build_parser().parse_args(arguments)
            except SystemExit as exc:  # --help exits 0, a usage error 2
                return None if exc.code == 0 else usage.getvalue().strip()
        try:
            check_arguments(args)
        except CLIError as exc:
            return str(exc)
        return None
    finally:
        for name in env:
            os.environ.pop(name, None)
        os.environ.update(saved)


def _command_names(arguments: list[str]) -> str | None:
    """Why ``arguments`` (words without options) do not start with a real command."""
    from jobhook.cli import build_parser

    parser: Any = build_parser()
    named = []
    for word in arguments:
        commands = [
            action for action in parser._actions if isinstance(action, argparse._SubParsersAction)
        ]
        if not commands:
            return None  # a command's own arguments follow (JOB_ID, ID…)
        if word not in commands[0].choices:
            return f"no command {' '.join([*named, word])!r}"
        named.append(word)
        parser = commands[0].choices[word]
    return None


def _inline_commands(page: Path) -> Iterator[tuple[int, list[str]]]:
    """``jobhook …`` in the running text of ``page``: (line number, words)."""
    inside = None
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        fence = _FENCE.match(line)
        if fence:
            if inside is None:
                inside = fence["fence"]
            elif line.strip().startswith(inside):
                inside = None
            continue
        if inside is None:
            for match in _INLINE_COMMAND.finditer(line):
                yield number, shlex.split(match["command"])


def test_cli_commands_in_docs_parse() -> None:
    if importlib.util.find_spec("jobhook.cli") is None:
        pytest.skip("the jobhook CLI does not exist yet")
    checked = 0
    for page in PAGES:
        for block in parse_blocks(page):
            if block.lang not in SHELL or block.skip is not None:
                continue
            for command in _shell_commands(block.code, prompts=block.lang == "console"):
                arguments = _jobhook_arguments(command.words)
                if arguments is None:
                    continue
                problem = _command_problem(arguments, command.env)
                assert problem is None, f"{block.where}: {shlex.join(command.words)}\n{problem}"
                checked += 1
    assert checked, "no jobhook command found in the docs"


def test_cli_commands_in_running_text_are_complete() -> None:
    # `jobhook db init` names a command; `jobhook reconcile --every 1m` is a command
    # line a reader will paste, so it must run as written, like one in a code block.
    checked = 0
    for page in PAGES:
        for number, words in _inline_commands(page):
            arguments = _jobhook_arguments(words)
            assert arguments is not None
            where = f"{page.relative_to(ROOT)}:{number}: {shlex.join(words)}"
            if any(word.startswith("-") for word in arguments):
                problem = _command_problem(arguments, {})
            else:
                problem = _command_names(arguments)
            assert problem is None, f"{where}\n{problem}"
            checked += 1
    assert checked, "no jobhook command found in the docs' text"


@pytest.mark.parametrize(
    ("command", "problem"),
    [
        ("jobhook reconcile --every 1m", "--backend"),  # the tutorial's, once
        ("jobhook reconcile --backend http://gen --every 1m", "--callback-url"),
        ("jobhook dead-letters replay", "--all"),
        ("jobhook jobs list --status done", "invalid choice"),
        ("jobhook jobz list", "invalid choice"),
    ],
)
def test_the_command_check_refuses_incomplete_commands(command: str, problem: str) -> None:
    found = _command_problem(shlex.split(command)[1:], {})
    assert found is not None
    assert problem in found


def test_the_command_check_reads_the_environment_the_docs_give() -> None:
    block = (
        "export JOBHOOK_BACKEND_URL=http://gen\n"
        "JOBHOOK_CALLBACK_URL='https://app/hooks/{job_id}' jobhook reconcile \\\n"
        "    --every 1m\n"
        "jobhook reconcile --every 1m\n"
    )
    first, second = _shell_commands(block)
    assert _command_problem(first.words[1:], first.env) is None
    problem = _command_problem(second.words[1:], second.env)
    assert problem is not None
    assert "--callback-url" in problem
    assert _command_names(["dead-letters", "replay", "ID…"]) is None
    assert "no command 'jobs lst'" in (_command_names(["jobs", "lst"]) or "")


def test_parser_finds_blocks_and_skips(tmp_path: Path) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "Intro\n\n"
        "```python\nx = 1\n```\n\n"
        "<!-- skip: needs a running server -->\n"
        "```python\nraise SystemExit\n```\n\n"
        '!!! note\n    ```python title="app.py"\n    y = 2\n    ```\n',
        encoding="utf-8",
    )
    blocks = parse_blocks(page)
    assert [(b.line, b.code, b.skip, b.title) for b in blocks] == [
        (4, "x = 1", None, None),
        (9, "raise SystemExit", "needs a running server", None),
        (14, "y = 2", None, "app.py"),
    ]


def _documented_names() -> set[str]:
    names: set[str] = set()
    for page in REFERENCE_PAGES:
        text = page.read_text(encoding="utf-8")
        names.update(re.findall(r"^:::\s+([\w.]+)\s*$", text, re.MULTILINE))
    return names


def _mentioned_names() -> set[str]:
    # A re-export may be documented by a sentence that links to the original.
    names: set[str] = set()
    for page in REFERENCE_PAGES:
        names.update(re.findall(r"`(jobhook[\w.]*)`", page.read_text(encoding="utf-8")))
    return names


def test_reference_names_every_public_name() -> None:
    documented = _documented_names()
    missing = [f"jobhook.{n}" for n in jobhook.__all__ if f"jobhook.{n}" not in documented]
    for module_name in PUBLIC_MODULES:
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        for name in getattr(module, "__all__", []):
            # Documented under its own module, or as the top-level name it also is.
            same_as_top_level = getattr(jobhook, name, None) is getattr(module, name)
            if f"{module_name}.{name}" in documented or (
                same_as_top_level and f"jobhook.{name}" in documented
            ):
                continue
            missing.append(f"{module_name}.{name}")
    assert not missing, f"not in the API reference: {missing}"


def test_reference_entries_name_real_objects() -> None:
    for dotted in sorted(_documented_names() | _mentioned_names()):
        parts = dotted.split(".")
        obj: Any = None
        for split in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:split]))
            except ImportError:
                continue
            break
        for attribute in parts[split:]:
            assert hasattr(obj, attribute), f"{dotted} is in the API reference but does not exist"
            obj = getattr(obj, attribute)


def _paragraph(page: Path, start: str) -> str:
    text = " ".join(page.read_text(encoding="utf-8").split())
    begin = text.index(start)
    return text[begin : text.index(" ## ", begin)]


def test_the_outbox_wait_is_documented_as_server_wide() -> None:
    # It once said "the same database": PostgreSQL's snapshot xmin spans the cluster.
    said = _paragraph(DOCS / "stores.md", "The price:")
    assert "same database" not in said
    assert "whole server" in said
    assert "idle-in-transaction session in another" in said
    assert "No event is skipped" in said


@pytest.mark.skipif(not PG_URL, reason=PG_SKIP_REASON)
def test_the_outbox_waits_for_a_transaction_in_another_database() -> None:
    """What the stores page says, measured: a transaction holding an id in *another*
    database of the server holds ``events()`` back; one that only read does not."""
    import time
    import uuid

    import sqlalchemy as sa

    from jobhook import JobUpdate, SQLJobStore

    assert PG_URL is not None
    url = sa.engine.make_url(PG_URL)
    other = sa.create_engine(url.set(database="postgres"))
    try:
        other.connect().close()
    except sa.exc.OperationalError as exc:
        other.dispose()
        pytest.skip(f"no second database on the server to hold a transaction in: {exc}")
    store = SQLJobStore(PG_URL, table_prefix=f"d{uuid.uuid4().hex[:8]}_", create_schema=True)

    def events_appear() -> bool:
        # Other sessions on a shared server may hold ids for a moment too: wait a little.
        deadline = time.monotonic() + 10
        while not store.events() and time.monotonic() < deadline:
            time.sleep(0.05)
        return bool(store.events())

    try:
        with other.connect() as conn:
            conn.execute(sa.text("SELECT txid_current()"))  # holds an id, never writes here
            job = store.create({"prompt": "a fox"})
            store.apply(job.id, JobUpdate("running"))
            time.sleep(0.2)
            assert store.events() == []  # delayed, by a session in another database
            conn.rollback()
        assert events_appear()  # then handed out: nothing skipped
        [first] = store.events()
        with other.connect() as conn:
            conn.execute(sa.text("SELECT 1"))  # an open transaction that only read
            store.apply(job.id, JobUpdate("succeeded"))
            deadline = time.monotonic() + 10
            while len(store.events()) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [e.id for e in store.events()][1:] != []  # not held back by a read
            assert store.events()[0].id == first.id
    finally:
        store.metadata.drop_all(store.engine)
        store.close()
        other.dispose()
