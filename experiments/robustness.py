"""The paper's robustness checks: bit flips in packed masks during training, FGSM on the trained vision model.

* ``trainer.bitflip_fraction`` (paper: 0.05): every training forward runs inside ``pmdrop.inject_bitflips``, so
  each bit of every packed mask saved for backward flips with that probability; the forward used the true mask,
  the backward reads the corrupted one. Only packed variants store bits to flip (``check_config`` rejects others).
* ``trainer.fgsm_epsilon``: after training, the eval set is attacked with the fast gradient sign method,
  x + ε·sign(∇x loss), in eval mode (no dropout), ε in the model's input units (normalised pixels); results get
  ``fgsm_accuracy`` and ``fgsm_drop`` (clean accuracy minus attacked accuracy, as a fraction).
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

import numpy as np
import torch
from omegaconf import DictConfig

import pmdrop

from .data import TaskData


def bitflip_seed(seed: int, rank: int) -> int:
    """The flip generator's seed, derived from (seed, rank) rather than equal to the dropout seed: on the CPU a
    generator seeded like the dropout RNG would replay the dropout draws, and the flips would follow the mask."""
    return int(np.random.SeedSequence((seed, rank)).generate_state(1)[0])


def bitflip_injection(fraction: float, seed: int, rank: int) -> AbstractContextManager[pmdrop.BitflipLog | None]:
    """``pmdrop.inject_bitflips`` around the training loop when ``fraction`` > 0; yields the flip log (else None)."""
    return pmdrop.inject_bitflips(fraction, bitflip_seed(seed, rank)) if fraction > 0 else nullcontext()


def check_bitflip_variant(fraction: float, variant: str) -> None:
    if fraction > 0 and pmdrop.get_variant(variant).masks_per_byte is None:
        packed = [name for name in pmdrop.variant_names() if pmdrop.get_variant(name).masks_per_byte is not None]
        raise ValueError(f"trainer.bitflip_fraction={fraction} needs a variant that stores packed masks, not "
                         f"{variant!r}; valid: {', '.join(packed)}")


def fgsm_metrics(model: torch.nn.Module, data: TaskData, trainer: DictConfig, device: torch.device,
                 autocast: Callable[[], AbstractContextManager], clean_accuracy: float) -> dict[str, float]:
    """Accuracy on FGSM examples of the eval set (``trainer.eval_batches`` batches) and the drop from clean."""
    epsilon = trainer.fgsm_epsilon
    model.eval()
    correct = total = 0
    for batch in data.eval_batches(trainer.eval_batch_size, trainer.eval_batches):
        pixels = batch["pixel_values"].to(device).requires_grad_(True)
        labels = batch["labels"].to(device)
        with autocast():
            loss = model(pixel_values=pixels, labels=labels).loss
        (gradient,) = torch.autograd.grad(loss, pixels)
        with torch.no_grad(), autocast():
            logits = model(pixel_values=pixels.detach() + epsilon * gradient.sign()).logits
        correct += int((logits.argmax(-1) == labels).sum())
        total += len(labels)
    model.train()
    accuracy = correct / total
    return {"fgsm_accuracy": accuracy, "fgsm_drop": clean_accuracy - accuracy}
