"""One run's training and measurement: ``check_config`` before any work, ``run_training`` to do it.

``run_training`` builds data and model offline, routes dropout through ``pmdrop.convert(model, variant)``,
trains, evaluates and returns its ``record.Measurement`` (results.json's measured fields). Measurements:

* saved-for-backward bytes: ``pmdrop.track_saved_tensors`` around the forward of step ``measure_step``;
* peak memory: the peak of bytes held by live tensors over step ``measure_step`` (forward, backward, optimizer
  step; experiments/memory.py), split by what held them (``tensor_peak_*``). It is ``peak_memory_bytes`` on CPU
  (``cpu_tensor_peak``; the process's RSS high-water mark stays as ``process_peak_rss_bytes``, reset at the start
  of the run on Linux: it includes the interpreter, the libraries and earlier jobs of a sweep). On CUDA
  ``peak_memory_bytes`` is ``max_memory_allocated`` after ``reset_peak_memory_stats``, the tensor peak beside it;
* ``trainer.profile``: a torch.profiler trace of ``profile_steps`` steps after the timing warm-up, in the run
  directory (experiments/profiling.py);
* throughput: mean over the last ``throughput_window`` steps after ``timing_warmup_steps``, the instrumented
  ``measure_step`` and the gradient-cosine computation left out, CUDA synchronised;
* paired mode: a baseline copy from the same initial weights steps in lockstep from the same RNG state, and the
  cosine of the two flattened gradients is recorded every ``grad_cosine_every`` steps. A baseline run is paired
  too (with a second baseline: the control), so every run of a paired sweep holds two models in memory;
* ``param_sha256``: a digest of the final parameters, equal across runs that end bit-identical (composability);
* DDP (``torchrun``, see experiments/distributed.py): throughput summed over ranks, peak memory per rank (and the
  largest as ``peak_memory_bytes``), the rest from rank 0;
* robustness (experiments/robustness.py): bit flips in packed masks while training, FGSM after it.

``run_training`` reads top to bottom: set up (data, model, the learner and its paired reference), train
(``_train_steps``: the loop, with its instruments kept beside it), evaluate (rank 0), then gather the ranks'
measurements into the record's ``Measurement``. The step machinery (learner, device, peak memory) is
experiments/step.py; a config with a ``maxfit`` block is a size search instead (experiments/maxfit.py), which the
runner chooses (experiments/jobs.py).
"""

from __future__ import annotations

import copy
import hashlib
import math
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import torch
from omegaconf import DictConfig
from tqdm import tqdm

import pmdrop

from . import distributed, robustness, stops
from .data import TaskData, build_data, check_dataset_config
from .distributed import Ranks
from .memory import CUDA_BLOCK_BYTES, NoStepMemory, PeakMemory, StepMemory
from .models import build_model, check_checkpoint_positions, check_model_config
from .profiling import step_profiler
from .record import Measurement
from .schema import check_choice, typed
from .step import (
    DEVICES,
    PRECISIONS,
    Learner,
    check_sharding,
    compile_settings,
    device_name,
    peak_memory,
    prepare,
    reset_peak_memory,
    resolve_device,
    rng_state,
    set_rng_state,
    sync,
)


@dataclass
class TrainerSchema:
    """Types of ``trainer.*``; merging the config into it rejects wrong types and unknown keys."""

    batch_size: int = 16
    eval_batch_size: int = 64
    steps: int = 100
    lr: float = 2e-5
    warmup_steps: int = 0
    weight_decay: float = 0.01
    precision: str = "fp32"
    grad_checkpointing: bool = False
    compile: bool = False
    sharding: str = "none"
    device: str = "auto"
    log_every: int = 10
    throughput_window: int = 20
    timing_warmup_steps: int = 2
    measure_step: int = 2
    eval_batches: int | None = None
    paired: bool = False
    grad_cosine_every: int = 100
    threads: int | None = None
    compile_fallback_random: bool = True
    bitflip_fraction: float = 0.0
    fgsm_epsilon: float | None = None
    profile: bool = False
    profile_steps: int = 3


