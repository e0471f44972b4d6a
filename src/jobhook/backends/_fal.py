"""fal's queue API, with ED25519-signed webhooks whose keys come from fal's JWKS."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any
from urllib.parse import quote

from jobhook._convert import dumps
from jobhook._models import Job, JobError, JobStatus, JobUpdate
from jobhook._payloads import ParsedPayload, parse_body
from jobhook.backends._base import (
    CallbackAuth,
    HostedProfile,
    Request,
    check_base_url,
    check_key,
    json_object,
    optional_str,
)
from jobhook.exceptions import PayloadError, SignatureError, ValidationError

__all__ = ["FAL_JWKS_URL", "Fal", "parse_fal"]

FAL_JWKS_URL = "https://rest.alpha.fal.ai/.well-known/jwks.json"
_STATUS = {
    "IN_QUEUE": JobStatus.SUBMITTED,
    "IN_PROGRESS": JobStatus.RUNNING,
    "COMPLETED": JobStatus.SUCCEEDED,
}
# fal signs: request id, user id, timestamp and the body's SHA-256, one per line.
_HEADERS = (
    "x-fal-webhook-request-id",
    "x-fal-webhook-user-id",
    "x-fal-webhook-timestamp",
    "x-fal-webhook-signature",
)
_REFETCH_AFTER = 60.0  # seconds between JWKS fetches for an unknown key


def parse_fal(data: Any) -> ParsedPayload:
    """A fal webhook: ``{"request_id", "status": "OK"|"ERROR", "payload", "error"}``."""
    if not isinstance(data, dict):
        raise PayloadError("a fal webhook is a JSON object")
    status = data.get("status")
    remote_id = optional_str(data, "request_id")
    try:
        if status == "OK":
            update = JobUpdate(JobStatus.SUCCEEDED, output=data.get("payload"), remote_id=remote_id)
        elif status == "ERROR":
            error = JobError("fal_error", _error_message(data)[:2000])
            update = JobUpdate(JobStatus.FAILED, error=error, remote_id=remote_id)
        else:
            raise PayloadError(f"status must be OK or ERROR; got {status!r:.40}")
    except (ValidationError, TypeError) as exc:
        if isinstance(exc, PayloadError):
            raise
        raise PayloadError(f"invalid payload: {exc}") from None
    return ParsedPayload(update)


def _error_message(data: Mapping[str, Any]) -> str:
    # fal's "error" is often only "Invalid status code: 422"; the reason is in the
    # payload's "detail" (FastAPI-style, maybe a list).
    payload = data.get("payload")
    detail = payload.get("detail") if isinstance(payload, Mapping) else None
    if detail:
        return detail if isinstance(detail, str) else json.dumps(detail)
    message = data.get("error") or data.get("payload_error")
    return str(message) if message else "fal reported an error"


def _public_keys(jwks: Mapping[str, Any]) -> tuple[bytes, ...]:
    keys = []
    for entry in jwks.get("keys", ()):
        if isinstance(entry, Mapping) and entry.get("crv") == "Ed25519" and "x" in entry:
            encoded = str(entry["x"])
            try:
                key = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
            except (binascii.Error, ValueError):
                continue
            if len(key) == 32:
                keys.append(key)
    return tuple(keys)


def _fetch_jwks(url: str) -> Mapping[str, Any]:
    import httpx

    response = httpx.get(url, timeout=5.0)
    response.raise_for_status()
    data: Mapping[str, Any] = response.json()
    return data


class Fal(HostedProfile):
    """fal's queue API: ``POST {base_url}/{app}?fal_webhook=<callback>`` with the
    input as the body (``Authorization: Key <key>``).

    fal's ``request_id`` is the job's ``remote_id``; status is ``GET
    {base_url}/{owner}/{alias}/requests/{id}/status`` (``IN_QUEUE``, ``IN_PROGRESS``,
    ``COMPLETED``; a completed request's result is fetched from ``…/requests/{id}``),
    cancel ``PUT …/requests/{id}/cancel`` (only requested: the outcome comes later).

    Webhooks (``status`` ``OK`` or ``ERROR``, the output in ``payload``) are signed
    with ED25519 over ``request_id\\nuser_id\\ntimestamp\\nsha256(body)`` in the
    ``x-fal-webhook-*`` headers; the public keys come from fal's JWKS, fetched on first
    use, cached, and fetched again (at most once a minute) when no cached key verifies
    a signature. Pass ``jwks=`` (the JWKS document) for tests and offline use, or
    ``fetch_jwks=`` to fetch them your way. Needs ``jobhook[ed25519]``.
    Not idempotent: a submit that may have arrived is never resent.
    """

    name = "fal"
    callbacks_name_job = False
    idempotent_submit = False
    callback_auth: CallbackAuth = "custom"

    def __init__(
        self,
        app: str,
        key: str,
        *,
        base_url: str = "https://queue.fal.run",
        jwks: Mapping[str, Any] | None = None,
        jwks_url: str = FAL_JWKS_URL,
        fetch_jwks: Callable[[str], Mapping[str, Any]] | None = None,
        tolerance: float = 300,
    ) -> None:
        parts = [p for p in app.split("/") if p] if isinstance(app, str) else []
        if len(parts) < 2:
            raise ValidationError(f"app must be 'owner/alias[/path]', got {app!r}")
        self.app = "/".join(parts)
        # Queue status and results live under the app's owner/alias, without its path.
        self._root = "/".join(parts[:2])
        self._key = check_key(key, "fal's key")
        self.base_url = check_base_url(base_url)
        self._jwks_url = jwks_url
        self._fetch = fetch_jwks if fetch_jwks is not None else _fetch_jwks
        self._keys: tuple[bytes, ...] = _public_keys(jwks) if jwks is not None else ()
        self._static = jwks is not None
        self._fetched_at: float | None = None
        self._lock = threading.Lock()
        self._tolerance = tolerance

    def __repr__(self) -> str:
        return f"Fal({self.app!r})"  # never the key

    remote_id_field = "request_id"

    def auth_headers(self) -> dict[str, str]:
        return {"authorization": f"Key {self._key}"}

    def submit_request(self, job: Job, callback_url: str) -> Request:
        url = f"{self.base_url}/{self.app}?fal_webhook={quote(callback_url, safe='')}"
        body = job.input if job.input is not None else {}
        return Request("POST", url, self.headers, dumps(body, field="input").encode())

    def _request(self, job: Job, suffix: str, method: str) -> Request | None:
        url = f"{self.base_url}/{self._root}/requests/{{remote_id}}{suffix}"
        return self.by_remote_id(job, method, url)

    def status_request(self, job: Job) -> Request | None:
        return self._request(job, "/status", "GET")

    def result_request(self, job: Job) -> Request | None:
        """The request for a completed request's output."""
        return self._request(job, "", "GET")

    def read_status(self, job: Job, body: bytes) -> ParsedPayload | Request:
        answer = json_object(body, "fal's status")
        status = answer.get("status")
        if status not in _STATUS:
            raise PayloadError(f"status must be one of {', '.join(_STATUS)}; got {status!r:.40}")
        if status == "COMPLETED":
            follow = self.result_request(job)
            assert follow is not None
            return follow  # the output is in the result, read by read_result
        return ParsedPayload(JobUpdate(_STATUS[status]))

    def read_result(self, job: Job, body: bytes) -> ParsedPayload:
        """A completed request's output (the body of `result_request`)."""
        return ParsedPayload(JobUpdate(JobStatus.SUCCEEDED, output=parse_body(body)))

    def read_result_error(self, job: Job, status: int, body: bytes) -> ParsedPayload:
        """A failed request: its status says ``COMPLETED`` and its result answers 4xx."""
        try:
            data = json_object(body, "fal's result")
        except PayloadError:
            data = {"error": f"HTTP {status}"}
        message = _error_message({"payload": data, "error": f"HTTP {status}"})
        return ParsedPayload(
            JobUpdate(JobStatus.FAILED, error=JobError("fal_error", message[:2000]))
        )

    def cancel_request(self, job: Job) -> Request | None:
        return self._request(job, "/cancel", "PUT")

    def read_cancel(self, job: Job, body: bytes) -> JobUpdate | None:
        return None  # CANCELLATION_REQUESTED: the webhook or a poll tells the end

    def parse_callback(self, body: bytes) -> ParsedPayload:
        return parse_fal(parse_body(body))

    # -- signatures --

    def load_keys(self) -> None:
        """Fetch fal's public keys now (at start-up: an async app then never fetches
        them inside a request). Raises `SignatureError` when they cannot be fetched."""
        if not self._static:
            with self._lock:
                self._keys = ()
                self._fetched_at = None
            self._current_keys(refetch=False)

    def _current_keys(self, *, refetch: bool) -> tuple[bytes, ...]:
        if self._static:
            return self._keys
        with self._lock:
            now = time.monotonic()
            stale = self._fetched_at is None or (
                refetch and now - self._fetched_at >= _REFETCH_AFTER
            )
            if stale:
                try:
                    self._keys = _public_keys(self._fetch(self._jwks_url))
                except Exception as exc:  # network, HTTP or JSON: no keys to check with
                    if not self._keys:
                        raise SignatureError(
                            f"fal's public keys could not be fetched: {exc}"
                        ) from None
                self._fetched_at = now
            return self._keys

    def verify_callback(self, headers: Mapping[str, object], body: bytes, now: float) -> str:
        values = []
        for name in _HEADERS:
            value = headers.get(name)
            if not isinstance(value, str) or not value or not value.isascii():
                raise SignatureError(f"missing or malformed {name} header")
            values.append(value)
        request_id, user_id, stamp, signature_hex = values
        if not stamp.isdigit() or abs(now - int(stamp)) > self._tolerance:
            raise SignatureError("x-fal-webhook-timestamp is missing or outside the tolerance")
        try:
            signature = bytes.fromhex(signature_hex)
        except ValueError:
            raise SignatureError("x-fal-webhook-signature is not hex") from None
        message = "\n".join((request_id, user_id, stamp, hashlib.sha256(body).hexdigest())).encode()
        # If no cached key verifies, fal may have rotated its keys: fetch them again
        # (rate-limited) and try once more.
        if not any(
            _verifies(k, signature, message) for k in self._current_keys(refetch=False)
        ) and not any(_verifies(k, signature, message) for k in self._current_keys(refetch=True)):
            raise SignatureError("no matching fal signature")
        # fal retries a webhook with the same request and body: that is the delivery.
        return "fal:" + hashlib.sha256(request_id.encode() + b"\n" + body).hexdigest()[:48]


def _verifies(key: bytes, signature: bytes, message: bytes) -> bool:
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "fal's ED25519 signatures need cryptography: pip install 'jobhook[ed25519]'",
            name=exc.name,
        ) from exc
    try:
        Ed25519PublicKey.from_public_bytes(key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True


def sign_fal_webhook(
    private_key: bytes, body: bytes, *, request_id: str, user_id: str, timestamp: int
) -> dict[str, str]:
    """The ``x-fal-webhook-*`` headers fal would send, signed with an ED25519 private
    key (32 bytes): for tests, with a matching ``jwks=``. See `jwks_for`."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    message = "\n".join(
        (request_id, user_id, str(timestamp), hashlib.sha256(body).hexdigest())
    ).encode()
    signature = Ed25519PrivateKey.from_private_bytes(private_key).sign(message)
    return dict(zip(_HEADERS, (request_id, user_id, str(timestamp), signature.hex()), strict=True))


def jwks_for(private_keys: Sequence[bytes]) -> dict[str, Any]:
    """A JWKS document with the public halves of ``private_keys`` (for tests)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    keys = []
    for private in private_keys:
        public = Ed25519PrivateKey.from_private_bytes(private).public_key()
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        x = base64.urlsafe_b64encode(raw).rstrip(b"=").decode()
        keys.append({"kty": "OKP", "crv": "Ed25519", "x": x})
    return {"keys": keys}


__all__ += ["jwks_for", "sign_fal_webhook"]
