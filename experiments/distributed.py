"""DistributedDataParallel for the harness: one process per rank, all running the same ``run.py`` command.

    torchrun --nproc_per_node=4 run.py -m model=bert_large variant=baseline,pmdrop seed=0-4
    python run.py -m hydra/launcher=submitit_slurm hydra.launcher.gpus_per_node=4 ...   # one task per GPU

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``MASTER_*``; a submitit job with several tasks gets them
from submitit's environment (:func:`current`). The process group is created on first use and kept for the life of
the process, because a sweep (``-m``) runs its jobs one after another in the same processes. Backends: gloo for CPU
tensors, nccl for CUDA ones.

In a run every rank trains a replica on its own shard of the training data (every ``world_size``-th sample, starting
at its rank), with its own dropout seed (``seed + rank``), and DDP averages the gradients, so the replicas stay equal.
``trainer.batch_size`` is per rank. Rank 0 evaluates and writes the run's files; every collective below is called by
all ranks in the same order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _export_submitit_environment() -> None:
    """Inside a submitit job of several tasks (``tasks_per_node`` > 1), set torchrun's variables from submitit's."""
    if "WORLD_SIZE" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    import submitit

    if submitit.JobEnvironment().num_tasks > 1:
        # Every rank sees every GPU and picks cuda:LOCAL_RANK, as under torchrun.
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def current() -> Ranks:
    """This process's rank, local rank and the world size; ``Ranks()`` (0, 0, 1) outside a distributed launch."""
    _export_submitit_environment()
    if "WORLD_SIZE" not in os.environ:
        return Ranks()
    rank = int(os.environ["RANK"])
    return Ranks(rank, int(os.environ.get("LOCAL_RANK", rank)), int(os.environ["WORLD_SIZE"]))


def is_main_process() -> bool:
    return current().is_main


def init_process_group(ranks: Ranks) -> None:
    """Join the process group once per process (no-op for a single process)."""
    if ranks.world_size == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")


def device_for(ranks: Ranks, device: torch.device) -> torch.device:
    """A rank's device: ``cuda:LOCAL_RANK`` for CUDA runs, the given device otherwise."""
    return torch.device("cuda", ranks.local_rank) if device.type == "cuda" else device


def broadcast_from_main(value: T) -> T:
    """Rank 0's ``value`` on every rank (``value`` itself outside a distributed launch)."""
    ranks = current()
    if ranks.world_size == 1:
        return value
    init_process_group(ranks)
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    ranks = current()
    if ranks.world_size == 1:
        return [value]
    init_process_group(ranks)
    values: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(values, value)
    return values


def shard(tensors: dict[str, torch.Tensor], ranks: Ranks) -> dict[str, torch.Tensor]:
    """This rank's samples: every ``world_size``-th one, starting at its rank (disjoint across ranks)."""
    return {key: value[ranks.rank :: ranks.world_size] for key, value in tensors.items()}


def wrap(model: torch.nn.Module, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks (DDP broadcasts rank 0's weights)."""
    if ranks.world_size == 1:
        return model
    init_process_group(ranks)
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP: evaluation runs on rank 0 alone, and DDP's forward would broadcast buffers."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