def check_config(cfg: DictConfig) -> None:
    """One-line ValueError for a bad model/dataset/trainer value, before any work."""
    trainer = typed(TrainerSchema, cfg.trainer, "trainer")
    check_dataset_config(cfg.dataset)
    check_model_config(cfg.model, cfg.dataset.task)
    check_checkpoint_positions(cfg.model, cfg.dataset.seq_len)
    check_choice("trainer.precision", trainer.precision, PRECISIONS)
    check_choice("trainer.device", trainer.device, DEVICES)
    check_sharding(trainer, distributed.current().world_size)
    for key in ("batch_size", "eval_batch_size", "steps", "log_every", "throughput_window", "measure_step",
                "grad_cosine_every", "profile_steps"):
        if trainer[key] < 1:
            raise ValueError(f"trainer.{key}={trainer[key]} must be >= 1")
    for key in ("eval_batches", "threads"):  # null: the whole eval split, torch's thread count
        if trainer[key] is not None and trainer[key] < 1:
            raise ValueError(f"trainer.{key}={trainer[key]} must be >= 1, or null")
    for key in ("warmup_steps", "timing_warmup_steps", "weight_decay"):
        if trainer[key] < 0:
            raise ValueError(f"trainer.{key}={trainer[key]} must be >= 0")
    if not (math.isfinite(trainer.lr) and trainer.lr > 0):
        raise ValueError(f"trainer.lr={trainer.lr} must be a finite number > 0")
    if trainer.measure_step > trainer.steps:
        raise ValueError(f"trainer.measure_step={trainer.measure_step} is past trainer.steps={trainer.steps}")
    if trainer.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    if not 0.0 <= trainer.bitflip_fraction <= 1.0:
        raise ValueError(f"trainer.bitflip_fraction={trainer.bitflip_fraction} must be between 0 and 1")
    robustness.check_bitflip_variant(trainer.bitflip_fraction, cfg.variant.name)
    if trainer.fgsm_epsilon is not None and trainer.fgsm_epsilon < 0:
        raise ValueError(f"trainer.fgsm_epsilon={trainer.fgsm_epsilon} must be >= 0")
    if trainer.fgsm_epsilon is not None and cfg.dataset.task != "image_classification":
        raise ValueError(f"trainer.fgsm_epsilon={trainer.fgsm_epsilon} needs an image task, not dataset.task="
                         f"{cfg.dataset.task!r}; valid: image_classification")


def check_batch_fits_data(cfg: DictConfig) -> None:
    """A training batch no larger than a rank's share of a training set of known size (``dataset.train_size``)."""
    train_size, world_size = cfg.dataset.get("train_size"), distributed.current().world_size
    if train_size is not None and cfg.trainer.batch_size > train_size // world_size:
        shared = f", {train_size // world_size} per rank of {world_size}" if world_size > 1 else ""
        raise ValueError(f"trainer.batch_size={cfg.trainer.batch_size} is larger than the training set "
                         f"(dataset.train_size={train_size}{shared}): lower trainer.batch_size or raise "
                         "dataset.train_size")


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None])


def evaluate(model: torch.nn.Module, data: TaskData, trainer: DictConfig, device: torch.device,
             autocast) -> dict[str, float]:
    """Task metrics with scikit-learn (not ``evaluate``, which downloads metric code at run time)."""
    from sklearn.metrics import accuracy_score, f1_score

    model.eval()
    losses, predictions, labels = [], [], []
    with torch.no_grad(), autocast():
        for batch in data.eval_batches(trainer.eval_batch_size, trainer.eval_batches):
            batch = {k: v.to(device) for k, v in batch.items()}
            out = model(**batch)
            losses.append(out.loss.float().item())
            if data.task != "mlm":
                predictions.append(out.logits.argmax(-1).cpu())
                labels.append(batch["labels"].cpu())
    model.train()
    eval_loss = sum(losses) / len(losses)
    if data.task == "mlm":
        return {"perplexity": math.exp(min(eval_loss, 50.0)), "eval_loss": eval_loss}
    y_true, y_pred = torch.cat(labels).numpy(), torch.cat(predictions).numpy()
    average = "binary" if data.num_labels == 2 else "macro"
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "f1": float(f1_score(y_true, y_pred, average=average, zero_division=0)), "eval_loss": eval_loss}


