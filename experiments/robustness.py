"""The paper's robustness checks: bit flips in packed masks during training, FGSM on the trained vision model.

* ``trainer.bitflip_fraction`` (paper: 0.05): every training forward runs inside :meth:`BitFlips.inject`, so
  each bit of every packed mask saved for backward flips with that probability; the forward used the true mask,
  the backward reads the corrupted one. Only packed variants store bits to flip (``check_config`` rejects others).
* ``trainer.fgsm_epsilon``: after training, the eval set is attacked with the fast gradient sign method,
  x + ε·sign(∇x loss), in eval mode (no dropout), ε in the model's input units (normalised pixels); results get
  ``fgsm_accuracy`` and ``fgsm_drop`` (clean accuracy minus attacked accuracy, as a fraction).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
from omegaconf import DictConfig

import pmdrop

from .data import TaskData

# Torch's private accessor for the innermost saved-tensor hooks (torch.utils.checkpoint reads it too): the flips are
# handed on to the hooks around them (a saved-bytes tracker, the live-memory tracker), which then see the saved copy.
_enclosing_hooks = torch._C._autograd._top_saved_tensors_default_hooks


@dataclass
class BitFlips:
    """Bit flips in the packed masks that training forwards save for backward, counted as they are made.

    Inside :meth:`inject`, each bit of every uint8 tensor saved for backward (a packed variant's mask: pmdrop hands it
    to the saved-tensor hooks around the call, as any saved tensor) flips independently with probability
    ``fraction``. The forward has applied the true mask; the backward reads the corrupted copy. The flips come from a
    generator of their own per device, so the training RNG stream is the one without flips. Only packed variants
    save uint8 tensors in a forward (seeded's generator state is uint8 too): ``variant`` is checked here.
    """

    fraction: float
    seed: int
    variant: str
    bits: int = 0  # bits flipped so far
    masks: int = 0  # packed masks corrupted so far
    _generators: dict[torch.device, torch.Generator] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"bit-flip fraction has to be in (0, 1], got {self.fraction}")
        check_bitflip_variant(self.fraction, self.variant)

    def flip(self, packed: torch.Tensor) -> torch.Tensor:
        """``packed`` with each of its bits flipped with probability ``fraction``."""
        if packed.device not in self._generators:
            self._generators[packed.device] = torch.Generator(device=packed.device).manual_seed(self.seed)
        flips = torch.rand(packed.numel() * 8, generator=self._generators[packed.device], device=packed.device)
        flips = flips < self.fraction
        self.bits += int(flips.sum())
        self.masks += 1
        return packed ^ pmdrop.pack_mask(flips)

    @contextmanager
    def inject(self) -> Iterator[None]:
        """Flip the bits of the packed masks saved inside (one training forward)."""
        enclosing = _enclosing_hooks(False)

        def pack(t: torch.Tensor) -> torch.Tensor:
            t = self.flip(t) if t.dtype is torch.uint8 else t
            return t if enclosing is None else enclosing[0](t)

        def unpack(saved: torch.Tensor) -> torch.Tensor:
            return saved if enclosing is None else enclosing[1](saved)

        with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
            yield


def bitflip_seed(seed: int, rank: int) -> int:
    """The flip generator's seed, derived from (seed, rank) rather than equal to the dropout seed: on the CPU a
    generator seeded like the dropout RNG would replay the dropout draws, and the flips would follow the mask."""
    return int(np.random.SeedSequence((seed, rank)).generate_state(1)[0])


def bitflips(fraction: float, seed: int, rank: int, variant: str) -> BitFlips | None:
    """The run's :class:`BitFlips` when ``fraction`` > 0 (``trainer.bitflip_fraction``), else None."""
    return BitFlips(fraction, bitflip_seed(seed, rank), variant) if fraction > 0 else None


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
