"""What the output keepers share besides `KeeperCore`: the records they report
(`KeptFile`, `KeptOutput`), the holds that suit a store, and how a kept file is named."""

from __future__ import annotations

import mimetypes
import re
import sys
from collections.abc import Callable
from typing import Any

import attrs

from jobhook._models import JSON, Job, JobEvent
from jobhook.exceptions import ValidationError
from jobhook.stores._outputs import Holds, MemoryHolds, SQLHolds

__all__ = ["NOT_KEPT", "KeptFile", "KeptOutput", "Listener", "is_django_store"]

#: Called after the keeper applies a change: ``listener(event, job)``, as with
#: `jobhook.WebhookHandler`'s listeners.
Listener = Callable[[JobEvent, Job], Any]

#: The `JobError` code of a job whose files could not be kept.
NOT_KEPT = "output_not_kept"


@attrs.frozen
class KeptFile:
    """One kept file: where it was (``source``, the provider's URL, or ``data:`` and
    its media type for an inline file), where it is (``key`` in the storage, ``url``),
    its ``content_type``, ``size`` in bytes and ``sha256`` (hex)."""

    index: int
    source: str
    key: str
    url: str
    content_type: str
    size: int
    sha256: str


@attrs.frozen
class KeptOutput:
    """What the keeper did for a job: ``state`` is ``keeping`` (not done yet),
    ``kept`` (the job succeeded with the kept files), ``failed`` (the job failed with
    ``code="output_not_kept"``) or ``dropped`` (the job had ended otherwise);
    ``original_output`` is the output the provider reported."""

    job_id: str
    state: str
    original_output: JSON
    files: list[KeptFile]
    attempts: int
    last_error: str | None


_SUPPORTED = (
    "OutputKeeper keeps its holds beside an InMemoryJobStore, a SQLJobStore or a "
    "DjangoJobStore, and AsyncOutputKeeper beside an AsyncInMemoryJobStore or an "
    "AsyncSQLJobStore"
)


def is_django_store(store: Any) -> bool:
    """Whether ``store`` is a `jobhook.django.DjangoJobStore` (without importing Django:
    a store of that class exists only once its module is loaded)."""
    module = sys.modules.get("jobhook.django._store")
    return module is not None and isinstance(store, module.DjangoJobStore)


def _holds_for(store: Any) -> Holds:
    from jobhook.stores.memory import AsyncInMemoryJobStore, InMemoryJobStore
    from jobhook.stores.sql import AsyncSQLJobStore, SQLJobStore

    if isinstance(store, SQLJobStore):
        return SQLHolds(store.engine, store.tables.prefix)
    if isinstance(store, InMemoryJobStore):
        return MemoryHolds()
    if is_django_store(store):
        from jobhook.django._holds import DjangoHolds

        return DjangoHolds(store.using)
    hint = (
        "; use AsyncOutputKeeper"
        if isinstance(store, (AsyncSQLJobStore, AsyncInMemoryJobStore))
        else ""
    )
    raise ValidationError(f"{_SUPPORTED}, not {type(store).__name__}{hint}")


def _extension(content_type: str) -> str:
    return mimetypes.guess_extension(content_type, strict=False) or ""


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def _is_url(value: object) -> bool:
    """True for a string that starts with a scheme (a URL, a ``data:`` URI); false for
    bare base64, whose alphabet has no colon."""
    return isinstance(value, str) and _SCHEME.match(value) is not None


def _source(url: str) -> str:
    # An inline file is recorded by its media type: its bytes are the kept file.
    if url[:5].lower() == "data:":
        return url.split(",", 1)[0]
    return url if _is_url(url) else "base64"