def _headline_metric(task: str, dataset: DictConfig) -> str:
    if dataset.get("metric"):
        return dataset.metric
    return {"mlm": "perplexity", "pair_classification": "f1"}.get(task, "accuracy")


def _steady_step_times(step_times: list[float], trainer: DictConfig) -> list[float]:
    """The last ``throughput_window`` steps after ``timing_warmup_steps`` (allocator growth, lazy init, compiling),
    without ``measure_step`` (its saved-tensor hooks slow it down); every step when that leaves none."""
    steady = [seconds for step, seconds in enumerate(step_times, 1)
              if step > trainer.timing_warmup_steps and step != trainer.measure_step]
    return steady[-trainer.throughput_window:] or step_times


def parameter_digest(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes in order: equal digests mean bit-identical parameters."""
    digest = hashlib.sha256()
    for parameter in model.parameters():
        digest.update(parameter.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _learners(model: torch.nn.Module, cfg: DictConfig, device: torch.device,
              ranks: Ranks) -> tuple[Learner, Learner | None]:
    """The run's learner (dropout routed through the variant) and, in paired mode, a baseline copy from the same
    initial weights (a baseline run is paired with a second baseline: the control)."""
    trainer = cfg.trainer

    def learner(variant: str, module: torch.nn.Module) -> Learner:
        return Learner(prepare(pmdrop.convert(module, variant), trainer, device, ranks), trainer, device)

    reference = learner("baseline", copy.deepcopy(model)) if trainer.paired else None
    return learner(cfg.variant.name, model), reference


@dataclass
class _Trained:
    """What the training loop leaves for the measurement: per-step times, the gradient cosines of a paired run, the
    last loss, the bytes saved for backward at ``measure_step``, and the bit flips injected."""

    step_times: list[float] = field(default_factory=list)
    grad_cosine: list[list[float]] = field(default_factory=list)
    loss: float = math.nan
    saved: pmdrop.SavedBytes = field(default_factory=pmdrop.SavedBytes)
    flips: robustness.BitFlips | None = None
    memory: PeakMemory | None = None  # the live-tensor peak of measure_step


def _saved_tensors_at(step: int, learner: Learner, trainer: DictConfig,
                      memory: StepMemory | NoStepMemory) -> AbstractContextManager:
    """At ``measure_step``, count what the forward saves for backward (``as`` gives the SavedBytes); else nothing."""
    if step == trainer.measure_step:
        return pmdrop.track_saved_tensors(learner.model.parameters(), on_save=memory.note_saved)
    return nullcontext()


def _flipping(flips: robustness.BitFlips | None) -> AbstractContextManager:
    """Around the learner's forward (not the paired baseline's): the run's bit flips in its saved packed masks."""
    return nullcontext() if flips is None else flips.inject()


def _step_memory_at(step: int, learner: Learner, trainer: DictConfig, batch: dict[str, torch.Tensor],
                    device: torch.device) -> StepMemory | NoStepMemory:
    """At ``measure_step``, the live tensors of the whole step (not under torch.compile, whose graphs a dispatch
    mode would break); else nothing."""
    if step != trainer.measure_step or trainer.compile:
        return NoStepMemory()
    return StepMemory(device, learner.model, learner.optimizer, inputs=batch,
                      block_bytes=CUDA_BLOCK_BYTES if device.type == "cuda" else 1)


def _grad_cosine(learner: Learner, reference: Learner) -> float:
    return torch.nn.functional.cosine_similarity(_flat_grad(learner.model), _flat_grad(reference.model), dim=0).item()


