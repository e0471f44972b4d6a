"""Standard Webhooks v1 signing and verification, and per-job callback tokens.

A signature is ``v1,<base64 HMAC-SHA256 of "{webhook-id}.{webhook-timestamp}.{body}">``
under the secret's decoded key; secrets look like ``whsec_<base64>``. The
``webhook-signature`` header may carry several space-separated signatures (key rotation
on the sender's side); a verifier may hold several secrets (rotation on ours). Everything
here is pure: no I/O, the clock is a parameter.

Every problem with a delivery's headers raises `SignatureError`, never ``ValueError`` or
``binascii.Error``; a bad *secret* is a configuration mistake and raises
`ValidationError` (a ``ValueError``) with a message that shows what a secret looks like.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Protocol

from jobhook._ids import DELIVERY_ID_RULE, is_delivery_id
from jobhook.exceptions import SignatureError, ValidationError

__all__ = [
    "Headers",
    "Secrets",
    "callback_token",
    "delivery_id_header",
    "new_webhook_secret",
    "parse_secrets",
    "parse_token_secrets",
    "sign_webhook",
    "verified_delivery_id",
    "verify_callback_token",
    "verify_webhook",
]

#: One secret (``"whsec_…"`` text or the raw key as bytes) or several, for rotation.
Secrets = str | bytes | Iterable[str | bytes]


class Headers(Protocol):
    """Anything with ``items()`` of name/value pairs: a dict, or a framework's headers."""

    def items(self) -> Iterable[tuple[str, str]]: ...


_PREFIX = "whsec_"
_EXAMPLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
_SECRET_SHAPE = (
    f"a webhook secret is 'whsec_' followed by base64 of at least 1 byte, e.g. {_EXAMPLE!r} "
    "(or the raw key as bytes)"
)
# Integer Unix seconds only: int() would also take " 12", "+12", "1_2" and non-ASCII digits.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_TOKEN_CONTEXT = b"jobhook-callback-token:"


def _decode_secret(secret: str | bytes) -> bytes:
    if isinstance(secret, bytes):
        if not secret:
            raise ValidationError(f"the webhook secret is empty; {_SECRET_SHAPE}")
        return secret
    if not isinstance(secret, str):
        raise ValidationError(
            f"a webhook secret must be a str or bytes, got {type(secret).__name__}; {_SECRET_SHAPE}"
        )
    if not secret.startswith(_PREFIX):
        # Never echo the value: it may be a real secret in the wrong format.
        raise ValidationError(f"the webhook secret does not start with 'whsec_'; {_SECRET_SHAPE}")
    encoded = secret[len(_PREFIX) :]
    try:
        # Senders often strip the padding; restore it rather than refuse the key.
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ValidationError(
            f"the webhook secret is not valid base64 after 'whsec_'; {_SECRET_SHAPE}"
        ) from None
    if not key:
        raise ValidationError(f"the webhook secret is empty; {_SECRET_SHAPE}")
    return key


def parse_secrets(secrets: Secrets) -> tuple[bytes, ...]:
    """Decode one secret or several into HMAC keys, in the given order.

    Raises `ValidationError` for an empty list, an empty secret or one that is not
    ``whsec_`` + base64; the message says what a secret looks like and never shows it.
    """
    if isinstance(secrets, (str, bytes)):
        return (_decode_secret(secrets),)
    keys = tuple(_decode_secret(s) for s in secrets)
    if not keys:
        raise ValidationError(f"no webhook secret given; {_SECRET_SHAPE}")
    return keys


def new_webhook_secret(nbytes: int = 32) -> str:
    """A fresh random secret in the ``whsec_<base64>`` form."""
    return _PREFIX + base64.b64encode(os.urandom(nbytes)).decode("ascii")


def _signature(key: bytes, msg_id: str, timestamp: str, body: bytes) -> bytes:
    signed = b"".join((msg_id.encode("ascii"), b".", timestamp.encode("ascii"), b".", body))
    return hmac.new(key, signed, hashlib.sha256).digest()


