"""The contract every store keeps: memory, SQLite, PostgreSQL and the async twins.

A test here runs once per store (see the ``store`` fixture in ``tests/conftest.py``).
Passing this suite is what "behaves the same" means.
"""

from __future__ import annotations

import itertools
from datetime import timedelta
from typing import Any

import pytest

from jobhook import (
    DeadLetterNotFoundError,
    JobError,
    JobExistsError,
    JobNotFoundError,
    JobStatus,
    JobUpdate,
    Outcome,
    ValidationError,
)
from jobhook._ids import utcnow

ALL = list(JobStatus)


def drive_to(store: Any, status: JobStatus, **create: Any) -> str:
    """A new job brought to ``status`` through legal updates; returns its id."""
    job = store.create({"prompt": "a red fox"}, **create)
    path = {
        JobStatus.PENDING: [],
        JobStatus.SUBMITTED: [JobUpdate(JobStatus.SUBMITTED)],
        JobStatus.RUNNING: [JobUpdate(JobStatus.RUNNING, progress=10)],
        JobStatus.SUCCEEDED: [JobUpdate(JobStatus.SUCCEEDED, output={"images": ["1.png"]})],
        JobStatus.FAILED: [JobUpdate(JobStatus.FAILED, error=JobError("nsfw", "blocked"))],
        JobStatus.CANCELED: [JobUpdate(JobStatus.CANCELED)],
    }[status]
    for update in path:
        assert store.apply(job.id, update).outcome is Outcome.APPLIED
    return str(job.id)


# -- create / get --------------------------------------------------------------------


def test_create_commits_a_pending_job(store: Any) -> None:
    job = store.create({"prompt": "a red fox"}, kind="image", owner_id="u1", metadata={"a": 1})
    assert job.status is JobStatus.PENDING
    assert (job.kind, job.owner_id, job.input, job.metadata) == (
        "image",
        "u1",
        {"prompt": "a red fox"},
        {"a": 1},
    )
    assert (job.progress, job.output, job.error, job.remote_id, job.sequence) == (None,) * 5
    assert job.version == 1
    assert job.created_at.tzinfo is not None
    assert job.created_at == job.updated_at
    assert job.completed_at is None
    assert store.get(job.id) == job


def test_generated_ids_are_url_safe_unique_and_sorted(store: Any) -> None:
    ids = [store.create({}).id for _ in range(20)]
    assert len(set(ids)) == 20
    assert ids == sorted(ids)
    assert all((i.isalnum() and i.islower()) or i.isdigit() for i in ids)


def test_create_with_given_id_and_duplicate_id(store: Any) -> None:
    job = store.create({"n": 1}, job_id="order-42")
    assert job.id == "order-42"
    with pytest.raises(JobExistsError, match="order-42"):
        store.create({"n": 2}, job_id="order-42")
    assert store.get("order-42").input == {"n": 1}


def test_unknown_id_raises_job_not_found(store: Any) -> None:
    with pytest.raises(JobNotFoundError, match="nope") as info:
        store.get("nope")
    assert isinstance(info.value, LookupError)


@pytest.mark.parametrize(
    "bad_input", [{"s": {1, 2}}, {"f": float("nan")}, object(), {"x": float("inf")}]
)
def test_input_that_is_not_json_fails_the_same_way_and_writes_nothing(
    store: Any, bad_input: Any
) -> None:
    with pytest.raises(ValidationError, match="input is not JSON-serialisable"):
        store.create(bad_input, job_id="bad")
    with pytest.raises(JobNotFoundError):
        store.get("bad")
    assert store.list() == []


def test_metadata_must_be_a_json_object(store: Any) -> None:
    with pytest.raises(ValidationError, match="metadata"):
        store.create({}, metadata=["not", "an", "object"])
    with pytest.raises(ValidationError, match="metadata"):
        store.create({}, metadata={"when": object()})
    assert store.list() == []


