"""The report on planned runs (experiment=memory_plan, meta device): the planned tables and figure are written and
linked, every figure in them marked planned, a GPU run of the same shape set beside its plan, and the claims give
plans their own status."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

from scripts import planned_memory, report

REPO = Path(__file__).resolve().parents[2]


def test_the_report_writes_and_links_the_planned_memory_of_planned_runs(tmp_path):
    root, out = tmp_path / "runs", tmp_path / "report"
    # TinyBERT-4L at s512 (the batch figure's sequence length) and two batch sizes, cut to 2 layers: seconds on meta
    command = [sys.executable, "run.py", "-m", "experiment=memory_plan", "campaign/shape=tinybert_s128",
               "campaign.layers.full=2", "campaign.seq_len.full=512", "variant=baseline,pmdrop",
               "trainer.batch_size=4,8",
               "experiment_name=memory_plan_b${trainer.batch_size}", "logger=disabled", f"runs_root={root}"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    # a GPU run of one planned shape, as `make gpu-check` writes it: the report sets its measured peak beside the plan
    planned_run = root / "memory_plan_b4" / "tinybert-eager" / "synthetic_lm-s128-b32" / "pmdrop" / "seed0"
    measured = json.loads((planned_run / "results.json").read_text())
    measured.update(experiment="gpu_check", device="cuda:0", peak_memory_kind="cuda_max_memory_allocated",
                    peak_memory_bytes=2 * measured["peak_memory_bytes"])
    gpu_run = root / "gpu_check" / "tinybert-eager" / "synthetic_lm-s128-b32" / "pmdrop" / "seed0"
    gpu_run.mkdir(parents=True)
    (gpu_run / "results.json").write_text(json.dumps(measured))

    # the same shape planned again by another experiment (memory_plan and memory_plan_batch both plan BERT-Large b32)
    again = root / "memory_plan" / "tinybert-eager" / "synthetic_lm-s128-b32" / "baseline" / "seed0"
    again.mkdir(parents=True)
    replanned = json.loads((planned_run.parent.parent / "baseline" / "seed0" / "results.json").read_text())
    (again / "results.json").write_text(json.dumps({**replanned, "experiment": "memory_plan"}))

    report.main([str(root), "--out", str(out), "--wandb", "disabled"])

    table = pd.read_csv(out / "memory_plan.csv", comment="#")
    assert sorted(zip(table["variant"], table["batch_size"], strict=True)) == [
        ("baseline", 4), ("baseline", 8), ("pmdrop", 4), ("pmdrop", 8)]
    assert table["delta_pct"].map(type).eq(float).all()  # one baseline per shape, however often it was planned
    assert (table["status"] == planned_memory.STATUS).all() and (table["semantics"] == "cuda").all()
    pmdrop = table[table["variant"] == "pmdrop"]
    # each peak beside its own shape's baseline (at this size the weights, not the masks, make the peak)
    assert table[table["variant"] == "baseline"]["delta_pct"].eq(0).all() and pmdrop["delta_pct"].notna().all()
    # CUDA semantics: the baseline's bool masks take 8 times the packed ones
    baseline = table[table["variant"] == "baseline"].set_index("batch_size")["saved_mask_gb"]
    assert (baseline / pmdrop.set_index("batch_size")["saved_mask_gb"]).round(2).eq(8.0).all()
    beside = table.set_index(["variant", "batch_size"])["planned_vs_measured"]
    assert beside[("pmdrop", 4)] == 0.5 and beside.drop(("pmdrop", 4)).isna().all()
    assert (out / "memory_plan_batch.png").is_file()
    readme = (out / "README.md").read_text()
    for name in ("memory_plan.md", "memory_plan.csv", "memory_plan_batch.png"):
        assert f"]({name})" in readme
    assert not list(out.glob("summary_memory_plan*")) and not list(out.glob("comparisons_memory_plan*"))
    claims = pd.read_csv(out / "claims.csv", comment="#")
    assert planned_memory.STATUS in set(claims["status"])
