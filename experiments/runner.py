"""One Hydra job = one run: its directory, skip/retry, results.json, W&B; plus the sweep's failure check.

Run directory: ``<runs_root>/<experiment_name>/<model.name>/<dataset.name>/<variant.name>/seed<k>/`` holding
``config.yaml`` (resolved), ``metrics.jsonl`` (one line per ``log_step``), ``results.json`` (written last, atomically)
and ``wandb/``. A run whose results.json says ``ok`` is skipped unless ``force=true``; anything else is run again
from an empty directory. A run that raises is recorded as ``failed`` and the sweep goes on; ``RunOutcomes`` (a Hydra
callback) then exits non-zero, listing the failed runs. Every job appends its outcome to ``runs.jsonl`` in Hydra's
sweep directory, which is how the callback sees jobs that ran in other processes (joblib, submitit). The callback
also checks every job's config first, so a bad value anywhere in a sweep stops it before its first run.
"""

from __future__ import annotations

import contextlib
import copy
import gc
import importlib.metadata
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any

import torch
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, open_dict, read_write
from omegaconf.errors import OmegaConfBaseException

import pmdrop
from experiments import distributed, tracking

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_FILE = "results.json"
JOURNAL_FILE = "runs.jsonl"
# Keys that do not change what a run computes: a finished run is still "the same run" when only these differ.
_NOT_PART_OF_RUN = ("force", "logger", "runs_root")
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class InvalidConfig(CompactHydraException):
    """A config value that fails validation; Hydra prints only its one-line message."""


# ----------------------------------------------------------------------------- validation


def check_run_config(cfg: DictConfig) -> None:
    """The runner's own keys: types of the root keys, names used as directory names, variant and logger choices."""
    for key, kind in (("seed", int), ("force", bool), ("experiment_name", str), ("runs_root", str)):
        value = cfg.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"{key} must be {kind.__name__}, got {value!r} ({type(value).__name__})")
    for key in ("experiment_name", "model.name", "dataset.name", "variant.name"):
        name = OmegaConf.select(cfg, key)
        if not isinstance(name, str) or not _SAFE_NAME.match(name) or name in (".", ".."):
            raise ValueError(f"{key}={name!r} names a directory: use letters, digits and _ . - only")
    if cfg.variant.name not in pmdrop.variant_names():
        raise ValueError(f"unknown variant.name {cfg.variant.name!r}; valid: {', '.join(pmdrop.variant_names())}")
    tracking.check_logger_config(cfg)


def check_job_config(cfg: DictConfig) -> None:
    """What a job validates before any work: the runner's keys, then ``train.check_config`` (model/dataset/trainer)."""
    from experiments import train

    resolved = copy.deepcopy(cfg)  # checks may detach sub-configs, whose interpolations would then dangle
    try:
        OmegaConf.resolve(resolved)
        check_run_config(resolved)
        train.check_config(resolved)
    except (ValueError, OmegaConfBaseException) as error:
        raise InvalidConfig(str(error)) from None


# ----------------------------------------------------------------------------- files


def run_dir_for(cfg: DictConfig) -> Path:
    names = (cfg.experiment_name, cfg.model.name, cfg.dataset.name, cfg.variant.name, f"seed{cfg.seed}")
    return Path(cfg.runs_root).joinpath(*names)


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable: {value!r}")


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """Serialise first, write a temp file in the same directory, then rename: readers never see a partial file."""
    text = json.dumps(data, indent=2, default=_jsonable) + "\n"
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def read_results(run_dir: Path) -> dict[str, Any] | None:
    """The run's results, or None when there are none to read (the run is then not finished, and runs)."""
    try:
        return json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Over the keys that define a run: ``["trainer.steps: 10 -> 20", ...]`` for keys both configs have, and the
    keys only one of them has (the config schema grew or shrank since the old run, e.g. a new trainer option)."""

    def flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        items: dict[str, Any] = {}
        for key, value in tree.items():
            if not prefix and key in _NOT_PART_OF_RUN:
                continue
            if isinstance(value, Mapping):
                items.update(flat(value, f"{prefix}{key}."))
            else:
                items[f"{prefix}{key}"] = value
        return items

    old_flat, new_flat = flat(old), flat(new)
    changed = [
        f"{key}: {old_flat[key]!r} -> {new_flat[key]!r}"
        for key in sorted(old_flat.keys() & new_flat.keys())
        if old_flat[key] != new_flat[key]
    ]
    return changed, sorted(old_flat.keys() ^ new_flat.keys())


# ----------------------------------------------------------------------------- run fields


# What the project writes into its own tree (``make demo`` puts the report in ``results/``): not code, so changes
# there do not make the runs that follow "dirty".
OUTPUT_DIRS = ("results",)


@cache
def git_commit(repo: Path = REPO_ROOT) -> str | None:
    """HEAD's hash, with ``-dirty`` when tracked files outside ``OUTPUT_DIRS`` differ from it."""

    def git(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=30)

    try:
        head = git("rev-parse", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".",
                      *(f":(exclude){path}" for path in OUTPUT_DIRS))
    except (OSError, subprocess.TimeoutExpired):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("-dirty" if changed.stdout.strip() else "")


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def run_fields(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """The runner's part of results.json (the measured part comes from ``train.run_training``)."""
    return {
        "experiment": cfg.experiment_name,
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "variant": cfg.variant.name,
        "seed": cfg.seed,
        "status": None,
        "error": None,
        "started_at": _now(),
        "finished_at": None,
        "wall_time_s": None,
        "git_commit": git_commit(),
        "torch_version": torch.__version__,  # with its build tag, e.g. +cu130
        "transformers_version": package_version("transformers"),
        "timm_version": package_version("timm"),
        "hostname": socket.gethostname(),
        "command": shlex.join(["python", *sys.argv]),
        "overrides": list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None,
        "config": OmegaConf.to_container(cfg, resolve=True),
        "run_dir": str(run_dir.resolve()),
    }


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.2f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.1f} KiB"


