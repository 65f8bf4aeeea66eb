"""One Hydra job = one run: its directory, skip or retry, its record (results.json), its W&B run.

Run directory: ``<runs_root>/<experiment_name>/<model.name>/<dataset.name>/<variant.name>/seed<k>/`` holding
``config.yaml`` (resolved), ``metrics.jsonl`` (one line per ``log_step``), ``results.json`` (the run's
``record.RunRecord``, written last, atomically) and ``wandb/``. A run whose record says ``ok`` is skipped unless
``force=true``; anything else (failed, diverged, interrupted, or a run whose files are damaged) is run again from an
empty directory. A run that raises is recorded as ``failed`` (``diverged`` for a non-finite loss or metric,
``interrupted`` for Ctrl-C or SIGTERM) and the sweep goes on. Before touching its directory a job claims the run's
lock (experiments/locking.py): a run another live process holds is left to it and reported, never written into.
What a sweep does around its jobs (checking every config first, the journal, the tally) is experiments/sweep.py;
what the job computes is experiments/jobs.py.
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
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from experiments import distributed, jobs, locking, profiling, record, stops, tracking
from experiments.jobs import run_dir_for
from experiments.jsonfiles import DamagedFile
from experiments.record import RunRecord, Status
from experiments.sweep import record_outcome


def read_previous(run_dir: Path) -> tuple[RunRecord | None, str | None]:
    """The record of an earlier attempt (None when there is none: the run is then not finished, and runs) and, when
    its files are damaged, one line saying how: an empty, truncated or non-object results.json, one that is not a
    record, or a metrics.jsonl line that is not JSON. A damaged run is not finished. A record of a schema version this
    code does not read raises ``record.RecordVersionError``: it is left alone."""
    try:
        previous = record.read_record(run_dir / record.RESULTS_FILE)
        if previous.status == Status.OK and (run_dir / record.METRICS_FILE).exists():
            record.read_metrics(run_dir / record.METRICS_FILE)
    except record.RecordVersionError:
        raise
    except FileNotFoundError:
        return None, None
    except (DamagedFile, record.RecordError) as damage:
        return None, str(damage)
    except OSError as error:
        return None, describe_os_error(error, "read", run_dir / record.RESULTS_FILE)
    return previous, None


def describe_os_error(error: OSError, doing: str, path: Path | None = None) -> str:
    """One line for a filesystem error: what was being done, where (the error's file, else ``path``), and the
    system's reason (No space left on device, Read-only file system...)."""
    where = error.filename or path
    return f"{type(error).__name__}: cannot {doing}{f' {where}' if where else ''}: {error.strerror or error}"


def prepare_run_dir(run_dir: Path) -> None:
    """An empty run directory: a retry or forced rerun keeps no file of an earlier attempt (the lock beside it, held by
    this job, stays)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    for entry in run_dir.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


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
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    if measured.memory_plan:  # planned on the meta device, not measured
        parts = [f"planned peak {_size(measured.peak_memory_bytes)} ({measured.memory_plan['semantics']} semantics)",
                 f"saved masks {_size(measured.saved_mask_bytes)}", f"{run.wall_time_s:.1f} s"]
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
    """Fill ``run`` for a job that raised: diverged, interrupted, or failed (a full disk's OSError too)."""
    if isinstance(error, stops.Diverged):
        run.status, run.error, run.diverged_step = Status.DIVERGED, str(error), error.step
    elif isinstance(error, KeyboardInterrupt):
        name = error.args[0] if isinstance(error, stops.Interrupted) else "SIGINT"
        run.status, run.error = Status.INTERRUPTED, f"interrupted by {name}"
    else:
        run.status, run.error = Status.FAILED, f"{type(error).__name__}: {error}"
        if with_traceback:
            run.traceback = traceback.format_exc()


def _settle(run: RunRecord) -> None:
    """Under DDP, wait for every rank's outcome: a run that failed on any rank failed, with each failed rank's error
    (a run this rank saw diverge or interrupted keeps that status)."""
    errors = distributed.settle(run.error)
    if errors:
        run.status = run.status if run.status in (Status.DIVERGED, Status.INTERRUPTED) else Status.FAILED
        run.error = "; ".join(errors)


def _close_after_failure(file: Any) -> None:
    """Close a run's file after the run failed; a full disk's error was the run's error already."""
    with contextlib.suppress(OSError):
        file.close()


def _finish_files(run_dir: Path, run: RunRecord) -> None:
    """results.json written last; when it cannot be (a full or read-only disk) the outcome still reaches the sweep's
    tally, the failure is said in one line, and no partial file stays: the temp file is gone, an empty metrics.jsonl
    too."""
    metrics = run_dir / record.METRICS_FILE
    with contextlib.suppress(OSError):
        if metrics.stat().st_size == 0:
            metrics.unlink()
    try:
        record.write_record(run_dir, run)
    except OSError as error:
        line = describe_os_error(error, "write", run_dir / record.RESULTS_FILE)
        run.error = line if run.status == Status.OK else f"{run.error}; {line}"
        run.status = Status.FAILED if run.status == Status.OK else run.status


def _run(cfg: DictConfig, run_dir: Path, run: RunRecord) -> None:
    """Run the job with metrics going to metrics.jsonl and the tracker; complete ``run`` (under DDP with every rank's
    outcome: results.json is written once, after the run has ended on all ranks) and write it."""
    started = time.perf_counter()
    interrupt: KeyboardInterrupt | None = None
    with contextlib.ExitStack() as stack:
        tracker = None
        try:  # opening the tracker too: under DDP the other ranks are training and wait for this rank's outcome
            tracker = stack.enter_context(tracking.open_tracker(cfg, run_dir))
            metrics_file = (run_dir / record.METRICS_FILE).open("w")
            stack.callback(_close_after_failure, metrics_file)
            stack.enter_context(profiling.traces_into(run_dir))  # trainer.profile's trace.json

            def log_step(step: int, metrics: dict[str, Any]) -> None:
                record.append_metrics(metrics_file, step, metrics)
                tracker.log(step, metrics)

            run.measurement = jobs.run(cfg, log_step)
            metrics_file.close()  # a full disk fails the run here, not while leaving this block
            run.status = Status.OK
        except KeyboardInterrupt as error:  # recorded, then the sweep stops (run.py says what finished)
            interrupt = error
            _fail(run, error)
        except Exception as error:
            _fail(run, error)
        _settle(run)
        run.finished_at, run.wall_time_s = _now(), round(time.perf_counter() - started, 3)
        _finish_files(run_dir, run)
        if tracker is not None:
            tracker.finish(run.to_json())
    if run.status != Status.OK:
        _free_accelerator_memory()
    if interrupt is not None:
        raise interrupt


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


def _not_claimed(run_dir: Path, status: str, line: str, error: str) -> dict[str, Any]:
    """A run this job did not claim (another process holds it, or the lock cannot be written): said, journaled."""
    distributed.broadcast_from_main(False)  # the other ranks do not train it either
    print(f"{run_dir}: {line}", flush=True)
    record_outcome(run_dir, status, error)
    return {"status": status, "error": error, "run_dir": str(run_dir)}


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run (or skip) the run ``cfg`` describes; returns its results.json content.

    Under DDP (torchrun, or submitit with several tasks) rank 0 decides whether to run, and writes the run's files
    and its W&B run; the other ranks train alongside it, and a run that fails on any rank fails on all of them
    (experiments/distributed.py).
    """
    jobs.check_job_config(cfg)
    jobs.check_resources(cfg)
    if not distributed.is_main_process():
        return _follow_main_process(cfg)
    run_dir = run_dir_for(cfg)
    try:
        lock = locking.RunLock(run_dir).claim()
    except locking.HeldElsewhere as held:
        holder = held.holder
        return _not_claimed(run_dir, "running elsewhere", f"running elsewhere: {holder} (since {holder.started_at}); "
                            "left to it", str(holder))
    except OSError as error:
        message = describe_os_error(error, "claim the run", locking.lock_path_for(run_dir))
        return _not_claimed(run_dir, "failed", f"failed: {message}", message)
    try:
        return _run_claimed(cfg, run_dir, lock)
    finally:
        lock.release()


def _run_claimed(cfg: DictConfig, run_dir: Path, lock: locking.RunLock) -> dict[str, Any]:
    """``run_job`` once this job holds the run's lock."""
    if lock.took_over is not None:
        print(f"{run_dir}: taking over from {lock.took_over}, which is gone", flush=True)
    try:
        previous, damage = read_previous(run_dir)
    except record.RecordVersionError as error:
        distributed.broadcast_from_main(False)
        print(f"{run_dir}: failed: {error}", flush=True)
        record_outcome(run_dir, "failed", str(error))
        return {"status": "failed", "error": str(error)}
    if damage:
        print(f"{run_dir}: damaged: {damage}; running it again", flush=True)
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
    try:
        prepare_run_dir(run_dir)
        OmegaConf.save(cfg, run_dir / record.CONFIG_FILE, resolve=True)
    except OSError as error:  # under DDP the other ranks are training: fail it there
        run.status, run.error = Status.FAILED, describe_os_error(error, "prepare the run directory", run_dir)
        _settle(run)
        with contextlib.suppress(OSError):
            (run_dir / record.CONFIG_FILE).unlink(missing_ok=True)  # perhaps written in part
            _finish_files(run_dir, run)  # recorded as failed, if the disk still takes that
    else:
        try:
            _run(cfg, run_dir, run)
        except KeyboardInterrupt:
            print(summary_line(run), flush=True)
            record_outcome(run_dir, str(run.status), run.error, damage)
            raise
    print(summary_line(run), flush=True)
    record_outcome(run_dir, str(run.status), run.error, damage)
    return run.to_json()
