"""PyPI readiness: the built wheel installs into a fresh virtual environment and works.

The wheel is built from this tree with ``python -m build --wheel`` (which fetches the
build backend from the package index), installed into a new venv (its dependencies
come from the index too), and run from there, outside the source tree: ``jobhook
--help``, ``jobhook demo``, ``python -m jobhook``. Its metadata is what PyPI shows.
The README and the changelog are checked for what PyPI and Keep a Changelog expect.
"""

from __future__ import annotations

import email.parser
import importlib.util
import os
import re
import subprocess
import sys
import venv
import zipfile
from email.message import Message
from pathlib import Path

import pytest

import jobhook

ROOT = Path(__file__).resolve().parent.parent
# Installing from the index can be slow on a cold cache; nothing here should hang forever.
TIMEOUT = 900

needs_build = pytest.mark.skipif(
    importlib.util.find_spec("build") is None,
    reason="the 'build' package is not installed (pip install -e '.[test]')",
)


def _run(
    args: list[str], *, cwd: Path, timeout: float = TIMEOUT
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.pop("JOBHOOK_DATABASE_URL", None)
    result = subprocess.run(
        args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, (
        f"{' '.join(args)} exited {result.returncode}\n{result.stdout[-4000:]}\n"
        f"{result.stderr[-4000:]}"
    )
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from this tree."""
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--wheel", "--outdir", str(out), str(ROOT)], cwd=out)
    [built] = out.glob("jobhook-*.whl")
    return built


@pytest.fixture(scope="module")
def metadata(wheel: Path) -> Message:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        text = archive.read(name).decode("utf-8")
    return email.parser.Parser().parsestr(text)


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed; returns its bin directory."""
    home = tmp_path_factory.mktemp("venv")
    venv.create(home, with_pip=True, clear=True)
    bin_dir = home / ("Scripts" if sys.platform == "win32" else "bin")
    _run([str(bin_dir / "python"), "-m", "pip", "install", "-q", str(wheel)], cwd=home)
    return bin_dir


@pytest.mark.slow
@needs_build
def test_the_wheel_holds_the_package_and_its_type_marker(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    assert "jobhook/__init__.py" in names
    assert "jobhook/py.typed" in names
    assert "jobhook/stores/sql.py" in names
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)


@pytest.mark.slow
@needs_build
def test_the_wheel_metadata_is_complete(metadata: Message) -> None:
    assert metadata["Name"] == "jobhook"
    assert metadata["Version"] == jobhook.__version__
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["License-Expression"] == "MIT"
    assert metadata["Summary"]
    assert len(metadata["Summary"]) < 200
    assert metadata["Description-Content-Type"] == "text/markdown"
    # The long description is the README, as PyPI will show it.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert metadata.get_payload().strip() == readme.strip()
    urls = {value.split(",")[0].strip() for value in metadata.get_all("Project-URL", [])}
    assert {"Homepage", "Documentation", "Source", "Changelog", "Issues"} <= urls
    extras = set(metadata.get_all("Provides-Extra", []))
    assert {"postgres", "async", "flask", "fastapi", "django", "all"} <= extras
    classifiers = set(metadata.get_all("Classifier", []))
    assert "Typing :: Typed" in classifiers
    assert "Programming Language :: Python :: 3 :: Only" in classifiers
    core = [r.lower() for r in metadata.get_all("Requires-Dist", []) if "extra ==" not in r]
    for dependency in ("attrs", "cattrs", "httpx", "sqlalchemy"):
        assert any(r.startswith(dependency) for r in core), (dependency, core)


@pytest.mark.slow
@needs_build
def test_the_wheel_declares_the_command_and_the_pytest_plugin(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        [name] = [n for n in archive.namelist() if n.endswith(".dist-info/entry_points.txt")]
        entry_points = archive.read(name).decode("utf-8")
    assert re.search(r"^\[console_scripts\]\njobhook = jobhook\.cli:main$", entry_points, re.M)
    assert re.search(r"^\[pytest11\]\njobhook = jobhook\.testing$", entry_points, re.M)


@pytest.mark.slow
@needs_build
def test_the_installed_wheel_runs_the_demo(installed: Path, tmp_path: Path) -> None:
    if importlib.util.find_spec("jobhook.cli") is None:
        pytest.skip("the jobhook CLI does not exist yet")
    python = str(installed / "python")
    # Outside the source tree, the package comes from the venv, not from src/.
    where = _run([python, "-c", "import jobhook; print(jobhook.__file__)"], cwd=tmp_path)
    assert Path(where.stdout.strip()).is_relative_to(installed.parent)

    help_text = _run([str(installed / "jobhook"), "--help"], cwd=tmp_path).stdout
    assert "demo" in help_text
    assert "reconcile" in help_text
    version = _run([str(installed / "jobhook"), "--version"], cwd=tmp_path).stdout
    assert jobhook.__version__ in version
    _run([python, "-m", "jobhook", "--help"], cwd=tmp_path)

    # Exits non-zero if any job ends wrong.
    _run([str(installed / "jobhook"), "demo"], cwd=tmp_path)


@pytest.mark.slow
@needs_build
def test_the_installed_wheel_imports_without_test_or_framework_extras(
    installed: Path, tmp_path: Path
) -> None:
    # The core install has no pytest, Flask, FastAPI or Django: the testing helpers and
    # the core must import anyway.
    code = (
        "import importlib.util, jobhook, jobhook.testing, jobhook.sender, jobhook.reconcile\n"
        "assert importlib.util.find_spec('pytest') is None\n"
        "assert importlib.util.find_spec('flask') is None\n"
        "print(len(jobhook.__all__))"
    )
    out = _run([str(installed / "python"), "-c", code], cwd=tmp_path).stdout
    assert int(out) == len(jobhook.__all__)


def test_readme_links_are_absolute() -> None:
    # PyPI shows the README without the repository around it: relative links break.
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for target in re.findall(r"\]\(([^)]+)\)", readme):
        assert target.startswith(("https://", "http://", "#")), f"relative link: {target}"


def test_changelog_follows_keep_a_changelog() -> None:
    text = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    assert text.startswith("# Changelog\n")
    assert "https://keepachangelog.com/" in text
    releases = re.findall(r"^## (.+)$", text, re.MULTILINE)
    assert releases[0] == "[Unreleased]"
    for heading in releases[1:]:
        assert re.fullmatch(r"\[\d+\.\d+\.\d+(?:[-.\w]*)\] - \d{4}-\d{2}-\d{2}", heading), heading
    kinds = set(re.findall(r"^### (.+)$", text, re.MULTILINE))
    assert kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, kinds
