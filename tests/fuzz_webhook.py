"""A seeded fuzz harness for `WebhookHandler`: generated deliveries in, invariants checked.

Run it alone (``python tests/fuzz_webhook.py --cases 100000 --stores memory,sqlite,postgres``)
or import `run` (``tests/test_fuzz_webhook.py`` does, with a small count). Each store runs
in two modes: ``sync`` (`WebhookHandler.handle` on the sync store) and ``async`` (``await
WebhookHandler.ahandle``, each delivery going through the store's async twin, or, on
PostgreSQL, through one of two twins (psycopg and asyncpg), or through the sync store on
the same data, whose calls then run in a worker thread).

The deliveries mix: valid signed or token-authenticated ones for existing and unknown
jobs; replays of captured deliveries, exact, re-signed with a new timestamp, or with the
``webhook-id`` mutated by whitespace, control or Unicode characters (re-signed or not);
tampered bodies; missing, duplicated, non-text and huge headers; timestamps outside the
tolerance or malformed; bodies that are not UTF-8, not JSON, not objects, of the wrong
shape, nested 100,000 deep, with huge numbers, over-long strings, NaN, unknown statuses or
progress out of range; route job ids unlike the payload's; right, wrong and missing
callback tokens; payloads without ``job_id``, or naming only a remote id; deliveries
without ``webhook-id``, or with Svix's header names. Handlers: signed (several secrets,
and ED25519 ``v1a`` next to ``v1`` when the cryptography package is there), token-only,
both, Replicate payloads with tokens, and a small ``max_body_bytes``.

Checked for every answer: no exception escapes, no 500, no 503 (the store is up), the status
is one of 200/400/401/404/413, the body is JSON with an ``outcome``, the status is the one
the design's table gives for the delivery's category (where it says one), and a replay of
an accepted delivery never applies again. At the end: as many outbox events as ``applied``
answers (per job too), every job's event versions are 2..n+1 with no gap or double, no job
moved against the lifecycle rules, and every 404 left a dead letter. With several stores,
every store must give the same answers as the first one.

The same seed gives the same deliveries on every store; the seed is printed. Each failed
invariant is reported with its first case and, where it reproduces on a fresh store, a
stand-alone snippet.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import hashlib
import hmac
import itertools
import json
import logging
import os
import random
import sys
import tempfile
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from jobhook import JobExistsError, JobStatus, WebhookHandler, WebhookResponse, sign_webhook
from jobhook._signing import callback_token

NOW = 1_700_000_000
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
ROTATED = "whsec_cm90YXRlZC1rZXktZm9yLWZ1enppbmc="  # the handler's second secret
WRONG = "whsec_c2VjcmV0LWtleS0y"
TOKEN_SECRET = "fuzz-callback-token-secret"


def _ed25519_keys() -> tuple[str, str]:
    """A fixed ED25519 key pair (``whsk_`` seed, ``whpk_`` public key), or two empty
    strings without the cryptography package."""
    try:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ModuleNotFoundError:
        return "", ""
    seed = hashlib.sha256(b"jobhook fuzz").digest()
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    return "whsk_" + base64.b64encode(seed).decode(), "whpk_" + base64.b64encode(public).decode()


SIGNING_KEY, PUBLIC_KEY = _ed25519_keys()
STORES = ("memory", "sqlite", "postgres")
MODES = ("sync", "async")
ALLOWED = frozenset({200, 400, 401, 404, 413})
OK, MISSING, BAD, UNAUTHORIZED = (frozenset({s}) for s in (200, 404, 400, 401))
RANK = {s.value: s.rank for s in JobStatus}
TERMINAL = {s.value for s in JobStatus if s.terminal}
ID_HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
SVIX_NAMES = {name: name.replace("webhook-", "svix-") for name in ID_HEADERS}
WINDOW = 300  # jobs in play at any one time (see Generator.target)


def clock() -> float:
    return float(NOW)


@dataclass(frozen=True)
class Config:
    """One handler configuration."""

    name: str
    secret: bool
    tokens: bool
    fmt: str = "jobhook"
    max_body: int = 1_048_576
    v1a: bool = False  # the handler also holds an ED25519 public key; senders sign v1a

    def options(self) -> dict[str, Any]:
        options: dict[str, Any] = {"clock": clock}
        if self.secret:
            options["secret"] = [SECRET, ROTATED]
        if self.v1a:
            options["secret"] = [PUBLIC_KEY, SECRET, ROTATED]
        if self.tokens:
            options["token_secret"] = TOKEN_SECRET
        if self.fmt != "jobhook":
            options["payload_format"] = self.fmt
        if self.max_body != 1_048_576:
            options["max_body_bytes"] = self.max_body
        return options


_CONFIGS = [
    Config("signed", secret=True, tokens=False),
    Config("token", secret=False, tokens=True),
    Config("both", secret=True, tokens=True),
    Config("replicate", secret=True, tokens=True, fmt="replicate"),
    Config("replicate-token", secret=False, tokens=True, fmt="replicate"),
    Config("signed-small", secret=True, tokens=False, max_body=4096),
]
if PUBLIC_KEY:  # ED25519 needs the cryptography package
    _CONFIGS.append(Config("signed-v1a", secret=True, tokens=False, v1a=True))
CONFIGS = {c.name: c for c in _CONFIGS}


class Pairs(list):  # type: ignore[type-arg]
    """Headers as a list of name/value pairs, so a name can come twice."""

    def items(self) -> Iterator[tuple[Any, Any]]:
        return iter(self)


#: What an answer was, as stores are compared: status, outcome, the job's status.
Answer = tuple[int, str | None, str | None]


@dataclass(eq=False)
class Case:
    """One delivery, what the design says it should get, and (later) what it got."""

    index: int
    config: str
    kind: str
    headers: Any
    raw: bytes
    body: Any = None
    job_id: Any = None
    token: Any = None
    expect: frozenset[int] | None = None
    target: str | None = None
    msg_id: str | None = None
    via: str = "twin"
    original: Case | None = None
    replay: str | None = None
    answer: Answer | None = None
    answer_job: str | None = None


def _key(secret: str) -> bytes:
    encoded = secret[len("whsec_") :]
    return base64.b64decode(encoded + "=" * (-len(encoded) % 4))


def raw_signature(secret: str, msg_id: str, stamp: str, raw: bytes) -> str:
    """A ``v1`` signature over any id and timestamp text (`sign_webhook` refuses odd ones)."""
    signed = b".".join(
        (msg_id.encode("utf-8", "surrogatepass"), stamp.encode("utf-8", "surrogatepass"), raw)
    )
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode("ascii")


def header_key(headers: Any, name: str) -> Any:
    """The key under which ``headers`` holds ``name`` or its Svix name (any case), else
    ``name``."""
    for key in headers:
        if isinstance(key, str) and key.lower() in (name, SVIX_NAMES.get(name)):
            return key
    return name


def _dumps(value: Any, rng: random.Random) -> bytes:
    separators = (",", ":") if rng.random() < 0.5 else (", ", ": ")
    return json.dumps(value, separators=separators, ensure_ascii=rng.random() < 0.5).encode()


def _nested(depth: int, open_: bytes = b"[", close: bytes = b"]") -> bytes:
    return open_ * depth + close * depth


def _with(raw: bytes, key: str, value_text: bytes) -> bytes:
    """``raw`` (a JSON object) with one more key, given as raw JSON text."""
    return raw[:-1] + b',"' + key.encode() + b'":' + value_text + b"}"


DEEP = b"[" * 100_000
DEEP_CLOSED = _nested(100_000)
DEEP_OBJECTS = b'{"a":' * 50_000 + b"1" + b"}" * 50_000
TOO_BIG = b" " * (1_048_576 + 1)
BAD_STAMPS = (
    *("abc", "1.7e9", "+1700000000", "1_700_000_000", "-1700000000", "0x6553f100"),
    *("\u0661\u0667\u0660\u0660\u0660", "9" * 13, "9" * 40, "1700000000.5"),
    *("1700000000\x00", " 1700000000", "1700000000\n"),
)
BAD_SIGNATURES = (
    *("v1,", "v1,!!!!", "v2,abc", "v1a,c2ln", "v1", ",abc", "v1,AAAA"),
    *("v1," + base64.b64encode(b"x" * 31).decode(), "v1,AAAA " * 8192, "v1a,AAAA " * 64),
)
GARBAGE_UNSIGNED_IDS = (
    *(5, b"msg", ["msg"], "", " ", "x" * 300, "m" * 1_000_000),
    *("msg\x00", "m s g", "msg\ud800", "m\xe9ssage"),
)
ODD_ROUTE_AFFIXES = (
    *((" ", ""), ("", " "), ("", "\x00"), ("\u00fc", ""), ("../", "")),
    *(("", "\u200b"), ("", "\n")),
)
WEBHOOK_ID_MUTATIONS: tuple[Callable[[str], str], ...] = (
    lambda m: " " + m,
    lambda m: m + " ",
    lambda m: m + "\xa0",
    lambda m: m + "\x85",
    lambda m: "\t" + m,
    lambda m: m + "\t",
    lambda m: m + "\x00",
    lambda m: m + "\r\n",
    lambda m: m + "\x0b",
    lambda m: m + "\x1f",
    lambda m: m + "\u2028",
    lambda m: m + "\u3000",
    lambda m: "\u200b" + m,
    lambda m: "\ufeff" + m,
    lambda m: m[:-1] + chr(ord(m[-1]) + 0xFEE0),  # the last character in full width
)


class Generator:
    """The delivery stream for one seed: the same cases whatever the store."""

    def __init__(self, seed: int, known: list[str], ghosts: list[str]) -> None:
        self.rng = random.Random(seed)
        self.known = known
        self.known_set = set(known)
        self.ghosts = ghosts
        self.pool: list[Case] = []
        self.remote_ids: list[str] = ["r-0"]  # recently sent, so likely held by a job
        self.serial = 0
        self.index = 0
        self.count = 1

    # -- building blocks ---------------------------------------------------------------

    def msg_id(self) -> str:
        self.serial += 1
        return f"msg_{self.serial}_{self.rng.getrandbits(32):08x}"

    def target(self) -> str:
        """An unknown job now and then; else mostly one of the jobs in a window that
        slides over them during the run, so that jobs keep going from pending through
        running to their end (terminal jobs only answer stale and conflict)."""
        rng = self.rng
        if rng.random() < 0.12:
            return rng.choice(self.ghosts)
        if rng.random() < 0.1 or len(self.known) <= WINDOW:
            return rng.choice(self.known)
        start = (len(self.known) - WINDOW) * self.index // max(1, self.count - 1)
        return self.known[start + rng.randrange(WINDOW)]

    def expect_for(self, target: str) -> frozenset[int]:
        return OK if target in self.known_set else MISSING

    def payload(self, cfg: Config, target: str, *, name_job: bool) -> dict[str, Any]:
        rng = self.rng
        if cfg.fmt == "replicate":
            status = rng.choices(
                ["starting", "processing", "succeeded", "failed", "canceled"], [10, 70, 9, 7, 4]
            )[0]
            p: dict[str, Any] = {"id": f"pred-{rng.randrange(10**6)}", "status": status}
            if status == "processing":
                p["logs"] = rng.choice(
                    [f"{rng.randint(0, 100)}%", f"step {rng.randint(0, 9)}/9", "loading", ""]
                )
            elif status == "succeeded":
                p["output"] = [f"https://cdn.example/{target}.png"]
            elif status == "failed":
                p["error"] = rng.choice(["CUDA out of memory", None, {"detail": "x"}])
            return p
        status = rng.choices(
            ["running", "submitted", "succeeded", "failed", "canceled", "pending"],
            [72, 8, 8, 6, 3, 3],
        )[0]
        p = {"status": status}
        if name_job:
            p["job_id"] = target
        if status == "running":
            if rng.random() < 0.85:
                p["progress"] = rng.choice([rng.randint(0, 100), round(rng.uniform(0, 100), 2)])
            if rng.random() < 0.5:
                p["sequence"] = rng.randint(0, 60)
        elif status == "succeeded" and rng.random() < 0.8:
            p["output"] = {"images": [f"https://cdn.example/{target}/{rng.randrange(9)}.png"]}
        elif status == "failed":
            p["error"] = {"code": rng.choice(["nsfw", "oom", "timeout"])}
            if rng.random() < 0.5:
                p["error"]["message"] = "the backend gave up"
        if rng.random() < 0.2:
            p["remote_id"] = f"r-{rng.randrange(1000)}"
            self.remote_ids.append(p["remote_id"])
            del self.remote_ids[:-50]
        return p

    def sign(self, case: Case, cfg: Config) -> None:
        """Give ``case`` the headers a correct sender would send for its raw body."""
        rng = self.rng
        if not cfg.secret:
            case.msg_id = self.msg_id() if rng.random() < 0.6 else None
            name = "svix-id" if rng.random() < 0.1 else "webhook-id"
            case.headers = {} if case.msg_id is None else {name: case.msg_id}
            return
        case.msg_id = case.msg_id or self.msg_id()
        stamp = NOW + rng.randint(-300, 300)
        secret = ROTATED if rng.random() < 0.1 else SECRET
        if cfg.v1a and rng.random() < 0.8:
            secret = SIGNING_KEY
        headers: dict[Any, Any] = sign_webhook(
            secret, case.raw, msg_id=case.msg_id, timestamp=stamp
        )
        roll = rng.random()
        if roll < 0.08 and not cfg.v1a:  # another scheme next to v1
            headers["webhook-signature"] = "v1a,c2lnbmF0dXJl " + headers["webhook-signature"]
        elif roll < 0.16:  # the sender rotating: an old key's signature too
            old = raw_signature(WRONG, case.msg_id, str(stamp), case.raw)
            headers["webhook-signature"] = old + " " + headers["webhook-signature"]
        if rng.random() < 0.1:  # Svix's names for the same headers
            headers = {SVIX_NAMES[k]: v for k, v in headers.items()}
        if rng.random() < 0.2:
            headers = {rng.choice([k.title(), k.upper()]): v for k, v in headers.items()}
        if rng.random() < 0.1:
            headers["content-type"] = "application/json"
        case.headers = headers

    def resign(self, case: Case, *, secret: str = SECRET, msg_id: str | None = None) -> None:
        """Sign ``case.raw`` again under its (or the given) id and its timestamp."""
        headers = case.headers
        stamp = headers[header_key(headers, "webhook-timestamp")]
        msg_id = msg_id if msg_id is not None else headers[header_key(headers, "webhook-id")]
        headers[header_key(headers, "webhook-id")] = msg_id
        headers[header_key(headers, "webhook-signature")] = raw_signature(
            secret, msg_id, stamp, case.raw
        )

    def new_case(self, cfg: Config, kind: str, target: str, raw: bytes) -> Case:
        """A case for ``raw`` with correct routing and auth; ``expect`` as if it were valid."""
        case = Case(self.index, cfg.name, kind, {}, raw, target=target)
        case.expect = self.expect_for(target)
        if cfg.tokens:
            case.job_id = target
            case.token = callback_token(TOKEN_SECRET, target)
        elif self.rng.random() < 0.6:
            case.job_id = target
        self.sign(case, cfg)
        return case

    def valid(self, cfg: Config | None = None, kind: str = "valid") -> Case:
        cfg = cfg or self.rng.choice(list(CONFIGS.values()))
        target = self.target()
        name_job = cfg.fmt == "jobhook" and (not cfg.tokens or self.rng.random() < 0.5)
        payload = self.payload(cfg, target, name_job=name_job)
        return self.new_case(cfg, kind, target, _dumps(payload, self.rng))

    # -- the stream --------------------------------------------------------------------

    def cases(self, count: int) -> Iterator[Case]:
        rng = self.rng
        self.count = count
        makers: list[Callable[[], Case]] = [
            self.valid,
            self.replay,
            self.auth,
            self.bad_body,
            self.edge,
            self.route,
            self.garbage,
        ]
        weights = [30, 16, 15, 17, 10, 8, 4]
        for index in range(count):
            self.index = index
            case = rng.choices(makers, weights)[0]()
            case.via = rng.choices(["sync", "twin", "asyncpg"], [30, 45, 25])[0]
            if case.body is None:
                roll = rng.random()
                case.body = case.raw
                if roll < 0.05:
                    with contextlib.suppress(UnicodeDecodeError):
                        case.body = case.raw.decode("utf-8")
                elif roll < 0.1:
                    case.body = bytearray(case.raw)
                elif roll < 0.15:
                    case.body = memoryview(case.raw)
            if len(case.raw) > CONFIGS[case.config].max_body:
                case.expect = frozenset({413})
            if case.kind == "valid":
                self.pool.append(case)
                if len(self.pool) > 256:
                    del self.pool[rng.randrange(128)]
            yield case

    def replay(self) -> Case:
        rng = self.rng
        if not self.pool:
            return self.valid()
        orig = rng.choice(self.pool)
        cfg = CONFIGS[orig.config]
        how = rng.choices(["exact", "retry", "mutated", "mutated-resigned"], [30, 15, 35, 20])[0]
        if orig.msg_id is None or (how == "retry" and not cfg.secret):
            how = "exact"
        case = Case(self.index, orig.config, f"replay-{how}", dict(orig.headers), orig.raw)
        case.body = orig.body
        case.job_id, case.token, case.target = orig.job_id, orig.token, orig.target
        case.original, case.replay, case.msg_id = orig, how, orig.msg_id
        if how == "retry":  # a sender's retry: the same id, signed again later
            stamp = NOW + rng.randint(-300, 300)
            assert orig.msg_id is not None
            case.headers = sign_webhook(SECRET, orig.raw, msg_id=orig.msg_id, timestamp=stamp)
        elif how.startswith("mutated"):
            assert orig.msg_id is not None
            mutated = rng.choice(WEBHOOK_ID_MUTATIONS)(orig.msg_id)
            case.kind = f"replay-{how} {mutated!r}"
            if how == "mutated-resigned" and cfg.secret:
                self.resign(case, msg_id=mutated)
            else:
                case.headers[header_key(case.headers, "webhook-id")] = mutated
        return case

    # -- refusals: authentication ------------------------------------------------------

    def auth(self) -> Case:
        rng = self.rng
        cfg = rng.choice(list(CONFIGS.values()))
        case = self.valid(cfg, kind="auth")
        options: list[Callable[[Case], None]] = []
        if cfg.secret:
            options += [
                self.tampered,
                self.wrong_secret,
                self.dropped_header,
                self.bad_header_value,
                self.bad_signature,
                self.stamp_out_of_tolerance,
                self.malformed_stamp,
                self.huge_header,
                self.misnamed_header,
                self.duplicated_header,
                self.two_ids,
            ]
        if cfg.tokens:
            options += [self.bad_token, self.token_without_route]
        if not cfg.secret:
            options += [self.garbage_unsigned_id, self.duplicated_unsigned_id]
        rng.choice(options)(case)
        return case

    def tampered(self, case: Case) -> None:
        case.raw = _with(case.raw, "x", b"1") if self.rng.random() < 0.5 else case.raw + b" "
        case.kind, case.expect = "auth-tampered-body", UNAUTHORIZED

    def wrong_secret(self, case: Case) -> None:
        self.resign(case, secret=WRONG)
        case.kind, case.expect = "auth-wrong-secret", UNAUTHORIZED

    def dropped_header(self, case: Case) -> None:
        name = self.rng.choice(ID_HEADERS)
        del case.headers[header_key(case.headers, name)]
        case.kind, case.expect = f"auth-missing-{name}", UNAUTHORIZED

    def bad_header_value(self, case: Case) -> None:
        name = self.rng.choice(ID_HEADERS)
        value = self.rng.choice(["", "   ", 5, None, b"v1,bytes", ["v1,x"], 1.5, True])
        case.headers[header_key(case.headers, name)] = value
        case.kind, case.expect = f"auth-{name}={value!r}", UNAUTHORIZED

    def bad_signature(self, case: Case) -> None:
        key = header_key(case.headers, "webhook-signature")
        good = case.headers[key].split()[-1]
        # A character in the middle (the last ones may be only padding bits).
        mid = len(good) // 2
        flipped = good[:mid] + ("A" if good[mid] != "A" else "B") + good[mid + 1 :]
        value = self.rng.choice([*BAD_SIGNATURES, "V1" + good[2:], flipped])
        case.headers[key] = value
        case.kind, case.expect = f"auth-signature={value[:20]!r}", UNAUTHORIZED

    def stamp_out_of_tolerance(self, case: Case) -> None:
        rng = self.rng
        edge = rng.random() < 0.25
        offset = 300 if edge else rng.randint(301, 10**8)
        stamp = NOW + rng.choice([-offset, offset])
        case.headers = sign_webhook(SECRET, case.raw, msg_id=case.msg_id, timestamp=stamp)
        case.kind = f"auth-timestamp-{'at' if edge else 'outside'}-tolerance"
        if not edge:
            case.expect = UNAUTHORIZED

    def malformed_stamp(self, case: Case) -> None:
        stamp = self.rng.choice(BAD_STAMPS)
        case.headers[header_key(case.headers, "webhook-timestamp")] = stamp
        self.resign(case)
        case.kind, case.expect = f"auth-timestamp={stamp!r}", UNAUTHORIZED

    def huge_header(self, case: Case) -> None:
        name = self.rng.choice(ID_HEADERS)
        value = {"webhook-id": "m" * 1_000_000, "webhook-timestamp": "1" * 1_000_000}.get(
            name, "v1,AAAA " * 8192
        )
        case.headers[header_key(case.headers, name)] = value
        case.kind, case.expect = f"auth-huge-{name}", UNAUTHORIZED

    def misnamed_header(self, case: Case) -> None:
        name = self.rng.choice(ID_HEADERS)
        value = case.headers.pop(header_key(case.headers, name))
        new = self.rng.choice([" " + name, name.replace("-", "_"), "x-" + name, name.encode()])
        case.headers[new] = value
        case.kind, case.expect = f"auth-header-name={new!r}", UNAUTHORIZED

    def duplicated_header(self, case: Case) -> None:
        name = self.rng.choice(ID_HEADERS)
        sent = header_key(case.headers, name).lower()  # the same name, Svix's if so sent
        extra = (sent.title(), self.rng.choice(["", "garbage", "v1,AAAA", "msg_other"]))
        pairs = Pairs(case.headers.items())
        if self.rng.random() < 0.5:  # the last one wins: the good value, sent after
            pairs.insert(0, extra)
            case.kind = f"auth-duplicated-{name}-good-last"
        else:
            pairs.append(extra)
            case.kind, case.expect = f"auth-duplicated-{name}-bad-last", UNAUTHORIZED
        case.headers = pairs

    def two_ids(self, case: Case) -> None:
        key = header_key(case.headers, "webhook-id")
        other = "svix-id" if key.lower() == "webhook-id" else "webhook-id"
        if self.rng.random() < 0.5:
            case.headers[other] = case.headers[key]
            case.kind = "auth-webhook-id-and-svix-id-alike"
        else:
            case.headers[other] = self.msg_id()
            case.kind, case.expect = "auth-webhook-id-and-svix-id-differ", UNAUTHORIZED

    def bad_token(self, case: Case) -> None:
        assert case.target is not None
        token = case.token
        other = callback_token(TOKEN_SECRET, self.rng.choice(self.known))
        other_secret = callback_token("other", case.target)
        wrong = (other, other_secret, token[:-1], token + "A", token + "=", token.upper())
        value = self.rng.choice([*wrong, "", None, "t\xf6ken", "x" * 1000, 12345])
        if value == token:
            value = None
        case.token = value
        case.kind, case.expect = f"auth-token={value!r:.20}", UNAUTHORIZED

    def token_without_route(self, case: Case) -> None:
        case.job_id = None
        case.kind, case.expect = "auth-token-without-route", UNAUTHORIZED

    def garbage_unsigned_id(self, case: Case) -> None:
        value = self.rng.choice(GARBAGE_UNSIGNED_IDS)
        case.headers = {"webhook-id": value}
        case.kind, case.expect = f"auth-unsigned-webhook-id={value!r:.20}", BAD | UNAUTHORIZED

    def duplicated_unsigned_id(self, case: Case) -> None:
        case.headers = Pairs([("webhook-id", self.msg_id()), ("Webhook-Id", self.msg_id())])
        case.kind = "auth-unsigned-webhook-id-twice"

    # -- refusals: the body ------------------------------------------------------------

    def bad_body(self) -> Case:
        """A body the design refuses with 400, correctly signed and routed."""
        rng = self.rng
        cfg = rng.choice(list(CONFIGS.values()))
        target = self.target()
        name_job = cfg.fmt == "jobhook" and not cfg.tokens
        payload = self.payload(cfg, target, name_job=name_job)
        raw = _dumps(payload, rng)

        def replaced(name: str, values: list[Any]) -> Callable[[], bytes]:
            return lambda: _dumps({**payload, name: rng.choice(values)}, rng)

        bodies: list[tuple[str, Callable[[], bytes]]] = [
            ("bad-utf8-start", lambda: b"\xff\xfe" + raw),
            ("bad-utf8-inside", lambda: _with(raw, "x", b'"\xc3"')),
            ("utf8-surrogate", lambda: _with(raw, "x", b'"\xed\xa0\x80"')),
            ("utf8-overlong", lambda: _with(raw, "x", b'"\xc0\xaf"')),
            (
                "str-lone-surrogate",
                lambda: _with(raw, "x", '"\ud800"'.encode("utf-8", "surrogatepass")),
            ),
            ("empty", lambda: rng.choice([b"", b"  ", b"\n"])),
            (
                "not-json",
                lambda: rng.choice([b"{", b"}", b"status=succeeded", b"{'a': 1}", b"\x00"]),
            ),
            ("trailing-garbage", lambda: raw + rng.choice([b" x", b"\x00", b"{}"])),
            ("bom", lambda: b"\xef\xbb\xbf" + raw),
            (
                "not-object",
                lambda: rng.choice([b"[]", b"1", b'"running"', b"null", b"true", b"-0"]),
            ),
            ("list-of-payload", lambda: b"[" + raw + b"]"),
            ("top-level-1e400", lambda: b"1e400"),
            ("nan", lambda: _with(raw, "output", rng.choice([b"NaN", b"Infinity", b"-Infinity"]))),
            ("nul-escape", lambda: _with(raw, "output", b'"a\\u0000b"')),
            ("surrogate-escape", lambda: _with(raw, "output", b'"\\ud800"')),
            ("deep-100k-open", lambda: DEEP),
            ("deep-100k", lambda: DEEP_CLOSED),
            ("deep-objects-50k", lambda: DEEP_OBJECTS),
            ("deep-output", lambda: _with(raw, "output", _nested(rng.choice([150, 1000, 5000])))),
            ("deep-output-100k", lambda: _with(raw, "output", DEEP_CLOSED)),
            ("int-5000-digits", lambda: _with(raw, "output", b"9" * 5000)),
            ("over-1mib", lambda: TOO_BIG),
        ]
        statuses = ["done", "SUCCEEDED", "Running", "running ", "", 5, None, ["running"], True]
        if cfg.fmt == "jobhook":
            fields: dict[str, list[Any]] = {
                "progress": ["40", True, [], {}, -1, -0.5, 100.5, 101, 1e308],
                "sequence": [1.5, "3", True, -1, 1.0, []],
                "error": [
                    "oom",
                    {"message": "m"},
                    {"code": 5},
                    {"code": ""},
                    {"code": "c", "message": 5},
                    [],
                ],
                "job_id": [5, [], {}, True, ""],
                "remote_id": [5, [], True],
                "status": statuses,
            }
            bodies += [(f"bad-{name}", replaced(name, values)) for name, values in fields.items()]
            bodies.append(
                (
                    "no-status",
                    lambda: _dumps({k: v for k, v in payload.items() if k != "status"}, rng),
                )
            )
            bodies.append(
                (
                    "progress-nan",
                    lambda: _with(raw, "progress", rng.choice([b"NaN", b"1e400", b"-1e400"])),
                )
            )
        else:
            statuses = ["running", "queued", "", "Succeeded", 5, None]
            fields = {"status": statuses, "id": [5, []], "logs": [5, []]}
            bodies += [(f"bad-{name}", replaced(name, values)) for name, values in fields.items()]
        label, make = rng.choice(bodies)
        case = self.new_case(cfg, f"body-{label}", target, make())
        case.expect = BAD
        if label == "str-lone-surrogate":  # a str body that UTF-8 cannot carry
            case.body = case.raw.decode("utf-8", "surrogatepass")
        return case

    # -- edges: values near and past the limits ----------------------------------------

    def edge(self) -> Case:
        rng = self.rng
        cfg = rng.choice(list(CONFIGS.values()))
        target = self.target()
        valid = self.expect_for(target)
        if cfg.fmt == "replicate":
            base: dict[str, Any] = {"status": "processing", "id": "pred-1"}
            edges: list[tuple[str, dict[str, Any], frozenset[int] | None]] = [
                ("id-255", {"id": "p" * 255}, valid),
                ("id-256", {"id": "p" * 256}, BAD),
                ("id-300", {"id": "p" * 300}, BAD),
                ("id-empty", {"id": ""}, None),
                ("error-100k", {"status": "failed", "error": "e" * 100_000}, valid),
                ("logs-101%", {"logs": "101%"}, valid),
                ("logs-45/0", {"logs": "45/0"}, valid),
                ("logs-huge", {"logs": "x" * 200_000 + " 45%"}, valid),
                (
                    "output-unicode",
                    {"status": "succeeded", "output": "\u00e9\U0001f600\u202e"},
                    valid,
                ),
            ]
        else:
            base = {"status": "running"}
            if not cfg.tokens or rng.random() < 0.5:
                base["job_id"] = target
            edges = [
                ("sequence-2**63-1", {"sequence": 2**63 - 1}, valid),
                ("sequence-2**63", {"sequence": 2**63}, BAD),
                ("sequence-2**64", {"sequence": 2**64}, BAD),
                ("sequence-10**30", {"sequence": 10**30}, BAD),
                ("sequence--2**63-1", {"sequence": -(2**63) - 1}, BAD),
                ("remote_id-255", {"remote_id": "r" * 255}, valid),
                ("remote_id-256", {"remote_id": "r" * 256}, BAD),
                ("remote_id-300", {"remote_id": "r" * 300}, BAD),
                ("remote_id-255-accents", {"remote_id": "\u00e9" * 255}, valid),
                ("remote_id-255-astral", {"remote_id": "\U0001f600" * 255}, valid),
                ("remote_id-empty", {"remote_id": ""}, None),
                ("error.code-255", {"status": "failed", "error": {"code": "c" * 255}}, valid),
                ("error.code-256", {"status": "failed", "error": {"code": "c" * 256}}, BAD),
                ("error.code-300", {"status": "failed", "error": {"code": "c" * 300}}, BAD),
                (
                    "error.message-100k",
                    {"status": "failed", "error": {"code": "x", "message": "m" * 100_000}},
                    valid,
                ),
                ("job_id-256", {"job_id": "j" * 256}, BAD),
                ("job_id-300", {"job_id": "j" * 300}, BAD),
                ("job_id-null", {"job_id": None}, valid if cfg.tokens else BAD),
                (
                    "output-big-ints",
                    {"status": "succeeded", "output": {"a": 2**64, "b": 10**300}},
                    valid,
                ),
                (
                    "output-floats",
                    {"status": "succeeded", "output": [1e308, -0.0, 5e-324, 1.5e-7]},
                    valid,
                ),
                (
                    "output-unicode",
                    {"status": "succeeded", "output": {"\u202e": "\u00e9\U0001f600"}},
                    valid,
                ),
                ("output-500k", {"status": "succeeded", "output": "o" * 500_000}, valid),
                ("progress-0", {"progress": 0}, valid),
                ("progress-100", {"progress": 100.0}, valid),
                ("progress-tiny", {"progress": 5e-324}, valid),
                ("extra-keys", {"extra": {"nested": [1, 2]}, "Status": "x"}, valid),
            ]
        label, extra, expect = rng.choice(edges)
        payload = {**base, **extra}
        raw = _dumps(payload, rng)
        roll = rng.random()
        if cfg.fmt == "jobhook" and roll < 0.1:
            label, expect = "duplicate-keys", valid
            raw = _with(_dumps({**base, "status": "pending"}, rng), "status", b'"running"')
        elif cfg.fmt == "jobhook" and roll < 0.2:
            depth = rng.choice([90, 97, 98, 99, 100, 101, 102])
            label = f"output-depth-{depth}"
            expect = valid if depth <= 97 else None
            raw = _with(_dumps(base, rng), "output", _nested(depth))
        elif cfg.fmt == "jobhook" and roll < 0.25:
            text = rng.choice([b"1e400", b"-1e400", b"1E999"])
            label, expect = f"sequence-{text.decode()}", BAD
            raw = _with(_dumps(base, rng), "sequence", text)
        case = self.new_case(cfg, f"edge-{label}", target, raw)
        case.expect = expect
        return case

    # -- route job ids -----------------------------------------------------------------

    def route(self) -> Case:
        rng = self.rng
        cfg = rng.choice(list(CONFIGS.values()))
        target = self.target()
        roll = rng.random()
        if cfg.fmt == "jobhook" and roll < 0.35:  # the payload names another job than the URL
            other = rng.choice(self.known)
            case = self.new_case(
                cfg, "route-mismatch", target, _dumps(self.payload(cfg, target, name_job=True), rng)
            )
            if other == target:
                return case
            case.job_id = other
            if cfg.tokens:
                case.token = callback_token(TOKEN_SECRET, other)
            case.expect = BAD
            return case
        payload = self.payload(cfg, target, name_job=False)
        case = self.new_case(cfg, "route", target, _dumps(payload, rng))
        if not cfg.tokens and roll < 0.7:  # a signature does not authenticate the URL's id
            payload.pop("remote_id", None)
            case = self.new_case(cfg, "route-untrusted-no-job_id", target, _dumps(payload, rng))
            case.job_id, case.expect = rng.choice([target, None]), BAD
        elif not cfg.tokens:
            # Signed and naming only the provider's id (OpenAI's project-wide events): the
            # newest job with that remote id, else a dead letter kept under it.
            known_remote = rng.choice(self.remote_ids)
            payload["remote_id"] = rng.choice([known_remote, known_remote, "r-unknown"])
            case = self.new_case(cfg, "route-remote-id-only", target, _dumps(payload, rng))
            case.job_id, case.expect, case.target = None, OK | MISSING, None
        elif roll < 0.5:
            case.job_id = rng.choice([7, 7.5, b"job"])
            case.kind, case.expect = f"route-not-str={case.job_id!r}", BAD
        else:
            odd = rng.choice(
                [f"{prefix}{target}{suffix}" for prefix, suffix in ODD_ROUTE_AFFIXES]
                + [target.upper(), "%2e%2e", "", "x" * 300]
            )
            case.job_id = odd
            case.token = callback_token(TOKEN_SECRET, odd)
            case.kind = f"route-odd={odd!r:.20}"
            case.expect = BAD if odd in ("", "x" * 300) else BAD | MISSING
        return case

    # -- garbage -----------------------------------------------------------------------

    def text(self, size: int) -> str:
        rng = self.rng
        pools = [(0x20, 0x7E), (0x0, 0x1F), (0x80, 0x2FF), (0xD800, 0xDFFF), (0x2000, 0x206F)]
        out = []
        for _ in range(rng.randint(0, size)):
            lo, hi = rng.choice(pools)
            out.append(chr(rng.randint(lo, hi)))
        return "".join(out)

    def garbage(self) -> Case:
        rng = self.rng
        cfg = rng.choice(list(CONFIGS.values()))
        soup = [b"{", b"}", b"[", b"]", b'"status"', b":", b",", b'"running"', b'"job_id"']
        soup += [b"1", b"-", b"e", b"9" * 30, b'"', b"\\", b"null", b"\xff", b" "]
        if rng.random() < 0.5:
            raw = rng.randbytes(rng.randint(0, 200))
        else:
            raw = b"".join(rng.choice(soup) for _ in range(rng.randint(0, 60)))
        names = [*ID_HEADERS, "content-type", self.text(10)]
        headers: dict[Any, Any] = {}
        for _ in range(rng.randint(0, 4)):
            value: Any = self.text(40) if rng.random() < 0.8 else rng.choice([1, None, b"\xff"])
            headers[rng.choice(names)] = value
        case = Case(self.index, cfg.name, "garbage", headers, raw)
        if rng.random() < 0.5 and cfg.secret:
            case.headers = {
                **headers,
                **sign_webhook(SECRET, raw, msg_id=self.msg_id(), timestamp=NOW),
            }
        case.job_id = rng.choice([None, self.target(), self.text(20)])
        case.token = rng.choice([None, self.text(43)])
        if isinstance(case.job_id, str) and rng.random() < 0.5:
            case.token = callback_token(TOKEN_SECRET, case.job_id)
        return case


# -- running the stream ----------------------------------------------------------------


class _Errors(logging.Handler):
    """Keeps the exception behind each logged error, by case."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.current = -1
        self.seen: dict[int, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        cause = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            cause = f"{type(exc).__module__}.{type(exc).__name__}: {text[:300]}"
        self.seen.setdefault(self.current, cause)


class Session:
    """A fresh store and the handlers on it. In async mode also its async twin (for
    PostgreSQL two: psycopg and asyncpg), all on the same data."""

    handlers: dict[tuple[str, str], WebhookHandler]

    def __init__(self, store: str, mode: str, *, postgres_url: str | None, tmpdir: str) -> None:
        self.handlers = {}
        if store not in STORES or mode not in MODES:
            raise ValueError(f"unknown store {store!r} or mode {mode!r}")
        self.store, self.mode = store, mode
        self.loop = asyncio.new_event_loop() if mode == "async" else None
        self.twins: dict[str, Any] = {}
        self.prefix: str | None = None
        if store == "memory":
            from jobhook import AsyncInMemoryJobStore, InMemoryJobStore

            if mode == "async":
                memory_twin = AsyncInMemoryJobStore()
                self.twins = {"twin": memory_twin, "asyncpg": memory_twin}
                # The twin's state: the sync store on the same data (deliberately private).
                self.sync: Any = memory_twin._store
            else:
                self.sync = InMemoryJobStore()
            return
        from sqlalchemy.engine import make_url

        from jobhook.stores.sql import AsyncSQLJobStore, SQLJobStore

        if store == "sqlite":
            url = f"sqlite:///{tmpdir}/fuzz-{uuid.uuid4().hex[:8]}.db"
            prefix = "jobhook_"
        elif not postgres_url:
            raise ValueError("the postgres store needs --postgres-url or JOBHOOK_TEST_POSTGRES_URL")
        else:
            url = postgres_url
            prefix = self.prefix = f"fuzz{uuid.uuid4().hex[:8]}_"
        self.sync = SQLJobStore(url, table_prefix=prefix, create_schema=True)
        if mode == "async":
            twin = AsyncSQLJobStore(url, table_prefix=prefix)
            self.twins = {"twin": twin, "asyncpg": twin}
            if store == "postgres":
                asyncpg = make_url(url).set(drivername="postgresql+asyncpg")
                self.twins["asyncpg"] = AsyncSQLJobStore(asyncpg, table_prefix=prefix)

    def handler(self, case: Case) -> WebhookHandler:
        via = case.via if self.mode == "async" else "sync"
        handler = self.handlers.get((case.config, via))
        if handler is None:
            store = self.twins.get(via, self.sync)
            handler = WebhookHandler(store, **CONFIGS[case.config].options())
            self.handlers[case.config, via] = handler
        return handler

    def deliver(self, case: Case) -> WebhookResponse | Exception:
        handler = self.handler(case)
        try:
            if self.loop is None:
                return handler.handle(case.headers, case.body, job_id=case.job_id, token=case.token)
            answer = handler.ahandle(case.headers, case.body, job_id=case.job_id, token=case.token)
            return self.loop.run_until_complete(answer)
        except Exception as exc:  # reported as the first invariant broken
            return exc

    def events(self, expected: int) -> list[Any]:
        """The whole outbox. On PostgreSQL, readers see no event newer than the oldest
        transaction still open in the database (other sessions' too), so wait a little
        for up to ``expected`` events."""
        deadline = time.monotonic() + (10 if self.store == "postgres" else 0)
        events: list[Any] = []
        after = 0
        while True:
            while page := self.sync.events(after=after, limit=1000):
                events += page
                after = page[-1].id
            if len(events) >= expected or time.monotonic() > deadline:
                return events
            time.sleep(0.05)

    def close(self) -> None:
        if self.loop is not None:
            for twin in {id(t): t for t in self.twins.values()}.values():
                self.loop.run_until_complete(twin.close())
            self.loop.run_until_complete(self.loop.shutdown_default_executor())
            self.loop.close()
        if self.prefix is not None:
            self.sync.metadata.drop_all(self.sync.engine)
        self.sync.close()


def check_answer(case: Case, answer: WebhookResponse | Exception) -> list[tuple[str, str]]:
    """The invariants one answer breaks (and records it on ``case``)."""
    if isinstance(answer, Exception):
        case.answer = (-1, None, None)
        return [("exception", f"{type(answer).__name__}: {str(answer)[:300]}")]
    problems: list[tuple[str, str]] = []
    status = answer.status
    outcome = job_status = None
    try:
        data = json.loads(answer.body)
        outcome = data["outcome"]
        job_status = data.get("status")
        case.answer_job = data.get("job_id")
    except (ValueError, TypeError, KeyError):
        problems.append(("body-without-outcome", repr(answer.body[:200])))
    case.answer = (status, outcome, job_status)
    shown = answer.body[:200].decode("utf-8", "replace")
    if status == 500:
        problems.append(("status-500", shown))
    elif status == 503:
        problems.append(("status-503", shown))
    elif status not in ALLOWED:
        problems.append(("status-unexpected", f"{status} {shown}"))
    elif case.expect is not None and status not in case.expect:
        wanted = "/".join(map(str, sorted(case.expect)))
        problems.append(
            ("status-unlike-design", f"{case.kind}: expected {wanted}, got {status} {shown}")
        )
    if status not in (500, 503):
        problems += _check_replay(case, status, outcome, shown)
    return problems


def _check_replay(
    case: Case, status: int, outcome: str | None, shown: str
) -> list[tuple[str, str]]:
    """A replay of a delivery the store took (200) or kept (404) never applies again: an
    exact one or a sender's retry is a ``duplicate``; one whose ``webhook-id`` was mutated
    is refused (400/401) or a ``duplicate``, never taken as a new delivery."""
    orig = case.original
    if orig is None or orig.answer is None or orig.answer[0] not in (200, 404):
        return []
    accepted = orig.answer[0] == 200
    detail = f"{case.kind}: original {orig.answer}, replay {shown}"
    if accepted and outcome == "applied":
        return [("replay-applied-again", detail)]
    if case.replay in ("exact", "retry"):
        if accepted and outcome != "duplicate":
            if orig.msg_id:
                return [("replay-not-duplicate", detail)]
            return [("redelivery-without-webhook-id-not-duplicate", detail)]
    elif not (status in (400, 401) or outcome == "duplicate" or (status == 404 and not accepted)):
        return [("mutated-webhook-id-taken-as-new", detail)]
    return []


Seen = tuple[int, str | None, str | None]  # status, outcome, the job the answer names


def check_store(session: Session, known: list[str], seen: list[Seen]) -> list[tuple[str, str]]:
    """The end-of-run invariants: outbox vs. answers, per-job lifecycle, dead letters."""
    problems: list[tuple[str, str]] = []
    applied: Counter[str] = Counter()
    not_found: set[str] = set()
    for status, outcome, job_id in seen:
        if outcome == "applied":
            applied[str(job_id)] += 1
        elif status == 404:
            not_found.add(str(job_id))
    total = sum(applied.values())
    events = session.events(total)
    if len(events) != total:
        problems.append(
            ("applied-answers-vs-events", f"{total} applied answers, {len(events)} outbox events")
        )
    ids = [e.id for e in events]
    if ids != sorted(set(ids)):
        problems.append(("events-out-of-order", f"event ids not strictly increasing: {ids[:10]}"))
    by_job: defaultdict[str, list[Any]] = defaultdict(list)
    for event in events:
        by_job[event.job_id].append(event)
    known_set = set(known)
    for job_id in sorted(known_set | set(by_job) | set(applied)):
        mine = by_job.get(job_id, [])
        versions = [e.version for e in mine]
        if versions != list(range(2, 2 + len(mine))):
            problems.append(("event-versions-gap-or-double", f"job {job_id}: {versions[:30]}"))
        if len(mine) != applied[job_id]:
            problems.append(
                (
                    "applied-answers-vs-events-per-job",
                    f"job {job_id}: {applied[job_id]} applied answers, {len(mine)} events",
                )
            )
        if not _follows_lifecycle(mine):
            history = [(e.status.value, e.progress) for e in mine]
            problems.append(("lifecycle-violated", f"job {job_id}: {history[:30]}"))
        if job_id in known_set:
            job = session.sync.get(job_id)
            want = (mine[-1].status.value if mine else "pending", 1 + len(mine))
            if (job.status.value, job.version) != want:
                problems.append(
                    (
                        "job-unlike-its-events",
                        f"job {job_id}: {job.status.value} v{job.version}, events say {want}",
                    )
                )
    letters = session.sync.dead_letters(include_replayed=True, limit=1_000_000)
    for job_id in sorted(not_found - {letter.job_id for letter in letters}):
        problems.append(("404-without-dead-letter", f"job {job_id!r}"))
    return problems


def _follows_lifecycle(events: list[Any]) -> bool:
    """Nothing after a terminal status, ranks never go down, running progress never back."""
    for before, after in itertools.pairwise(events):
        b, a = before.status.value, after.status.value
        if b in TERMINAL or RANK[a] < RANK[b]:
            return False
        progress = (before.progress, after.progress)
        if a == b == "running" and None not in progress and progress[1] < progress[0]:
            return False
    return True


@dataclass
class Report:
    """What one run saw and which invariants it broke."""

    store: str
    mode: str
    seed: int
    cases: int
    jobs: int
    elapsed: float = 0.0
    statuses: Counter[int] = field(default_factory=Counter)
    outcomes: Counter[str] = field(default_factory=Counter)
    failures: dict[str, list[tuple[int, str]]] = field(default_factory=dict)
    first_cases: dict[str, Case] = field(default_factory=dict)
    kinds: dict[str, Counter[str]] = field(default_factory=dict)
    reproducers: dict[str, str] = field(default_factory=dict)
    answers: list[Answer] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures

    def count(self, answer: Answer) -> None:
        self.statuses[answer[0]] += 1
        self.outcomes[str(answer[1])] += 1
        self.answers.append(answer)

    def fail(self, name: str, index: int, detail: str, case: Case | None = None) -> None:
        self.failures.setdefault(name, []).append((index, detail))
        if case is not None:
            self.first_cases.setdefault(name, case)
            # The category without its generated value: "auth-token='x…" -> "auth-token".
            kind = case.kind.split("=")[0].split(" ")[0]
            self.kinds.setdefault(name, Counter())[kind] += 1

    def summary(self) -> str:
        lines = [
            f"store={self.store} mode={self.mode} seed={self.seed} cases={self.cases} "
            f"jobs={self.jobs} in {self.elapsed:.1f}s: {'OK' if self.ok else 'FAILED'}",
            "  statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(self.statuses.items())),
            "  outcomes: " + ", ".join(f"{k}={v}" for k, v in sorted(self.outcomes.items())),
        ]
        for name, found in sorted(self.failures.items()):
            index, detail = found[0]
            lines.append(f"  FAILED {name}: {len(found)}x; first at case {index}: {detail[:400]}")
            case = self.first_cases.get(name)
            if case is not None:
                kinds = self.kinds[name].most_common(8)
                lines.append("    by case kind: " + ", ".join(f"{k} {n}" for k, n in kinds))
                lines.append(f"    case: {describe(case)}")
            if name in self.reproducers:
                lines.append("    reproducer:\n" + _indent(self.reproducers[name], 6))
            elif case is not None:
                lines.append(
                    "    (not reproduced alone on a fresh store: it needs the cases before it; "
                    f"run --seed {self.seed} --cases {self.cases} --jobs {self.jobs} "
                    f"--stores {self.store} --modes {self.mode})"
                )
        return "\n".join(lines)


def _indent(text: str, n: int) -> str:
    return "\n".join(" " * n + line for line in text.splitlines())


@contextlib.contextmanager
def _captured_errors() -> Iterator[_Errors]:
    """Route the ``jobhook`` logger's errors to an `_Errors` (and nothing else) for a while."""
    errors = _Errors()
    logger = logging.getLogger("jobhook")
    saved = (logger.level, logger.propagate)
    logger.addHandler(errors)
    logger.setLevel(logging.ERROR)
    logger.propagate = False
    try:
        yield errors
    finally:
        logger.removeHandler(errors)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def run(
    store: str,
    *,
    cases: int,
    seed: int,
    mode: str = "sync",
    jobs: int | None = None,
    postgres_url: str | None = None,
    reference: list[Answer] | None = None,
    progress: Callable[[str], None] | None = None,
    tmpdir: str | None = None,
) -> Report:
    """Drive ``cases`` generated deliveries through a fresh ``store`` in ``mode``.

    ``jobs`` are created first (default: max(300, cases / 20)); ``reference`` is another
    store's answers for the same seed, which these must equal; SQLite files go under
    ``tmpdir`` (default: the system's temporary directory).
    """
    jobs = jobs if jobs is not None else max(WINDOW, cases // 20)
    known = [f"job-{n:05d}" if n % 7 else f"J~{n}.x_y" for n in range(jobs)]
    ghosts = [f"ghost-{n:04d}" for n in range(max(20, jobs // 10))]
    report = Report(store, mode, seed, cases, jobs)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=tmpdir) as tmpdir, _captured_errors() as errors:
        session = Session(store, mode, postgres_url=postgres_url, tmpdir=tmpdir)
        try:
            for n, job_id in enumerate(known):
                session.sync.create({"prompt": f"fox {n}"}, job_id=job_id, kind="image")
            seen: list[Seen] = []
            for case in Generator(seed, known, ghosts).cases(cases):
                errors.current = case.index
                answer = session.deliver(case)
                for name, detail in check_answer(case, answer):
                    if case.index in errors.seen:
                        detail += f" [logged: {errors.seen[case.index]}]"
                    report.fail(name, case.index, detail, case)
                assert case.answer is not None
                report.count(case.answer)
                seen.append((case.answer[0], case.answer[1], case.answer_job))
                if reference is not None and reference[case.index] != case.answer:
                    detail = f"{case.kind}: reference {reference[case.index]}, here {case.answer}"
                    report.fail("stores-disagree", case.index, detail, case)
                if progress and (case.index + 1) % 10_000 == 0:
                    took = time.perf_counter() - started
                    progress(f"{store}/{mode}: {case.index + 1} cases, {took:.0f}s")
            for name, detail in check_store(session, known, seen):
                report.fail(name, -1, detail)
        finally:
            session.close()
        report.elapsed = time.perf_counter() - started
        for name, case in report.first_cases.items():
            if name != "stores-disagree":
                found = reproduce(case, name, store, mode, postgres_url=postgres_url, tmpdir=tmpdir)
                if found is not None:
                    report.reproducers[name] = found
    return report


# -- reproducers -----------------------------------------------------------------------


def compact(value: Any) -> str:
    """A Python expression for ``value``, with long runs written as ``x * n``."""
    if isinstance(value, (bytes, str)) and len(value) > 80:
        parts: list[str] = []
        i = 0
        literal_start = 0
        while i < len(value):
            j = i
            while j < len(value) and value[j] == value[i]:
                j += 1
            if j - i >= 16:
                if literal_start < i:
                    parts.append(repr(value[literal_start:i]))
                parts.append(f"{value[i : i + 1]!r} * {j - i}")
                literal_start = j
            i = j
        if literal_start < len(value):
            parts.append(repr(value[literal_start:]))
        text = " + ".join(parts)
        return text if len(text) <= 2000 else text[:2000] + " …"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{compact(k)}: {compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, Pairs):
        return "Pairs([" + ", ".join(f"({compact(k)}, {compact(v)})" for k, v in value) + "])"
    if isinstance(value, (bytearray, memoryview)):
        return f"{type(value).__name__}({compact(bytes(value))})"
    return repr(value)


def describe(case: Case) -> str:
    text = (
        f"#{case.index} {case.kind} handler={case.config} via={case.via} "
        f"headers={compact(case.headers)} body={compact(case.body)} "
        f"job_id={compact(case.job_id)} token={compact(case.token)}"
    )
    return text if len(text) <= 1500 else text[:1500] + " …"


def snippet(cases: list[Case], store: str, mode: str) -> str:
    """A stand-alone script that sends ``cases`` to a fresh store with their jobs."""
    jobs = sorted({c.target for c in cases if c.target and not c.target.startswith("ghost-")})
    cfg = CONFIGS[cases[-1].config]
    options = ", ".join(f"{k}={v!r}" for k, v in cfg.options().items() if k != "clock")
    via = cases[-1].via if mode == "async" else "sync"
    twin = via != "sync"
    lines = ["import asyncio"] if mode == "async" else []
    lines.append("from jobhook import WebhookHandler")
    if store == "memory":
        cls = "AsyncInMemoryJobStore" if twin else "InMemoryJobStore"
        lines.append(f"from jobhook import {cls}")
        make = f"{cls}()"
    else:
        cls = "AsyncSQLJobStore" if twin else "SQLJobStore"
        lines.append(f"from jobhook import {cls}")
        url = '"sqlite:///repro.db"'
        if store == "postgres":
            lines.append("import os")
            url = 'os.environ["JOBHOOK_TEST_POSTGRES_URL"]'
            if via == "asyncpg":
                lines.append("from sqlalchemy.engine import make_url")
                url = f'make_url({url}).set(drivername="postgresql+asyncpg")'
        make = f'{cls}({url}, table_prefix="repro_"{"" if twin else ", create_schema=True"})'
    if any(isinstance(c.headers, Pairs) for c in cases):
        lines += ["class Pairs(list):", "    def items(self): return iter(self)"]
    wait = "await " if twin else ""
    lines += ["", "async def main():" if mode == "async" else "def main():", f"    store = {make}"]
    if twin and store != "memory":
        lines.append("    await store.create_schema()")
    lines += [f"    {wait}store.create({{}}, job_id={j!r})" for j in jobs]
    lines.append(f"    handler = WebhookHandler(store, {options}, clock=lambda: {float(NOW)!r})")
    call = "await handler.ahandle" if mode == "async" else "handler.handle"
    for c in cases:
        lines.append(
            f"    answer = {call}({compact(c.headers)}, {compact(c.body)}, "
            f"job_id={compact(c.job_id)}, token={compact(c.token)})"
        )
        lines.append("    print(answer.status, answer.json())")
    lines += ["", "asyncio.run(main())" if mode == "async" else "main()"]
    return "\n".join(lines)


def reproduce(
    case: Case, name: str, store: str, mode: str, *, postgres_url: str | None, tmpdir: str
) -> str | None:
    """The snippet for ``case`` if it breaks ``name`` again on a fresh store, else None."""
    # One store for the whole snippet: the original goes the way its replay went.
    sequence = [case]
    if case.original is not None:
        original = replace(case.original, via=case.via, answer=None)
        sequence = [original, replace(case, original=original)]
    session = Session(store, mode, postgres_url=postgres_url, tmpdir=tmpdir)
    try:
        for c in sequence:
            if c.target and not c.target.startswith("ghost-"):
                with contextlib.suppress(JobExistsError):  # the replay's original's job
                    session.sync.create({}, job_id=c.target)
        problems: list[tuple[str, str]] = []
        for c in sequence:
            problems = check_answer(c, session.deliver(c))
    finally:
        session.close()
    if name not in {p for p, _ in problems}:
        return None
    return snippet(sequence, store, mode)


# -- command line ----------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=10_000, help="deliveries per store and mode")
    parser.add_argument(
        "--stores", default="memory,sqlite", help=f"comma-separated: {', '.join(STORES)}"
    )
    parser.add_argument("--modes", default="sync,async", help="comma-separated: sync, async")
    parser.add_argument("--seed", type=int, default=None, help="default: a random one (printed)")
    parser.add_argument(
        "--jobs", type=int, default=None, help="jobs created first (default: max(300, cases/20))"
    )
    parser.add_argument("--postgres-url", default=os.environ.get("JOBHOOK_TEST_POSTGRES_URL"))
    parser.add_argument("--tmpdir", default=None, help="where SQLite files go (e.g. /dev/shm)")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    print(f"seed={seed}", flush=True)
    failed = False
    for mode in args.modes.split(","):
        reference: list[Answer] | None = None
        for store in args.stores.split(","):
            report = run(
                store,
                cases=args.cases,
                seed=seed,
                mode=mode,
                jobs=args.jobs,
                postgres_url=args.postgres_url,
                reference=reference,
                progress=lambda line: print(line, file=sys.stderr, flush=True),
                tmpdir=args.tmpdir,
            )
            print(report.summary(), flush=True)
            failed |= not report.ok
            if reference is None:
                reference = report.answers
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