@pytest.mark.parametrize(
    "bad_id",
    ["", 42, "x" * 256, "a/b", ".", "..", "a b", "café-1", "a?b", "a#b", "a%2Fb", "a\\b"],
)
def test_bad_job_id_is_refused(store: Any, bad_id: Any) -> None:
    # A job id must survive a callback URL's path: the one alphabet, in every store.
    with pytest.raises(ValidationError, match="job_id"):
        store.create({}, job_id=bad_id)
    assert store.list() == []


@pytest.mark.parametrize("good_id", ["a", "A-z_0.9~", "x" * 255, "...", "a..b", ".hidden"])
def test_url_path_safe_job_ids_are_kept(store: Any, good_id: str) -> None:
    assert store.create({}, job_id=good_id).id == good_id
    assert store.get(good_id).id == good_id


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({1: "a", "1": "b"}, "not a string"),
        ({"k": [{2: 0}]}, "not a string"),
        ({None: 1}, "not a string"),
        ("deep", "nested more than"),
    ],
)
def test_json_that_would_change_or_overflow_is_refused_everywhere(
    store: Any, value: Any, message: str
) -> None:
    if value == "deep":
        value = []
        for _ in range(1_000):
            value = [value]
    with pytest.raises(ValidationError, match=message):
        store.create(value)
    with pytest.raises(ValidationError, match=message):
        store.create({}, metadata={"m": value})
    job = store.create({})
    with pytest.raises(ValidationError, match=message):
        store.apply(job.id, JobUpdate("succeeded", output=value))
    with pytest.raises(ValidationError, match=message):
        store.add_dead_letter("gone", JobUpdate("succeeded", output=value))
    assert [j.version for j in store.list()] == [1]
    assert store.events() == []
    assert store.dead_letters() == []


def test_json_round_trip_is_the_same_everywhere(store: Any) -> None:
    job = store.create({"t": (1, 2), "nested": {"u": "ü", "n": None}}, job_id="j")
    assert job.input == {"t": [1, 2], "nested": {"u": "ü", "n": None}}
    assert store.get("j").input == job.input


@pytest.mark.parametrize(
    "number", [0, -7, 1.5, 12345678901234567890, 6.553542983589422e16, True, "0"]
)
def test_a_bare_json_value_round_trips_exactly(store: Any, number: Any) -> None:
    # SQLite gave JSON columns NUMERIC affinity: a bare number lost its JSON text (and
    # a large one its digits) and could not be read back.
    expected = 65535429835894220 if number == 6.553542983589422e16 else number
    job = store.create(number, metadata={"n": number})
    result = store.apply(job.id, JobUpdate("succeeded", output=number))
    assert result.job is not None
    assert result.job.output == expected
    stored = store.get(job.id)
    assert (stored.input, stored.output) == (expected, expected)
    assert type(stored.output) is type(expected)


def test_returned_jobs_never_alias_stored_state(store: Any) -> None:
    job = store.create({"prompt": "fox"})
    job.input["prompt"] = "changed"
    job.metadata["x"] = 1
    again = store.get(job.id)
    assert again.input == {"prompt": "fox"}
    assert again.metadata == {}


# -- apply ---------------------------------------------------------------------------


@pytest.mark.parametrize("current", ALL)
def test_rules_for_every_status_pair(store: Any, current: JobStatus) -> None:
    from tests.test_lifecycle import EXPECTED, ORDER

    for new in ORDER:
        job_id = drive_to(store, current)
        result = store.apply(job_id, JobUpdate(new))
        assert result.outcome is EXPECTED[current][ORDER.index(new)], (current, new)
        assert result.job.status is (new if result.applied else current)


def test_applied_update_writes_job_and_one_event(store: Any) -> None:
    job = store.create({"p": 1}, owner_id="u1", kind="image")
    result = store.apply(
        job.id, JobUpdate("running", progress=40, sequence=3, remote_id="r-9"), delivery_id="d1"
    )
    assert result.outcome is Outcome.APPLIED
    assert result.applied
    new = result.job
    assert (new.status, new.progress, new.sequence, new.remote_id, new.version) == (
        JobStatus.RUNNING,
        40.0,
        3,
        "r-9",
        2,
    )
    assert new.updated_at >= job.updated_at
    assert store.get(job.id) == new
    event = result.event
    assert (event.job_id, event.owner_id, event.kind, event.status, event.progress) == (
        job.id,
        "u1",
        "image",
        JobStatus.RUNNING,
        40.0,
    )
    assert (event.version, event.delivery_id) == (2, "d1")
    assert store.events() == [event]


