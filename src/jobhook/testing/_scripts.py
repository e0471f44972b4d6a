"""What the fake backend reports for each job (scripts) and what goes wrong (chaos)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence

import attrs

from jobhook._models import JSON, JobError, JobStatus, JobUpdate
from jobhook.testing._png import png_data_uri

__all__ = ["Chaos", "Script", "Scripts", "Submission"]


@attrs.frozen
class Submission:
    """One submit request as the fake received it (repeats are recorded too).

    ``job_id`` is the app's job id: the one the submit names, or for a hosted backend
    (which takes none) the one its callback URL names. ``kind`` is ``None`` where the
    backend's submit carries none.
    """

    job_id: str
    callback_url: str
    kind: str | None
    input: JSON
    idempotency_key: str | None
    headers: Mapping[str, str]


#: Decides what the fake reports for a job, in order: the last update should be terminal.
Script = Callable[[Submission], Sequence[JobUpdate]]


def _running(progress: Sequence[float]) -> list[JobUpdate]:
    return [
        JobUpdate(JobStatus.RUNNING, progress=value, sequence=number)
        for number, value in enumerate(progress, start=1)
    ]


def _default_output(job_id: str) -> JSON:
    return {"images": [f"https://fake.invalid/{job_id}/1.png"]}


class Scripts:
    """Ready-made scripts for `FakeGenerator` (each returns a `Script`)."""

    @staticmethod
    def success(*, progress: Sequence[float] = (30.0, 70.0), output: JSON = None) -> Script:
        """``running`` at each ``progress``, then ``succeeded`` with ``output`` (by
        default ``{"images": ["https://fake.invalid/<job_id>/1.png"]}``)."""

        def script(submission: Submission) -> list[JobUpdate]:
            result = _default_output(submission.job_id) if output is None else output
            return [*_running(progress), JobUpdate(JobStatus.SUCCEEDED, output=result)]

        return script

    @staticmethod
    def pictures(
        base_url: str | None = None,
        *,
        count: int = 1,
        progress: Sequence[float] = (30.0, 70.0),
    ) -> Script:
        """Like `success`, with real pictures: ``{"images": [...]}`` names ``count``
        small PNGs, served by the fake at ``{base_url}/files/{job_id}/{n}.png`` (the
        URL `FakeGenerator.serve` yields), or inline as ``data:image/png;base64,…`` URIs
        without ``base_url`` (as Cog answers when it has no upload URL).
        """

        def script(submission: Submission) -> list[JobUpdate]:
            names = [f"{submission.job_id}/{n}.png" for n in range(1, count + 1)]
            if base_url is None:
                images = [png_data_uri(name) for name in names]
            else:
                images = [f"{base_url.rstrip('/')}/files/{name}" for name in names]
            update = JobUpdate(JobStatus.SUCCEEDED, output={"images": images})
            return [*_running(progress), update]

        return script

    @staticmethod
    def failure(
        code: str = "generation_failed",
        message: str = "the fake generator failed",
        *,
        progress: Sequence[float] = (30.0,),
    ) -> Script:
        """``running`` at each ``progress``, then ``failed`` with ``JobError(code, message)``.

        An impersonated provider reports it as it reports failures: ``code="aborted"``
        is Replicate's ``aborted``, ``code="timed_out"`` RunPod's ``TIMED_OUT``.
        """
        error = JobError(code, message)

        def script(submission: Submission) -> list[JobUpdate]:
            return [*_running(progress), JobUpdate(JobStatus.FAILED, error=error)]

        return script

    @staticmethod
    def cancellation(*, progress: Sequence[float] = (30.0,)) -> Script:
        """``running`` at each ``progress``, then ``canceled`` (by the backend)."""

        def script(submission: Submission) -> list[JobUpdate]:
            return [*_running(progress), JobUpdate(JobStatus.CANCELED)]

        return script

    @staticmethod
    def mixed(*, seed: int = 0, failed: float = 0.25, canceled: float = 0.1) -> Script:
        """Per job, a `failure` with probability ``failed``, a `cancellation` with
        probability ``canceled``, else a `success`; decided by the job id and ``seed``
        alone, so a rerun decides the same."""
        choices = (Scripts.failure(), Scripts.cancellation(), Scripts.success())

        def script(submission: Submission) -> Sequence[JobUpdate]:
            draw = random.Random(f"{seed}:{submission.job_id}").random()
            if draw < failed:
                return choices[0](submission)
            if draw < failed + canceled:
                return choices[1](submission)
            return choices[2](submission)

        return script


def _probability(_: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{attribute.name} must be a probability from 0 to 1, got {value!r}")


@attrs.frozen
class Chaos:
    """What goes wrong with the fake's callbacks, as in real networks.

    ``duplicate``: chance that a callback is sent twice (same ``webhook-id``, as an
    at-least-once sender does). ``reorder``: chance that a callback swaps places with
    the next one of the same job. ``drop``: chance that a callback (or a duplicate) is
    lost for good; the status endpoint still tells the truth. ``delay``: the longest
    random delay in seconds before a callback leaves (``background`` delivery only).
    ``seed`` makes a run repeatable.
    """

    duplicate: float = attrs.field(default=0.0, validator=_probability)
    reorder: float = attrs.field(default=0.0, validator=_probability)
    drop: float = attrs.field(default=0.0, validator=_probability)
    delay: float = attrs.field(default=0.0, validator=attrs.validators.ge(0.0))
    seed: int | None = None
