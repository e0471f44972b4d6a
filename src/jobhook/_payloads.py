"""Webhook payload formats: raw body bytes in, a `JobUpdate` (and the job id it names) out.

Formats: ``"jobhook"`` (the default wire contract), ``"replicate"`` (a Replicate
prediction object) and any callable that turns the parsed JSON into a `JobUpdate` (or a
``(JobUpdate, job_id)`` pair when the payload names the job). Everything here is pure.
Every failure is a `PayloadError` whose message names the offending field.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any, Literal, NoReturn

import attrs
import cattrs
from cattrs.gen import make_dict_structure_fn, override

from jobhook._convert import MAX_DEPTH, converter
from jobhook._models import JSON, JobError, JobStatus, JobUpdate
from jobhook.exceptions import PayloadError, ValidationError

__all__ = ["ParsedPayload", "PayloadFormat", "PayloadParser", "parse_body", "payload_parser"]

#: What a custom format returns: the update, or the update and the job id it names.
CustomResult = JobUpdate | tuple[JobUpdate, str | None]
PayloadFormat = Literal["jobhook", "replicate"] | Callable[[JSON], CustomResult]


@attrs.frozen
class ParsedPayload:
    """A parsed delivery or status answer: the ``update``, the ``job_id`` it names
    (``None``: none), and ``fetch``: it only says that something happened, and what
    must be asked of the backend (a thin event)."""

    update: JobUpdate
    job_id: str | None = None
    #: The payload only names the job (a thin event): what happened must be fetched
    #: from the backend (`GeneratorClient.refresh`), ``update`` is a hint.
    fetch: bool = False


PayloadParser = Callable[[bytes], ParsedPayload]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# The wire converter: a copy of the one converter, made strict. The shared converter
# turns "40" into 40.0 and True into 1.0, which is right for trusted rows but would let
# a sloppy backend's payload through here.
_wire = converter.copy()


def _strict_str(value: Any, _: type) -> str:
    if not isinstance(value, str):
        raise TypeError(f"must be a string, got {_short(value)}")
    return value


def _strict_int(value: Any, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"must be an integer, got {_short(value)}")
    return value


def _strict_float(value: Any, _: type) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"must be a number, got {_short(value)}")
    return float(value)


_STATUSES = ", ".join(s.value for s in JobStatus)


def _strict_status(value: Any, _: type) -> JobStatus:
    try:
        return JobStatus(value)
    except ValueError:
        raise ValueError(f"must be one of {_STATUSES}; got {_short(value)}") from None


_wire.register_structure_hook(str, _strict_str)
_wire.register_structure_hook(int, _strict_int)
_wire.register_structure_hook(float, _strict_float)
_wire.register_structure_hook(JobStatus, _strict_status)


def _describe(exc: BaseException, _: Any) -> str:
    if isinstance(exc, KeyError):
        return "is required"
    if isinstance(exc, (ValidationError, TypeError, ValueError)):
        return str(exc)
    return f"is invalid ({type(exc).__name__})"


def _raise_payload_error(exc: Exception) -> NoReturn:
    """Turn a cattrs (or model) error into one `PayloadError` naming the fields."""
    if isinstance(exc, cattrs.BaseValidationError):
        parts = []
        for line in cattrs.transform_error(exc, format_exception=_describe):
            message, _, path = line.rpartition(" @ ")
            field = path.removeprefix("$").removeprefix(".")
            # Errors from the model's own validators already name their field.
            parts.append(f"{field} {message}" if field else message)
        raise PayloadError("invalid payload: " + "; ".join(parts)) from None
    raise PayloadError(f"invalid payload: {exc}") from None


def _structure(data: Any, cls: type[Any]) -> Any:
    if not isinstance(data, dict):
        raise PayloadError(f"the body must be a JSON object, got {type(data).__name__}")
    try:
        return _wire.structure(data, cls)
    except (cattrs.BaseValidationError, ValidationError, TypeError, ValueError) as exc:
        _raise_payload_error(exc)


def _reject_constant(name: str) -> NoReturn:
    raise PayloadError(f"the body is not JSON: {name} is not a JSON value")


# Made once: json.loads with options builds a new decoder on every call.
_BODY_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def parse_body(body: bytes) -> JSON:
    """Decode a body as strict UTF-8 JSON: no NaN or Infinity, no NUL or lone surrogate
    in any string, at most `MAX_DEPTH` levels.

    Raises `PayloadError`.
    """
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise PayloadError("the body is not UTF-8") from None
    try:
        data = _BODY_DECODER.decode(text)
    except PayloadError:
        raise
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and ints past the digit limit.
        raise PayloadError(f"the body is not JSON: {_short(str(exc))}") from None
    if _SUSPECT_ESCAPE.search(text):
        _check_strings(data)
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:
        # Only a body with that many brackets can be nested that deep.
        _check_depth(data)
    return data


# Escapes that may decode to text no store can keep: NUL (PostgreSQL refuses it) and
# surrogates (valid only in pairs). Raw control characters are already refused by JSON.
_SUSPECT_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F])")


def _check_strings(data: JSON) -> None:
    stack = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise PayloadError("the body has a lone surrogate (\\ud800-\\udfff)") from None
            if "\x00" in value:
                raise PayloadError("the body has a NUL character (\\u0000)")


def _check_depth(data: JSON) -> None:
    # A document nested just shallowly enough to load can still overflow the stack
    # when a store serialises it again, deeper in the call stack: refuse it here.
    stack = [(data, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise PayloadError(f"the body is nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, dict):
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)


@attrs.frozen
class _JobhookPayload:
    status: JobStatus
    job_id: str | None = None
    progress: float | None = None
    output: JSON = None
    error: JobError | None = None
    remote_id: str | None = None
    sequence: int | None = None


def parse_jobhook(data: JSON) -> ParsedPayload:
    """The default format: ``{"job_id", "status", "progress", "output", "error",
    "remote_id", "sequence"}``; only ``status`` is required, unknown keys are ignored."""
    payload: _JobhookPayload = _structure(data, _JobhookPayload)
    try:
        update = JobUpdate(
            status=payload.status,
            progress=payload.progress,
            output=payload.output,
            error=payload.error,
            remote_id=payload.remote_id,
            sequence=payload.sequence,
        )
    except ValidationError as exc:
        _raise_payload_error(exc)
    return ParsedPayload(update, payload.job_id)


_REPLICATE_STATUS = {
    "starting": JobStatus.RUNNING,
    "processing": JobStatus.RUNNING,
    "succeeded": JobStatus.SUCCEEDED,
    "failed": JobStatus.FAILED,
    "canceled": JobStatus.CANCELED,
    # Replicate: the prediction was stopped before it ran (a deadline, say).
    "aborted": JobStatus.FAILED,
}


def _replicate_status(value: Any, _: type) -> str:
    if value not in _REPLICATE_STATUS:
        raise ValueError(f"must be one of {', '.join(_REPLICATE_STATUS)}; got {_short(value)}")
    return str(value)


@attrs.frozen
class _Prediction:
    status: str
    id: str | None = None
    output: JSON = None
    error: JSON = None
    logs: str | None = None


_wire.register_structure_hook(
    _Prediction,
    make_dict_structure_fn(_Prediction, _wire, status=override(struct_hook=_replicate_status)),
)

_PERCENT = re.compile(r"(\d{1,3}(?:\.\d+)?)\s*%")
# "n/total" as a progress bar writes it; the lookarounds keep dates like 2024/01/31 out,
# and the digit bound keeps int() away from its length limit.
_FRACTION = re.compile(r"(?<![\d/])(\d{1,9})\s*/\s*(\d{1,9})(?![\d/])")


def progress_from_logs(logs: str | None) -> float | None:
    """The progress in the last log line that shows one (``45%`` or ``23/50``)."""
    if not logs:
        return None
    for line in reversed(logs.splitlines()):
        for match in reversed(_PERCENT.findall(line)):
            value = float(match)
            if value <= 100:
                return value
        for done, total in reversed(_FRACTION.findall(line)):
            if int(total) > 0 and int(done) <= int(total):
                return round(100 * int(done) / int(total), 2)
    return None


def _prediction_update(prediction: _Prediction, remote_id: str | None) -> JobUpdate:
    status = _REPLICATE_STATUS[prediction.status]
    error = None
    if status is JobStatus.FAILED:
        message = prediction.error
        if message is not None and not isinstance(message, str):
            message = json.dumps(message)
        if prediction.status == "aborted":
            error = JobError("aborted", message or "the prediction was aborted before it ran")
        else:
            error = JobError("prediction_failed", message or "")
    progress = progress_from_logs(prediction.logs) if status is JobStatus.RUNNING else None
    try:
        return JobUpdate(
            status=status,
            progress=progress,
            # Only a finished prediction's output is its result: Cog's "output" event
            # sends a processing webhook with the output wrapped in a list.
            output=prediction.output if status is JobStatus.SUCCEEDED else None,
            error=error,
            remote_id=remote_id,
        )
    except ValidationError as exc:
        _raise_payload_error(exc)


def parse_replicate(data: JSON) -> ParsedPayload:
    """A Replicate prediction: ``id`` becomes ``remote_id``, ``starting``/``processing``
    mean running, progress comes from ``logs``, a failure's ``error`` string becomes
    ``JobError("prediction_failed", error)`` (``aborted``: ``JobError("aborted")``).
    The payload names no job id."""
    prediction: _Prediction = _structure(data, _Prediction)
    return ParsedPayload(_prediction_update(prediction, prediction.id))


def parse_cog(data: JSON) -> ParsedPayload:
    """A Cog prediction (the shape of Replicate's), whose ``id`` is the job id jobhook
    chose (``PUT /predictions/{job_id}``): it names the job, and there is no remote id."""
    prediction: _Prediction = _structure(data, _Prediction)
    return ParsedPayload(_prediction_update(prediction, None), prediction.id)


def _custom(function: Callable[[JSON], CustomResult]) -> Callable[[JSON], ParsedPayload]:
    def parse(data: JSON) -> ParsedPayload:
        try:
            result = function(data)
        except PayloadError:
            raise
        except (ValueError, TypeError, LookupError, AttributeError) as exc:
            # The usual ways a parser trips over a payload of the wrong shape.
            raise PayloadError(f"invalid payload: {exc}") from None
        if isinstance(result, JobUpdate):
            return ParsedPayload(result)
        if (
            isinstance(result, tuple)
            and len(result) == 2
            and isinstance(result[0], JobUpdate)
            and (result[1] is None or isinstance(result[1], str))
        ):
            return ParsedPayload(result[0], result[1])
        raise TypeError(
            f"payload format {function!r} returned {_short(result)}; "
            "expected a JobUpdate or a (JobUpdate, job_id) pair"
        )

    return parse


def payload_parser(payload_format: PayloadFormat) -> PayloadParser:
    """The body parser for ``payload_format``.

    Raises `ValidationError` for an unknown format name. The parser raises
    `PayloadError`; a custom format's ``ValueError``, ``TypeError``, ``LookupError``
    and ``AttributeError`` become `PayloadError` too. Anything else a custom format
    raises (or returns instead of an update) propagates: it is the app's bug.
    """
    if callable(payload_format):
        structure = _custom(payload_format)
    elif payload_format == "jobhook":
        structure = parse_jobhook
    elif payload_format == "replicate":
        structure = parse_replicate
    else:
        raise ValidationError(
            f"payload_format must be 'jobhook', 'replicate' or a callable, got {payload_format!r}"
        )

    def parse(body: bytes) -> ParsedPayload:
        return structure(parse_body(body))

    return parse