def test_succeeded_and_failed_fields(store: Any) -> None:
    ok = store.create({})
    done = store.apply(ok.id, JobUpdate("succeeded", output={"images": ["a.png"]})).job
    assert (done.status, done.progress, done.output) == (
        JobStatus.SUCCEEDED,
        100.0,
        {"images": ["a.png"]},
    )
    assert done.completed_at is not None
    assert done.terminal
    bad = store.create({})
    failed = store.apply(bad.id, JobUpdate("failed", error=JobError("nsfw", "blocked"))).job
    assert failed.error == JobError("nsfw", "blocked")
    assert failed.output is None


def test_update_without_fields_keeps_stored_values(store: Any) -> None:
    job = store.create({})
    store.apply(job.id, JobUpdate("running", progress=50, sequence=1, remote_id="r"))
    after = store.apply(job.id, JobUpdate("running", sequence=2)).job
    assert (after.progress, after.remote_id, after.sequence) == (50.0, "r", 2)


def test_duplicate_delivery_changes_nothing(store: Any) -> None:
    job = store.create({})
    first = store.apply(job.id, JobUpdate("running", progress=10), delivery_id="d1")
    again = store.apply(job.id, JobUpdate("running", progress=90), delivery_id="d1")
    assert again.outcome is Outcome.DUPLICATE
    assert again.event is None
    assert again.job == first.job
    assert len(store.events()) == 1


def test_a_delivery_id_is_a_duplicate_whatever_job_it_names(store: Any) -> None:
    """Delivery ids are unique across jobs: one seen before changes nothing, even when
    it now names another job, or one that does not exist."""
    first, second = store.create({}), store.create({})
    assert store.apply(first.id, JobUpdate("running"), delivery_id="d1").applied
    again = store.apply(second.id, JobUpdate("running"), delivery_id="d1")
    assert (again.outcome, again.job) == (Outcome.DUPLICATE, second)
    unknown = store.apply("nobody", JobUpdate("running"), delivery_id="d1")
    assert (unknown.outcome, unknown.job) == (Outcome.DUPLICATE, None)
    assert store.get(second.id).version == 1
    assert len(store.events()) == 1


def test_stale_and_conflict_record_the_delivery(store: Any) -> None:
    job_id = drive_to(store, JobStatus.SUCCEEDED)
    assert store.apply(job_id, JobUpdate("running"), delivery_id="s").outcome is Outcome.STALE
    assert store.apply(job_id, JobUpdate("running"), delivery_id="s").outcome is Outcome.DUPLICATE
    assert store.apply(job_id, JobUpdate("failed"), delivery_id="c").outcome is Outcome.CONFLICT
    assert store.apply(job_id, JobUpdate("failed"), delivery_id="c").outcome is Outcome.DUPLICATE
    assert store.get(job_id).status is JobStatus.SUCCEEDED


def test_running_out_of_order_is_stale(store: Any) -> None:
    job = store.create({})
    assert store.apply(job.id, JobUpdate("running", progress=70, sequence=7)).applied
    assert store.apply(job.id, JobUpdate("running", progress=40, sequence=4)).outcome is (
        Outcome.STALE
    )
    assert store.apply(job.id, JobUpdate("running", progress=80, sequence=7)).outcome is (
        Outcome.STALE
    )
    assert store.apply(job.id, JobUpdate("running", progress=60, sequence=8)).outcome is (
        Outcome.STALE
    )
    assert store.get(job.id).progress == 70.0
    assert len(store.events()) == 1


def test_terminal_update_keeps_highest_sequence(store: Any) -> None:
    job = store.create({})
    store.apply(job.id, JobUpdate("running", progress=10, sequence=5))
    done = store.apply(job.id, JobUpdate("failed", sequence=1)).job
    assert done.sequence == 5


