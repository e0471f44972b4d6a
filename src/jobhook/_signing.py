"""Standard Webhooks signing and verification (``v1`` and ``v1a``), and per-job callback tokens.

Both schemes sign the same content, ``"{webhook-id}.{webhook-timestamp}.{body}"``:

- ``v1``: ``v1,<base64 HMAC-SHA256>`` under a shared secret, ``whsec_<base64 key>``.
- ``v1a``: ``v1a,<base64 ED25519 signature>``. The sender signs with a secret key,
  ``whsk_<base64>``; receivers verify with its public key, ``whpk_<base64 of 32 bytes>``,
  and need no secret at all.

What the spec says and what it leaves open (read for this module):

- spec/standard-webhooks.md in standard-webhooks/standard-webhooks ("Signature scheme"):
  ``v1a`` is ed25519 over the same content, keys are a "standard ed25519 key pair",
  base64 with the ``whsk_`` / ``whpk_`` prefixes. It does not say whether ``whsk_``
  holds the 32-byte seed or 64 bytes.
- svix/svix-webhooks, the implementation the spec came from (README "Configuring the
  keys"; server/svix-server/src/core/cryptography.rs): ``whsk_${base64(private_key +
  public_key)}``, the 32-byte seed then the 32-byte public key. Its test
  ``test_asymmetric_key_signing`` (src/worker.rs) signs msg_p5jXN8AQM9LWM0D4loKWxJek /
  1614265330 / ``{"test": 2432232314}`` to the ``v1a,hnO3f9T8…`` shown in the spec's
  example header. `new_webhook_keypair` writes this 64-byte form.
- The reference libraries' v1a pull requests (standard-webhooks#304 Python, #253 Go)
  read ``whsk_`` as the bare 32-byte seed; #308 (JavaScript) writes 64 bytes. Both
  forms are accepted here; a 64-byte key whose public half is not its seed's is refused.

Several space-separated signatures may come in one ``webhook-signature`` header (key
rotation on the sender's side, or both schemes at once); a verifier may hold several
keys of either scheme (rotation on ours, also from one scheme to the other). A
delivery is accepted when any entry matches any key of its scheme; entries of a scheme
the verifier holds no key for are skipped, as unknown versions are.

Svix sends the same headers as ``svix-id``, ``svix-timestamp`` and ``svix-signature``;
each is read when its ``webhook-*`` name is absent. A delivery carrying both ids must
carry the same id twice: one delivery has one dedupe key.

Everything here is pure: no I/O, the clock is a parameter. ED25519 needs the
``cryptography`` package (``pip install 'jobhook[ed25519]'``), imported only when a
``whsk_`` / ``whpk_`` key is used. Every problem with a delivery's headers raises
`SignatureError`, never ``ValueError`` or ``binascii.Error``; a bad *key* is a
configuration mistake and raises `ValidationError` (a ``ValueError``) with a message
that shows what a key looks like and never the value given.
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
from types import ModuleType
from typing import TYPE_CHECKING, Protocol

import attrs

from jobhook._ids import DELIVERY_ID_RULE, is_delivery_id
from jobhook.exceptions import SignatureError, ValidationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "Ed25519Key",
    "Headers",
    "Secrets",
    "WebhookKey",
    "callback_token",
    "delivery_id_header",
    "new_webhook_keypair",
    "new_webhook_secret",
    "parse_secrets",
    "parse_token_secrets",
    "sign_webhook",
    "verified_delivery_id",
    "verify_callback_token",
    "verify_webhook",
]

#: One key (``"whsec_…"``, ``"whpk_…"`` or ``"whsk_…"`` text, or a raw HMAC key as
#: bytes) or several, for rotation.
Secrets = str | bytes | Iterable[str | bytes]


class Headers(Protocol):
    """Anything with ``items()`` of name/value pairs: a dict, or a framework's headers."""

    def items(self) -> Iterable[tuple[str, str]]: ...


