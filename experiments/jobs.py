"""What a job is before it runs: its run directory, its config checked (the runner's keys and no key that nothing
reads, then model/dataset/trainer, then a search's ``maxfit`` block, then whether its variant runs on its device),
what it needs besides values (an output folder that takes files, a checkpoint it can load), and its kind: a memory
plan for a config with a ``memory_plan`` block (experiments/memory_plan.py, on the meta device), a size search for a
config with a ``maxfit`` block (experiments/maxfit.py), a training run otherwise (experiments/train.py). Both kinds
share experiments/step.py and return a ``record.Measurement``. A sweep checks every job with these before its first
run (experiments/sweep.py), and ``make suites-check`` with the same functions for the suites' target device
(experiments/suites_check.py)."""

from __future__ import annotations

import copy
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import pmdrop

from . import maxfit, memory_plan, tracking, train
from .record import Measurement
from .step import resolve_device

LogStep = Callable[[int, dict], None]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
# The keys at the root of a job config, each read by some part of the harness; any other (a misspelt group in an
# experiment config, e.g. ``trainr:``) would be read by nothing and silently change nothing.
ROOT_KEYS = {
    "seed", "experiment_name", "runs_root", "force",  # the runner
    "model", "dataset", "trainer", "variant", "logger",  # the groups, each checked by its schema
    "maxfit", "memory_plan",  # a job kind's block (experiments/maxfit.py, experiments/memory_plan.py)
    "campaign",  # the gpu_campaign / memory_plan shapes, read through interpolations into the groups
    "composability",  # the composability setting and world size: axes of the record (experiments/record.py)
}  # fmt: skip
VARIANT_KEYS = {"name"}  # a variant is its name in the core registry


class InvalidConfig(CompactHydraException):
    """A config value that fails validation; Hydra prints only its one-line message."""


def is_search(cfg: DictConfig) -> bool:
    return cfg.get("maxfit") is not None


def is_plan(cfg: DictConfig) -> bool:
    return cfg.get("memory_plan") is not None


def run_dir_for(cfg: DictConfig) -> Path:
    names = (cfg.experiment_name, cfg.model.name, cfg.dataset.name, cfg.variant.name, f"seed{cfg.seed}")
    return Path(cfg.runs_root).joinpath(*names)


def job_device(cfg: DictConfig) -> torch.device:
    """Where the job's steps run: the meta device for a memory plan, the trainer's device otherwise."""
    return torch.device("meta") if is_plan(cfg) else resolve_device(cfg.trainer.device)


def _check_read_keys(cfg: DictConfig) -> None:
    unread = sorted(set(cfg) - ROOT_KEYS)
    if unread:
        raise ValueError(f"{', '.join(unread)}: no part of the harness reads {'these keys' if unread[1:] else 'it'}; "
                         f"valid root keys: {', '.join(sorted(ROOT_KEYS))}")
    unread = sorted(set(cfg.variant) - VARIANT_KEYS)
    if unread:
        raise ValueError(f"{', '.join(f'variant.{key}' for key in unread)}: no part of the harness reads it; a variant "
                         "is its name only (variant.name)")


def check_run_config(cfg: DictConfig) -> None:
    """The runner's own keys: no key that nothing reads, types of the root keys, names used as directory names,
    variant and logger choices."""
    _check_read_keys(cfg)
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


def check_config(cfg: DictConfig) -> None:
    """One-line ValueError for a bad model/dataset/trainer value (and ``maxfit`` block), before any work."""
    train.check_config(cfg)
    if not is_search(cfg) and not is_plan(cfg):  # a search or a plan repeats samples to fill a batch
        train.check_batch_fits_data(cfg)
    if is_search(cfg):
        maxfit.check_maxfit_config(cfg)
    if is_plan(cfg):
        memory_plan.check_plan_config(cfg)


def check_job_config(cfg: DictConfig, device: torch.device | str | None = None) -> None:
    """What a job validates before any work: the runner's keys, then the job kind's, then that its variant runs on
    ``device`` (default: the job's own, ``job_device``); InvalidConfig (one line)."""
    resolved = copy.deepcopy(cfg)  # checks may detach sub-configs, whose interpolations would then dangle
    try:
        OmegaConf.resolve(resolved)
        check_run_config(resolved)
        check_config(resolved)
        pmdrop.check_runs_on(resolved.variant.name, job_device(resolved) if device is None else device)
    except (ValueError, OmegaConfBaseException) as error:
        raise InvalidConfig(str(error)) from None


def check_output_path(cfg: DictConfig) -> None:
    """``runs_root`` can be made and written: the nearest folder of it that exists takes a file (a probe, removed at
    once). A read-only disk, a path through a file or a folder without permission fail here, in one line; a run
    directory inside it that cannot be made fails that run alone, and the sweep goes on."""
    root = Path(cfg.runs_root)
    existing = next(path for path in (root, *root.parents) if path.exists())
    try:
        if not existing.is_dir():
            raise NotADirectoryError(f"{existing} is a file, not a folder")
        tempfile.TemporaryFile(dir=existing).close()
    except OSError as error:
        raise ValueError(f"runs_root={cfg.runs_root!r} cannot be written ({type(error).__name__}: cannot write in "
                         f"{existing}: {error.strerror or error}); point runs_root at a writable folder") from None


def check_resources(cfg: DictConfig) -> None:
    """What a job needs besides valid values, checked before any work: an output folder that takes files and a
    pretrained checkpoint it can load (local data files are checked with the dataset config); InvalidConfig (one
    line)."""
    from .models import check_checkpoint_available

    try:
        check_output_path(cfg)
        check_checkpoint_available(cfg.model)
    except ValueError as error:
        raise InvalidConfig(str(error)) from None


def run(cfg: DictConfig, log_step: LogStep) -> Measurement:
    """The job's work, on this rank; its measurement."""
    if cfg.trainer.get("compile"):
        # A sweep runs its jobs in one process: without a reset, the code objects of one model family gather every
        # earlier job's graphs, and once dynamo's recompile limit is hit it runs the rest of the sweep eagerly.
        torch.compiler.reset()
    if is_plan(cfg):
        return memory_plan.run_plan(cfg, log_step)
    return maxfit.run_search(cfg, log_step) if is_search(cfg) else train.run_training(cfg, log_step)