def test_not_found_records_no_delivery(store: Any) -> None:
    result = store.apply("later", JobUpdate("succeeded"), delivery_id="d-late")
    assert result.outcome is Outcome.NOT_FOUND
    assert result.job is None
    store.create({}, job_id="later")
    assert store.apply("later", JobUpdate("succeeded"), delivery_id="d-late").applied
    assert store.events()[-1].delivery_id == "d-late"


def test_output_that_is_not_json_writes_nothing(store: Any) -> None:
    job = store.create({})
    with pytest.raises(ValidationError, match="output is not JSON-serialisable"):
        store.apply(job.id, JobUpdate("succeeded", output={"x": {1}}), delivery_id="d")
    assert store.get(job.id) == job
    assert store.events() == []
    # The delivery id was not kept either: the same delivery, fixed, applies.
    assert store.apply(job.id, JobUpdate("succeeded", output={"x": [1]}), delivery_id="d").applied


# -- list / stale / events -------------------------------------------------------------


def test_list_newest_first_with_filters(store: Any) -> None:
    a = store.create({}, owner_id="u1", kind="image")
    b = store.create({}, owner_id="u2", kind="video")
    c = store.create({}, owner_id="u1", kind="video")
    store.apply(c.id, JobUpdate("succeeded"))
    assert [j.id for j in store.list()] == [c.id, b.id, a.id]
    assert [j.id for j in store.list(owner_id="u1")] == [c.id, a.id]
    assert [j.id for j in store.list(kind="video")] == [c.id, b.id]
    assert [j.id for j in store.list(status="succeeded")] == [c.id]
    assert [j.id for j in store.list(status=[JobStatus.PENDING])] == [b.id, a.id]
    assert [j.id for j in store.list(owner_id="u1", status="pending", kind="image")] == [a.id]
    assert store.list(owner_id="nobody") == []


def test_list_pages_with_before(store: Any) -> None:
    ids = [store.create({}, owner_id="u").id for _ in range(7)]
    pages, before = [], None
    while True:
        page = store.list(owner_id="u", limit=3, before=before)
        if not page:
            break
        pages.append([j.id for j in page])
        before = page[-1].id
    assert pages == [ids[6:3:-1], ids[3:0:-1], ids[0:1]]


def test_list_refuses_bad_arguments(store: Any) -> None:
    with pytest.raises(JobNotFoundError):
        store.list(before="missing")
    with pytest.raises(ValidationError, match="limit"):
        store.list(limit=0)
    with pytest.raises(ValueError, match="bogus"):
        store.list(status="bogus")


def test_stale_finds_non_terminal_jobs_not_updated_since(store: Any) -> None:
    old_pending = store.create({})
    old_running = drive_to(store, JobStatus.RUNNING)
    drive_to(store, JobStatus.SUCCEEDED)
    cutoff = utcnow() + timedelta(seconds=1)
    stale = store.stale(updated_before=cutoff)
    assert [j.id for j in stale] == [old_pending.id, old_running]
    assert store.stale(updated_before=old_pending.created_at) == []
    assert len(store.stale(updated_before=cutoff, limit=1)) == 1


def test_events_in_order_after_a_cursor(store: Any) -> None:
    job = store.create({})
    for p in (10, 20, 30):
        store.apply(job.id, JobUpdate("running", progress=p))
    store.apply(job.id, JobUpdate("succeeded"))
    events = store.events()
    assert [e.progress for e in events] == [10.0, 20.0, 30.0, 100.0]
    assert [e.version for e in events] == [2, 3, 4, 5]
    ids = [e.id for e in events]
    assert ids == sorted(ids)
    assert len(set(ids)) == 4
    assert store.events(after=ids[1]) == events[2:]
    assert store.events(after=ids[0], limit=2) == events[1:3]
    assert store.events(after=ids[-1]) == []


