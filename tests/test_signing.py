"""Standard Webhooks signing and verification, and per-job callback tokens."""

from __future__ import annotations

import base64
import contextlib
import subprocess
import sys
import time
from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobhook import SignatureError, ValidationError, sign_webhook, verify_webhook
from jobhook._signing import (
    Ed25519Key,
    callback_token,
    delivery_id_header,
    new_webhook_keypair,
    new_webhook_secret,
    parse_secrets,
    verified_delivery_id,
    verify_callback_token,
)

# The test vector of the Standard Webhooks reference libraries.
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
SIGNATURE = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def vector_headers(signature: str = SIGNATURE) -> dict[str, str]:
    return {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": signature,
    }


# -- the reference vector ---------------------------------------------------------


def test_reference_vector_signs_to_the_expected_signature() -> None:
    headers = sign_webhook(SECRET, BODY, msg_id=MSG_ID, timestamp=TIMESTAMP)
    assert headers == vector_headers()


def test_reference_vector_verifies() -> None:
    verify_webhook(SECRET, vector_headers(), BODY, now=TIMESTAMP)


@pytest.mark.parametrize("position", [-1, -2, 3])
def test_reference_vector_with_one_character_changed_fails(position: int) -> None:
    chars = list(SIGNATURE)
    chars[position] = "A" if chars[position] != "A" else "B"
    with pytest.raises(SignatureError):
        verify_webhook(SECRET, vector_headers("".join(chars)), BODY, now=TIMESTAMP)


def test_body_bytes_are_verified_exactly() -> None:
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_webhook(SECRET, vector_headers(), b'{"test":2432232314}', now=TIMESTAMP)


# -- interop with the standardwebhooks package -------------------------------------


def test_what_standardwebhooks_signs_we_verify() -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    body = '{"job_id": "j1",  "status": "running", "progress": 40}'
    now = datetime.now(timezone.utc)
    signature = standardwebhooks.Webhook(SECRET).sign("msg_1", now, body)
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": signature,
    }
    verify_webhook(SECRET, headers, body.encode())


def test_what_we_sign_standardwebhooks_verifies() -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    body = b'{"job_id": "j1", "status": "succeeded", "output": {"images": ["1.png"]}}'
    headers = sign_webhook(SECRET, body)
    assert standardwebhooks.Webhook(SECRET).verify(body, headers)["status"] == "succeeded"
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(new_webhook_secret()).verify(body, headers)


# -- headers ---------------------------------------------------------------------


def test_headers_are_matched_case_insensitively() -> None:
    headers = {k.upper(): v for k, v in vector_headers().items()}
    verify_webhook(SECRET, headers, BODY, now=TIMESTAMP)


def test_one_matching_signature_among_several_is_enough() -> None:
    other = sign_webhook(new_webhook_secret(), BODY, msg_id=MSG_ID, timestamp=TIMESTAMP)
    header = f"{other['webhook-signature']} v1a,c29tZXRoaW5n {SIGNATURE}"
    verify_webhook(SECRET, vector_headers(header), BODY, now=TIMESTAMP)


def test_any_of_several_secrets_may_match() -> None:
    verify_webhook([new_webhook_secret(), SECRET], vector_headers(), BODY, now=TIMESTAMP)
    with pytest.raises(SignatureError):
        verify_webhook([new_webhook_secret()], vector_headers(), BODY, now=TIMESTAMP)


def test_a_str_body_is_its_utf8_bytes() -> None:
    headers = sign_webhook(SECRET, '{"name": "Zoë"}')
    verify_webhook(SECRET, headers, '{"name": "Zoë"}'.encode())


MALFORMED = {
    "missing id": {"webhook-id": None},
    "missing timestamp": {"webhook-timestamp": None},
    "missing signature": {"webhook-signature": None},
    "empty id": {"webhook-id": ""},
    "blank signature": {"webhook-signature": "   "},
    "empty timestamp": {"webhook-timestamp": ""},
    "no comma": {"webhook-signature": "v1" + SIGNATURE[3:]},
    "empty signature part": {"webhook-signature": "v1,"},
    "empty version": {"webhook-signature": SIGNATURE[2:]},
    "bad base64": {"webhook-signature": "v1,not*base64!"},
    "non-ascii base64": {"webhook-signature": "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OÉ="},
    "unknown version": {"webhook-signature": "v2," + SIGNATURE[3:]},
    "non-numeric timestamp": {"webhook-timestamp": "yesterday"},
    "float timestamp": {"webhook-timestamp": f"{TIMESTAMP}.0"},
    "signed timestamp": {"webhook-timestamp": f"+{TIMESTAMP}"},
    "underscored timestamp": {"webhook-timestamp": "1_614_265_330"},
    "non-ascii digits": {"webhook-timestamp": "١٦١٤٢٦٥٣٣٠"},
    "huge timestamp": {"webhook-timestamp": "9" * 5000},
    "non-ascii id": {"webhook-id": "msg_é"},
    "id with a space": {"webhook-id": "msg 1"},
}


