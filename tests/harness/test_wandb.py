"""W&B: one offline run per job, read back with wandb 0.31's ``wandb leet inspect``; logger=disabled never calls W&B;
online with no reachable server: one bounded wait, then offline."""

import json
import logging
import shutil
import subprocess
import sys
import time
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


@pytest.fixture
def fresh_wandb():
    """W&B reads WANDB_BASE_URL when it sets up, once per process: set up afresh before and after the test."""
    import wandb

    wandb.teardown()
    yield wandb
    wandb.teardown()


def test_online_without_a_reachable_server_waits_once_then_logs_offline(launch, training, runs_root, monkeypatch,
                                                                        caplog, fresh_wandb):
    wandb = fresh_wandb

    # A key but no server: nothing listens on loopback port 9 (discard), so every request is refused.
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "3")
    monkeypatch.setattr(tracking, "_unreachable", [], raising=False)
    online_waits = []
    init = wandb.init

    def timed_init(*args, **kwargs):
        started = time.perf_counter()
        try:
            return init(*args, **kwargs)
        finally:
            if kwargs.get("mode") == "online":
                online_waits.append(time.perf_counter() - started)

    monkeypatch.setattr(wandb, "init", timed_init)
    with caplog.at_level(logging.WARNING, logger="experiments.tracking"):
        assert launch("-m", "variant=pmdrop", "seed=0,1", "logger=wandb_online", "experiment_name=wb") == 0

    assert len(online_waits) == 1 and online_waits[0] < 3 + 30  # one bounded wait, not W&B's 90 s per run
    (warning,) = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert "within 3 s" in warning and "127.0.0.1:9" in warning and "wandb sync" in warning
    for seed in (0, 1):
        run_dir = runs_root / f"wb/tinybert/synthetic_pairs/pmdrop/seed{seed}"
        assert json.loads((run_dir / "results.json").read_text())["status"] == "ok"
        assert not list((run_dir / "wandb").glob("run-*"))  # the unconnected attempt left nothing
        summary = json.loads(inspect(run_dir, "--summary"))  # the run itself is complete, offline, for `wandb sync`
        assert summary["state"] == "finished" and summary["name"] == f"pmdrop-seed{seed}"
        history = [r["history"]["item"] for r in map(json.loads, inspect(run_dir).splitlines())
                   if r["type"] == "history"]
        assert [h["loss"] for h in history] == [1.0 / step + seed for step in (1, 2, 3)]


def test_bad_init_timeout_names_the_key(monkeypatch):
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "soon")
    with pytest.raises(ValueError, match=r"W&B init timeout 'soon' .*must be a number of seconds > 0"):
        tracking.init_timeout_s(OmegaConf.create({"logger": {"init_timeout_s": 30}}))
