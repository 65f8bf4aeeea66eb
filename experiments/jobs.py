"""What a job is before it runs: its config checked (the runner's keys, then model/dataset/trainer, then a search's
``maxfit`` block), and its kind: a memory plan for a config with a ``memory_plan`` block (experiments/memory_plan.py,
on the meta device), a size search for a config with a ``maxfit`` block (experiments/maxfit.py), a
training run otherwise (experiments/train.py). Both kinds share experiments/step.py and return a
``record.Measurement``."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable

import torch
from hydra.errors import CompactHydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import pmdrop

from . import maxfit, memory_plan, tracking, train
from .record import Measurement

LogStep = Callable[[int, dict], None]
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class InvalidConfig(CompactHydraException):
    """A config value that fails validation; Hydra prints only its one-line message."""


def is_search(cfg: DictConfig) -> bool:
    return cfg.get("maxfit") is not None


def is_plan(cfg: DictConfig) -> bool:
    return cfg.get("memory_plan") is not None


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


def check_config(cfg: DictConfig) -> None:
    """One-line ValueError for a bad model/dataset/trainer value (and ``maxfit`` block), before any work."""
    train.check_config(cfg)
    if not is_search(cfg) and not is_plan(cfg):  # a search or a plan repeats samples to fill a batch
        train.check_batch_fits_data(cfg)
    if is_search(cfg):
        maxfit.check_maxfit_config(cfg)
    if is_plan(cfg):
        memory_plan.check_plan_config(cfg)


def check_job_config(cfg: DictConfig) -> None:
    """What a job validates before any work: the runner's keys, then the job kind's; InvalidConfig (one line)."""
    resolved = copy.deepcopy(cfg)  # checks may detach sub-configs, whose interpolations would then dangle
    try:
        OmegaConf.resolve(resolved)
        check_run_config(resolved)
        check_config(resolved)
    except (ValueError, OmegaConfBaseException) as error:
        raise InvalidConfig(str(error)) from None


def check_resources(cfg: DictConfig) -> None:
    """What a job needs besides valid values, checked before any work: a pretrained checkpoint it can load (local
    data files are checked with the dataset config); InvalidConfig (one line)."""
    from .models import check_checkpoint_available

    try:
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
