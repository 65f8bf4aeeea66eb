"""The prepared GPU check runs end to end without a GPU: CUDA steps fall back or skip, each with its reason."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "gpu_check.sh"

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallbacks of the GPU check")


def _run(tmp_path: Path, **env: str) -> str:
    out = tmp_path / "out"
    subprocess.run(
        ["bash", str(SCRIPT)], check=True, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OUT": str(out), "PYTHON": sys.executable, **env},
    )
    return (out / "summary.txt").read_text()


def test_bench_falls_back_to_the_interpreter_smoke_on_cpu(tmp_path):
    summary = _run(tmp_path, STEPS="bench")
    assert "no CUDA device" in summary
    assert "bench: exit 0" in summary
    assert "smoke passed" in (tmp_path / "out" / "bench.log").read_text()
    assert "tests:" not in summary  # not asked for


def test_a_step_without_its_minimum_time_left_is_skipped_and_says_so(tmp_path):
    summary = _run(tmp_path, STEPS="tests bench", BUDGET_S="20")
    assert "tests: skipped, " in summary and "needs at least 60 s" in summary
    assert "bench: skipped, " in summary
    assert not (tmp_path / "out" / "tests.log").exists()
