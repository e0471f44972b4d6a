"""Progress bars in plain text: redrawn in place on a terminal, one line per change otherwise."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from typing import IO

from jobhook._models import Job, JobStatus

__all__ = ["ProgressBoard", "bar"]

_ASCII_MARKS = {
    JobStatus.PENDING: ".",
    JobStatus.SUBMITTED: ".",
    JobStatus.RUNNING: ">",
    JobStatus.SUCCEEDED: "+",
    JobStatus.FAILED: "x",
    JobStatus.CANCELED: "x",
}
_MARKS = {
    JobStatus.PENDING: "·",
    JobStatus.SUBMITTED: "·",
    JobStatus.RUNNING: "▸",
    JobStatus.SUCCEEDED: "✓",
    JobStatus.FAILED: "✗",
    JobStatus.CANCELED: "✗",
}


def bar(progress: float | None, width: int = 24) -> str:
    """``[#########...............]`` for a progress from 0 to 100."""
    filled = round(width * (progress or 0.0) / 100)
    return "[" + "#" * filled + "." * (width - filled) + "]"


#: Columns around the label and the bar: "  ✓ " + " [" + "] " + "100%" + "  " + status.
_FIXED_WIDTH = 4 + 2 + 2 + 4 + 2 + max(len(s.value) for s in JobStatus)
_BAR_WIDTH, _NARROWEST_BAR, _NARROWEST_LABEL = 24, 10, 8


class ProgressBoard:
    """Draws one bar per job, each line at most ``width`` columns wide.

    ``live`` (default: whether ``out`` is a terminal tall enough for every bar)
    redraws every bar in place with ANSI cursor movement; otherwise a line is written
    when a job's status changes or its progress crosses a quarter, so logs and pipes
    stay readable. ``width`` defaults to the terminal's (``shutil.get_terminal_size``):
    a line that wrapped would break the redrawing. The bar narrows first, then the label.
    """

    def __init__(
        self,
        out: IO[str],
        labels: dict[str, str],
        *,
        live: bool | None = None,
        width: int | None = None,
    ) -> None:
        self.out = out
        self.labels = labels
        size = shutil.get_terminal_size()
        if live is None:
            # Redrawing in place needs every bar on screen at once.
            live = out.isatty() and len(labels) < size.lines - 1
        self.live = live
        self._drawn = 0
        self._seen: dict[str, tuple[JobStatus, int]] = {}
        room = (width or size.columns) - _FIXED_WIDTH
        label_width = min(32, max((len(t) for t in labels.values()), default=8))
        self._bar_width = max(_NARROWEST_BAR, min(_BAR_WIDTH, room - label_width))
        self._label_width = max(_NARROWEST_LABEL, min(label_width, room - self._bar_width))
        self._marks, self._ellipsis = _MARKS, "…"
        try:
            "".join(_MARKS.values()).encode(getattr(out, "encoding", None) or "ascii")
        except (LookupError, UnicodeEncodeError, AttributeError):
            self._marks, self._ellipsis = _ASCII_MARKS, "~"  # a terminal without Unicode

    def _line(self, job: Job) -> str:
        label = self.labels.get(job.id, job.id)
        if len(label) > self._label_width:
            label = label[: self._label_width - 1] + self._ellipsis
        percent = "    " if job.progress is None else f"{job.progress:3.0f}%"
        mark = self._marks[job.status]
        return (
            f"  {mark} {label.ljust(self._label_width)} {bar(job.progress, self._bar_width)} "
            f"{percent}  {job.status}"
        )

    def update(self, jobs: Sequence[Job]) -> None:
        """Show ``jobs`` as they now are."""
        if self.live:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F")  # back to the first bar
            for job in jobs:
                self.out.write("\x1b[2K" + self._line(job) + "\n")
            self._drawn = len(jobs)
        else:
            for job in jobs:
                step = int((job.progress or 0) // 25)
                key = (job.status, step)
                if self._seen.get(job.id) != key:
                    self._seen[job.id] = key
                    self.out.write(self._line(job).rstrip() + "\n")
        self.out.flush()
