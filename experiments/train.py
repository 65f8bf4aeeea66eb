"""One run's training and measurement: ``check_config`` before any work, ``run_training`` to do it.

``run_training`` builds data and model offline, routes dropout through ``pmdrop.convert(model, variant)``,
trains, evaluates and returns the measured fields of results.json. Measurements:

* saved-for-backward bytes: ``pmdrop.track_saved_tensors`` around the forward of step ``measure_step``;
* peak memory: CUDA ``max_memory_allocated`` after ``reset_peak_memory_stats``; on CPU the process's peak RSS
  (``cpu_peak_rss``: the high-water mark, reset at the start of the run on Linux; elsewhere the process's);
* throughput: mean over the last ``throughput_window`` steps after ``timing_warmup_steps``, the instrumented
  ``measure_step`` and the gradient-cosine computation left out, CUDA synchronised;
* paired mode: a baseline copy from the same initial weights steps in lockstep from the same RNG state, and the
  cosine of the two flattened gradients is recorded every ``grad_cosine_every`` steps. A baseline run is paired
  too (with a second baseline: the control), so every run of a paired sweep holds two models in memory;
* ``param_sha256``: a digest of the final parameters, equal across runs that end bit-identical (composability);
* DDP (``torchrun``, see experiments/distributed.py): throughput summed over ranks, peak memory per rank (and the
  largest as ``peak_memory_bytes``), the rest from rank 0;
* robustness (experiments/robustness.py): bit flips in packed masks while training, FGSM after it.

A config with a ``maxfit`` block searches for the largest batch or sequence length instead (experiments/maxfit.py).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import re
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig
from tqdm import tqdm

import pmdrop

from . import distributed, robustness
from .data import TaskData, build_data, check_dataset_config
from .distributed import Ranks
from .models import build_model, check_model_config
from .schema import check_choice, typed

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")


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


def check_config(cfg: DictConfig) -> None:
    """One-line ValueError for a bad model/dataset/trainer value, before any work."""
    trainer = typed(TrainerSchema, cfg.trainer, "trainer")
    check_dataset_config(cfg.dataset)
    check_model_config(cfg.model, cfg.dataset.task)
    check_choice("trainer.precision", trainer.precision, PRECISIONS)
    check_choice("trainer.device", trainer.device, DEVICES)
    for key in ("batch_size", "steps", "log_every", "throughput_window", "measure_step", "grad_cosine_every"):
        if trainer[key] < 1:
            raise ValueError(f"trainer.{key}={trainer[key]} must be >= 1")
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
    if cfg.get("maxfit") is not None:
        from .maxfit import check_maxfit_config  # maxfit builds on this module

        check_maxfit_config(cfg)


def resolve_device(name: str) -> torch.device:
    return torch.device("cuda" if name == "auto" and torch.cuda.is_available() else "cpu" if name == "auto" else name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rng_state(device: torch.device) -> tuple:
    return torch.get_rng_state(), torch.cuda.get_rng_state(device) if device.type == "cuda" else None


def _set_rng_state(state: tuple, device: torch.device) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def _flat_grad(model: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in model.parameters() if p.grad is not None])


class Learner:
    """A model with its optimizer, schedule and mixed-precision settings: one ``step`` = forward + backward."""

    def __init__(self, model: torch.nn.Module, trainer: DictConfig, device: torch.device) -> None:
        self.model = model
        self.optimizer = torch.optim.AdamW(model.parameters(), lr=trainer.lr, weight_decay=trainer.weight_decay)
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


def prepare(model: torch.nn.Module, trainer: DictConfig, device: torch.device, ranks: Ranks) -> torch.nn.Module:
    """Activation checkpointing, torch.compile, then DDP around it when there are several ranks."""
    if trainer.grad_checkpointing:  # every family has transformers' method (models.VisionClassifier for timm)
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return distributed.wrap(torch.compile(model) if trainer.compile else model, device, ranks)


def compile_settings(trainer: DictConfig):
    """Inductor draws random numbers with its own RNG unless ``fallback_random`` is set: compiled dropout (torch's
    and pmdrop's) then matches eager dropout bit for bit only with it (see the README's torch.compile notes)."""
    if not trainer.compile:
        return nullcontext()
    import torch._inductor.config as inductor_config

    return inductor_config.patch(fallback_random=trainer.compile_fallback_random)


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


def _process_status(field: str) -> int:
    """A memory field of Linux's /proc/self/status, in bytes (OSError elsewhere)."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) * 1024


