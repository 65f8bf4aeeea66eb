"""The step machinery shared by every job kind: the device, the learner (model + optimizer + schedule + precision,
one ``step`` = forward, backward, update), the wrappers around the model, and the memory readings around a step.

Used by the training loop (experiments/train.py) and the size search (experiments/maxfit.py); imports neither.
"""

from __future__ import annotations

import re
import resource
from contextlib import AbstractContextManager, nullcontext, suppress
from pathlib import Path

import torch
from omegaconf import DictConfig
from torch.distributed.optim import ZeroRedundancyOptimizer

from . import distributed
from .distributed import Ranks
from .schema import check_choice

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")
# How the training state is split across DDP ranks (experiments/distributed.py): "none" keeps a whole replica on each
# (DDP), "zero1" shards AdamW's state (ZeroRedundancyOptimizer, under DDP), "fsdp2" shards the gradients and AdamW's
# state as ZeRO-2 does (fully_shard).
SHARDINGS = ("none", "zero1", "fsdp2")


def resolve_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def device_name(device: torch.device) -> str:
    """What results.json calls the device: ``cpu`` or the CUDA device's name."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def check_sharding(trainer: DictConfig, world_size: int) -> None:
    """One-line ValueError for a ``trainer.sharding`` this job cannot run, before any work: sharding needs several
    ranks, and fsdp2 is run eagerly, unpaired, without an attack after training."""
    check_choice("trainer.sharding", trainer.sharding, SHARDINGS)
    if trainer.sharding != "none" and world_size < 2:
        raise ValueError(f"trainer.sharding={trainer.sharding} shards across DDP ranks and this job has "
                         f"{world_size}: launch it with torchrun --nproc_per_node=2 (or more), or use "
                         "trainer.sharding=none")
    if trainer.sharding == "fsdp2" and (trainer.compile or trainer.paired or trainer.fgsm_epsilon is not None):
        raise ValueError("trainer.sharding=fsdp2 runs without trainer.compile, trainer.paired (its gradients are "
                         "sharded) and trainer.fgsm_epsilon (rank 0 attacks alone); valid with those: none, zero1")


class Learner:
    """A model with its optimizer, schedule and mixed-precision settings: one ``step`` = forward + backward."""

    def __init__(self, model: torch.nn.Module, trainer: DictConfig, device: torch.device) -> None:
        self.model = model
        self.sharding = trainer.sharding
        if self.sharding == "zero1":  # each rank keeps AdamW's state for its share of the parameters
            self.optimizer = ZeroRedundancyOptimizer(model.parameters(), optimizer_class=torch.optim.AdamW,
                                                     lr=trainer.lr, weight_decay=trainer.weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(model.parameters(), lr=trainer.lr, weight_decay=trainer.weight_decay)
        if self.sharding == "fsdp2":  # the optimizer holds the shards; the model is whole between steps
            distributed.gather_parameters(model)
        warmup, total = trainer.warmup_steps, trainer.steps

        def schedule(step: int) -> float:  # linear warm-up, then linear decay to 0
            if step < warmup:
                return (step + 1) / warmup
            return max(0.0, (total - step) / max(1, total - warmup))

        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, schedule)
        dtype = PRECISIONS[trainer.precision]
        self.autocast = (lambda: torch.autocast(device.type, dtype=dtype)) if dtype else nullcontext
        self.scaler = torch.amp.GradScaler("cuda", enabled=trainer.precision == "fp16" and device.type == "cuda")

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with self.autocast():
            return self.model(**batch).loss

    def backward(self, loss: torch.Tensor) -> float:
        self.scaler.scale(loss).backward()
        return loss.item()

    def update(self) -> None:
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.sharding == "fsdp2":
            distributed.gather_parameters(self.model)


def prepare(model: torch.nn.Module, trainer: DictConfig, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """Activation checkpointing, torch.compile, then DDP (or FSDP2, ``trainer.sharding=fsdp2``) around it when there
    are several ranks."""
    if trainer.grad_checkpointing:  # every family has transformers' method (models.VisionClassifier for timm)
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return distributed.wrap(torch.compile(model) if trainer.compile else model, device, ranks, trainer.sharding)


def compile_settings(trainer: DictConfig) -> AbstractContextManager:
    """Inductor draws random numbers with its own RNG unless ``fallback_random`` is set: compiled dropout (torch's
    and pmdrop's) then matches eager dropout bit for bit only with it (see the README's torch.compile notes)."""
    if not trainer.compile:
        return nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(fallback_random=trainer.compile_fallback_random)


def _process_status(field: str) -> int:
    """A memory field of Linux's /proc/self/status, in bytes (OSError elsewhere)."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


def reset_peak_memory(device: torch.device) -> int | None:
    """Start this run's peak afresh (a sweep runs its jobs one after another in the same process) and return the
    memory in use now: CUDA memory allocated, or on CPU the process's RSS (None where there is no /proc)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with suppress(OSError):  # not Linux: peak_memory falls back to the process's lifetime peak
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the RSS high-water mark (VmHWM)
        return _process_status("VmRSS")
    return None


def peak_memory(device: torch.device) -> tuple[int, str]:
    """The peak since ``reset_peak_memory``, in bytes, and its kind (results.json ``peak_memory_kind``)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    try:
        return _process_status("VmHWM"), "cpu_peak_rss"
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_peak_rss"