@attrs.frozen
class Ed25519Key:
    """A ``v1a`` verification key: an ED25519 public key, loaded once."""

    #: The 32 raw bytes of the public key (not a secret).
    public: bytes
    verifier: Ed25519PublicKey = attrs.field(eq=False, repr=False)

    def verifies(self, signature: bytes, content: bytes) -> bool:
        """Whether ``signature`` is this key's signature of ``content``."""
        from cryptography.exceptions import InvalidSignature

        if len(signature) != _ED25519_SIGNATURE_BYTES:
            return False
        try:
            self.verifier.verify(signature, content)
        except InvalidSignature:
            return False
        return True


#: A decoded key: the HMAC key of a ``whsec_`` secret (``v1``) or an `Ed25519Key` (``v1a``).
WebhookKey = bytes | Ed25519Key

_PREFIX = "whsec_"
_SECRET_KEY_PREFIX = "whsk_"
_PUBLIC_KEY_PREFIX = "whpk_"
_EXAMPLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
# Svix's published example public key (README), safe to show: it is not a secret.
_PUBLIC_EXAMPLE = "whpk_1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4="
_SECRET_SHAPE = (
    f"a webhook secret is 'whsec_' followed by base64 of at least 1 byte, e.g. {_EXAMPLE!r} "
    "(or the raw key as bytes); an ED25519 key is 'whpk_' (public) or 'whsk_' (secret) "
    "followed by base64"
)
_KEY_SHAPE = (
    "an ED25519 key is 'whpk_' followed by base64 of the 32-byte public key, e.g. "
    f"{_PUBLIC_EXAMPLE!r}, or 'whsk_' followed by base64 of the 64-byte secret key "
    "(32-byte seed, then the public key) or of the 32-byte seed alone"
)
_ED25519_BYTES = 32
_ED25519_SIGNATURE_BYTES = 64
# Each v1a entry costs a signature check per key: bound what one header can ask for.
_MAX_V1A_SIGNATURES = 16
# Integer Unix seconds only: int() would also take " 12", "+12", "1_2" and non-ASCII digits.
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_TOKEN_CONTEXT = b"jobhook-callback-token:"
#: Svix's names for the three Standard Webhooks headers (Svix signs the same way).
_SVIX_NAMES = {
    "webhook-id": "svix-id",
    "webhook-timestamp": "svix-timestamp",
    "webhook-signature": "svix-signature",
}


def _ed25519() -> ModuleType:
    try:
        import cryptography.hazmat.primitives.asymmetric.ed25519 as ed25519
    except ModuleNotFoundError as exc:
        raise ModuleNotFoundError(
            "Standard Webhooks v1a (ED25519, 'whsk_' / 'whpk_' keys) needs the cryptography "
            "package: pip install 'jobhook[ed25519]'",
            name=exc.name,
        ) from exc
    return ed25519


def _b64decode(encoded: str, prefix: str, shape: str) -> bytes:
    try:
        # Senders often strip the padding; restore it rather than refuse the key.
        return base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except (binascii.Error, ValueError):
        what = "secret" if prefix == _PREFIX else "key"
        raise ValidationError(
            f"the webhook {what} is not valid base64 after {prefix!r}; {shape}"
        ) from None


def _private_key(secret: str) -> Ed25519PrivateKey:
    """The ED25519 private key of a ``whsk_`` secret key (32-byte seed or 64 bytes)."""
    raw = _b64decode(secret[len(_SECRET_KEY_PREFIX) :], _SECRET_KEY_PREFIX, _KEY_SHAPE)
    if len(raw) not in (_ED25519_BYTES, 2 * _ED25519_BYTES):
        raise ValidationError(
            f"the 'whsk_' key decodes to {len(raw)} bytes, not 64 or 32; {_KEY_SHAPE}"
        )
    private: Ed25519PrivateKey = _ed25519().Ed25519PrivateKey.from_private_bytes(
        raw[:_ED25519_BYTES]
    )
    if (
        len(raw) > _ED25519_BYTES
        and private.public_key().public_bytes_raw() != raw[_ED25519_BYTES:]
    ):
        raise ValidationError(
            "the 'whsk_' key's last 32 bytes are not the public key of its first 32 "
            f"(a damaged or mixed-up key); {_KEY_SHAPE}"
        )
    return private


