"""Payload formats: the default wire contract, Replicate predictions and callables."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jobhook import JobError, JobStatus, JobUpdate, PayloadError, ValidationError
from jobhook._payloads import ParsedPayload, payload_parser, progress_from_logs

parse = payload_parser("jobhook")
parse_replicate = payload_parser("replicate")


def body(data: Any) -> bytes:
    return json.dumps(data).encode()


# -- the default format --------------------------------------------------------------


def test_the_design_examples_parse() -> None:
    assert parse(body({"job_id": "j1", "status": "running", "progress": 40, "sequence": 3})) == (
        ParsedPayload(JobUpdate(JobStatus.RUNNING, progress=40.0, sequence=3), "j1")
    )
    succeeded = parse(
        body({"job_id": "j1", "status": "succeeded", "output": {"images": ["https://x/1.png"]}})
    )
    assert succeeded.update.output == {"images": ["https://x/1.png"]}
    failed = parse(
        body({"job_id": "j1", "status": "failed", "error": {"code": "nsfw", "message": "no"}})
    )
    assert failed.update.error == JobError("nsfw", "no")


def test_only_status_is_required_and_unknown_keys_are_ignored() -> None:
    parsed = parse(body({"status": "submitted", "eta": 12, "extra": {"a": 1}}))
    assert parsed == ParsedPayload(JobUpdate(JobStatus.SUBMITTED), None)


def test_remote_id_and_error_without_message() -> None:
    parsed = parse(body({"status": "failed", "remote_id": "r-9", "error": {"code": "oom"}}))
    assert parsed.update == JobUpdate(JobStatus.FAILED, error=JobError("oom"), remote_id="r-9")


BAD_FIELDS = {
    "status": {"status": "done"},
    "status missing": {"progress": 10},
    "progress": {"status": "running", "progress": "40"},
    "progress bool": {"status": "running", "progress": True},
    "progress range": {"status": "running", "progress": 101},
    "sequence": {"status": "running", "sequence": 2.5},
    "sequence negative": {"status": "running", "sequence": -1},
    "job_id": {"status": "running", "job_id": 7},
    "remote_id": {"status": "running", "remote_id": ["r"]},
    "error.code": {"status": "failed", "error": {"message": "no code"}},
    "error": {"status": "failed", "error": "just a string"},
}


@pytest.mark.parametrize("data", BAD_FIELDS.values(), ids=BAD_FIELDS.keys())
def test_a_wrong_field_is_named_in_the_error(data: dict[str, Any], request: Any) -> None:
    field = request.node.callspec.id.split(" ")[0]
    with pytest.raises(PayloadError, match=field.replace(".", r"\.")):
        parse(body(data))


def test_several_wrong_fields_are_all_named() -> None:
    with pytest.raises(PayloadError) as info:
        parse(body({"status": "running", "progress": "x", "sequence": "y"}))
    assert "progress" in str(info.value)
    assert "sequence" in str(info.value)


BAD_BODIES = {
    "not utf-8": (b'{"status": "running", "x": "\xff"}', "UTF-8"),
    "utf-16": ('{"status": "running"}'.encode("utf-16"), "UTF-8"),
    "not json": (b"status=running", "not JSON"),
    "truncated": (b'{"status": "runn', "not JSON"),
    "empty": (b"", "not JSON"),
    "nan": (b'{"status": "running", "progress": NaN}', "NaN"),
    "infinity": (b'{"status": "succeeded", "output": Infinity}', "Infinity"),
    "array": (b'[{"status": "running"}]', "JSON object"),
    "string": (b'"running"', "JSON object"),
    "too deep": (b'{"status": "succeeded", "output": ' + b"[" * 150 + b"]" * 150 + b"}", "nested"),
    "very deep": (b"[" * 100_000, "not JSON"),
    "huge int": (b'{"status": "running", "sequence": 1' + b"0" * 5000 + b"}", "not JSON"),
    "lone surrogate": (b'{"status": "succeeded", "output": "\\ud800"}', "surrogate"),
    "surrogate key": (b'{"status": "succeeded", "output": {"\\uDFFF": 1}}', "surrogate"),
    "nul": (b'{"status": "failed", "error": {"code": "x\\u0000"}}', "NUL"),
}


def test_escaped_text_that_stores_can_keep_passes() -> None:
    raw = b'{"status": "succeeded", "output": ["\\ud83d\\ude00", "\\\\ud800", "\\u00e9"]}'
    assert parse(raw).update.output == ["\U0001f600", "\\ud800", "\u00e9"]


@pytest.mark.parametrize(("raw", "message"), BAD_BODIES.values(), ids=BAD_BODIES.keys())
def test_bodies_that_are_not_a_json_object_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(PayloadError, match=message):
        parse(raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(
    data=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"status": st.sampled_from([*JobStatus, "starting", 3])},
            optional={
                "job_id": json_values,
                "progress": json_values,
                "sequence": json_values,
                "error": json_values,
                "remote_id": json_values,
                "output": json_values,
                "id": json_values,
                "logs": st.text(),
            },
        ),
    )
)
def test_any_json_gives_an_update_or_a_payload_error(data: Any) -> None:
    raw = json.dumps(data).encode()
    for parser in (parse, parse_replicate):
        try:
            parsed = parser(raw)
        except PayloadError:
            continue
        assert isinstance(parsed.update, JobUpdate)


# -- Replicate predictions -------------------------------------------------------------


def prediction(**fields: Any) -> bytes:
    data = {
        "id": "ufawqhfynnddngldkgtslldrkq",
        "version": "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
        "input": {"text": "Alice"},
        "output": None,
        "error": None,
        "logs": None,
        "metrics": {},
        **fields,
    }
    return body(data)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("starting", JobStatus.RUNNING),
        ("processing", JobStatus.RUNNING),
        ("succeeded", JobStatus.SUCCEEDED),
        ("failed", JobStatus.FAILED),
        ("canceled", JobStatus.CANCELED),
    ],
)
def test_replicate_statuses(status: str, expected: JobStatus) -> None:
    parsed = parse_replicate(prediction(status=status))
    assert parsed.update.status is expected
    assert parsed.update.remote_id == "ufawqhfynnddngldkgtslldrkq"
    assert parsed.job_id is None


def test_replicate_progress_comes_from_the_logs() -> None:
    logs = (
        "Using seed: 1\n"
        "  0%|          | 0/50 [00:00<?, ?it/s]\n"
        " 46%|████▌     | 23/50 [00:05<00:06]\n"
    )
    parsed = parse_replicate(prediction(status="processing", logs=logs))
    assert parsed.update.progress == 46.0


def test_replicate_success_carries_the_output() -> None:
    parsed = parse_replicate(prediction(status="succeeded", output=["https://r/1.png"]))
    assert parsed.update.output == ["https://r/1.png"]
    assert parsed.update.progress is None  # the store sets 100 on success


def test_replicate_error_string_becomes_a_job_error() -> None:
    parsed = parse_replicate(prediction(status="failed", error="CUDA out of memory"))
    assert parsed.update.error == JobError("prediction_failed", "CUDA out of memory")


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"status": "queued"}, "status"),
        ({"status": None}, "status"),
        ({"status": "succeeded", "id": 12}, "id"),
        ({"status": "processing", "logs": ["a"]}, "logs"),
    ],
)
def test_replicate_wrong_fields_are_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(PayloadError, match=field):
        parse_replicate(prediction(**fields))


@pytest.mark.parametrize(
    ("logs", "progress"),
    [
        (None, None),
        ("", None),
        ("loading model\nready", None),
        ("step 3/10", 30.0),
        (" 45%|####      | 45/100\nsaving", 45.0),
        ("10%\n20%\n", 20.0),
        ("progress 12.5%", 12.5),
        ("2024/01/31 started", None),
        ("250% overclock", None),
        ("7/3 oddity", None),
        ("3/10\n" + "1" * 50 + "/2", 30.0),
    ],
)
def test_progress_from_logs(logs: str | None, progress: float | None) -> None:
    assert progress_from_logs(logs) == progress


# -- custom formats ------------------------------------------------------------------


def test_a_callable_turns_parsed_json_into_an_update() -> None:
    def mine(data: Any) -> JobUpdate:
        return JobUpdate(JobStatus(data["state"]), progress=data["pct"])

    parsed = payload_parser(mine)(body({"state": "running", "pct": 5}))
    assert parsed == ParsedPayload(JobUpdate(JobStatus.RUNNING, progress=5.0), None)


def test_a_callable_may_name_the_job() -> None:
    def mine(data: Any) -> tuple[JobUpdate, str]:
        return JobUpdate(JobStatus.SUCCEEDED), data["ref"]

    assert payload_parser(mine)(body({"ref": "j9"})).job_id == "j9"


@pytest.mark.parametrize(
    "data", [{}, {"state": "nope"}, {"state": None}, [1]], ids=["key", "value", "type", "attr"]
)
def test_a_callable_tripping_over_the_payload_gives_a_payload_error(data: Any) -> None:
    def mine(data: Any) -> JobUpdate:
        return JobUpdate(JobStatus(data.get("state")))

    with pytest.raises(PayloadError):
        payload_parser(mine)(body(data))


def test_a_callable_returning_something_else_is_the_apps_bug() -> None:
    with pytest.raises(TypeError, match="JobUpdate"):
        payload_parser(lambda data: {"status": "running"})(body({}))


def test_an_unknown_format_name_is_refused() -> None:
    with pytest.raises(ValidationError, match="payload_format"):
        payload_parser("svix")  # type: ignore[arg-type]