def summary_line(results: Mapping[str, Any]) -> str:
    """One line per run: where, status, headline metric, throughput, saved mask bytes."""
    where = f"{results['model']}/{results['dataset']}"
    head = f"[{results['experiment']}] {where} {results['variant']} seed={results['seed']}"
    if results["status"] != "ok":
        return f"{head}: {results['status']}: {results['error']}"
    search = results.get("maxfit")
    if search:  # a max-feasible-size search, not a training run
        parts = [f"largest {search['axis']} {search['largest']} ({search['budget']} budget, "
                 f"{len(search['probes'])} probes)", f"{results['wall_time_s']:.1f} s"]
        return f"{head}: ok  " + "  ".join(parts)
    metric = results.get("task_metric")
    value = (results.get("metrics") or {}).get(metric)
    throughput = results.get("throughput_samples_per_s")
    mask_bytes = results.get("saved_mask_bytes")
    parts = [
        f"{metric}={value:.4f}" if value is not None else f"{metric}=n/a",
        f"{throughput:.1f} samples/s" if throughput is not None else "throughput n/a",
        f"saved masks {_size(mask_bytes)}" if mask_bytes is not None else "saved masks n/a",
        f"{results['wall_time_s']:.1f} s",
    ]
    return f"{head}: ok  " + "  ".join(parts)


# ----------------------------------------------------------------------------- the job


def _free_accelerator_memory() -> None:
    """After a failed run (e.g. CUDA OOM), so the next job of this process starts with free memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _settle(results: dict[str, Any]) -> None:
    """Under DDP, wait for every rank's outcome: a run that failed on any rank failed, with each failed rank's error."""
    errors = distributed.settle(results.get("error"))
    if errors:
        results.update(status="failed", error="; ".join(errors))


def _train(cfg: DictConfig, run_dir: Path, results: dict[str, Any]) -> None:
    """Run training with metrics going to metrics.jsonl and the tracker; fill ``results`` (under DDP with every rank's
    outcome: results.json is written once, after the run has ended on all ranks) and write results.json."""
    from experiments import train

    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tracker = None
        try:  # opening the tracker too: under DDP the other ranks are training and wait for this rank's outcome
            tracker = stack.enter_context(tracking.open_tracker(cfg, run_dir))
            metrics_file = stack.enter_context((run_dir / "metrics.jsonl").open("w"))

            def log_step(step: int, metrics: dict[str, Any]) -> None:
                metrics_file.write(json.dumps({"step": step, **metrics}, default=_jsonable) + "\n")
                metrics_file.flush()
                tracker.log(step, metrics)

            results.update(train.run_training(cfg, log_step))
            results["status"] = "ok"
        except Exception as error:
            results.update(status="failed", error=f"{type(error).__name__}: {error}", traceback=traceback.format_exc())
        _settle(results)
        results.update(finished_at=_now(), wall_time_s=round(time.perf_counter() - started, 3))
        write_json_atomic(run_dir / RESULTS_FILE, results)
        if tracker is not None:
            tracker.finish(results)
    if results["status"] != "ok":
        _free_accelerator_memory()


def _follow_main_process(cfg: DictConfig) -> dict[str, Any]:
    """A DDP rank other than 0: trains in step with rank 0 when rank 0 trains, and writes nothing."""
    from experiments import train

    if not distributed.broadcast_from_main(None):
        return {"status": "skipped"}
    try:
        results = {"status": "ok", "error": None, **train.run_training(cfg, lambda step, metrics: None)}
    except Exception as error:  # as rank 0 does: record, free memory, go on with the sweep
        results = {"status": "failed", "error": f"{type(error).__name__}: {error}"}
    _settle(results)
    if results["status"] != "ok":
        _free_accelerator_memory()
    return results


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run (or skip) the run ``cfg`` describes; returns its results.json content.

    Under DDP (torchrun, or submitit with several tasks) rank 0 decides whether to run, and writes the run's files
    and its W&B run; the other ranks train alongside it, and a run that fails on any rank fails on all of them
    (experiments/distributed.py).
    """
    check_job_config(cfg)
    if not distributed.is_main_process():
        return _follow_main_process(cfg)
    run_dir = run_dir_for(cfg)
    previous = read_results(run_dir)
    finished = previous is not None and previous.get("status") == "ok" and not cfg.force
    distributed.broadcast_from_main(not finished)  # the other ranks train only when this one does
    if finished:
        changed, unmatched = config_differences(previous.get("config", {}), OmegaConf.to_container(cfg, resolve=True))
        if changed:
            shown = "; ".join(changed[:3]) + ("; ..." if len(changed) > 3 else "")
            error = (
                f"{run_dir} holds a finished run with a different config ({shown}): "
                "pass force=true to replace it or choose another experiment_name"
            )
            print(f"{run_dir}: failed: {error}", flush=True)
            record_outcome(run_dir, "failed", error)
            return {**previous, "status": "failed", "error": error}
        # Keys that only one side has come from a schema change since (new options, at their defaults): same run.
        since = f"; keys new or gone since it ran: {', '.join(unmatched)}" if unmatched else ""
        print(f"{summary_line(previous)}  skipped (finished){since}", flush=True)
        record_outcome(run_dir, "skipped", None)
        return previous

    results = run_fields(cfg, run_dir)
    try:  # a retry or forced rerun starts from an empty directory: no file of an earlier attempt survives
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    except OSError as error:  # no directory, no results.json; under DDP the other ranks are training: fail it there
        results.update(status="failed", error=f"{type(error).__name__}: {error}")
        _settle(results)
    else:
        _train(cfg, run_dir, results)
    print(summary_line(results), flush=True)
    record_outcome(run_dir, results["status"], results["error"])
    return results