def test_events_of_one_job_after_a_cursor(store: Any) -> None:
    first, second = store.create({}), store.create({})
    for p in (10, 20, 30):
        store.apply(first.id, JobUpdate("running", progress=p))
        store.apply(second.id, JobUpdate("running", progress=p + 1))
    mine = store.events(job_id=first.id)
    assert [(e.job_id, e.progress) for e in mine] == [(first.id, p) for p in (10.0, 20.0, 30.0)]
    assert store.events(job_id=first.id, after=mine[0].id) == mine[1:]
    assert store.events(job_id=first.id, after=mine[0].id, limit=1) == mine[1:2]
    assert store.events(job_id=first.id, after=mine[-1].id) == []
    assert store.events(job_id="missing") == []
    assert [e.job_id for e in store.events(job_id=second.id)] == [second.id] * 3


# -- dead letters ------------------------------------------------------------------------


def test_dead_letter_kept_and_replayed_once(store: Any) -> None:
    update = JobUpdate("succeeded", output={"images": ["x.png"]})
    letter = store.add_dead_letter("ghost", update, delivery_id="d-9", body=b'{"raw": 1}')
    assert (letter.job_id, letter.delivery_id, letter.update, letter.body, letter.reason) == (
        "ghost",
        "d-9",
        update,
        b'{"raw": 1}',
        "not_found",
    )
    assert letter.replayed_at is None
    assert store.dead_letters() == [letter]
    assert store.dead_letters(job_id="other") == []

    # Still unknown: nothing changes, the letter stays.
    assert store.replay_dead_letter(letter.id).outcome is Outcome.NOT_FOUND
    assert store.dead_letters() == [letter]

    store.create({}, job_id="ghost")
    result = store.replay_dead_letter(letter.id)
    assert result.outcome is Outcome.APPLIED
    assert result.job.output == {"images": ["x.png"]}
    assert store.dead_letters() == []
    [replayed] = store.dead_letters(include_replayed=True)
    assert replayed.replayed_at is not None
    # Replaying again, or the sender's retry of the same delivery, is a duplicate.
    assert store.replay_dead_letter(letter.id).outcome is Outcome.DUPLICATE
    assert store.apply("ghost", update, delivery_id="d-9").outcome is Outcome.DUPLICATE
    assert len(store.events()) == 1


def test_sender_retry_before_replay_applies_once(store: Any) -> None:
    update = JobUpdate("running", progress=50)
    letter = store.add_dead_letter("ghost", update, delivery_id="d-1")
    store.create({}, job_id="ghost")
    assert store.apply("ghost", update, delivery_id="d-1").applied
    assert store.replay_dead_letter(letter.id).outcome is Outcome.DUPLICATE
    assert len(store.events()) == 1


def test_unknown_dead_letter(store: Any) -> None:
    with pytest.raises(DeadLetterNotFoundError):
        store.replay_dead_letter(12345)


def test_dead_letters_oldest_first_and_limited(store: Any) -> None:
    for i, job_id in itertools.product(range(2), ("a", "b")):
        store.add_dead_letter(job_id, JobUpdate("running", progress=i))
    letters = store.dead_letters()
    assert [d.job_id for d in letters] == ["a", "b", "a", "b"]
    assert [d.id for d in letters] == sorted(d.id for d in letters)
    assert len(store.dead_letters(limit=3)) == 3
    assert [d.update.progress for d in store.dead_letters(job_id="b")] == [0.0, 1.0]


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.create({"prompt": "a\x00b"}),
        lambda s: s.create({}, metadata={"k\x00": 1}),
        lambda s: s.create({}, owner_id="u\x00"),
        lambda s: s.create({}, job_id="j\x00"),
        lambda s: s.apply("j\x00", JobUpdate("running")),
        lambda s: s.apply("j", JobUpdate("running"), delivery_id="d\x00"),
        lambda s: s.get("j\x00"),
        lambda s: s.add_dead_letter("j\x00", JobUpdate("running")),
        lambda s: s.create({"prompt": "lone \ud800 surrogate"}),
        lambda s: s.create({}, kind="\udfff"),
        lambda s: s.apply("j", JobUpdate("succeeded", output=["\ud800"])),
    ],
)
def test_unstorable_text_is_refused_everywhere(store: Any, call: Any) -> None:
    # PostgreSQL cannot store NUL or lone surrogates in text or JSONB: no store accepts them.
    store.create({}, job_id="j")
    # Ids have stricter alphabets of their own, which refuse NUL as well.
    with pytest.raises(ValidationError, match=r"NUL|job id is|delivery id is"):
        call(store)
    assert [j.id for j in store.list()] == ["j"]
    assert store.events() == []


