"""W&B: one offline run per job, read back with wandb 0.31's ``wandb leet inspect``; logger=disabled never calls W&B."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from experiments import tracking

WANDB_CLI = Path(sys.executable).with_name("wandb")


def inspect(run_dir: Path, *flags: str) -> str:
    (offline_run,) = (run_dir / "wandb").glob("offline-run-*")
    proc = subprocess.run(
        [str(WANDB_CLI), "leet", "inspect", "--json", *flags, str(offline_run)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return proc.stdout


@pytest.mark.skipif(shutil.which(str(WANDB_CLI)) is None, reason="the wandb CLI is not installed")
def test_each_job_is_its_own_finished_offline_run(launch, training, runs_root, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    training.failing[("pmdrop", 1)] = RuntimeError("boom")
    assert launch("-m", "variant=pmdrop", "seed=0,1", "logger=wandb_offline", "experiment_name=wb") == 1

    run_ids = set()
    for seed, state in ((0, "finished"), (1, "failed")):
        run_dir = runs_root / f"wb/tinybert/synthetic_pairs/pmdrop/seed{seed}"
        summary = json.loads(inspect(run_dir, "--summary"))
        run_ids.add(summary["run_id"])
        assert summary["state"] == state and summary["name"] == f"pmdrop-seed{seed}"
        assert summary["config"]["seed"] == seed and summary["config"]["variant"]["name"] == "pmdrop"
        results = json.loads((run_dir / "results.json").read_text())
        assert summary["config"] == results["config"]
        assert summary["summary"]["status"] == results["status"]
        if state == "finished":
            assert summary["summary"]["metrics"] == {"f1": 0.75, "accuracy": 0.7}
            assert summary["summary"]["saved_mask_bytes"] == 2**20

        records = [json.loads(line) for line in inspect(run_dir).splitlines()]
        (run,) = [r["run"] for r in records if r["type"] == "run"]
        assert run["run_group"] == "wb/tinybert/synthetic_pairs" and run["job_type"] == "pmdrop"
        assert {"wb", "tinybert", "synthetic_pairs", "pmdrop", f"seed{seed}"} <= set(run["tags"])
        history = [r["history"]["item"] for r in records if r["type"] == "history"]
        logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert [{k: h[k] for k in ("step", "loss", "lr")} for h in history] == logged
    assert len(run_ids) == 2  # the second job did not log into the first job's run


def test_disabled_logger_makes_no_wandb_call(launch, training, runs_root, monkeypatch):
    import wandb

    def no_wandb(*args, **kwargs):
        raise AssertionError("logger=disabled called wandb")

    for name in ("init", "log", "finish"):
        monkeypatch.setattr(wandb, name, no_wandb)
    assert launch("-m", "seed=0,1", "logger=disabled") == 0
    assert not list(runs_root.rglob("wandb"))
    assert len(list(runs_root.rglob("results.json"))) == 2


@pytest.mark.parametrize(("env", "expected"), [(None, "offline"), ("disabled", "disabled"), ("online", "online")])
def test_wandb_mode_env_wins_over_the_config(monkeypatch, env, expected):
    if env is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", env)
    assert tracking.wandb_mode(OmegaConf.create({"logger": {"mode": "offline"}})) == expected


def test_bad_wandb_mode_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "ofline")
    with pytest.raises(ValueError, match=r"unknown W&B mode 'ofline'.*valid: offline, online, disabled"):
        tracking.wandb_mode(OmegaConf.create({"logger": {"mode": "offline"}}))