@pytest.mark.parametrize("change", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_headers_raise_signature_error_only(change: dict[str, Any]) -> None:
    headers: dict[str, Any] = {**vector_headers(), **change}
    headers = {k: v for k, v in headers.items() if v is not None}
    # SignatureError is not a ValueError: a ValueError or binascii.Error escaping
    # from the parser would fail this test.
    with pytest.raises(SignatureError):
        verify_webhook(SECRET, headers, BODY, now=TIMESTAMP)


header_values = st.one_of(
    st.text(max_size=80),
    st.sampled_from(["v1,", "v1,===", "v1,AAAA", SIGNATURE, f"{SIGNATURE} v1", "1614265330"]),
)


@given(
    headers=st.dictionaries(
        st.sampled_from(["webhook-id", "Webhook-Timestamp", "WEBHOOK-SIGNATURE", "x-other"]),
        header_values,
    ),
    body=st.binary(max_size=64),
)
def test_arbitrary_headers_never_raise_anything_but_signature_error(
    headers: dict[str, str], body: bytes
) -> None:
    # Any other exception (ValueError, binascii.Error, UnicodeError...) fails the test.
    with contextlib.suppress(SignatureError):
        verify_webhook(SECRET, headers, body, now=TIMESTAMP)


# -- timestamps ------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-301, 301, -10_000])
def test_timestamps_outside_the_tolerance_fail(offset: int) -> None:
    with pytest.raises(SignatureError, match="too"):
        verify_webhook(SECRET, vector_headers(), BODY, now=TIMESTAMP - offset)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_timestamps_within_the_tolerance_pass(offset: int) -> None:
    verify_webhook(SECRET, vector_headers(), BODY, now=TIMESTAMP - offset)


def test_tolerance_is_configurable() -> None:
    verify_webhook(SECRET, vector_headers(), BODY, now=TIMESTAMP + 3600, tolerance=3600)
    with pytest.raises(SignatureError):
        verify_webhook(SECRET, vector_headers(), BODY, now=TIMESTAMP + 10, tolerance=5)


def test_tolerance_none_allows_a_deliberate_replay() -> None:
    verify_webhook(SECRET, vector_headers(), BODY, tolerance=None)


def test_now_defaults_to_the_current_time() -> None:
    verify_webhook(SECRET, sign_webhook(SECRET, BODY), BODY)
    with pytest.raises(SignatureError, match="too old"):
        verify_webhook(SECRET, vector_headers(), BODY)


def test_sign_defaults_to_a_fresh_id_and_now() -> None:
    first, second = sign_webhook(SECRET, BODY), sign_webhook(SECRET, BODY)
    assert first["webhook-id"] != second["webhook-id"]
    assert abs(int(first["webhook-timestamp"]) - time.time()) < 60


# -- secrets ---------------------------------------------------------------------

BAD_SECRETS = {
    "empty": "",
    "prefix only": "whsec_",
    "no prefix": "c2VjcmV0LWtleS1ieXRlcy0xMjM0NTY3OA==",
    "a password": "hunter2-correct-horse",
    "not base64": "whsec_not*base64!",
    "empty bytes": b"",
    "no secrets": [],
}


@pytest.mark.parametrize("secret", BAD_SECRETS.values(), ids=BAD_SECRETS.keys())
def test_bad_secrets_are_refused_with_what_a_secret_looks_like(secret: Any) -> None:
    with pytest.raises(ValidationError, match="whsec_") as info:
        parse_secrets(secret)
    if isinstance(secret, str) and len(secret) > 6:
        assert secret not in str(info.value)
    with pytest.raises(ValidationError):
        sign_webhook(secret, BODY)


def test_unpadded_secrets_and_raw_keys_are_accepted() -> None:
    key = base64.b64decode(SECRET[6:])
    unpadded = "whsec_" + base64.b64encode(key + b"x").decode().rstrip("=")
    assert parse_secrets(unpadded) == (key + b"x",)
    assert sign_webhook(key, BODY, msg_id=MSG_ID, timestamp=TIMESTAMP) == vector_headers()


def test_new_webhook_secret_is_a_valid_secret() -> None:
    assert len(parse_secrets(new_webhook_secret())[0]) == 32


@pytest.mark.parametrize("msg_id", ["", "msg é", "x" * 256])
def test_sign_refuses_an_id_verify_would_refuse(msg_id: str) -> None:
    with pytest.raises(ValidationError, match="msg_id"):
        sign_webhook(SECRET, BODY, msg_id=msg_id)


# -- callback tokens ---------------------------------------------------------------


def test_callback_token_round_trip_and_url_safety() -> None:
    token = callback_token("app-token-secret", "job-1")
    assert token == callback_token("app-token-secret", "job-1")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    verify_callback_token("app-token-secret", "job-1", token)


def test_a_token_is_bound_to_its_job_and_secret() -> None:
    token = callback_token("app-token-secret", "job-1")
    with pytest.raises(SignatureError):
        verify_callback_token("app-token-secret", "job-2", token)
    with pytest.raises(SignatureError):
        verify_callback_token("other-secret", "job-1", token)


def test_tokens_survive_token_secret_rotation() -> None:
    old = callback_token("old-secret", "job-1")
    verify_callback_token(["new-secret", "old-secret"], "job-1", old)
    assert callback_token(["new-secret", "old-secret"], "job-1") == callback_token(
        "new-secret", "job-1"
    )


@pytest.mark.parametrize("token", [None, "", "é" * 43, "x"])
def test_missing_or_garbled_tokens_fail(token: str | None) -> None:
    with pytest.raises(SignatureError):
        verify_callback_token("app-token-secret", "job-1", token)


@pytest.mark.parametrize("secret", ["", b"", []])
def test_empty_token_secrets_are_refused(secret: Any) -> None:
    with pytest.raises(ValidationError):
        callback_token(secret, "job-1")


@pytest.mark.parametrize(
    "msg_id", [" " + MSG_ID, MSG_ID + "\xa0", MSG_ID + "\x85", MSG_ID + "\t", MSG_ID + " "]
)
def test_a_webhook_id_is_verified_exactly_as_sent_never_stripped(msg_id: str) -> None:
    # Even re-signed over the padded id, the id is refused: only ids that cannot be
    # read two ways are accepted, so the id recorded is the id verified.
    headers = {**vector_headers(), "webhook-id": msg_id}
    with pytest.raises(SignatureError, match="malformed webhook-id"):
        verify_webhook(SECRET, headers, BODY, now=TIMESTAMP)
    with pytest.raises(ValidationError, match="msg_id"):
        sign_webhook(SECRET, BODY, msg_id=msg_id)


def test_verified_delivery_id_returns_the_id_the_signature_covers() -> None:
    keys = parse_secrets(SECRET)
    assert verified_delivery_id(keys, vector_headers(), BODY, tolerance=300, now=TIMESTAMP) == (
        MSG_ID
    )


# -- v1a (ED25519) -----------------------------------------------------------------

# Svix's published test key pair (svix/svix-webhooks README, "Configuring the keys"):
# whsk_ is base64 of the 32-byte seed followed by the 32-byte public key. Its
# server's test_asymmetric_key_signing (server/svix-server/src/worker.rs) signs the
# v1 vector's id, timestamp and body to this signature, the v1a example of
# spec/standard-webhooks.md.
SVIX_SECRET_KEY = (
    "whsk_6Xb/dCcHpPea21PS1N9VY/NZW723CEc77N4rJCubMbfVKIDij2HKpMKkioLlX0dRqSKJp4AJ6p9lMicMFs6Kvg=="
)
SVIX_PUBLIC_KEY = "whpk_1SiA4o9hyqTCpIqC5V9HUakiiaeACeqfZTInDBbOir4="
V1A_SIGNATURE = (
    "v1a,hnO3f9T8Ytu9HwrXslvumlUpqtNVqkhqw/enGzPCXe5BdqzCInXqYXFymVJaA7AZdpXwVLPo3mNl8EM+m7TBAg=="
)
# The Go library's v1a pull request (standard-webhooks#253, TestAsymmetricWebhookSign)
# reads whsk_ as the bare 32-byte seed; same id, timestamp and body.
GO_SEED_KEY = "whsk_VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk="
GO_SIGNATURE = (
    "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag=="
)


def test_v1a_reference_vector_signs_to_svixs_signature() -> None:
    headers = sign_webhook(SVIX_SECRET_KEY, BODY, msg_id=MSG_ID, timestamp=TIMESTAMP)
    assert headers == vector_headers(V1A_SIGNATURE)


def test_v1a_reference_vector_verifies_with_the_public_key() -> None:
    verify_webhook(SVIX_PUBLIC_KEY, vector_headers(V1A_SIGNATURE), BODY, now=TIMESTAMP)
    # A secret key verifies too, with its public half.
    verify_webhook(SVIX_SECRET_KEY, vector_headers(V1A_SIGNATURE), BODY, now=TIMESTAMP)


def test_a_32_byte_seed_key_signs_as_the_go_reference_does() -> None:
    headers = sign_webhook(GO_SEED_KEY, BODY, msg_id=MSG_ID, timestamp=TIMESTAMP)
    assert headers["webhook-signature"] == GO_SIGNATURE
    verify_webhook(GO_SEED_KEY, headers, BODY, now=TIMESTAMP)


def test_v1a_agrees_with_cryptography_directly() -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    secret_key, public_key = new_webhook_keypair()
    raw = base64.b64decode(secret_key.removeprefix("whsk_"))
    public = base64.b64decode(public_key.removeprefix("whpk_"))
    private = Ed25519PrivateKey.from_private_bytes(raw[:32])
    assert (len(raw), raw[32:]) == (64, public)
    assert private.public_key().public_bytes_raw() == public

    headers = sign_webhook(secret_key, BODY, msg_id=MSG_ID, timestamp=TIMESTAMP)
    version, _, encoded = headers["webhook-signature"].partition(",")
    assert version == "v1a"
    content = f"{MSG_ID}.{TIMESTAMP}.".encode() + BODY
    Ed25519PublicKey.from_public_bytes(public).verify(base64.b64decode(encoded), content)

    theirs = base64.b64encode(private.sign(content)).decode()
    verify_webhook(public_key, vector_headers(f"v1a,{theirs}"), BODY, now=TIMESTAMP)


def test_new_webhook_keypairs_are_fresh() -> None:
    first, second = new_webhook_keypair(), new_webhook_keypair()
    assert first != second
    assert first[0].startswith("whsk_")
    assert first[1].startswith("whpk_")


@pytest.mark.parametrize("position", [-3, 4, 40])
def test_a_changed_v1a_signature_is_refused(position: int) -> None:
    chars = list(V1A_SIGNATURE)
    chars[position] = "A" if chars[position] != "A" else "B"
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_webhook(SVIX_PUBLIC_KEY, vector_headers("".join(chars)), BODY, now=TIMESTAMP)


def test_a_v1a_signature_is_bound_to_the_body_the_id_and_the_key() -> None:
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_webhook(SVIX_PUBLIC_KEY, vector_headers(V1A_SIGNATURE), BODY + b" ", now=TIMESTAMP)
    headers = {**vector_headers(V1A_SIGNATURE), "webhook-id": MSG_ID + "x"}
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_webhook(SVIX_PUBLIC_KEY, headers, BODY, now=TIMESTAMP)
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_webhook(new_webhook_keypair()[1], vector_headers(V1A_SIGNATURE), BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "signature",
    ["v1a,AAAA", "v1a," + base64.b64encode(b"x" * 65).decode(), GO_SIGNATURE],
    ids=["short", "65 bytes", "other key"],
)
def test_v1a_signatures_of_the_wrong_length_or_key_do_not_match(signature: str) -> None:
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_webhook(SVIX_PUBLIC_KEY, vector_headers(signature), BODY, now=TIMESTAMP)


@pytest.mark.parametrize(
    "signature",
    ["v1a,not*base64!", "v1a,", SIGNATURE, "v2,c29tZXRoaW5n"],
    ids=["bad base64", "empty", "only v1", "only v2"],
)
def test_malformed_or_missing_v1a_signatures_raise_signature_error(signature: str) -> None:
    with pytest.raises(SignatureError):
        verify_webhook(SVIX_PUBLIC_KEY, vector_headers(signature), BODY, now=TIMESTAMP)


def test_a_header_may_ask_for_only_so_many_ed25519_checks() -> None:
    header = " ".join([V1A_SIGNATURE] * 17)
    with pytest.raises(SignatureError, match="more than 16 v1a"):
        verify_webhook(SVIX_PUBLIC_KEY, vector_headers(header), BODY, now=TIMESTAMP)


def test_a_whpk_key_cannot_sign() -> None:
    with pytest.raises(ValidationError, match="only verifies"):
        sign_webhook(SVIX_PUBLIC_KEY, BODY)


_SEED = base64.b64decode(SVIX_SECRET_KEY[5:])[:32]
BAD_KEYS = {
    "public prefix only": "whpk_",
    "secret prefix only": "whsk_",
    "public not base64": "whpk_not*base64!",
    "secret not base64": "whsk_not*base64!",
    "public 31 bytes": "whpk_" + base64.b64encode(b"k" * 31).decode(),
    "public 64 bytes": "whpk_" + base64.b64encode(b"k" * 64).decode(),
    "secret 48 bytes": "whsk_" + base64.b64encode(b"k" * 48).decode(),
    "secret with another public half": "whsk_" + base64.b64encode(_SEED + b"k" * 32).decode(),
}


@pytest.mark.parametrize("key", BAD_KEYS.values(), ids=BAD_KEYS.keys())
def test_bad_ed25519_keys_are_refused_with_what_a_key_looks_like(key: str) -> None:
    with pytest.raises(ValidationError, match="an ED25519 key is 'whpk_'") as info:
        parse_secrets(key)
    if len(key) > 5:
        assert key[5:] not in str(info.value)
    with pytest.raises(ValidationError):
        verify_webhook([SECRET, key], vector_headers(), BODY, now=TIMESTAMP)
    with pytest.raises(ValidationError):
        sign_webhook(key, BODY)


def test_unpadded_ed25519_keys_are_accepted() -> None:
    unpadded = SVIX_PUBLIC_KEY.rstrip("=")
    verify_webhook(unpadded, vector_headers(V1A_SIGNATURE), BODY, now=TIMESTAMP)
    assert sign_webhook(SVIX_SECRET_KEY.rstrip("="), BODY, msg_id=MSG_ID, timestamp=TIMESTAMP) == (
        vector_headers(V1A_SIGNATURE)
    )


def test_parse_secrets_keeps_only_the_public_half_of_a_secret_key() -> None:
    (from_secret,) = parse_secrets(SVIX_SECRET_KEY)
    (from_public,) = parse_secrets(SVIX_PUBLIC_KEY)
    assert from_secret == from_public
    assert isinstance(from_public, Ed25519Key)
    assert from_public.public == base64.b64decode(SVIX_PUBLIC_KEY[5:])
    assert SVIX_SECRET_KEY[5:25] not in repr(from_secret)


def test_v1_and_v1a_keys_rotate_in_one_list() -> None:
    both = f"{SIGNATURE} {V1A_SIGNATURE}"
    keys = [new_webhook_secret(), SVIX_PUBLIC_KEY, SECRET]
    # Any entry matching any key of its scheme is enough, in either order.
    for header in (both, f"{V1A_SIGNATURE} {SIGNATURE}", SIGNATURE, V1A_SIGNATURE):
        verify_webhook(keys, vector_headers(header), BODY, now=TIMESTAMP)
    verify_webhook([SECRET], vector_headers(both), BODY, now=TIMESTAMP)
    verify_webhook([SVIX_PUBLIC_KEY], vector_headers(both), BODY, now=TIMESTAMP)
    # A v1 entry is not checked against an ED25519 key, nor a v1a entry against a secret.
    with pytest.raises(SignatureError, match="no v1 signature"):
        verify_webhook(SECRET, vector_headers(V1A_SIGNATURE), BODY, now=TIMESTAMP)
    with pytest.raises(SignatureError, match="no v1a signature"):
        verify_webhook(SVIX_PUBLIC_KEY, vector_headers(SIGNATURE), BODY, now=TIMESTAMP)
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_webhook(
            [new_webhook_secret(), new_webhook_keypair()[1]],
            vector_headers(both),
            BODY,
            now=TIMESTAMP,
        )


def test_verified_delivery_id_with_mixed_keys() -> None:
    keys = parse_secrets([new_webhook_secret(), SVIX_PUBLIC_KEY])
    headers = vector_headers(V1A_SIGNATURE)
    assert verified_delivery_id(keys, headers, BODY, tolerance=300, now=TIMESTAMP) == MSG_ID


def test_ed25519_is_imported_only_when_used() -> None:
    code = (
        "import sys, jobhook\n"
        "from jobhook._signing import new_webhook_keypair, verify_webhook, sign_webhook\n"
        f"s = {SECRET!r}\n"
        "verify_webhook(s, sign_webhook(s, b'{}'), b'{}')\n"
        "assert 'cryptography' not in sys.modules, 'loaded early'\n"
        "new_webhook_keypair()\n"
        "assert 'cryptography' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_cryptography_ed25519_keys_name_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric.ed25519", None)
    for attempt in (
        lambda: parse_secrets(SVIX_PUBLIC_KEY),
        lambda: sign_webhook(SVIX_SECRET_KEY, BODY),
        new_webhook_keypair,
    ):
        with pytest.raises(ModuleNotFoundError, match=r"pip install 'jobhook\[ed25519\]'"):
            attempt()
    verify_webhook(SECRET, vector_headers(f"{SIGNATURE} {V1A_SIGNATURE}"), BODY, now=TIMESTAMP)


# -- Svix header names -------------------------------------------------------------


def svix_headers(signature: str = SIGNATURE) -> dict[str, str]:
    return {f"svix-{k.removeprefix('webhook-')}": v for k, v in vector_headers(signature).items()}


@pytest.mark.parametrize("signature", [SIGNATURE, V1A_SIGNATURE], ids=["v1", "v1a"])
def test_svix_header_names_verify(signature: str) -> None:
    keys = [SECRET, SVIX_PUBLIC_KEY]
    verify_webhook(keys, svix_headers(signature), BODY, now=TIMESTAMP)
    verify_webhook(
        keys, {k.title(): v for k, v in svix_headers(signature).items()}, BODY, now=TIMESTAMP
    )
    assert (
        verified_delivery_id(
            parse_secrets(keys), svix_headers(signature), BODY, tolerance=300, now=TIMESTAMP
        )
        == MSG_ID
    )
    assert delivery_id_header(svix_headers(signature)) == MSG_ID


def test_svix_headers_are_checked_like_the_standard_ones() -> None:
    with pytest.raises(SignatureError, match="no matching signature"):
        verify_webhook(SECRET, svix_headers(), BODY + b" ", now=TIMESTAMP)
    with pytest.raises(SignatureError, match="too old"):
        verify_webhook(SECRET, svix_headers(), BODY, now=TIMESTAMP + 301)
    with pytest.raises(SignatureError, match="malformed svix-id"):
        verify_webhook(SECRET, {**svix_headers(), "svix-id": MSG_ID + " "}, BODY, now=TIMESTAMP)
    with pytest.raises(SignatureError, match="empty svix-signature"):
        verify_webhook(SECRET, {**svix_headers(), "svix-signature": " "}, BODY, now=TIMESTAMP)


def test_the_webhook_names_win_over_svixs() -> None:
    # The svix-* values are wrong: they are not read when a webhook-* one is there.
    headers = {
        **vector_headers(),
        "svix-id": MSG_ID,
        "svix-timestamp": "1",
        "svix-signature": "v1,Zm9yZ2Vk",
    }
    verify_webhook(SECRET, headers, BODY, now=TIMESTAMP)
    # Mixed: each missing webhook-* header is read from its svix-* twin.
    mixed = {"webhook-id": MSG_ID, "svix-timestamp": str(TIMESTAMP), "svix-signature": SIGNATURE}
    verify_webhook(SECRET, mixed, BODY, now=TIMESTAMP)


def test_a_delivery_with_two_different_ids_is_refused() -> None:
    headers = {**vector_headers(), "svix-id": "msg_other"}
    with pytest.raises(SignatureError, match="webhook-id and svix-id headers differ"):
        verify_webhook(SECRET, headers, BODY, now=TIMESTAMP)
    with pytest.raises(SignatureError, match="differ"):
        delivery_id_header(headers)
    assert delivery_id_header({**vector_headers(), "svix-id": MSG_ID}) == MSG_ID
