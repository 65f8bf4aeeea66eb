import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from experiments.record import Measurement

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
    "trainer.batch_size=4",
    "trainer.steps=4",
    "trainer.warmup_steps=1",
    "trainer.log_every=2",
    "trainer.throughput_window=2",
    "trainer.measure_step=1",
    "trainer.eval_batches=1",
    "trainer.device=cpu",
]
# What a stand-in ``run_training`` returns: the contract's measured fields.
B_FIELDS = {
    "device": "cpu",
    "steps": 3,
    "batch_size": 4,
    "seq_len": 32,
    "num_params": 1000,
    "precision": "fp32",
    "peak_memory_bytes": 10**8,
    "peak_memory_kind": "cpu_peak_rss",
    "saved_mask_bytes": 2**20,
    "saved_activation_bytes": 2**22,
    "saved_parameter_bytes": 4000,
    "dropout_calls": {"pmdrop": 5, "torch": 0},
    "throughput_samples_per_s": 123.4,
    "tokens_per_s": 3948.8,
    "step_time_s": 0.03,
    "task_metric": "f1",
    "metrics": {"f1": 0.75, "accuracy": 0.7},
    "final_loss": 0.5,
    "grad_cosine": None,
}


class StandInTraining:
    """Stands in for ``train.run_training``: records its calls, logs 3 steps, raises ``failing[(variant, seed)]``."""

    def __init__(self):
        self.calls = []
        self.failing = {}

    def __call__(self, cfg, log_step):
        self.calls.append((cfg.variant.name, cfg.seed))
        for step in (1, 2, 3):
            log_step(step, {"loss": 1.0 / step + cfg.seed, "lr": 1e-3})
        error = self.failing.get((cfg.variant.name, cfg.seed))
        if error is not None:
            raise error
        return Measurement(**B_FIELDS)


@pytest.fixture
def training(monkeypatch: pytest.MonkeyPatch) -> StandInTraining:
    stand_in = StandInTraining()
    monkeypatch.setattr("experiments.train.run_training", stand_in)
    return stand_in


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


@pytest.fixture
def launch(runs_root: Path, monkeypatch: pytest.MonkeyPatch):
    """Run ``run.py`` in this process (basic launcher: jobs run here, so monkeypatches apply); returns the exit code.

    Adds ``runs_root=<tmp>`` and, unless a logger is chosen, ``logger=disabled``; Hydra leaves logging alone.
    """
    from hydra.core.global_hydra import GlobalHydra

    def run(*args: str) -> int:
        argv = [str(REPO_ROOT / "run.py"), *args, f"runs_root={runs_root}"]
        argv += ["hydra/job_logging=none", "hydra/hydra_logging=none"]
        if not any(arg.startswith("logger=") for arg in args):
            argv.append("logger=disabled")
        monkeypatch.setattr(sys, "argv", argv)
        GlobalHydra.instance().clear()
        try:
            runpy.run_path(argv[0], run_name="__main__")
        except SystemExit as exit_:
            return 0 if exit_.code is None else int(exit_.code)
        finally:
            GlobalHydra.instance().clear()
        return 0

    return run


@pytest.fixture(autouse=True)
def data_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own data cache (token ids of tokenized corpora), also for the runs it starts in subprocesses."""
    root = tmp_path_factory.mktemp("data_cache")
    monkeypatch.setenv("PMDROP_DATA_CACHE", str(root))
    return root