def _train_steps(cfg: DictConfig, learner: Learner, reference: Learner | None, data: TaskData, device: torch.device,
                 ranks: Ranks, log_step: Callable[[int, dict], None]) -> _Trained:
    """``trainer.steps`` steps; the paired reference steps first from the same RNG state, so both draw the same
    masks. A step's time runs from its forward to the end of its update, the gradient cosine left out."""
    trainer, trained = cfg.trainer, _Trained()
    batches = data.batches(trainer.batch_size, torch.Generator().manual_seed(cfg.seed))
    bar = tqdm(range(1, trainer.steps + 1), desc=f"{cfg.model.name}/{cfg.variant.name}/seed{cfg.seed}", leave=False,
               mininterval=1.0, disable=not ranks.is_main)
    trained.flips = robustness.bitflips(trainer.bitflip_fraction, cfg.seed, ranks.rank, cfg.variant.name)
    profiling = step_profiler(trainer.get("profile", False) and ranks.is_main, device, trainer.timing_warmup_steps,
                              trainer.get("profile_steps", 3))
    with compile_settings(trainer), profiling as profiled:
        for step in bar:
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            if reference is not None:
                state = rng_state(device)
                reference.backward(reference.forward(batch))
                set_rng_state(state, device)
            sync(device)
            start = time.perf_counter()
            with _step_memory_at(step, learner, trainer, batch, device) as memory:
                memory.phase("forward")
                with _saved_tensors_at(step, learner, trainer, memory) as saved, _flipping(trained.flips):
                    loss_tensor = learner.forward(batch)
                trained.saved = saved or trained.saved
                memory.phase("backward")
                trained.loss = learner.backward(loss_tensor)
                stops.check_finite(step, {"loss": trained.loss})  # the loss is on the host already: no extra sync
                del loss_tensor  # let the graph go before the optimizer step, as a training loop does
                if reference is not None and (step % trainer.grad_cosine_every == 0 or step == 1):
                    measured = time.perf_counter()
                    with memory.paused():  # instrumentation, not training: kept out of the step's time and memory
                        cosine = _grad_cosine(learner, reference)
                    stops.check_finite(step, {"grad_cosine": cosine})
                    trained.grad_cosine.append([step, cosine])
                    log_step(step, {"grad_cosine": cosine})
                    start += time.perf_counter() - measured
                lr = learner.scheduler.get_last_lr()[0]  # this step's
                memory.phase("optimizer")
                learner.update()
            trained.memory = memory.result() or trained.memory
            sync(device)
            trained.step_times.append(time.perf_counter() - start)
            if profiled is not None:
                profiled()
            if reference is not None:
                reference.update()
            if step % trainer.log_every == 0 or step == trainer.steps:
                rate = trainer.batch_size * ranks.world_size / trained.step_times[-1]
                bar.set_postfix(loss=f"{trained.loss:.4f}", samples_per_s=f"{rate:.1f}")
                log_step(step, {"loss": trained.loss, "lr": lr, "step_time_s": trained.step_times[-1],
                                "samples_per_s": rate})
    bar.close()
    return trained


def _evaluate_on_main(learner: Learner, data: TaskData, trainer: DictConfig, device: torch.device,
                      ranks: Ranks) -> dict[str, float]:
    """Every rank's replica is the same: rank 0 evaluates (and attacks, for FGSM) alone, the others get its metrics."""
    metrics = None
    if ranks.is_main:
        model = distributed.unwrap(learner.model)
        with compile_settings(trainer):
            metrics = evaluate(model, data, trainer, device, learner.autocast)
            stops.check_finite(None, metrics)
        if trainer.fgsm_epsilon is not None:
            metrics |= robustness.fgsm_metrics(model, data, trainer, device, learner.autocast, metrics["accuracy"])
    return distributed.broadcast_from_main(metrics)


