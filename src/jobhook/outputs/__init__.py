"""Outputs that outlive the provider: keep the files a job's output references.

Providers hand back URLs that expire (Replicate deletes outputs after an hour) or
inline ``data:`` URIs. An `OutputKeeper` (`AsyncOutputKeeper` for the async stores)
copies every such file into the app's `Storage` (`LocalStorage`, `S3Storage`) and
only then lets the job succeed, with an output that names the kept copies; the
provider's originals stay recorded (`OutputKeeper.kept`). See the "Outputs" page of the docs.
"""

from __future__ import annotations

from jobhook.outputs._async_keeper import AsyncOutputKeeper
from jobhook.outputs._fetch import Fetched, FetchPolicy, fetch
from jobhook.outputs._files import FileFinder, any_url, fal_files, files_for, openai_files
from jobhook.outputs._keeper import KeptFile, KeptOutput, OutputKeeper
from jobhook.outputs._storage import LocalStorage, S3Storage, Storage

__all__ = [
    "AsyncOutputKeeper",
    "FetchPolicy",
    "Fetched",
    "FileFinder",
    "KeptFile",
    "KeptOutput",
    "LocalStorage",
    "OutputKeeper",
    "S3Storage",
    "Storage",
    "any_url",
    "fal_files",
    "fetch",
    "files_for",
    "openai_files",
]
