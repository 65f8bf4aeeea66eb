"""The largest batch size or sequence length whose training step fits a memory budget, per model and variant.

A config with a ``maxfit`` block (the ``conf/maxfit/`` searches) turns a job into a search instead of a training run:

    python run.py -m experiment=maxfit        # CPU, seconds: tiny models under a saved-for-backward budget
    python run.py -m experiment=maxfit_gpu    # the paper's shapes on a GPU's memory

The search (:func:`largest_fitting`) doubles the size from ``start`` until a probe fails or ``limit`` is reached,
then bisects between the last size that fit and the first that did not, in steps of ``multiple_of``. When fitting is
monotone in the size, that is the exact boundary after O(log size) probes. Each probe runs the model on one batch of
that size with a fresh optimizer; data and model are built once per sequence length (with the run's seed).

Budgets (``maxfit.budget``, a registry):

* ``cuda_memory``: ``maxfit.steps`` real training steps (forward, backward, AdamW step, so the optimizer's state
  exists) on the GPU, within its whole memory or ``memory_fraction`` of it (set with
  ``torch.cuda.set_per_process_memory_fraction``). A CUDA out-of-memory error is a failed probe: it is caught, the
  memory freed, and the search goes on. Measured: ``max_memory_allocated``.
* ``saved_bytes``: the bytes one training forward saves for backward (masks + activations, parameters excluded, by
  ``pmdrop.track_saved_tensors``) against ``budget_bytes``. The offline CPU stand-in: nothing runs out of memory.
* ``auto``: ``cuda_memory`` on a CUDA device, ``saved_bytes`` otherwise.

The measurement's ``maxfit`` (``record.MaxfitSearch``) holds the axis, the largest size, the budget and every probe
(``[size, fits, bytes]``); its searched field (``batch_size`` or ``seq_len``) holds the largest size that fit.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

import pmdrop

from . import distributed
from .data import TaskData, build_data
from .distributed import Ranks
from .models import build_model
from .record import MaxfitSearch, Measurement
from .step import Learner, device_name, prepare, resolve_device

# The config key each axis sets on a probe's config.
AXES = {"batch_size": ("trainer", "batch_size"), "seq_len": ("dataset", "seq_len")}


@dataclass
class MaxfitSchema:
    """Types of ``maxfit.*``."""

    axis: str = "batch_size"
    budget: str = "auto"
    budget_bytes: int | None = None
    memory_fraction: float | None = None
    start: int = 1
    limit: int = 4096
    multiple_of: int = 1
    steps: int = 2


def largest_fitting(fits: Callable[[int], bool], start: int = 1, limit: int = 4096, multiple_of: int = 1) -> int:
    """The largest multiple of ``multiple_of`` up to ``limit`` for which ``fits`` holds (0 if none), assuming
    ``fits`` is monotone: true up to a boundary, false beyond it. Exponential search from ``start``, then bisection."""
    top = limit // multiple_of
    unit = min(max(1, -(-start // multiple_of)), top)
    low, high = 0, top + 1  # in units of multiple_of: ``low`` fits (0 trivially), ``high`` does not (or is past limit)
    while unit < high:
        if fits(unit * multiple_of):
            low, unit = unit, (min(2 * unit, top) if unit < top else high)
        else:
            high = unit
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle * multiple_of):
            low = middle
        else:
            high = middle
    return low * multiple_of


class Budget(Protocol):
    limit_bytes: int

    def measure(self, learner: Learner, batch: dict[str, torch.Tensor]) -> tuple[bool, int]: ...

    def __enter__(self) -> Budget: ...

    def __exit__(self, *exc: object) -> None: ...


class SavedBytesBudget:
    """Bytes one training forward saves for backward (masks + activations) against ``maxfit.budget_bytes``."""

    def __init__(self, maxfit: DictConfig, device: torch.device) -> None:
        self.limit_bytes = maxfit.budget_bytes

    def measure(self, learner: Learner, batch: dict[str, torch.Tensor]) -> tuple[bool, int]:
        with pmdrop.track_saved_tensors(learner.model.parameters()) as saved:
            loss = learner.forward(batch)
        del loss
        used = saved.mask_bytes + saved.activation_bytes
        return used <= self.limit_bytes, used

    def __enter__(self) -> SavedBytesBudget:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


class CudaMemoryBudget:
    """Real training steps within the GPU's memory (or ``maxfit.memory_fraction`` of it); out of memory = no fit."""

    def __init__(self, maxfit: DictConfig, device: torch.device) -> None:
        self.device, self.steps = device, maxfit.steps
        self.fraction = maxfit.memory_fraction or 1.0
        self.limit_bytes = int(self.fraction * torch.cuda.get_device_properties(device).total_memory)

    def measure(self, learner: Learner, batch: dict[str, torch.Tensor]) -> tuple[bool, int]:
        torch.cuda.reset_peak_memory_stats(self.device)
        for _ in range(self.steps):
            learner.backward(learner.forward(batch))
            learner.update()
        torch.cuda.synchronize(self.device)
        return True, torch.cuda.max_memory_allocated(self.device)

    def __enter__(self) -> CudaMemoryBudget:
        torch.cuda.set_per_process_memory_fraction(self.fraction, self.device)
        return self

    def __exit__(self, *exc: object) -> None:
        torch.cuda.set_per_process_memory_fraction(1.0, self.device)  # later jobs of this process get it all