def test_nul_in_output_or_error_is_refused(store: Any) -> None:
    job = store.create({})
    with pytest.raises(ValidationError, match="NUL"):
        store.apply(job.id, JobUpdate("succeeded", output={"text": "\x00"}))
    with pytest.raises(ValidationError, match="NUL"):
        JobError("oom", "\x00")
    with pytest.raises(ValidationError, match="surrogate"):
        JobUpdate("failed", remote_id="\ud800")
    # Real non-ASCII text, astral planes included, is kept as it is.
    assert store.apply(job.id, JobUpdate("running", output={"t": "fox \U0001f98a ü"})).applied
    assert store.get(job.id).output == {"t": "fox \U0001f98a ü"}
    # A backslash followed by "u0000" is ordinary text, not a NUL.
    assert store.apply(job.id, JobUpdate("succeeded", output={"text": "\\u0000"})).applied
    assert store.get(job.id).output == {"text": "\\u0000"}


def test_one_dead_letter_per_delivery_id(store: Any) -> None:
    first = store.add_dead_letter("gone", JobUpdate("running"), delivery_id="d-1", body=b"1")
    again = store.add_dead_letter("gone", JobUpdate("succeeded"), delivery_id="d-1", body=b"2")
    assert again == first
    assert [d.id for d in store.dead_letters()] == [first.id]
    # Letters without a delivery id are each kept.
    store.add_dead_letter("gone", JobUpdate("running"))
    store.add_dead_letter("gone", JobUpdate("running"))
    assert len(store.dead_letters()) == 3


def test_past_a_hundred_letters_for_a_job_a_retry_still_adds_nothing(store: Any) -> None:
    for n in range(101):
        store.add_dead_letter("gone", JobUpdate("running"), delivery_id=f"d-{n}")
    store.add_dead_letter("gone", JobUpdate("running"), delivery_id="d-0")
    store.add_dead_letter("gone", JobUpdate("running"), delivery_id="d-100")
    assert len(store.dead_letters(job_id="gone", limit=1000)) == 101


def test_a_replayed_letter_still_absorbs_retries(store: Any) -> None:
    letter = store.add_dead_letter("late", JobUpdate("succeeded"), delivery_id="d-1")
    store.create({}, job_id="late")
    assert store.replay_dead_letter(letter.id).applied
    again = store.add_dead_letter("late", JobUpdate("succeeded"), delivery_id="d-1")
    assert again.id == letter.id
    assert again.replayed_at is not None
    assert store.dead_letters(include_replayed=True) == [again]


@pytest.mark.parametrize("reason", ["", "r" * 256, "a\x00b"])
def test_a_dead_letter_reason_no_column_holds_is_refused(store: Any, reason: str) -> None:
    with pytest.raises(ValidationError, match="reason"):
        store.add_dead_letter("gone", JobUpdate("running"), reason=reason)
    assert store.dead_letters() == []


# -- get_by_remote_id ------------------------------------------------------------------


def test_a_job_is_found_by_the_remote_id_an_applied_update_set(store: Any) -> None:
    job = store.create({}, job_id="ours")
    with pytest.raises(JobNotFoundError, match="remote id 'pred_1'") as info:
        store.get_by_remote_id("pred_1")
    assert isinstance(info.value, LookupError)
    assert (info.value.remote_id, info.value.job_id) == ("pred_1", None)
    # An update that does not apply records no remote id.
    store.apply(job.id, JobUpdate("running", progress=50))
    stale = store.apply(job.id, JobUpdate("submitted", remote_id="pred_1"))
    assert stale.outcome is Outcome.STALE
    with pytest.raises(JobNotFoundError):
        store.get_by_remote_id("pred_1")
    applied = store.apply(job.id, JobUpdate("running", progress=60, remote_id="pred_1")).job
    assert store.get_by_remote_id("pred_1") == applied == store.get(job.id)
    # Later updates without a remote id keep it; a job id is not a remote id.
    done = store.apply(job.id, JobUpdate("succeeded")).job
    assert store.get_by_remote_id("pred_1") == done
    with pytest.raises(JobNotFoundError):
        store.get_by_remote_id("ours")