def _public_key(public: bytes) -> Ed25519Key:
    try:
        verifier: Ed25519PublicKey = _ed25519().Ed25519PublicKey.from_public_bytes(public)
    except ValueError:  # a backend that checks the point
        raise ValidationError(f"the ED25519 public key is not a valid key; {_KEY_SHAPE}") from None
    return Ed25519Key(public, verifier)


def _decode_secret(secret: str | bytes) -> WebhookKey:
    if isinstance(secret, bytes):
        if not secret:
            raise ValidationError(f"the webhook secret is empty; {_SECRET_SHAPE}")
        return secret
    if not isinstance(secret, str):
        raise ValidationError(
            f"a webhook secret must be a str or bytes, got {type(secret).__name__}; {_SECRET_SHAPE}"
        )
    if secret.startswith(_PUBLIC_KEY_PREFIX):
        raw = _b64decode(secret[len(_PUBLIC_KEY_PREFIX) :], _PUBLIC_KEY_PREFIX, _KEY_SHAPE)
        if len(raw) != _ED25519_BYTES:
            raise ValidationError(
                f"the 'whpk_' key decodes to {len(raw)} bytes, not 32; {_KEY_SHAPE}"
            )
        return _public_key(raw)
    if secret.startswith(_SECRET_KEY_PREFIX):
        # A receiver given the secret key keeps only its public half.
        return _public_key(_private_key(secret).public_key().public_bytes_raw())
    if not secret.startswith(_PREFIX):
        # Never echo the value: it may be a real secret in the wrong format.
        raise ValidationError(
            f"the webhook secret does not start with 'whsec_', 'whpk_' or 'whsk_'; {_SECRET_SHAPE}"
        )
    key = _b64decode(secret[len(_PREFIX) :], _PREFIX, _SECRET_SHAPE)
    if not key:
        raise ValidationError(f"the webhook secret is empty; {_SECRET_SHAPE}")
    return key