BUDGETS: dict[str, type] = {"saved_bytes": SavedBytesBudget, "cuda_memory": CudaMemoryBudget}


def _budget_name(maxfit: DictConfig, device: torch.device) -> str:
    if maxfit.budget == "auto":
        return "cuda_memory" if device.type == "cuda" else "saved_bytes"
    return maxfit.budget


def check_maxfit_config(cfg: DictConfig) -> None:
    """One-line ValueError for a bad ``maxfit`` block (after ``train.check_config``, by experiments/jobs.py)."""
    try:
        maxfit = OmegaConf.merge(OmegaConf.structured(MaxfitSchema), cfg.maxfit)
    except OmegaConfBaseException as error:
        raise ValueError(f"maxfit: {str(error).splitlines()[0]}") from None
    if maxfit.axis not in AXES:
        raise ValueError(f"maxfit.axis={maxfit.axis!r} is not valid; valid: {', '.join(AXES)}")
    if maxfit.budget not in (*BUDGETS, "auto"):
        raise ValueError(f"maxfit.budget={maxfit.budget!r} is not valid; valid: auto, {', '.join(BUDGETS)}")
    if maxfit.axis == "seq_len" and cfg.dataset.get("seq_len") is None:
        raise ValueError(f"maxfit.axis=seq_len needs a dataset with a seq_len; {cfg.dataset.name!r} has none")
    for key in ("start", "multiple_of", "steps"):
        if maxfit[key] < 1:
            raise ValueError(f"maxfit.{key}={maxfit[key]} must be >= 1")
    if maxfit.limit < max(maxfit.start, maxfit.multiple_of):
        raise ValueError(f"maxfit.limit={maxfit.limit} is below maxfit.start={maxfit.start} or "
                         f"maxfit.multiple_of={maxfit.multiple_of}")
    budget = _budget_name(maxfit, resolve_device(cfg.trainer.device))
    if budget == "saved_bytes" and (maxfit.budget_bytes is None or maxfit.budget_bytes < 1):
        raise ValueError(f"maxfit.budget=saved_bytes needs maxfit.budget_bytes >= 1, got {maxfit.budget_bytes}")
    if budget == "cuda_memory" and not torch.cuda.is_available():
        raise ValueError("maxfit.budget=cuda_memory but no CUDA device is visible; use maxfit.budget=saved_bytes")
    if maxfit.memory_fraction is not None and not 0.0 < maxfit.memory_fraction <= 1.0:
        raise ValueError(f"maxfit.memory_fraction={maxfit.memory_fraction} must be in (0, 1]")
    if distributed.current().world_size > 1:
        raise ValueError("a maxfit search runs in one process: launch it without torchrun")


