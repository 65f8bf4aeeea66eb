"""The report on runs the real harness made (run.py, tiny TinyBERT, 2 steps): the analytic memory model matches
the bytes measured inside training exactly, and the report reads the harness's files as they are. (ViT and
Longformer runs of the harness were checked the same way by hand: exact too; too slow to repeat in CI.)"""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from scripts import report
from scripts.load import load_runs
from scripts.memory_check import predictions

REPO = Path(__file__).resolve().parents[2]
TINY = ["trainer.steps=2", "trainer.measure_step=1", "trainer.eval_batches=1", "trainer.log_every=1",
        "trainer.batch_size=4", "logger=disabled", "experiment_name=harness"]


@pytest.fixture(scope="module")
def harness_runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("runs")
    overrides = ["model=tinybert", "dataset=synthetic_pairs", "model.hidden_size=32", "model.num_attention_heads=4",
                 "model.intermediate_size=64", "model.num_hidden_layers=2", "trainer.paired=true",
                 "trainer.grad_cosine_every=1", "variant=baseline,pmdrop", "seed=0,1"]
    done = subprocess.run([sys.executable, "run.py", "-m", *overrides, *TINY, f"runs_root={root}"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return root


def test_memory_model_is_exact_on_harness_runs(harness_runs):
    memory = predictions(load_runs([harness_runs]))
    assert set(memory["variant"]) == {"baseline", "pmdrop"} and len(memory) == 2
    assert (memory["activation_rel_error"] == 0).all(), memory[["model", "variant", "activation_rel_error", "note"]]
    assert (memory["mask_rel_error"] == 0).all(), memory[["model", "variant", "mask_rel_error", "note"]]


def test_report_reads_harness_runs(harness_runs, tmp_path):
    assert report.main([str(harness_runs), "--out", str(tmp_path), "--wandb", "disabled"]) == 0
    comparisons = pd.read_csv(tmp_path / "comparisons_harness.csv", comment="#").set_index("metric")
    assert comparisons.loc["task_value", "case"] == "identical"  # exact core: the same F1 seed by seed
    assert comparisons.loc["saved_activation_bytes", "case"] == "identical"
    assert (tmp_path / "plots" / "grad_cosine.png").exists()
