"""What ``import jobhook`` loads, and what a missing optional driver says."""

from __future__ import annotations

import subprocess
import sys

import pytest

import jobhook


def test_import_jobhook_loads_neither_sqlalchemy_nor_httpx() -> None:
    # An app that only verifies and applies webhooks pays for neither.
    code = (
        "import sys, jobhook\n"
        "from jobhook import InMemoryJobStore, WebhookHandler, sign_webhook\n"
        "print(sorted(m for m in ('sqlalchemy', 'httpx') if m in sys.modules))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_lazy_names_resolve_and_are_listed() -> None:
    from jobhook.stores.sql import SQLJobStore

    assert jobhook.SQLJobStore is SQLJobStore
    assert {"SQLJobStore", "GeneratorClient", "Reconciler", "CallbackSender"} <= set(dir(jobhook))
    for name in jobhook.__all__:
        assert getattr(jobhook, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        jobhook.Nope


@pytest.mark.parametrize(
    ("module", "url", "extra", "store"),
    [
        ("psycopg", "postgresql://postgres@127.0.0.1:1/test", "postgres", "SQLJobStore"),
        ("aiosqlite", "sqlite:///jobs.db", "async", "AsyncSQLJobStore"),
        ("asyncpg", "postgresql+asyncpg://postgres@127.0.0.1:1/test", "async", "AsyncSQLJobStore"),
    ],
)
def test_a_missing_driver_names_the_extra_to_install(
    monkeypatch: pytest.MonkeyPatch, module: str, url: str, extra: str, store: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed
    with pytest.raises(ModuleNotFoundError, match=rf"pip install 'jobhook\[{extra}\]'") as info:
        getattr(jobhook, store)(url)
    assert info.value.name == module
