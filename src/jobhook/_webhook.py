"""The webhook handler: headers and raw body in, a `WebhookResponse` out.

A sans-I/O core in the h11 manner: `WebhookHandler._prepare` checks size, signature,
token, payload and job id without touching anything; `handle` and `ahandle` differ only
in how they call the store; `_respond` turns the store's answer into a response. The
table of answers is in the `WebhookHandler` docstring.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import attrs

from jobhook._ids import check_delivery_id, remote_key
from jobhook._models import ApplyResult, Job, JobEvent, JobUpdate, Outcome
from jobhook._payloads import ParsedPayload, PayloadFormat, payload_parser
from jobhook._signing import (
    Headers,
    Secrets,
    delivery_id_header,
    parse_secrets,
    parse_token_secrets,
    verified_delivery_id,
    verify_callback_token,
)
from jobhook.exceptions import (
    JobNotFoundError,
    PayloadError,
    SignatureError,
    StoreUnavailableError,
    ValidationError,
)

if TYPE_CHECKING:
    from jobhook.backends import Backend

__all__ = ["DeliveryIds", "Listener", "WebhookHandler", "WebhookResponse", "content_delivery_id"]

logger = logging.getLogger("jobhook")

#: Called once per applied update, after commit: ``listener(event, job)``. For
#: `WebhookHandler.ahandle` it may be a coroutine function.
Listener = Callable[[JobEvent, Job], Any]

#: Where a delivery's id (its dedupe key) comes from; see `WebhookHandler`. A callable
#: gets the lower-cased headers, the raw body and the job id, and returns the id.
DeliveryIds = (
    Literal["auto", "header", "content"] | Callable[[Mapping[str, object], bytes, str], str]
)

_JSON_HEADERS = {"content-type": "application/json"}
_MAX_BODY = 1_048_576
_MAX_ID = 255


@attrs.frozen
class WebhookResponse:
    """What to answer the sender: an HTTP ``status``, a JSON ``body`` naming the
    outcome, and ``headers``."""

    status: int
    body: bytes
    headers: dict[str, str] = attrs.field(factory=lambda: dict(_JSON_HEADERS))

    def json(self) -> Any:
        """The body, parsed."""
        return json.loads(self.body)


@attrs.frozen
class _Delivery:
    """An authenticated, parsed delivery, ready for the store."""

    job_id: str
    update: JobUpdate
    delivery_id: str
    body: bytes
    #: The job is the one with this remote id (the payload named no job id); until a
    #: submit answer records it, the delivery is kept under ``job_id`` = ``remote:<id>``.
    remote_id: str | None = None
    #: What happened must be fetched from the backend (a thin event).
    fetch: bool = False


_encode = json.JSONEncoder(separators=(",", ":")).encode  # made once: answers are small


def _response(http_status: int, /, **fields: Any) -> WebhookResponse:
    return WebhookResponse(http_status, _encode(fields).encode())


def _raw(body: bytes | bytearray | memoryview | str) -> bytes:
    # A str body cannot be what was signed byte for byte unless it is its UTF-8 form.
    return body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)


def _valid_id(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _MAX_ID


def _job_id(
    route: str | None, named: str | None, *, route_trusted: bool
) -> tuple[str, None] | tuple[None, str]:
    """The job a delivery is for and no error, or no job and why."""
    if route is not None and named is not None and route != named:
        return None, f"the payload names job {named!r:.80} but the URL names job {route!r:.80}"
    effective = named if named is not None else route
    if effective is None:
        return None, "no job id: the payload has no job_id and the URL names no job"
    if named is None and not route_trusted:
        return None, (
            "the payload has no job_id and the job id in the URL is not authenticated "
            "(the handler has no token_secret)"
        )
    if not _valid_id(effective):
        return None, f"a job id is 1 to {_MAX_ID} characters"
    return effective, None


def _callback_rules(
    backend: Backend | None,
    *,
    secret: Secrets | None,
    token_secret: Secrets | None,
    payload_format: PayloadFormat | None,
) -> tuple[
    Callable[[bytes], ParsedPayload],
    str,
    Callable[[Mapping[str, object], bytes, float], str] | None,
    int,
]:
    """How callbacks are parsed and authenticated: from the backend profile, or from
    ``payload_format`` (the parser, its name, a custom verifier, the default size)."""
    if backend is None:
        fmt: PayloadFormat = "jobhook" if payload_format is None else payload_format
        if fmt == "replicate" and secret is not None and token_secret is None:
            raise ValidationError(
                "replicate payloads name no job id, so the job id in the callback URL must "
                "be authenticated: set token_secret= and build callback URLs with it"
            )
        return payload_parser(fmt), fmt if isinstance(fmt, str) else "custom", None, _MAX_BODY
    if payload_format is not None:
        raise ValidationError(
            f"the {backend.name} profile decides how callbacks are parsed: "
            "give payload_format= or backend=, not both"
        )
    auth = backend.callback_auth
    if auth == "token" and (secret is not None or token_secret is None):
        raise ValidationError(
            f"{backend.name} does not sign its callbacks: build the handler with "
            "token_secret= (and no secret=), and the client with the same token_secret"
        )
    if auth == "custom" and secret is not None:
        raise ValidationError(
            f"the {backend.name} profile checks its own signatures: give no secret= "
            "(only token_secret=, for the job id in the callback URL)"
        )
    if token_secret is None and not getattr(backend, "callbacks_name_job", True):
        raise ValidationError(
            f"{backend.name}'s callbacks name no job id, so the job id in the callback URL "
            "must be authenticated: set token_secret= (and the client's token_secret)"
        )
    if auth == "standard-webhooks" and secret is None and token_secret is None:
        raise ValidationError(f"{backend.name} signs its callbacks: give its secret as secret=")
    verify = backend.verify_callback if auth == "custom" else None
    size = getattr(backend, "max_callback_bytes", _MAX_BODY)
    return backend.parse_callback, backend.name, verify, size


def _fetched(before: Job, after: Job) -> ApplyResult:
    """What a fetch after a thin event did: ``applied`` when the job changed."""
    changed = after.version != before.version
    return ApplyResult(Outcome.APPLIED if changed else Outcome.DUPLICATE, after)


def content_delivery_id(job_id: str, body: bytes) -> str:
    """The delivery id of a delivery that brings none: ``sha256:`` and the hex SHA-256
    of the job id and the raw body. A sender's retry of the same delivery gets the same
    id (and is dropped as a duplicate); a delivery that says anything new gets another.
    """
    digest = hashlib.sha256(job_id.encode("utf-8", "surrogatepass") + b"\n" + body)
    return "sha256:" + digest.hexdigest()


class WebhookHandler:
    """Verify, parse and apply webhook deliveries to a job store.

    ``handle`` serves a sync `JobStore`; ``await ahandle`` serves an `AsyncJobStore`
    (or a sync store, whose calls then run in a worker thread). Answers:

    | status | when |
    | ------ | ---- |
    | 413 | body over ``max_body_bytes`` |
    | 401 | bad or missing signature or token; timestamp outside ``tolerance`` |
    | 400 | not UTF-8, not JSON, wrong shape, or a job id unlike the route's |
    | 200 | ``applied`` (listeners then run, once), ``duplicate``, ``stale``, ``conflict`` |
    | 404 | ``not_found``: the delivery is kept as a dead letter for a later replay |
    | 503 | the store failed (unavailable or any unexpected error); nothing was written |

    ``backend`` (a profile from `jobhook.backends`) supplies how callbacks are parsed
    and authenticated and the default ``max_body_bytes`` (Cog's inline outputs are
    large): give its signing secret as ``secret`` where it signs (Replicate, OpenAI),
    ``token_secret`` where it does not (Cog, RunPod); fal's signatures are checked by
    the profile. Without ``backend``, ``payload_format`` says how bodies are read.

    With ``secret`` (``whsec_…``, or several for rotation) every delivery must carry a
    valid Standard Webhooks signature. With ``token_secret`` every delivery must carry
    the route job id's callback token (``?token=``); a payload without a ``job_id`` is
    only accepted when the token authenticates the route's job id (or when the handler
    is deliberately unsigned). With both, both are required. Building a handler with
    neither raises `ValidationError` unless ``allow_unsigned=True``.

    Every delivery has one delivery id, its dedupe key, chosen by ``delivery_ids``:
    ``"auto"`` (the default) takes the ``webhook-id`` header exactly as sent (with
    ``secret``, the id the signature covers) and, when a sender sends none (token-only
    backends such as Cog or RunPod), `content_delivery_id` of the job id and the body,
    so that a retry of the same delivery is a duplicate; ``"header"`` requires the
    header (400 without it); ``"content"`` always derives the id from the content; a
    callable ``(headers, body, job_id) -> str`` is the app's own rule. A ``webhook-id``
    that is not 1 to 255 visible ASCII characters is refused (401 when signed, else
    400), never stripped or repaired.

    ``handle`` and ``ahandle`` never raise for any headers or body and never answer
    500. The handler holds no mutable state: it is as thread-safe as its store.
    Secrets never appear in its repr or in logs.
    """

    def __init__(
        self,
        store: Any,
        *,
        secret: Secrets | None = None,
        token_secret: Secrets | None = None,
        tolerance: float | None = 300,
        clock: Callable[[], float] = time.time,
        max_body_bytes: int | None = None,
        listeners: Iterable[Listener] = (),
        allow_unsigned: bool = False,
        payload_format: PayloadFormat | None = None,
        delivery_ids: DeliveryIds = "auto",
        backend: Backend | None = None,
        client: Any = None,
    ) -> None:
        parse, format_name, self._verify_custom, default_max = _callback_rules(
            backend, secret=secret, token_secret=token_secret, payload_format=payload_format
        )
        if max_body_bytes is None:
            max_body_bytes = default_max
        verifies_itself = self._verify_custom is not None  # the profile checks signatures
        if secret is None and token_secret is None and not allow_unsigned and not verifies_itself:
            raise ValidationError(
                "WebhookHandler needs secret= (Standard Webhooks, 'whsec_…') or "
                "token_secret= (per-job callback tokens); pass allow_unsigned=True only "
                "where every caller is trusted"
            )
        if tolerance is not None and (
            isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or tolerance < 0
        ):
            raise ValidationError(f"tolerance must be seconds >= 0 or None, got {tolerance!r}")
        if isinstance(max_body_bytes, bool) or not isinstance(max_body_bytes, int):
            raise ValidationError(f"max_body_bytes must be an integer, got {max_body_bytes!r}")
        if max_body_bytes < 1:
            raise ValidationError(f"max_body_bytes must be positive, got {max_body_bytes!r}")
        if not callable(delivery_ids) and delivery_ids not in ("auto", "header", "content"):
            raise ValidationError(
                "delivery_ids must be 'auto', 'header', 'content' or a callable, "
                f"got {delivery_ids!r}"
            )
        self.store = store
        self._keys = parse_secrets(secret) if secret is not None else ()
        self._token_keys = parse_token_secrets(token_secret) if token_secret is not None else ()
        self._tolerance = tolerance
        self._clock = clock
        self._max_body_bytes = max_body_bytes
        self._listeners = tuple(listeners)
        self._parse = parse
        self._format_name = format_name
        self._async_store = inspect.iscoroutinefunction(getattr(store, "apply", None))
        self._delivery_ids = delivery_ids
        self._client = client
        if backend is not None and getattr(backend, "thin_callbacks", False) and client is None:
            raise ValidationError(
                f"{backend.name}'s webhooks only name the response: pass client= (a "
                "GeneratorClient with the same backend) so the handler fetches the result"
            )

    def _client_for_fetch(self) -> Any:
        if self._client is None:
            raise TypeError("this delivery must be fetched, and the handler has no client=")
        return self._client

    @property
    def max_body_bytes(self) -> int:
        """The largest body accepted; adapters need not read more than one byte past it."""
        return self._max_body_bytes

    @property
    def async_store(self) -> bool:
        """True when the store is async: `ahandle` serves it, `handle` refuses it."""
        return self._async_store

    def __repr__(self) -> str:
        return (
            f"<WebhookHandler store={self.store!r} signed={bool(self._keys)} "
            f"tokens={bool(self._token_keys)} format={self._format_name!r}>"
        )

    # -- the sans-I/O core -------------------------------------------------------

    def _prepare(
        self,
        headers: Headers,
        body: bytes,
        job_id: str | None,
        token: str | None,
    ) -> WebhookResponse | _Delivery:
        """Every check that needs no store: a response to send now, or a delivery."""
        if len(body) > self._max_body_bytes:
            too_big = f"the body is larger than {self._max_body_bytes} bytes"
            return self._reject(413, too_big, job_id, None)
        if job_id is not None and not isinstance(job_id, str):
            # A route converter (``<int:job_id>``) would otherwise reach the token HMAC.
            return self._reject(400, "the job id in the URL must be a string", None, None)
        lowered: dict[str, object] = {
            k.lower(): v for k, v in headers.items() if isinstance(k, str)
        }
        # Logged with refusals: what the header says, shown with repr and never trusted.
        header_id = lowered.get("webhook-id")
        if not isinstance(header_id, str):
            header_id = None
        signed_id: str | None = None
        try:
            if self._verify_custom is not None:
                signed_id = self._verify_custom(lowered, body, self._clock())
            if self._keys:
                signed_id = verified_delivery_id(
                    self._keys, lowered, body, tolerance=self._tolerance, now=self._clock()
                )
            if self._token_keys:
                if job_id is None:
                    raise SignatureError("no job id in the callback URL to check the token for")
                verify_callback_token(self._token_keys, job_id, token)
        except SignatureError as exc:
            return self._reject(401, str(exc), job_id, header_id)
        try:
            parsed = self._parse(body)
        except PayloadError as exc:
            return self._reject(400, str(exc), job_id, header_id)
        remote_id = None
        if job_id is None and parsed.job_id is None and parsed.update.remote_id is not None:
            if not self._keys:
                refusal = "the payload names only a remote id, which only a signature vouches for"
                return self._reject(400, refusal, job_id, header_id)
            # Signed and naming only the provider's id (OpenAI's project-wide events).
            remote_id = parsed.update.remote_id
            job_id = remote_key(remote_id)
        # Only a token authenticates the URL's job id; a signature covers the body alone.
        route_trusted = bool(self._token_keys) or not self._keys or remote_id is not None
        effective, error = _job_id(job_id, parsed.job_id, route_trusted=route_trusted)
        if error is not None:
            return self._reject(400, error, job_id, header_id)
        assert effective is not None
        try:
            delivery_id = self._delivery_id(lowered, signed_id, effective, body)
        except SignatureError as exc:
            return self._reject(400, str(exc), job_id, None)
        return _Delivery(effective, parsed.update, delivery_id, body, remote_id, parsed.fetch)

    def _delivery_id(
        self, headers: Mapping[str, object], signed_id: str | None, job_id: str, body: bytes
    ) -> str:
        """The delivery's dedupe key: exactly the id that was verified, when signed.

        Raises `SignatureError` for a malformed ``webhook-id`` or, with
        ``delivery_ids="header"``, a missing one.
        """
        source = self._delivery_ids
        if callable(source):
            # The app's own rule; a malformed answer is its bug (503), not the sender's.
            return check_delivery_id(source(headers, body, job_id), "delivery_ids()")
        if source == "content":
            return content_delivery_id(job_id, body)
        header = signed_id if signed_id is not None else delivery_id_header(headers)
        if header is not None:
            return header
        if source == "header":
            raise SignatureError("missing webhook-id header (the handler dedupes by it)")
        return content_delivery_id(job_id, body)

    def _respond(self, delivery: _Delivery, result: ApplyResult) -> WebhookResponse:
        """The answer for the store's ``result`` (pure, apart from the log line)."""
        outcome = result.outcome
        if outcome is Outcome.NOT_FOUND:
            response = _response(
                404,
                outcome=outcome.value,
                job_id=delivery.job_id,
                error="no job with this id; the delivery is kept as a dead letter",
            )
        else:
            job_id = result.job.id if result.job is not None else delivery.job_id
            fields: dict[str, Any] = {"outcome": outcome.value, "job_id": job_id}
            if result.job is not None:
                fields["status"] = result.job.status.value
            response = _response(200, **fields)
        return self._decided(response, delivery.job_id, delivery.delivery_id, outcome.value)

    def _failed(self, delivery: _Delivery, exc: Exception) -> WebhookResponse:
        """The answer when the store raised: 400 for a value it refused, else 503."""
        if isinstance(exc, ValidationError):
            return self._reject(400, str(exc), delivery.job_id, delivery.delivery_id)
        if isinstance(exc, StoreUnavailableError):
            reason = f"store unavailable: {exc}"
            exc_info = False
        else:
            # Unknown errors also answer 503, not 500: the sender retries, nothing is lost.
            reason = f"store error {type(exc).__name__}"
            exc_info = True
        response = _response(
            503, outcome="unavailable", error="the job store is unavailable; retry later"
        )
        return self._decided(
            response,
            delivery.job_id,
            delivery.delivery_id,
            "unavailable",
            reason=reason,
            exc_info=exc_info,
        )

    @staticmethod
    def _decided(
        response: WebhookResponse,
        job_id: str | None,
        delivery_id: str | None,
        outcome: str,
        *,
        reason: str | None = None,
        exc_info: bool = False,
    ) -> WebhookResponse:
        """Log the one line of a decision and pass the response through."""
        level = logging.INFO if response.status == 200 else logging.WARNING
        if response.status >= 500:
            level = logging.ERROR
        logger.log(
            level,
            "webhook %s (%d) job_id=%r delivery_id=%r%s",
            outcome,
            response.status,
            job_id,
            delivery_id,
            f": {reason}" if reason else "",
            exc_info=exc_info,
            extra={
                "jobhook_outcome": outcome,
                "jobhook_job_id": job_id,
                "jobhook_delivery_id": delivery_id,
            },
        )
        return response

    def _reject(
        self, status: int, error: str, job_id: str | None, delivery_id: str | None
    ) -> WebhookResponse:
        response = _response(status, outcome="rejected", error=error)
        return self._decided(response, job_id, delivery_id, "rejected", reason=error)

    def _listener_failed(self, listener: Listener, event: JobEvent) -> None:
        logger.exception(
            "webhook listener %r failed for job_id=%r event %d (the update is committed)",
            listener,
            event.job_id,
            event.id,
        )

    # -- sync ----------------------------------------------------------------------

    def _apply(self, delivery: _Delivery) -> ApplyResult:
        store = self.store
        job_id = delivery.job_id
        if delivery.remote_id is not None:
            try:
                job_id = store.get_by_remote_id(delivery.remote_id).id
            except JobNotFoundError:
                job_id = delivery.job_id  # kept as a dead letter below, by remote id
        if (delivery.fetch and job_id != delivery.job_id) or (
            delivery.fetch and not delivery.remote_id
        ):
            before: Job = store.get(job_id)
            return _fetched(before, self._client_for_fetch().refresh(job_id))
        result: ApplyResult = store.apply(job_id, delivery.update, delivery_id=delivery.delivery_id)
        if result.outcome is Outcome.NOT_FOUND:
            # Kept once per delivery id: a sender retrying its 404 adds nothing.
            store.add_dead_letter(
                delivery.job_id,
                delivery.update,
                delivery_id=delivery.delivery_id,
                body=delivery.body,
            )
        return result

    def handle(
        self,
        headers: Headers,
        body: bytes | bytearray | memoryview | str,
        *,
        job_id: str | None = None,
        token: str | None = None,
    ) -> WebhookResponse:
        """Verify, parse and apply one delivery with a sync store; never raises.

        ``body`` must be the raw bytes as received; ``job_id`` is the job id from the
        route and ``token`` the callback URL's ``token`` query parameter. Raises
        `TypeError` only when the store is async (use `ahandle`).
        """
        if self._async_store:
            raise TypeError(f"{self.store!r} is an async store: use `await handler.ahandle(...)`")
        try:
            prepared = self._prepare(headers, _raw(body), job_id, token)
            if isinstance(prepared, WebhookResponse):
                return prepared
            try:
                result = self._apply(prepared)
            except Exception as exc:
                return self._failed(prepared, exc)
            response = self._respond(prepared, result)
        except Exception:
            return self._crashed(job_id)
        if result.event is not None and result.job is not None:
            self._notify(result.event, result.job)
        return response

    def _notify(self, event: JobEvent, job: Job) -> None:
        for listener in self._listeners:
            try:
                outcome = listener(event, job)
                if inspect.isawaitable(outcome):
                    if inspect.iscoroutine(outcome):
                        outcome.close()
                    raise TypeError("an async listener needs ahandle(), not handle()")
            except Exception:
                self._listener_failed(listener, event)

    def _crashed(self, job_id: str | None) -> WebhookResponse:
        # A bug (ours, or in an app-supplied clock or payload format) must still not
        # answer 500: 503 makes the sender retry once it is fixed.
        logger.exception("webhook handling failed for job_id=%r", job_id)
        return _response(503, outcome="unavailable", error="the webhook could not be handled")

    # -- async ---------------------------------------------------------------------

    async def _aapply(self, delivery: _Delivery) -> ApplyResult:
        store = self.store
        job_id = delivery.job_id
        if delivery.remote_id is not None:
            try:
                job_id = (await store.get_by_remote_id(delivery.remote_id)).id
            except JobNotFoundError:
                job_id = delivery.job_id
        if (delivery.fetch and job_id != delivery.job_id) or (
            delivery.fetch and not delivery.remote_id
        ):
            before: Job = await store.get(job_id)
            client = self._client_for_fetch()
            refreshed = client.refresh(job_id)
            if inspect.isawaitable(refreshed):
                refreshed = await refreshed
            return _fetched(before, refreshed)
        result: ApplyResult = await store.apply(
            job_id, delivery.update, delivery_id=delivery.delivery_id
        )
        if result.outcome is Outcome.NOT_FOUND:
            await store.add_dead_letter(
                delivery.job_id,
                delivery.update,
                delivery_id=delivery.delivery_id,
                body=delivery.body,
            )
        return result

    async def ahandle(
        self,
        headers: Headers,
        body: bytes | bytearray | memoryview | str,
        *,
        job_id: str | None = None,
        token: str | None = None,
    ) -> WebhookResponse:
        """The async twin of `handle`: same checks, same answers; never raises.

        With a sync store, the store calls run in a worker thread so that the event
        loop is never blocked. Async listeners are awaited; sync ones are called.
        """
        try:
            prepared = self._prepare(headers, _raw(body), job_id, token)
            if isinstance(prepared, WebhookResponse):
                return prepared
            try:
                if self._async_store:
                    result = await self._aapply(prepared)
                else:
                    result = await asyncio.to_thread(self._apply, prepared)
            except Exception as exc:
                return self._failed(prepared, exc)
            response = self._respond(prepared, result)
        except Exception:
            return self._crashed(job_id)
        if result.event is not None and result.job is not None:
            await self._anotify(result.event, result.job)
        return response

    async def _anotify(self, event: JobEvent, job: Job) -> None:
        for listener in self._listeners:
            try:
                outcome = listener(event, job)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:
                self._listener_failed(listener, event)
