"""DistributedDataParallel for the harness: one process per rank, all running the same ``run.py`` command.

    torchrun --nproc_per_node=4 run.py -m model=bert_large variant=baseline,pmdrop seed=0-4
    python run.py -m hydra/launcher=submitit_slurm hydra.launcher.gpus_per_node=4 ...   # one task per GPU

torchrun sets ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE`` and ``MASTER_*``; a submitit job with several tasks gets them
from submitit's environment (:func:`current`). The process group is created on first use and kept from job to job, as
a sweep (``-m``) runs its jobs one after another in the same processes, until a run fails (below). Backends: gloo for
CPU tensors, nccl for CUDA ones.

In a run every rank trains a replica on its own share of the training data (a ``DistributedSampler``'s, in
experiments/data.py), with its own dropout seed (``seed + rank``), and DDP averages the gradients, so the replicas stay
equal.
``trainer.batch_size`` is per rank. Rank 0 evaluates and writes the run's files; every collective below is called by
all ranks in the same order.

``trainer.sharding`` splits the training state instead of replicating it (experiments/step.py): ``zero1`` keeps DDP
and shards AdamW's state (ZeroRedundancyOptimizer), ``fsdp2`` shards gradients and AdamW's state with FSDP2's
``fully_shard`` as ZeRO-2 does (:func:`shard_fully`). Both need several ranks; a single process refuses them.

A run that fails on some ranks only (an out-of-memory error on rank 1, an exception in rank 0's evaluation) must not
leave the others blocked in a collective of that run, nor let the ranks' collectives go out of step for the next job.
So after every run each rank calls :func:`settle` with its own error (or None): a failing rank first leaves the
process group, then every rank posts its outcome to the rendezvous store and waits for every other rank's. If any rank
failed, every rank leaves the group and the next job builds a fresh one (the next "generation", under its own store
prefix, so no stale rendezvous key of the old group is read), and the run is ``failed`` with every rank's error, first
failure first (``rank 1: OutOfMemoryError: ...; rank 0: RuntimeError: ... Connection closed by peer``). The store is
one TCPStore client per process, kept for the life of the process: torchrun's agent hosts it at
``MASTER_ADDR:MASTER_PORT`` (``TORCHELASTIC_USE_AGENT_STORE=True``), otherwise rank 0 does.

On gloo (CPU), leaving the group closes its connections, and a peer blocked in a collective with the failing rank raises
at once (connection closed or reset by peer); tests/harness/test_ddp_failures.py checks this for a failure in DDP's
training steps on rank 1 and in rank 0's evaluation, and that a peer that neither answers nor leaves is given up at
the timeout. On nccl a destroyed communicator is not expected to unblock its peers: a blocked peer waits for the
collective timeout, and NCCL's watchdog then (by default, ``TORCH_NCCL_ASYNC_ERROR_HANDLING=3``) ends the
process, so torchrun ends the sweep; finished runs keep their results.json. That is expected, not tested: there is no
multi-GPU machine here. Every collective and store wait is bounded: ``PMDROP_DDP_TIMEOUT_S`` (default 1800 s) for a
collective or joining a group, twice that for the outcomes of a run (a peer may be blocked for a full timeout first).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

# DDP imports this lazily; its functions take ``group=group.WORLD`` defaults, which would hold the group alive at that
# moment for ever, and a group that is not freed does not close its connections when a rank leaves it after a failure.
import torch.distributed.nn.functional  # imported while no group exists: those defaults are None

T = TypeVar("T")

_store: dist.Store | None = None  # this process's client of the rendezvous store
_generation = 0  # process groups given up after a failed run: the same on every rank (all see the same outcomes)
_settled = 0  # runs settled so far: the same on every rank (all run the same jobs in the same order)


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


def timeout() -> timedelta:
    """How long a collective, or joining a group, may wait for the other ranks."""
    return timedelta(seconds=float(os.environ.get("PMDROP_DDP_TIMEOUT_S", 1800)))


def _rendezvous_store(ranks: Ranks) -> dist.Store:
    global _store
    if _store is None:
        agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), ranks.world_size,
                              is_master=not agent and ranks.rank == 0, timeout=timeout())
        # torchrun's store outlives restarted workers (--max-restarts): keep apart from an earlier attempt's keys
        _store = dist.PrefixStore(f"pmdrop/restart{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    return _store


def init_process_group(ranks: Ranks) -> None:
    """Join the process group (no-op for a single process); it is kept until a run fails on some rank."""
    if ranks.world_size == 1 or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(ranks.local_rank)
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo",
                            store=dist.PrefixStore(f"gen{_generation}/", _rendezvous_store(ranks)),
                            rank=ranks.rank, world_size=ranks.world_size, timeout=timeout())


def _leave_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
    gc.collect()  # gloo closes the connections when the group is freed: the failed run's DDP model held it


def settle(error: str | None) -> list[str]:
    """After every run, on every rank: this rank's error (None when it ran ok) in, every failed rank's error out.

    Under DDP the errors read ``rank k: ...``, first failure first, and if there is one, every rank has left the
    process group and the next collective joins a new one. A single process gets back its own error, if any.
    """
    global _generation, _settled
    ranks = current()
    if ranks.world_size == 1:
        return [] if error is None else [error]
    store, run = _rendezvous_store(ranks), f"run{_settled}/"
    _settled += 1
    order = None
    if error is not None:
        order = store.add(f"{run}failures", 1)  # before leaving: errors that leaving causes in peers come later
        _leave_process_group()  # a peer blocked in a collective with this rank raises instead of waiting
    store.set(f"{run}rank{ranks.rank}", json.dumps([order, error]))
    keys = [f"{run}rank{rank}" for rank in range(ranks.world_size)]
    with contextlib.suppress(dist.DistError):  # a rank that never posts (hung, or gone) counts as failed below
        store.wait(keys, 2 * timeout())
    outcomes = [json.loads(store.get(key)) if store.check([key]) else
                [float("inf"), f"no outcome within {2 * timeout().total_seconds():.0f} s"] for key in keys]
    failed = sorted((when, rank, message) for rank, (when, message) in enumerate(outcomes) if message is not None)
    if failed:
        _leave_process_group()
        _generation += 1
    return [f"rank {rank}: {message}" for _, rank, message in failed]


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


def wrap(model: torch.nn.Module, device: torch.device, ranks: Ranks, sharding: str = "none") -> torch.nn.Module:
    """``model`` in DistributedDataParallel when there are several ranks (DDP broadcasts rank 0's weights), or with
    ``sharding="fsdp2"`` sharded by :func:`shard_fully`."""
    if ranks.world_size == 1:
        return model
    init_process_group(ranks)
    if sharding == "fsdp2":
        return shard_fully(model, device, ranks)
    device_ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def transformer_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's stack of layers: the children of its first ModuleList or Sequential (in ``modules()`` order) whose
    children are all of one class (BERT's and Longformer's ``encoder.layer``, timm ViT's ``blocks``)."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList | torch.nn.Sequential) and len(module) > 0 \
                and len({type(child) for child in module}) == 1:
            return list(module)
    raise ValueError(f"no stack of layers (a ModuleList or Sequential of one class) in {type(model).__name__} to "
                     "shard with fully_shard")


def shard_fully(model: torch.nn.Module, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """``model`` sharded in place with FSDP2 as ZeRO-2 does: ``fully_shard`` on each transformer layer, then the root.

    Every rank holds a shard of each parameter, its gradient (reduce-scattered, averaged over ranks as DDP does) and
    its AdamW state: the optimizer must be built on the parameters as returned, the shards (experiments/step.py's
    Learner). Then the learner gathers the parameters whole before the first step and again after each optimizer step
    (:func:`gather_parameters`, as ZeRO-2 all-gathers the updated parameters), and the forward and backward keep them
    whole (``reshard_after_forward=False``). So between steps ``model.parameters()`` are the full parameters: rank 0
    evaluates alone, and the final digest reads every full parameter, gathered the same way for every variant. The
    ranks start from the same weights (the same seed on every rank), which fully_shard does not broadcast."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (ranks.world_size,))
    for layer in transformer_layers(model):
        fully_shard(layer, mesh=mesh, reshard_after_forward=False)
    fully_shard(model, mesh=mesh, reshard_after_forward=False)
    return model


def gather_parameters(model: torch.nn.Module) -> None:
    """Gather every FSDP2-sharded parameter of ``model`` whole on every rank (a collective: every rank calls it)."""
    from torch.distributed.fsdp import FSDPModule

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.unshard()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside DDP: evaluation runs on rank 0 alone, and DDP's forward would broadcast buffers (an FSDP2
    model is its own module, whole between steps: see :func:`shard_fully`)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
