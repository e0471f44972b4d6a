"""Where kept files go: a local directory, or S3-compatible object storage."""

from __future__ import annotations

import os
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

__all__ = ["LocalStorage", "S3Storage", "Storage"]


@runtime_checkable
class Storage(Protocol):
    """Somewhere files can be kept for good.

    ``put`` writes ``data`` under ``key`` (a relative path of URL-safe segments
    joined by ``/``) and returns the URL the job's output will name. Writing the same
    key again replaces it: a keeper that resumes after a crash writes each file's key
    once more, never a second copy. ``get`` reads a kept file back.
    """

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Keep ``data`` under ``key``; return its URL. Atomic: a reader sees the old
        file or the new one, never part of one."""
        ...

    def get(self, key: str) -> bytes:
        """The kept file. Raises `FileNotFoundError` when there is none."""
        ...


def _check_key(key: str) -> list[str]:
    parts = key.split("/")
    if not key or any(p in ("", ".", "..") for p in parts) or "\\" in key or "\x00" in key:
        raise ValueError(f"not a storage key: {key!r}")
    return parts


def _sync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return  # not every platform opens directories (Windows)
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class LocalStorage:
    """Files in a local ``directory`` (created when missing), the embedded default.

    URLs are ``base_url`` + the key (serve the directory there, as the examples do at
    ``/files/``), or ``file://`` URLs without ``base_url``. Each file is written to a
    temporary file, flushed to disk and renamed into place (the directory flushed
    too). Thread- and process-safe.
    """

    def __init__(self, directory: str | os.PathLike[str], *, base_url: str | None = None) -> None:
        self.directory = Path(directory).resolve()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.base_url = base_url

    def __repr__(self) -> str:
        return f"<LocalStorage {str(self.directory)!r} base_url={self.base_url!r}>"

    def path(self, key: str) -> Path:
        """Where ``key`` is kept on disk."""
        return self.directory.joinpath(*_check_key(key))

    def url(self, key: str) -> str:
        """The URL of ``key``."""
        if self.base_url is None:
            return self.path(key).as_uri()
        return self.base_url.rstrip("/") + "/" + urllib.parse.quote(key)

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Write ``data`` under ``key`` atomically (temporary file, fsync, rename)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".keeping-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _sync_directory(target.parent)  # the rename itself survives a power loss
        return self.url(key)

    def get(self, key: str) -> bytes:
        """The bytes kept under ``key``; `FileNotFoundError` when there are none."""
        return self.path(key).read_bytes()


class S3Storage:
    """Files in an S3 bucket (AWS, or any S3-compatible server) through boto3.

    ``client`` is a boto3 S3 client (``boto3.client("s3", endpoint_url=…)``); install
    ``jobhook[s3]``. Keys are put under ``prefix``. The URL of a key is
    ``public_url`` + the key when given (a CDN, or a public bucket's address), else the
    path-style address on the client's endpoint; the keeper writes that URL into the
    job's output, so it must be one the app can serve (a private bucket's URL is only
    a name: sign it when serving). Each file is one ``PutObject`` with its content
    type and SHA-256 checksum; boto3 clients are thread-safe.
    """

    def __init__(
        self,
        bucket: str,
        *,
        client: Any = None,
        prefix: str = "",
        public_url: str | None = None,
    ) -> None:
        if client is None:
            import boto3  # jobhook[s3]

            client = boto3.client("s3")
        self.bucket = bucket
        self.client = client
        self.prefix = prefix
        self.public_url = public_url

    def __repr__(self) -> str:
        return f"<S3Storage bucket={self.bucket!r} prefix={self.prefix!r}>"

    def url(self, key: str) -> str:
        """The URL of ``key``."""
        full = urllib.parse.quote(self.prefix + key)
        if self.public_url is not None:
            return self.public_url.rstrip("/") + "/" + full
        endpoint = str(self.client.meta.endpoint_url).rstrip("/")
        return f"{endpoint}/{urllib.parse.quote(self.bucket)}/{full}"

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """One ``PutObject`` of ``data`` under ``prefix + key`` (atomic in S3)."""
        _check_key(key)
        self.client.put_object(
            Bucket=self.bucket,
            Key=self.prefix + key,
            Body=data,
            ContentType=content_type,
            ChecksumAlgorithm="SHA256",
        )
        return self.url(key)

    def get(self, key: str) -> bytes:
        """The object under ``prefix + key``; `FileNotFoundError` when there is none."""
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.prefix + key)
        except self.client.exceptions.NoSuchKey:
            raise FileNotFoundError(key) from None
        body: bytes = answer["Body"].read()
        return body
