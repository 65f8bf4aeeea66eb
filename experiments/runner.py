"""One Hydra job = one run: its directory, skip or retry, its record (results.json), its W&B run.

Run directory: ``<runs_root>/<experiment_name>/<model.name>/<dataset.name>/<variant.name>/seed<k>/`` holding
``config.yaml`` (resolved), ``metrics.jsonl`` (one line per ``log_step``), ``results.json`` (the run's
``record.RunRecord``, written last, atomically) and ``wandb/``. A run whose record says ``ok`` is skipped unless
``force=true``; anything else is run again from an empty directory. A run that raises is recorded as ``failed`` and
the sweep goes on. What a sweep does around its jobs (checking every config first, the journal, the tally) is
experiments/sweep.py; what the job computes is experiments/jobs.py.
"""

from __future__ import annotations

import contextlib
import gc
import importlib.metadata
import shlex
import shutil
import socket
import sys
import time
import traceback
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments import distributed, jobs, record, tracking
from experiments.record import RunRecord, Status
from experiments.sweep import record_outcome


def run_dir_for(cfg: DictConfig) -> Path:
    names = (cfg.experiment_name, cfg.model.name, cfg.dataset.name, cfg.variant.name, f"seed{cfg.seed}")
    return Path(cfg.runs_root).joinpath(*names)


def read_previous(run_dir: Path) -> RunRecord | None:
    """The record of an earlier attempt, or None when there is none to read (the run is then not finished, and runs).
    A record of a schema version this code does not read raises ``record.RecordVersionError``: it is left alone."""
    try:
        return record.read_record(run_dir / record.RESULTS_FILE)
    except record.RecordVersionError:
        raise
    except (OSError, ValueError):
        return None


def config_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Over the keys that define a run: ``["trainer.steps: 10 -> 20", ...]`` for keys both configs have, and the
    keys only one of them has (the config schema grew or shrank since the old run, e.g. a new trainer option)."""

    def flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
        items: dict[str, Any] = {}
        for key, value in tree.items():
            if isinstance(value, Mapping):
                items.update(flat(value, f"{prefix}{key}."))
            else:
                items[f"{prefix}{key}"] = value
        return items

    old_flat, new_flat = flat(record.run_defining(old)), flat(record.run_defining(new))
    changed = [
        f"{key}: {old_flat[key]!r} -> {new_flat[key]!r}"
        for key in sorted(old_flat.keys() & new_flat.keys())
        if old_flat[key] != new_flat[key]
    ]
    return changed, sorted(old_flat.keys() ^ new_flat.keys())


def package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_record(cfg: DictConfig, run_dir: Path) -> RunRecord:
    """The runner's part of the run's record, as the run starts (its measurement comes from ``jobs.run``)."""
    config = OmegaConf.to_container(cfg, resolve=True)
    return RunRecord(
        experiment=cfg.experiment_name,
        model=cfg.model.name,
        dataset=cfg.dataset.name,
        variant=cfg.variant.name,
        seed=cfg.seed,
        axes=record.axes_of(config),
        git_commit=record.git_commit(),
        command=shlex.join(["python", *sys.argv]),
        started_at=_now(),
        hostname=socket.gethostname(),
        torch_version=torch.__version__,
        transformers_version=package_version("transformers"),
        timm_version=package_version("timm"),
        overrides=list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None,
        config=config,
        run_dir=str(run_dir.resolve()),
    )


def _size(num_bytes: float) -> str:
    return f"{num_bytes / 2**20:.2f} MiB" if num_bytes >= 2**20 else f"{num_bytes / 2**10:.1f} KiB"


def summary_line(run: RunRecord) -> str:
    """One line per run: where, status, headline metric, throughput, saved mask bytes (or what a search found)."""
    head = f"[{run.experiment}] {run.model}/{run.dataset} {run.variant} seed={run.seed}"
    if run.status != Status.OK:
        return f"{head}: {run.status}: {run.error}"
    measured = run.measurement or record.Measurement()
    search = measured.maxfit
    if search:  # a max-feasible-size search, not a training run
        parts = [f"largest {search.axis} {search.largest} ({search.budget} budget, {len(search.probes)} probes)",
                 f"{run.wall_time_s:.1f} s"]
        return f"{head}: ok  " + "  ".join(parts)
    metric, throughput, mask_bytes = measured.task_metric, measured.throughput_samples_per_s, measured.saved_mask_bytes
    value = (measured.metrics or {}).get(metric)
    parts = [
        f"{metric}={value:.4f}" if value is not None else f"{metric}=n/a",
        f"{throughput:.1f} samples/s" if throughput is not None else "throughput n/a",
        f"saved masks {_size(mask_bytes)}" if mask_bytes is not None else "saved masks n/a",
        f"{run.wall_time_s:.1f} s",
    ]
    return f"{head}: ok  " + "  ".join(parts)


# ----------------------------------------------------------------------------- the job


def _free_accelerator_memory() -> None:
    """After a failed run (e.g. CUDA OOM), so the next job of this process starts with free memory."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _fail(run: RunRecord, error: BaseException, with_traceback: bool = True) -> None:
    run.status, run.error = Status.FAILED, f"{type(error).__name__}: {error}"
    if with_traceback:
        run.traceback = traceback.format_exc()