def _reset_peak_memory(device: torch.device) -> int | None:
    """Start this run's peak afresh (a sweep runs its jobs one after another in the same process) and return the
    memory in use now: CUDA memory allocated, or on CPU the process's RSS (None where there is no /proc)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return torch.cuda.memory_allocated(device)
    with suppress(OSError):  # not Linux: _peak_memory falls back to the process's lifetime peak
        Path("/proc/self/clear_refs").write_text("5")  # Linux: resets the RSS high-water mark (VmHWM)
        return _process_status("VmRSS")
    return None


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    try:
        return _process_status("VmHWM"), "cpu_peak_rss"
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_peak_rss"


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


def _rank_data(data: TaskData, batch_size: int, ranks: Ranks) -> TaskData:
    """This rank's shard of the training data; it must hold a whole batch (the batch iterator yields only full ones)."""
    data = dataclasses.replace(data, train=distributed.shard(data.train, ranks))
    samples = len(next(iter(data.train.values())))
    if samples < batch_size:
        where = f" on rank {ranks.rank} of {ranks.world_size}" if ranks.world_size > 1 else ""
        raise ValueError(f"the training data hold {samples} samples{where}, fewer than trainer.batch_size={batch_size}")
    return data


def run_training(cfg: DictConfig, log_step: Callable[[int, dict], None]) -> dict:
    if cfg.get("maxfit") is not None:
        from .maxfit import run_search  # maxfit builds on this module

        return run_search(cfg, log_step)
    trainer, ranks = cfg.trainer, distributed.current()
    device = distributed.device_for(ranks, resolve_device(trainer.device))
    if trainer.get("threads"):
        torch.set_num_threads(trainer.threads)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    memory_at_start = _reset_peak_memory(device)
    data = _rank_data(build_data(cfg.dataset, cfg.model, cfg.seed), trainer.batch_size, ranks)
    model = build_model(cfg.model, data).to(device)
    torch.manual_seed(cfg.seed + ranks.rank)  # each rank its own dropout masks, reproducibly
    variant = cfg.variant.name
    paired = trainer.paired  # a baseline run is paired with a second baseline: the control
    reference = Learner(prepare(pmdrop.convert(copy.deepcopy(model), "baseline"), trainer, device, ranks), trainer,
                        device) if paired else None
    learner = Learner(prepare(pmdrop.convert(model, variant), trainer, device, ranks), trainer, device)
    batches: Iterator = data.batches(trainer.batch_size, torch.Generator().manual_seed(cfg.seed))

    saved = pmdrop.SavedBytes()
    step_times, grad_cosine, loss = [], [], math.nan
    bar = tqdm(range(1, trainer.steps + 1), desc=f"{cfg.model.name}/{variant}/seed{cfg.seed}", leave=False,
               mininterval=1.0, disable=not ranks.is_main)
    with compile_settings(trainer), robustness.bitflip_injection(trainer.bitflip_fraction, cfg.seed,
                                                                 ranks.rank) as flips:
        for step in bar:
            batch = {k: v.to(device, non_blocking=True) for k, v in next(batches).items()}
            if reference is not None:
                state = _rng_state(device)
                reference.backward(reference.forward(batch))
                _set_rng_state(state, device)
            _sync(device)
            start = time.perf_counter()
            if step == trainer.measure_step:
                with pmdrop.track_saved_tensors(learner.model.parameters()) as saved:
                    loss_tensor = learner.forward(batch)
            else:
                loss_tensor = learner.forward(batch)
            loss = learner.backward(loss_tensor)
            del loss_tensor  # let the graph go before the optimizer step, as a training loop does
            if reference is not None and (step % trainer.grad_cosine_every == 0 or step == 1):
                measured = time.perf_counter()
                cosine = torch.nn.functional.cosine_similarity(_flat_grad(learner.model), _flat_grad(reference.model),
                                                               dim=0).item()
                grad_cosine.append([step, cosine])
                log_step(step, {"grad_cosine": cosine})
                start += time.perf_counter() - measured  # instrumentation, not training: kept out of the step time
            lr = learner.scheduler.get_last_lr()[0]  # this step's
            learner.update()
            _sync(device)
            step_times.append(time.perf_counter() - start)
            if reference is not None:
                reference.update()
            if step % trainer.log_every == 0 or step == trainer.steps:
                rate = trainer.batch_size * ranks.world_size / step_times[-1]
                bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{rate:.1f}")
                log_step(step, {"loss": loss, "lr": lr, "step_time_s": step_times[-1], "samples_per_s": rate})
    bar.close()

    timed = _steady_step_times(step_times, trainer)
    step_time = sum(timed) / len(timed)
    # Every rank's replica is the same; rank 0 evaluates alone, the others wait for its metrics.
    metrics = None
    if ranks.is_main:
        with compile_settings(trainer):
            metrics = evaluate(distributed.unwrap(learner.model), data, trainer, device, learner.autocast)
        if trainer.fgsm_epsilon is not None:
            metrics |= robustness.fgsm_metrics(distributed.unwrap(learner.model), data, trainer, device,
                                               learner.autocast, metrics["accuracy"])
    metrics = distributed.broadcast_from_main(metrics)
    per_rank = distributed.gather({"peak": _peak_memory(device), "start": memory_at_start, "step_time": step_time,
                                   "loss": loss})
    peaks = [rank["peak"][0] for rank in per_rank]
    highest = peaks.index(max(peaks))
    throughput = sum(trainer.batch_size / rank["step_time"] for rank in per_rank)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "world_size": ranks.world_size,
        "steps": trainer.steps,
        "batch_size": trainer.batch_size,  # per rank
        "global_batch_size": trainer.batch_size * ranks.world_size,
        "seq_len": data.seq_len,
        "num_params": sum(p.numel() for p in model.parameters()),
        "precision": trainer.precision,
        "peak_memory_bytes": max(peaks),
        "peak_memory_bytes_per_rank": peaks,
        "peak_memory_kind": per_rank[0]["peak"][1],
        # what the process already held when the run began (on CPU: the interpreter and libraries, growing over a
        # sweep's jobs); peak_memory_bytes minus this is the run's own growth
        "memory_at_start_bytes": per_rank[highest]["start"],
        "saved_mask_bytes": saved.mask_bytes,
        "saved_activation_bytes": saved.activation_bytes,
        "saved_parameter_bytes": saved.parameter_bytes,
        "dropout_calls": dict(saved.dropout_calls),
        "throughput_samples_per_s": throughput,
        "tokens_per_s": throughput * data.seq_len if data.seq_len else None,
        "step_time_s": sum(rank["step_time"] for rank in per_rank) / len(per_rank),
        "task_metric": _headline_metric(data.task, cfg.dataset),
        "metrics": metrics,
        "final_loss": sum(rank["loss"] for rank in per_rank) / len(per_rank),
        "grad_cosine": grad_cosine if paired else None,
        "param_sha256": parameter_digest(model),
        "bitflips": None if flips is None else {"fraction": flips.fraction, "bits": flips.bits, "masks": flips.masks},
        "notes": data.notes,
    }
