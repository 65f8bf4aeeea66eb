"""One run's training and measurement: ``check_config`` before any work, ``run_training`` to do it.

``run_training`` builds data and model offline, routes dropout through ``pmdrop.convert(model, variant)``,
trains, evaluates and returns the measured fields of results.json. Measurements:

* saved-for-backward bytes: ``pmdrop.track_saved_tensors`` around the forward of step ``measure_step``;
* peak memory: CUDA ``max_memory_allocated`` after ``reset_peak_memory_stats``; on CPU the process's peak RSS
  (``cpu_peak_rss``, a high-water mark of the whole process, earlier jobs of a sweep included);
* throughput: mean over the last ``throughput_window`` steps, warm-up steps excluded, CUDA synchronised;
* paired mode: a baseline copy from the same initial weights steps in lockstep from the same RNG state, and the
  cosine of the two flattened gradients is recorded every ``grad_cosine_every`` steps.
"""

from __future__ import annotations

import copy
import math
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from tqdm import tqdm

import pmdrop

from .data import DATASETS, TaskData, build_data
from .models import MODELS, build_model

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICES = ("auto", "cpu", "cuda")
ATTENTION = ("eager", "sdpa")
TASKS = ("pair_classification", "classification", "mlm", "image_classification")


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
    measure_step: int = 2
    eval_batches: int | None = None
    paired: bool = False
    grad_cosine_every: int = 100
    threads: int | None = None


def _choice(key: str, value, valid) -> None:
    if value not in valid:
        raise ValueError(f"{key}={value!r} is not valid; valid: {', '.join(map(str, valid))}")


def check_config(cfg: DictConfig) -> None:
    """One-line ValueError for a bad model/dataset/trainer value, before any work."""
    try:
        trainer = OmegaConf.merge(OmegaConf.structured(TrainerSchema), cfg.trainer)
    except OmegaConfBaseException as error:
        raise ValueError(f"trainer: {str(error).splitlines()[0]}") from None
    _choice("model.family", cfg.model.family, list(MODELS))
    _choice("model.attn_implementation", cfg.model.attn_implementation, ATTENTION)
    _choice("dataset.kind", cfg.dataset.kind, list(DATASETS))
    _choice("dataset.task", cfg.dataset.task, TASKS)
    _choice("trainer.precision", trainer.precision, list(PRECISIONS))
    _choice("trainer.device", trainer.device, DEVICES)
    for key in ("batch_size", "steps", "log_every", "throughput_window", "measure_step", "grad_cosine_every"):
        if trainer[key] < 1:
            raise ValueError(f"trainer.{key}={trainer[key]} must be >= 1")
    if trainer.measure_step > trainer.steps:
        raise ValueError(f"trainer.measure_step={trainer.measure_step} is past trainer.steps={trainer.steps}")
    if trainer.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    if cfg.dataset.get("seq_len") is not None and cfg.dataset.seq_len < 1:
        raise ValueError(f"dataset.seq_len={cfg.dataset.seq_len} must be >= 1")


def _device(name: str) -> torch.device:
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


def _prepare(model: torch.nn.Module, trainer: DictConfig) -> torch.nn.Module:
    if trainer.grad_checkpointing:
        if hasattr(model, "gradient_checkpointing_enable"):
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.net.set_grad_checkpointing(True)
    return torch.compile(model) if trainer.compile else model


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


def _peak_memory(device: torch.device) -> tuple[int, str]:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "cpu_peak_rss"


def run_training(cfg: DictConfig, log_step: Callable[[int, dict], None]) -> dict:
    trainer, device = cfg.trainer, _device(cfg.trainer.device)
    if trainer.get("threads"):
        torch.set_num_threads(trainer.threads)
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(cfg.seed)
        torch.cuda.reset_peak_memory_stats(device)
    data = build_data(cfg.dataset, cfg.model, cfg.seed)
    model = build_model(cfg.model, data).to(device)
    variant = cfg.variant.name
    # Paired mode pairs a variant with the baseline; the baseline's own run has nothing to pair with.
    paired = trainer.paired and variant != "baseline"
    reference = Learner(_prepare(pmdrop.convert(copy.deepcopy(model), "baseline"), trainer), trainer, device) \
        if paired else None
    learner = Learner(_prepare(pmdrop.convert(model, variant), trainer), trainer, device)
    batches: Iterator = data.batches(trainer.batch_size, torch.Generator().manual_seed(cfg.seed))

    saved = pmdrop.SavedBytes()
    step_times, grad_cosine, loss = [], [], math.nan
    warmup = min(trainer.warmup_steps, trainer.steps // 2, 3) if trainer.steps > 1 else 0
    bar = tqdm(range(1, trainer.steps + 1), desc=f"{cfg.model.name}/{variant}/seed{cfg.seed}", leave=False,
               mininterval=1.0)
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
            cosine = torch.nn.functional.cosine_similarity(_flat_grad(learner.model), _flat_grad(reference.model),
                                                           dim=0).item()
            grad_cosine.append([step, cosine])
            log_step(step, {"grad_cosine": cosine})
        learner.update()
        _sync(device)
        step_times.append(time.perf_counter() - start)
        if reference is not None:
            reference.update()
        if step % trainer.log_every == 0 or step == trainer.steps:
            rate = trainer.batch_size / step_times[-1]
            bar.set_postfix(loss=f"{loss:.4f}", samples_per_s=f"{rate:.1f}")
            log_step(step, {"loss": loss, "lr": learner.scheduler.get_last_lr()[0], "step_time_s": step_times[-1],
                            "samples_per_s": rate})
    bar.close()

    timed = step_times[warmup:][-trainer.throughput_window:] or step_times
    step_time = sum(timed) / len(timed)
    metrics = evaluate(learner.model, data, trainer, device, learner.autocast)
    peak, peak_kind = _peak_memory(device)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "steps": trainer.steps,
        "batch_size": trainer.batch_size,
        "seq_len": data.seq_len,
        "num_params": sum(p.numel() for p in model.parameters()),
        "precision": trainer.precision,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "saved_mask_bytes": saved.mask_bytes,
        "saved_activation_bytes": saved.activation_bytes,
        "saved_parameter_bytes": saved.parameter_bytes,
        "dropout_calls": dict(saved.dropout_calls),
        "throughput_samples_per_s": trainer.batch_size / step_time,
        "tokens_per_s": trainer.batch_size * data.seq_len / step_time if data.seq_len else None,
        "step_time_s": step_time,
        "task_metric": _headline_metric(data.task, cfg.dataset),
        "metrics": metrics,
        "final_loss": loss,
        "grad_cosine": grad_cosine if paired else None,
        "notes": data.notes,
    }
