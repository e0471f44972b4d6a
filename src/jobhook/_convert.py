"""The one cattrs converter, configured once, and the JSON rules every store shares."""

from __future__ import annotations

import decimal
import json
import math
import re
from datetime import datetime, timezone
from typing import Any

from cattrs.preconf.json import make_converter

from jobhook._models import JSON, DeadLetter, Job, JobError, JobEvent, JobStatus, JobUpdate
from jobhook.exceptions import ValidationError

__all__ = [
    "MAX_DEPTH",
    "check_shape",
    "converter",
    "dumps",
    "job_from_dict",
    "job_to_dict",
    "loads",
    "normalize_json",
]

converter = make_converter()


def _structure_dt(value: Any, _: type) -> datetime:
    dt = datetime.fromisoformat(value) if isinstance(value, str) else value
    if not isinstance(dt, datetime):
        raise ValueError(f"expected an ISO 8601 timestamp, got {value!r}")
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


converter.register_unstructure_hook(datetime, lambda dt: dt.isoformat())
converter.register_structure_hook(datetime, _structure_dt)
converter.register_unstructure_hook(bytes, lambda b: b.decode("utf-8", "replace"))
converter.register_structure_hook(bytes, lambda v, _: v.encode() if isinstance(v, str) else v)
converter.register_unstructure_hook(JobStatus, lambda s: s.value)
# JSON values pass through untouched in both directions.
converter.register_structure_hook(JSON, lambda v, _: v)


_JSON_OPTIONS: dict[str, Any] = {
    "allow_nan": False,
    "separators": (",", ":"),
    "ensure_ascii": False,
}
# A NUL character as json.dumps writes it: \u0000 after an even number of backslashes.
_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


def storable_text(value: str) -> bool:
    """True when every store can keep ``value``: no NUL, no lone surrogate.

    PostgreSQL refuses both in text and JSONB; the other stores refuse them too, so that
    what fails in one store fails in all.
    """
    if "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: How deep JSON values may nest (objects and arrays), in bodies and in stores alike.
MAX_DEPTH = 100


def check_shape(value: JSON, *, field: str = "value") -> None:
    """Refuse what JSON would change or cannot hold on every store alike: an object key
    that is not a string (``{1: "a", "1": "b"}`` would lose a value) and nesting deeper
    than `MAX_DEPTH`. Raises `ValidationError` naming ``field``."""
    if not isinstance(value, (dict, list, tuple)):
        return
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise ValidationError(f"{field} is nested more than {MAX_DEPTH} levels deep")
        if isinstance(item, dict):
            for key, child in item.items():
                if not isinstance(key, str):
                    raise ValidationError(
                        f"{field} has an object key that is not a string ({key!r:.40}); "
                        "JSON would turn it into one"
                    )
                if isinstance(child, (dict, list, tuple)):
                    stack.append((child, depth + 1))
        elif isinstance(item, (list, tuple)):
            stack.extend(
                (child, depth + 1) for child in item if isinstance(child, (dict, list, tuple))
            )


def dumps(value: JSON, *, field: str = "value") -> str:
    """Serialise a JSON value the one way every store does.

    Raises `ValidationError` naming ``field`` for anything JSON cannot hold (sets,
    objects, NaN, infinities, keys that are not strings, nesting deeper than
    `MAX_DEPTH`) and for strings no store can keep (NUL characters, lone surrogates).
    """
    check_shape(value, field=field)
    try:
        text = _ENCODER.encode(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValidationError(f"{field} is not JSON-serialisable: {exc}") from None
    if not storable_text(text) or ("\\u0000" in text and _ESCAPED_NUL.search(text)):
        raise ValidationError(
            f"{field} is not storable: it contains a NUL character or a lone surrogate"
        )
    return text


def _parse_float(text: str) -> float | int:
    # PostgreSQL keeps JSON numbers as exact decimals with a scale of
    # max(0, fraction digits - exponent), and prints them without an exponent: so
    # 6.553542983589422e+16 comes back from JSONB as the integer 65535429835894220.
    # Every store reads numbers that way, so that they all agree.
    mantissa, has_exponent, exponent = text.lower().partition("e")
    if has_exponent:
        fraction = mantissa.partition(".")[2]
        if int(exponent) >= len(fraction):
            return int(decimal.Decimal(text))
    return float(text)


def loads(text: str | bytes | int | float) -> JSON:
    """Parse JSON text (the inverse of `dumps`) as every store reads it back.

    Numbers written with a positive exponent that are whole (``1e+16``) come back as
    ints, as PostgreSQL's JSONB returns them. A number instead of text is what SQLite
    hands back from a JSON column made before its columns had TEXT affinity (a bare
    JSON number stored as INTEGER or REAL): it is read as the JSON text it came from.
    """
    try:
        if isinstance(text, str):
            return _DECODER.decode(text)
        if isinstance(text, (int, float)):
            return _DECODER.decode(repr(text))
        return _DECODER.decode(text.decode("utf-8"))
    except RecursionError:
        raise ValidationError(f"JSON nested more than {MAX_DEPTH} levels deep") from None


# One encoder and one decoder, made once: json.dumps and json.loads build a new one on
# every call that passes options.
_ENCODER = json.JSONEncoder(**_JSON_OPTIONS)
_DECODER = json.JSONDecoder(parse_float=_parse_float)


def normalize_json(value: JSON, *, field: str = "value") -> JSON:
    """Return ``value`` as it comes back from a JSON column: a fresh copy, tuples as lists.

    Floats that are not finite are refused, like non-serialisable objects.
    """
    if value is None or isinstance(value, (bool, int)):
        return value
    if isinstance(value, str) and storable_text(value):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValidationError(f"{field} is not JSON-serialisable: {value!r} is not finite")
        return loads(repr(value))
    return loads(dumps(value, field=field))


def job_to_dict(job: Job) -> dict[str, Any]:
    """A JSON-ready dict of a job (ISO timestamps, status as a string)."""
    data: dict[str, Any] = converter.unstructure(job)
    return data


def job_from_dict(data: dict[str, Any]) -> Job:
    """The inverse of `job_to_dict`."""
    return converter.structure(data, Job)


def update_to_dict(update: JobUpdate) -> dict[str, Any]:
    """A JSON-ready dict of an update, without the fields it leaves unset."""
    data: dict[str, Any] = converter.unstructure(update)
    return {k: v for k, v in data.items() if v is not None}


def update_from_dict(data: dict[str, Any]) -> JobUpdate:
    """The inverse of `update_to_dict`."""
    return converter.structure(data, JobUpdate)


__all__ += ["update_from_dict", "update_to_dict"]

# Make sure the classes are known to the converter up front (fail at import, not at use).
for _cls in (Job, JobUpdate, JobEvent, JobError, DeadLetter, JobStatus):
    converter.get_structure_hook(_cls)