def _measurement(cfg: DictConfig, model: torch.nn.Module, data: TaskData, trained: _Trained,
                 metrics: dict[str, float], memory_at_start: int | None, device: torch.device,
                 ranks: Ranks) -> Measurement:
    """The run's measurement: this rank's timings and peak gathered from every rank (throughput summed, peak memory
    the largest rank's), the rest from this one."""
    trainer = cfg.trainer
    timed = _steady_step_times(trained.step_times, trainer)
    per_rank = distributed.gather({"peak": peak_memory(device), "start": memory_at_start, "tensors": trained.memory,
                                   "step_time": sum(timed) / len(timed), "loss": trained.loss})
    tensors = [rank["tensors"] for rank in per_rank]
    measured_tensors = all(t is not None for t in tensors)
    if device.type == "cpu" and measured_tensors:  # the run's own peak; the process's RSS kept beside it
        peaks, kind = [t.peak_bytes for t in tensors], "cpu_tensor_peak"
        starts = [t.start_bytes for t in tensors]
    else:
        peaks, kind = [rank["peak"][0] for rank in per_rank], per_rank[0]["peak"][1]
        starts = [rank["start"] for rank in per_rank]
    highest = peaks.index(max(peaks))
    tensor_peak = max(tensors, key=lambda t: t.peak_bytes) if measured_tensors else None
    throughput = sum(trainer.batch_size / rank["step_time"] for rank in per_rank)
    saved, flips = trained.saved, trained.flips
    return Measurement(
        device=device_name(device),
        world_size=ranks.world_size,
        steps=trainer.steps,
        batch_size=trainer.batch_size,
        global_batch_size=trainer.batch_size * ranks.world_size,
        seq_len=data.seq_len,
        num_params=sum(p.numel() for p in model.parameters()),
        precision=trainer.precision,
        peak_memory_bytes=max(peaks),
        peak_memory_bytes_per_rank=peaks,
        peak_memory_kind=kind,
        memory_at_start_bytes=starts[highest],
        tensor_peak_bytes=None if tensor_peak is None else tensor_peak.peak_bytes,
        tensor_peak_split=None if tensor_peak is None else tensor_peak.split,
        tensor_peak_phase=None if tensor_peak is None else tensor_peak.phase,
        process_peak_rss_bytes=max(rank["peak"][0] for rank in per_rank) if device.type == "cpu" else None,
        saved_mask_bytes=saved.mask_bytes,
        saved_activation_bytes=saved.activation_bytes,
        saved_parameter_bytes=saved.parameter_bytes,
        dropout_calls=dict(saved.dropout_calls),
        throughput_samples_per_s=throughput,
        tokens_per_s=throughput * data.seq_len if data.seq_len else None,
        step_time_s=sum(rank["step_time"] for rank in per_rank) / len(per_rank),
        task_metric=_headline_metric(data.task, cfg.dataset),
        metrics=metrics,
        final_loss=sum(rank["loss"] for rank in per_rank) / len(per_rank),
        grad_cosine=trained.grad_cosine if trainer.paired else None,
        param_sha256=parameter_digest(model),
        bitflips=None if flips is None else {"fraction": flips.fraction, "bits": flips.bits, "masks": flips.masks},
        notes=data.notes,
    )


def run_training(cfg: DictConfig, log_step: Callable[[int, dict], None]) -> Measurement:
    """Train the run ``cfg`` describes (under DDP on every rank in step), evaluate it, and measure it."""
    trainer, ranks = cfg.trainer, distributed.current()
    device = distributed.device_for(ranks, resolve_device(trainer.device))
    if trainer.get("threads"):
        torch.set_num_threads(trainer.threads)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    memory_at_start = reset_peak_memory(device)
    data = build_data(cfg.dataset, cfg.model, cfg.seed)
    data.check_holds_batch(trainer.batch_size)  # this rank's share holds a batch (its sampler yields full ones)
    model = build_model(cfg.model, data).to(device)
    torch.manual_seed(cfg.seed + ranks.rank)  # each rank its own dropout masks, reproducibly
    learner, reference = _learners(model, cfg, device, ranks)
    trained = _train_steps(cfg, learner, reference, data, device, ranks, log_step)
    metrics = _evaluate_on_main(learner, data, trainer, device, ranks)
    return _measurement(cfg, model, data, trained, metrics, memory_at_start, device, ranks)
