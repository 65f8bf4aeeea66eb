import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"
# Overrides that make a real run take a second or two on the CPU: a 1-layer, 32-wide BERT and a few steps.
TINY_RUN = [
    "model=tinybert",
    "model.num_hidden_layers=1",
    "model.hidden_size=32",
    "model.num_attention_heads=2",
    "model.intermediate_size=64",
    "dataset=synthetic_pairs",
    "dataset.seq_len=32",
    "trainer.batch_size=4",
    "trainer.steps=4",
    "trainer.warmup_steps=1",
    "trainer.log_every=2",
    "trainer.throughput_window=2",
    "trainer.measure_step=1",
    "trainer.eval_batches=1",
    "trainer.device=cpu",
]


def harness_env() -> dict[str, str]:
    """Environment of a test subprocess: offline everything, quiet W&B."""
    return {
        **os.environ,
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def run_py(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "run.py", *args],
        cwd=REPO_ROOT,
        env=harness_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def all_results(runs_root: Path) -> dict[str, dict]:
    """results.json of every run under ``runs_root``, keyed by the run dir relative to it."""
    return {
        str(path.parent.relative_to(runs_root)): json.loads(path.read_text())
        for path in sorted(runs_root.rglob("results.json"))
    }


@pytest.fixture
def runs_root(tmp_path: Path) -> Path:
    return tmp_path / "runs"