def parse_secrets(secrets: Secrets) -> tuple[WebhookKey, ...]:
    """Decode one key or several, in the given order: HMAC keys as bytes (``whsec_``,
    or raw bytes), ED25519 keys as `Ed25519Key` (``whpk_``, or the public half of a
    ``whsk_`` secret key).

    Raises `ValidationError` for an empty list, an empty key or one that is not one of
    those forms; the message says what a key looks like and never shows it. Raises
    `ModuleNotFoundError` for an ED25519 key when ``cryptography`` is not installed.
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


def new_webhook_keypair() -> tuple[str, str]:
    """A fresh ED25519 key pair for ``v1a``: ``(whsk_…, whpk_…)``.

    The sender alone keeps the secret key (64 bytes: seed, then public key, as Svix
    writes it); receivers are given the public key, which is not a secret. Raises
    `ModuleNotFoundError` when ``cryptography`` is not installed.
    """
    private: Ed25519PrivateKey = _ed25519().Ed25519PrivateKey.generate()
    public = private.public_key().public_bytes_raw()
    secret = base64.b64encode(private.private_bytes_raw() + public).decode("ascii")
    return _SECRET_KEY_PREFIX + secret, _PUBLIC_KEY_PREFIX + base64.b64encode(public).decode()


def _content(msg_id: str, timestamp: str, body: bytes) -> bytes:
    return b"".join((msg_id.encode("ascii"), b".", timestamp.encode("ascii"), b".", body))


def _as_bytes(body: bytes | bytearray | memoryview | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _signing_key(secret: str | bytes) -> bytes | Ed25519PrivateKey:
    if isinstance(secret, str) and secret.startswith(_SECRET_KEY_PREFIX):
        return _private_key(secret)
    key = parse_secrets(secret)[0]
    if isinstance(key, Ed25519Key):
        raise ValidationError(
            "a 'whpk_' public key only verifies: sign with a 'whsec_' secret or with the "
            "'whsk_' secret key of the pair"
        )
    return key


def sign_webhook(
    secret: str | bytes,
    body: bytes | str,
    *,
    msg_id: str | None = None,
    timestamp: int | None = None,
) -> dict[str, str]:
    """Sign ``body`` and return the three Standard Webhooks headers.

    A ``whsec_`` secret (or raw key bytes) signs ``v1`` (HMAC-SHA256); a ``whsk_``
    secret key signs ``v1a`` (ED25519). ``msg_id`` defaults to a fresh ``msg_<hex>``
    id and ``timestamp`` to now (Unix seconds). A ``str`` body is signed as its UTF-8
    bytes: send exactly those bytes. Raises `ValidationError` for a malformed key, a
    ``whpk_`` public key (it cannot sign), a non-ASCII or over-long ``msg_id`` (at most
    255 visible ASCII characters) or a negative timestamp.
    """
    key = _signing_key(secret)
    if msg_id is None:
        msg_id = f"msg_{uuid.uuid4().hex}"
    if not is_delivery_id(msg_id):
        raise ValidationError(f"msg_id: {DELIVERY_ID_RULE}, got {msg_id!r:.80}")
    if timestamp is None:
        timestamp = int(time.time())
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or timestamp < 0:
        raise ValidationError(f"timestamp must be non-negative Unix seconds, got {timestamp!r}")
    stamp = str(timestamp)
    content = _content(msg_id, stamp, _as_bytes(body))
    if isinstance(key, bytes):
        signature = (
            "v1," + base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
        )
    else:
        signature = "v1a," + base64.b64encode(key.sign(content)).decode("ascii")
    return {"webhook-id": msg_id, "webhook-timestamp": stamp, "webhook-signature": signature}


def _lowered(headers: Headers) -> dict[str, object]:
    # One pass over the headers; the last of several same-named headers wins.
    return {k.lower(): v for k, v in headers.items() if isinstance(k, str)}


def _header(headers: Mapping[str, object], name: str) -> str:
    """The ``webhook-*`` header ``name``, or its Svix twin when it is absent."""
    value = headers.get(name)
    if value is None and headers.get(_SVIX_NAMES[name]) is not None:
        name = _SVIX_NAMES[name]
        value = headers[name]
    if value is None:
        raise SignatureError(f"missing {name} header")
    if not isinstance(value, str):
        raise SignatureError(f"{name} header is not text")
    value = value.strip()
    if not value:
        raise SignatureError(f"empty {name} header")
    return value


def _signatures(
    header: str, *, hmac_keys: bool, ed25519_keys: bool
) -> tuple[list[bytes], list[bytes]]:
    """The decoded ``v1`` and ``v1a`` signatures of a signature header, each only when
    there is a key of its scheme to check it with."""
    v1: list[bytes] = []
    v1a: list[bytes] = []
    wanted = {"v1": v1} if hmac_keys else {}
    if ed25519_keys:
        wanted["v1a"] = v1a
    versions: set[str] = set()
    for entry in header.split():
        version, comma, encoded = entry.partition(",")
        if not comma or not version or not encoded:
            raise SignatureError(
                "malformed webhook-signature header: expected space-separated "
                "'v1,<base64>' or 'v1a,<base64>' entries"
            )
        found = wanted.get(version)
        if found is None:
            # Other schemes (or one we hold no key for) may sit next to ours; skip them.
            versions.add(version[:16])
            continue
        try:
            found.append(base64.b64decode(encoded, validate=True))
        except (binascii.Error, ValueError):
            raise SignatureError("malformed webhook-signature header: bad base64") from None
    if len(v1a) > _MAX_V1A_SIGNATURES:
        raise SignatureError(
            f"webhook-signature header has more than {_MAX_V1A_SIGNATURES} v1a signatures"
        )
    if not v1 and not v1a:
        expected = " or ".join(wanted)
        seen = ", ".join(sorted(versions))
        raise SignatureError(f"no {expected} signature in webhook-signature header (found: {seen})")
    return v1, v1a


def verify_webhook(
    secret_or_secrets: Secrets,
    headers: Headers,
    body: bytes | str,
    *,
    tolerance: float | None = 300,
    now: float | None = None,
) -> None:
    """Check a delivery's Standard Webhooks signature; return nothing or raise.

    ``secret_or_secrets`` holds ``whsec_`` secrets (``v1``) and ``whpk_`` public keys
    (``v1a``; a ``whsk_`` secret key verifies with its public half), in any mix.
    ``headers`` are matched case-insensitively, under the ``webhook-*`` names or Svix's
    ``svix-*`` ones; ``body`` must be the raw bytes as received. ``tolerance`` is the
    largest allowed distance in seconds between the timestamp and ``now`` (default: the
    current time); ``None`` disables the check, for deliberate replays of old
    deliveries. The delivery is accepted when any signature matches any key of its
    scheme (HMACs compared in constant time).

    Raises `SignatureError` for a missing, empty or malformed header, ``webhook-id`` and
    ``svix-id`` that differ, no signature of a scheme held, a timestamp outside the
    tolerance or no matching signature; `ValidationError` for a malformed key.
    """
    verified_delivery_id(
        parse_secrets(secret_or_secrets), _lowered(headers), body, tolerance=tolerance, now=now
    )


def delivery_id_header(headers: Mapping[str, object]) -> str | None:
    """The ``webhook-id`` (else ``svix-id``) of lower-cased ``headers`` exactly as sent,
    or ``None``.

    Raises `SignatureError` for one that is not a well-formed delivery id, or when both
    headers are present and differ. Nothing is stripped: the id that is signed, checked
    and recorded is the one that came.
    """
    name = "webhook-id"
    value = headers.get(name)
    svix_id = headers.get("svix-id")
    if value is None:
        name, value = "svix-id", svix_id
    if value is None:
        return None
    if not is_delivery_id(value):
        raise SignatureError(f"malformed {name} header: {DELIVERY_ID_RULE}")
    if svix_id is not None and svix_id != value:
        raise SignatureError("the webhook-id and svix-id headers differ: a delivery has one id")
    assert isinstance(value, str)
    return value


def verified_delivery_id(
    keys: tuple[WebhookKey, ...],
    headers: Mapping[str, object],
    body: bytes | str,
    *,
    tolerance: float | None,
    now: float | None,
) -> str:
    """`verify_webhook` for decoded keys and lower-cased headers; returns the
    delivery id (``webhook-id`` or ``svix-id``) that the matching signature covers."""
    msg_id = delivery_id_header(headers)
    if msg_id is None:
        raise SignatureError("missing webhook-id header")
    stamp = _header(headers, "webhook-timestamp")
    hmac_keys = [key for key in keys if isinstance(key, bytes)]
    ed25519_keys = [key for key in keys if isinstance(key, Ed25519Key)]
    v1, v1a = _signatures(
        _header(headers, "webhook-signature"),
        hmac_keys=bool(hmac_keys),
        ed25519_keys=bool(ed25519_keys),
    )
    if not _TIMESTAMP.fullmatch(stamp):
        raise SignatureError("malformed webhook-timestamp header: expected Unix seconds")
    if tolerance is not None:
        current = time.time() if now is None else now
        age = current - int(stamp)
        if age > tolerance:
            raise SignatureError("webhook-timestamp is too old (outside the tolerance)")
        if -age > tolerance:
            raise SignatureError("webhook-timestamp is too far in the future")
    content = _content(msg_id, stamp, _as_bytes(body))
    matched = False
    for key in hmac_keys if v1 else ():
        expected = hmac.new(key, content, hashlib.sha256).digest()
        for candidate in v1:
            # No early exit: the time taken says nothing about which entry matched.
            matched |= hmac.compare_digest(expected, candidate)
    if not matched:
        # Public keys: nothing secret for the time taken to tell.
        matched = any(key.verifies(sig, content) for key in ed25519_keys for sig in v1a)
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