def _settle(run: RunRecord) -> None:
    """Under DDP, wait for every rank's outcome: a run that failed on any rank failed, with each failed rank's error."""
    errors = distributed.settle(run.error)
    if errors:
        run.status, run.error = Status.FAILED, "; ".join(errors)


def _run(cfg: DictConfig, run_dir: Path, run: RunRecord) -> None:
    """Run the job with metrics going to metrics.jsonl and the tracker; complete ``run`` (under DDP with every rank's
    outcome: results.json is written once, after the run has ended on all ranks) and write it."""
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        tracker = None
        try:  # opening the tracker too: under DDP the other ranks are training and wait for this rank's outcome
            tracker = stack.enter_context(tracking.open_tracker(cfg, run_dir))
            metrics_file = stack.enter_context((run_dir / record.METRICS_FILE).open("w"))

            def log_step(step: int, metrics: dict[str, Any]) -> None:
                record.append_metrics(metrics_file, step, metrics)
                tracker.log(step, metrics)

            run.measurement = jobs.run(cfg, log_step)
            run.status = Status.OK
        except Exception as error:
            _fail(run, error)
        _settle(run)
        run.finished_at, run.wall_time_s = _now(), round(time.perf_counter() - started, 3)
        record.write_record(run_dir, run)
        if tracker is not None:
            tracker.finish(run.to_json())
    if run.status != Status.OK:
        _free_accelerator_memory()


def _follow_main_process(cfg: DictConfig) -> dict[str, Any]:
    """A DDP rank other than 0: runs the job in step with rank 0 when rank 0 runs it, and writes nothing."""
    if not distributed.broadcast_from_main(None):
        return {"status": "skipped"}
    error = None
    try:
        jobs.run(cfg, lambda step, metrics: None)
    except Exception as raised:  # as rank 0 does: record, free memory, go on with the sweep
        error = f"{type(raised).__name__}: {raised}"
    errors = distributed.settle(error)
    if errors:
        _free_accelerator_memory()
    return {"status": str(Status.FAILED if errors else Status.OK), "error": "; ".join(errors) or None}


def _refuse_changed_config(run_dir: Path, previous: RunRecord, changed: list[str]) -> dict[str, Any]:
    shown = "; ".join(changed[:3]) + ("; ..." if len(changed) > 3 else "")
    error = (f"{run_dir} holds a finished run with a different config ({shown}): "
             "pass force=true to replace it or choose another experiment_name")
    print(f"{run_dir}: failed: {error}", flush=True)
    record_outcome(run_dir, "failed", error)
    return {**previous.to_json(), "status": "failed", "error": error}


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run (or skip) the run ``cfg`` describes; returns its results.json content.

    Under DDP (torchrun, or submitit with several tasks) rank 0 decides whether to run, and writes the run's files
    and its W&B run; the other ranks train alongside it, and a run that fails on any rank fails on all of them
    (experiments/distributed.py).
    """
    jobs.check_job_config(cfg)
    if not distributed.is_main_process():
        return _follow_main_process(cfg)
    run_dir = run_dir_for(cfg)
    try:
        previous = read_previous(run_dir)
    except record.RecordVersionError as error:
        distributed.broadcast_from_main(False)
        print(f"{run_dir}: failed: {error}", flush=True)
        record_outcome(run_dir, "failed", str(error))
        return {"status": "failed", "error": str(error)}
    finished = previous is not None and previous.status == Status.OK and not cfg.force
    distributed.broadcast_from_main(not finished)  # the other ranks train only when this one does
    if finished:
        changed, unmatched = config_differences(previous.config, OmegaConf.to_container(cfg, resolve=True))
        if changed:
            return _refuse_changed_config(run_dir, previous, changed)
        # Keys that only one side has come from a schema change since (new options, at their defaults): same run.
        since = f"; keys new or gone since it ran: {', '.join(unmatched)}" if unmatched else ""
        print(f"{summary_line(previous)}  skipped (finished){since}", flush=True)
        record_outcome(run_dir, "skipped", None)
        return previous.to_json()

    run = new_record(cfg, run_dir)
    try:  # a retry or forced rerun starts from an empty directory: no file of an earlier attempt survives
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        OmegaConf.save(cfg, run_dir / record.CONFIG_FILE, resolve=True)
    except OSError as error:  # no directory, no results.json; under DDP the other ranks are training: fail it there
        _fail(run, error, with_traceback=False)
        _settle(run)
    else:
        _run(cfg, run_dir, run)
    print(summary_line(run), flush=True)
    record_outcome(run_dir, str(run.status), run.error)
    return run.to_json()
