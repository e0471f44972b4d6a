"""Every benchmark script runs in ``--quick`` mode and prints its table of targets.

Only that they run: timings on a shared CI machine prove nothing, so no number is
checked here (see docs/performance.md for the measured ones).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
SCRIPTS = sorted(p.name for p in BENCHMARKS.glob("bench_*.py"))


def test_every_benchmark_is_covered() -> None:
    assert SCRIPTS == [
        "bench_async.py",
        "bench_consumer.py",
        "bench_group_commit.py",
        "bench_mysql.py",
        "bench_scale.py",
        "bench_sse.py",
        "bench_submit.py",
        "bench_throughput.py",
        "bench_webhook.py",
    ]


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_in_quick_mode(script: str, tmp_path: Path) -> None:
    pytest.importorskip("standardwebhooks")  # baseline (b) verifies with it
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), "--quick", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "targets met:" in done.stdout
    # Throughput is reported, not judged; the others need their server to judge.
    needs = {
        "bench_mysql.py": "JOBHOOK_TEST_MYSQL_URL",
        "bench_group_commit.py": "JOBHOOK_TEST_POSTGRES_URL",
    }
    if script != "bench_throughput.py" and (script not in needs or os.environ.get(needs[script])):
        assert "| target" in done.stdout