# ----------------------------------------------------------------------------- the sweep's outcome


def journal_path(hydra_cfg: DictConfig) -> Path:
    """``runs.jsonl`` in Hydra's output directory of this invocation (the sweep dir, or the single run's dir)."""
    base = hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else hydra_cfg.run.dir
    return Path(base) / JOURNAL_FILE


def record_outcome(run_dir: Path, status: str, error: str | None) -> None:
    if not HydraConfig.initialized():
        return
    journal = journal_path(HydraConfig.get())
    journal.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"run_dir": str(run_dir), "status": status, "error": error}) + "\n"
    with journal.open("a") as file:  # one short append per job: safe across joblib worker processes
        file.write(line)


def read_outcomes(journal: Path) -> list[dict[str, Any]]:
    if not journal.exists():
        return []
    return [json.loads(line) for line in journal.read_text().splitlines() if line.strip()]


def report_outcomes(journal: Path) -> int:
    """Print the sweep's tally and its failed runs; returns the number of failed runs."""
    outcomes = read_outcomes(journal)
    if not outcomes:  # no job got as far as a run (a config error, reported by Hydra)
        return 0
    failed = [outcome for outcome in outcomes if outcome["status"] == "failed"]
    counts = {status: sum(o["status"] == status for o in outcomes) for status in ("ok", "skipped", "failed")}
    print(f"{len(outcomes)} runs: {counts['ok']} ok, {counts['skipped']} skipped (finished), {counts['failed']} failed")
    for outcome in failed:
        print(f"FAILED {outcome['run_dir']}: {outcome['error']}")
    return len(failed)


def sweep_job_configs(config: DictConfig) -> list[DictConfig]:
    """Every job config of a basic-sweeper multirun, composed as the sweeper will compose it (without ``hydra``)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser

    loader = GlobalHydra.instance().config_loader()
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    overrides = OverridesParser.create(config_loader=loader).parse_overrides(params + list(config.hydra.overrides.task))
    job_configs = []
    for batch in BasicSweeper.split_arguments(overrides, None):
        for job in batch:
            job_config = loader.load_sweep_config(config, list(job))
            with read_write(job_config), open_dict(job_config):
                del job_config["hydra"]
            job_configs.append(job_config)
    return job_configs


class RunOutcomes(Callback):
    """Checks every job's config before a sweep's first run; exits 1 at the end if any run failed, listing them."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        journal_path(config.hydra).unlink(missing_ok=True)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        journal_path(config.hydra).unlink(missing_ok=True)
        if not config.hydra.sweeper._target_.endswith(".BasicSweeper"):
            return  # other sweepers choose jobs as they go; each job still checks itself before any work
        try:
            for job_config in sweep_job_configs(config):
                check_job_config(job_config)
        except CompactHydraException as error:
            # Hydra turns an exception raised in a callback into a warning and carries on: exit instead.
            print(error, file=sys.stderr)
            sys.exit(1)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._exit_on_failure(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        self._exit_on_failure(config)

    @staticmethod
    def _exit_on_failure(config: DictConfig) -> None:
        if report_outcomes(journal_path(config.hydra)):
            sys.exit(1)
