"""The lifecycle rules, exhaustively: every (current status, update status) pair and
every progress / sequence ordering of running-after-running."""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

import attrs
import pytest

from jobhook import Job, JobError, JobStatus, JobUpdate, Outcome, ValidationError
from jobhook._lifecycle import allowed_from, decide, judge

P, SUB, R, OK, F, C = (
    JobStatus.PENDING,
    JobStatus.SUBMITTED,
    JobStatus.RUNNING,
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELED,
)
A, S, X = Outcome.APPLIED, Outcome.STALE, Outcome.CONFLICT

# Written out by hand from DESIGN.md, not computed: rows are the job's status, columns
# the update's status, in the order pending, submitted, running, succeeded, failed,
# canceled. (Running-after-running without progress or sequence applies.)
EXPECTED = {
    P: [A, A, A, A, A, A],
    SUB: [S, A, A, A, A, A],
    R: [S, S, A, A, A, A],
    OK: [S, S, S, S, X, X],
    F: [S, S, S, X, S, X],
    C: [S, S, S, X, X, S],
}
ORDER = [P, SUB, R, OK, F, C]
T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)


def make_job(status: JobStatus, progress: float | None = None, sequence: int | None = None) -> Job:
    return Job(
        id="job-1",
        kind="image",
        owner_id="user-1",
        input={"prompt": "a red fox"},
        status=status,
        progress=progress,
        output=None,
        error=None,
        remote_id=None,
        sequence=sequence,
        metadata={},
        version=1,
        created_at=T0,
        updated_at=T0,
        completed_at=None,
    )


@pytest.mark.parametrize(("current", "new"), list(itertools.product(ORDER, ORDER)))
def test_every_status_pair(current: JobStatus, new: JobStatus) -> None:
    expected = EXPECTED[current][ORDER.index(new)]
    assert judge(make_job(current), JobUpdate(new)) is expected


@pytest.mark.parametrize("new", ORDER)
def test_allowed_from_matches_judge(new: JobStatus) -> None:
    # The SQL store's WHERE clause is built from allowed_from: it must say what judge says.
    allowed = {s for s in ORDER if judge(make_job(s), JobUpdate(new)) is Outcome.APPLIED}
    assert set(allowed_from(new)) == allowed


@pytest.mark.parametrize(
    ("stored", "incoming", "expected"),
    [
        (40.0, 30.0, S),  # backwards
        (40.0, 40.0, A),  # same progress is not backwards
        (40.0, 41.0, A),
        (None, 10.0, A),
        (40.0, None, A),  # an update without progress keeps the stored one
    ],
)
def test_running_progress_never_goes_back(
    stored: float | None, incoming: float | None, expected: Outcome
) -> None:
    job = make_job(R, progress=stored)
    assert judge(job, JobUpdate(R, progress=incoming)) is expected


@pytest.mark.parametrize(
    ("stored", "incoming", "expected"),
    [(3, 2, S), (3, 3, S), (3, 4, A), (None, 1, A), (3, None, A)],
)
def test_running_sequence_must_grow(
    stored: int | None, incoming: int | None, expected: Outcome
) -> None:
    job = make_job(R, progress=10.0, sequence=stored)
    assert judge(job, JobUpdate(R, progress=50.0, sequence=incoming)) is expected


def test_sequence_checked_even_when_progress_grows() -> None:
    job = make_job(R, progress=10.0, sequence=5)
    assert judge(job, JobUpdate(R, progress=90.0, sequence=4)) is S


def test_progress_checked_even_when_sequence_grows() -> None:
    job = make_job(R, progress=50.0, sequence=5)
    assert judge(job, JobUpdate(R, progress=40.0, sequence=6)) is S


@pytest.mark.parametrize("current", [P, SUB])
def test_running_from_earlier_status_ignores_sequence_and_progress(current: JobStatus) -> None:
    job = make_job(current, progress=80.0, sequence=9)
    assert judge(job, JobUpdate(R, progress=10.0, sequence=1)) is A


def test_succeeded_straight_from_pending_then_submitted_is_stale() -> None:
    job = make_job(P)
    outcome, done = decide(job, JobUpdate(OK, output={"images": ["a.png"]}), T0)
    assert outcome is A
    assert done.status is OK
    assert done.progress == 100.0
    assert done.completed_at == T0
    assert judge(done, JobUpdate(SUB, remote_id="r-1")) is S


def test_first_terminal_status_wins() -> None:
    _, failed = decide(make_job(R), JobUpdate(F, error=JobError("nsfw", "blocked")), T0)
    assert judge(failed, JobUpdate(OK)) is X
    assert judge(failed, JobUpdate(F)) is S


def test_transition_sets_only_what_the_update_carries() -> None:
    job = attrs.evolve(make_job(R, progress=40.0, sequence=3), remote_id="r-1")
    later = T0 + timedelta(seconds=5)
    outcome, new = decide(job, JobUpdate(R, progress=60.0), later)
    assert outcome is A
    assert (new.progress, new.sequence, new.remote_id) == (60.0, 3, "r-1")
    assert (new.version, new.updated_at, new.completed_at) == (2, later, None)


def test_terminal_update_keeps_highest_sequence() -> None:
    job = make_job(R, progress=40.0, sequence=7)
    _, new = decide(job, JobUpdate(F, error=JobError("oom"), sequence=2), T0)
    assert new.sequence == 7
    assert new.error == JobError("oom", "")


def test_failed_keeps_progress_succeeded_fills_it() -> None:
    _, failed = decide(make_job(R, progress=40.0), JobUpdate(F), T0)
    assert failed.progress == 40.0
    _, done = decide(make_job(R, progress=40.0), JobUpdate(OK, progress=99.5), T0)
    assert done.progress == 99.5


@pytest.mark.parametrize("bad", [-0.1, 100.01, float("nan"), float("inf"), "40", True])
def test_progress_outside_0_to_100_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match="progress"):
        JobUpdate(R, progress=bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", [-1, 1.5, "3", False])
def test_bad_sequence_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError, match="sequence"):
        JobUpdate(R, sequence=bad)  # type: ignore[arg-type]


def test_unknown_status_is_refused() -> None:
    with pytest.raises(ValueError, match="done"):
        JobUpdate("done")  # type: ignore[arg-type]


def test_int_progress_becomes_float() -> None:
    assert JobUpdate(R, progress=40).progress == 40.0
    assert isinstance(JobUpdate(R, progress=40).progress, float)


def test_status_ranks_and_terminal() -> None:
    assert [s.rank for s in ORDER] == [0, 1, 2, 3, 3, 3]
    assert [s.terminal for s in ORDER] == [False, False, False, True, True, True]
    assert str(OK) == "succeeded"
    assert str(Outcome.NOT_FOUND) == "not_found"