def _sized(cfg: DictConfig, axis: str, size: int) -> DictConfig:
    sized = cfg.copy()
    group, key = AXES[axis]
    with open_dict(sized):
        sized[group][key] = size
    return sized


def _probe_batch(data: TaskData, batch_size: int, device: torch.device) -> dict[str, torch.Tensor]:
    return {key: value.to(device) for key, value in data.repeated_batch(batch_size).items()}


class _Workload:
    """Data and the converted model for one sequence length, kept while the search stays at that length."""

    def __init__(self) -> None:
        self.seq_len: int | None = None
        self.data: TaskData | None = None
        self.model: torch.nn.Module | None = None

    def build(self, cfg: DictConfig, device: torch.device) -> tuple[TaskData, torch.nn.Module]:
        seq_len = cfg.dataset.get("seq_len")
        if self.model is None or seq_len != self.seq_len:
            self.data = self.model = None  # free the previous length's model before building the next
            torch.manual_seed(cfg.seed)
            self.data = build_data(cfg.dataset, cfg.model, cfg.seed)
            self.model = pmdrop.convert(build_model(cfg.model, self.data).to(device), cfg.variant.name)
            self.seq_len = seq_len
        self.model.zero_grad(set_to_none=True)  # a probe that ran out of memory may have left gradients
        return self.data, self.model


def _measure(cfg: DictConfig, workload: _Workload, budget: Budget, device: torch.device) -> tuple[bool, int]:
    data, model = workload.build(cfg, device)
    learner = Learner(prepare(model, cfg.trainer, device, Ranks()), cfg.trainer, device)
    return budget.measure(learner, _probe_batch(data, cfg.trainer.batch_size, device))


def _probe(cfg: DictConfig, workload: _Workload, budget: Budget, device: torch.device) -> tuple[bool, int | None]:
    """One probe; its optimizer state, batch and graph are gone when it returns, also after running out of memory."""
    try:
        fits, used = _measure(cfg, workload, budget, device)
    except torch.OutOfMemoryError:
        fits, used = False, None
    if device.type == "cuda":  # after the except block, whose traceback held the probe's tensors
        gc.collect()
        torch.cuda.empty_cache()
    return fits, used


def run_search(cfg: DictConfig, log_step: Callable[[int, dict], None]) -> Measurement:
    """The job of a config with a ``maxfit`` block: the search, and its measurement."""
    maxfit = OmegaConf.merge(OmegaConf.structured(MaxfitSchema), cfg.maxfit)
    trainer, device = cfg.trainer, resolve_device(cfg.trainer.device)
    if trainer.get("threads"):
        torch.set_num_threads(trainer.threads)
    budget_name = _budget_name(maxfit, device)
    budget = BUDGETS[budget_name](maxfit, device)
    probes: list[list] = []
    workload = _Workload()

    def fits(size: int) -> bool:
        fit, used = _probe(_sized(cfg, maxfit.axis, size), workload, budget, device)
        probes.append([size, fit, used])
        log_step(len(probes), {"size": size, "fits": fit, "bytes": used})
        return fit

    with budget:
        largest = largest_fitting(fits, maxfit.start, maxfit.limit, maxfit.multiple_of)
    searched = _sized(cfg, maxfit.axis, largest)
    return Measurement(
        device=device_name(device),
        world_size=1,
        batch_size=searched.trainer.batch_size,
        seq_len=searched.dataset.get("seq_len"),
        precision=trainer.precision,
        task_metric=None,
        metrics={},
        maxfit=MaxfitSearch(axis=maxfit.axis, largest=largest, budget=budget_name, budget_bytes=budget.limit_bytes,
                            memory_fraction=maxfit.memory_fraction, multiple_of=maxfit.multiple_of, probes=probes),
    )
