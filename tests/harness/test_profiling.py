"""trainer.profile: experiments/profiling.py writes a torch.profiler trace; scripts/profile_share.py reads it."""

import json

import pytest
import torch

from experiments.profiling import TRACE_FILE, step_profiler, traces_into
from scripts.profile_share import main, profile_share


def test_the_trace_covers_the_steps_after_the_skipped_ones_and_labels_sum_to_their_share(tmp_path):
    layer = torch.nn.Linear(32, 32)
    with traces_into(tmp_path), step_profiler(True, torch.device("cpu"), skip=2, steps=3) as step_done:
        for _ in range(7):
            with torch.profiler.record_function("pmdrop.pack"):
                y = layer(torch.randn(16, 32))
            y.sum().backward()
            step_done()
    share = profile_share(tmp_path / TRACE_FILE)
    assert share.steps == 3
    # one label, not nested: its sum is the union of its spans (up to the trace's float microseconds)
    assert share.label_us["cpu"]["pmdrop.pack"] == pytest.approx(share.total_us["cpu"], abs=0.01)
    assert 0 < share.total_us["cpu"] < share.step_us
    assert 0 < share.fraction("cpu") < 1


def test_nested_labels_count_once_in_the_total(tmp_path):
    def event(name, ts, dur, cat="user_annotation"):
        return {"ph": "X", "name": name, "ts": ts, "dur": dur, "cat": cat}

    trace = tmp_path / "trace.json"
    trace.write_text(json.dumps({"traceEvents": [
        event("ProfilerStep#1", 0, 100), event("pmdrop.draw", 10, 30), event("pmdrop.pack", 20, 10),
        event("pmdrop.unpack", 60, 10), event("pmdrop.unpack", 62, 5, "gpu_user_annotation"),
        event("aten::mm", 0, 50, "cpu_op")]}))
    share = profile_share(trace)
    assert share.label_us["cpu"] == {"pmdrop.draw": 30, "pmdrop.pack": 10, "pmdrop.unpack": 10}
    assert share.total_us == {"cpu": 40, "gpu": 5} and share.fraction("cpu") == pytest.approx(0.4)


def test_not_profiling_costs_nothing_and_profiling_needs_a_directory(capsys, tmp_path):
    with step_profiler(False, torch.device("cpu"), skip=0, steps=1) as step_done:
        assert step_done is None
    with pytest.raises(ValueError, match="needs the run directory"), step_profiler(True, torch.device("cpu"),
                                                                                     skip=0, steps=1):
        pass
    (tmp_path / "t.json").write_text(json.dumps([{"ph": "X", "name": "ProfilerStep#0", "ts": 0, "dur": 10,
                                                  "cat": "user_annotation"}]))
    assert main([str(tmp_path / "t.json")]) == 0
    assert "no pmdrop labels" in capsys.readouterr().out


def test_a_profiled_run_writes_its_trace_into_its_run_directory(launch, runs_root):
    from .conftest import TINY_RUN

    assert launch(*TINY_RUN, "variant=pmdrop", "trainer.profile=true", "trainer.profile_steps=2",
                  "trainer.timing_warmup_steps=1") == 0
    share = profile_share(runs_root / "default/tinybert/synthetic_pairs/pmdrop/seed0" / TRACE_FILE)
    assert share.steps == 2 and share.step_us > 0