@pytest.mark.parametrize("remote_id", ["a b/c?d#é", "r" * 255, "\U0001f98a"])
def test_any_remote_id_a_job_can_carry_finds_it(store: Any, remote_id: str) -> None:
    # Remote ids are the backend's: any text the column holds, not the job-id alphabet.
    job = store.create({})
    store.apply(job.id, JobUpdate("submitted", remote_id=remote_id))
    assert store.get_by_remote_id(remote_id).id == job.id


def test_a_changed_remote_id_finds_the_job_by_the_new_one_only(store: Any) -> None:
    """A backend never renames its ids: a new remote id means a new remote job (a
    resubmission), and the job is found by the remote id it carries now."""
    job = store.create({})
    store.apply(job.id, JobUpdate("submitted", remote_id="r-old"))
    moved = store.apply(job.id, JobUpdate("running", remote_id="r-new")).job
    assert store.get_by_remote_id("r-new") == moved
    with pytest.raises(JobNotFoundError, match="r-old"):
        store.get_by_remote_id("r-old")
    store.apply(job.id, JobUpdate("running", progress=5, remote_id="r-new"))
    assert store.get_by_remote_id("r-new").progress == 5.0


def test_jobs_sharing_a_remote_id_resolve_to_the_newest(store: Any) -> None:
    """Two backends' ids can collide: the newest job (in the order of `list`) wins,
    whichever took the id last, and the older one is found again once the newer one
    carries another remote id."""
    older, newer = store.create({}, job_id="a-older"), store.create({}, job_id="b-newer")
    assert [j.id for j in store.list()] == [newer.id, older.id]
    store.apply(newer.id, JobUpdate("submitted", remote_id="shared"))
    store.apply(older.id, JobUpdate("submitted", remote_id="shared"))
    assert store.get_by_remote_id("shared").id == newer.id
    store.apply(newer.id, JobUpdate("running", remote_id="other"))
    assert store.get_by_remote_id("shared").id == older.id
    assert store.get_by_remote_id("other").id == newer.id


def test_jobs_found_by_remote_id_never_alias_stored_state(store: Any) -> None:
    job = store.create({"prompt": "fox"})
    store.apply(job.id, JobUpdate("succeeded", output={"images": ["1.png"]}, remote_id="r"))
    found = store.get_by_remote_id("r")
    found.input["prompt"] = "changed"
    found.output["images"].append("2.png")
    found.metadata["x"] = 1
    again = store.get_by_remote_id("r")
    assert (again.input, again.output, again.metadata) == (
        {"prompt": "fox"},
        {"images": ["1.png"]},
        {},
    )


@pytest.mark.parametrize("bad", ["", 42, None, "r" * 256, "r\x00", "\ud800"])
def test_a_remote_id_no_store_could_hold_is_refused(store: Any, bad: Any) -> None:
    with pytest.raises(ValidationError, match="remote_id"):
        store.get_by_remote_id(bad)


def test_a_letter_kept_under_a_remote_id_replays_to_the_job_named(store: Any) -> None:
    early = JobUpdate("succeeded", remote_id="r-9", output={"n": 1})
    letter = store.add_dead_letter("remote:r-9", early, delivery_id="d-early")
    job = store.create({}, job_id="late-job")
    assert store.replay_dead_letter(letter.id).outcome is Outcome.NOT_FOUND
    result = store.replay_dead_letter(letter.id, job_id=job.id)
    assert result.applied
    assert store.get(job.id).output == {"n": 1}
    assert store.dead_letters() == []
    # Under its delivery id: a second replay is a duplicate.
    assert store.replay_dead_letter(letter.id, job_id=job.id).outcome is Outcome.DUPLICATE