def _as_bytes(body: bytes | bytearray | memoryview | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def sign_webhook(
    secret: str | bytes,
    body: bytes | str,
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Sign ``body`` and return the three Standard Webhooks headers.

    ``msg_id`` defaults to a fresh ``msg_<hex>`` id and ``timestamp`` to now (Unix
    seconds). A ``str`` body is signed as its UTF-8 bytes: send exactly those bytes.
    Raises `ValidationError` for a malformed secret, a non-ASCII or over-long
    ``msg_id`` (at most 255 visible ASCII characters) or a negative timestamp.
    """
    key = parse_secrets(secret)[0]
    if msg_id is None:
        msg_id = f"msg_{uuid.uuid4().hex}"
    if not is_delivery_id(msg_id):
        raise ValidationError(f"msg_id: {DELIVERY_ID_RULE}, got {msg_id!r:.80}")
    if timestamp is None:
        timestamp = int(time.time())
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValidationError(f"timestamp must be non-negative Unix seconds, got {timestamp!r}")
    stamp = str(timestamp)
    digest = _signature(key, msg_id, stamp, _as_bytes(body))
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": "v1," + base64.b64encode(digest).decode("ascii"),
    }


def _lowered(headers: Headers) -> dict[str, object]:
    # One pass over the headers; the last of several same-named headers wins.
    return {k.lower(): v for k, v in headers.items() if isinstance(k, str)}


def _header(headers: Mapping[str, object], name: str) -> str:
    value = headers.get(name)
    if value is None:
        raise SignatureError(f"missing {name} header")
    if not isinstance(value, str):
        raise SignatureError(f"{name} header is not text")
    value = value.strip()
    if not value:
        raise SignatureError(f"empty {name} header")
    return value


def _signatures(header: str) -> list[bytes]:
    """The decoded ``v1`` signatures of a ``webhook-signature`` header."""
    found: list[bytes] = []
    versions: set[str] = set()
    for entry in header.split():
        version, comma, encoded = entry.partition(",")
        if not comma or not version or not encoded:
            raise SignatureError(
                "malformed webhook-signature header: expected space-separated 'v1,<base64>' entries"
            )
        if version != "v1":
            # Other schemes (e.g. v1a, asymmetric) may sit next to v1; skip them.
            versions.add(version[:16])
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise SignatureError("malformed webhook-signature header: bad base64") from None
    if not found:
        seen = ", ".join(sorted(versions))
        raise SignatureError(f"no v1 signature in webhook-signature header (found: {seen})")
    return found


def verify_webhook(
    secret_or_secrets: Secrets,
    headers: Headers,
    body: bytes | str,
    *,
    tolerance: float | None = 300,
    now: float | None = None,
) -> None:
    """Check a delivery's Standard Webhooks signature; return nothing or raise.

    ``headers`` are matched case-insensitively; ``body`` must be the raw bytes as
    received. ``tolerance`` is the largest allowed distance in seconds between the
    ``webhook-timestamp`` and ``now`` (default: the current time); ``None`` disables
    the check, for deliberate replays of old deliveries. The delivery is accepted when
    any ``v1`` signature matches any secret (compared in constant time).

    Raises `SignatureError` for a missing, empty or malformed header, an unknown
    signature version, a timestamp outside the tolerance or no matching signature;
    `ValidationError` for a malformed secret.
    """
    verified_delivery_id(
        parse_secrets(secret_or_secrets), _lowered(headers), body, tolerance=tolerance, now=now
    )


def delivery_id_header(headers: Mapping[str, object]) -> str | None:
    """The ``webhook-id`` of lower-cased ``headers`` exactly as sent, or ``None``.

    Raises `SignatureError` for one that is not a well-formed delivery id. Nothing is
    stripped: the id that is signed, checked and recorded is the one that came.
    """
    value = headers.get("webhook-id")
    if value is None:
        return None
    if not is_delivery_id(value):
        raise SignatureError(f"malformed webhook-id header: {DELIVERY_ID_RULE}")
    assert isinstance(value, str)
    return value


def verified_delivery_id(
    keys: tuple[bytes, ...],
    headers: Mapping[str, object],
    body: bytes | str,
    *,
    tolerance: float | None,
    now: float | None,
) -> str:
    """`verify_webhook` for decoded keys and lower-cased headers; returns the
    ``webhook-id`` that the matching signature covers."""
    msg_id = delivery_id_header(headers)
    if msg_id is None:
        raise SignatureError("missing webhook-id header")
    stamp = _header(headers, "webhook-timestamp")
    signatures = _signatures(_header(headers, "webhook-signature"))
    if not _TIMESTAMP.fullmatch(stamp):
        raise SignatureError("malformed webhook-timestamp header: expected Unix seconds")
    if tolerance is not None:
        current = time.time() if now is None else now
        age = current - int(stamp)
        if age > tolerance:
            raise SignatureError("webhook-timestamp is too old (outside the tolerance)")
        if -age > tolerance:
            raise SignatureError("webhook-timestamp is too far in the future")
    data = _as_bytes(body)
    matched = False
    for key in keys:
        expected = _signature(key, msg_id, stamp, data)
        for candidate in signatures:
            # No early exit: the time taken says nothing about which entry matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        raise SignatureError("no matching signature")
    return msg_id


def parse_token_secrets(token_secret: Secrets) -> tuple[bytes, ...]:
    """The HMAC keys of one callback-token secret or several (str is UTF-8 encoded).

    Raises `ValidationError` for an empty list or an empty secret.
    """
    items: Iterable[str | bytes]
    items = (token_secret,) if isinstance(token_secret, (str, bytes)) else token_secret
    keys: list[bytes] = []
    for item in items:
        if isinstance(item, str):
            item = item.encode("utf-8")
        if not isinstance(item, bytes) or not item:
            raise ValidationError("a callback token secret must be a non-empty str or bytes")
        keys.append(item)
    if not keys:
        raise ValidationError("no callback token secret given")
    return tuple(keys)


def _token(key: bytes, job_id: str) -> str:
    # A fixed context keeps these tokens distinct from any other HMAC under the key.
    message = _TOKEN_CONTEXT + job_id.encode("utf-8", "surrogatepass")
    digest = hmac.new(key, message, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def callback_token(token_secret: Secrets, job_id: str) -> str:
    """The per-job token that goes into a callback URL as ``?token=…``.

    A URL-safe, unpadded base64 HMAC-SHA256 of the job id under the app's token
    secret (the first one, when several are given for rotation). Raises
    `ValidationError` for an empty secret.
    """
    return _token(parse_token_secrets(token_secret)[0], job_id)


def verify_callback_token(token_secret: Secrets, job_id: str, token: str | None) -> None:
    """Check that ``token`` was made by `callback_token` for ``job_id``.

    Any of several secrets may match (rotation); the comparison is constant-time.
    Raises `SignatureError` for a missing or wrong token, `ValidationError` for an
    empty secret.
    """
    keys = parse_token_secrets(token_secret)
    if not token or not isinstance(token, str):
        raise SignatureError("missing callback token")
    if not token.isascii():
        raise SignatureError("wrong callback token")
    given = token.encode("ascii")
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(_token(key, job_id).encode("ascii"), given)
    if not matched:
        raise SignatureError("wrong callback token")
