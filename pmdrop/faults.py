"""Fault injection for the paper's robustness check: flip bits of packed masks between forward and backward.

    with pmdrop.inject_bitflips(0.05, seed=0) as flips:
        loss = model(batch).loss   # forward applies the true masks; the saved packed copies are corrupted
    loss.backward()                # backward reads the corrupted masks
    print(flips.bits)

Only packed variants have bits to flip; baseline and seeded calls are left alone. The flips come
from a private generator, so the training RNG stream is the same as without injection.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from .packing import pack_flat

_local = threading.local()
# Injections open in any thread: with none, a packed call skips corrupt() altogether (one list read per call).
injections_open = [0]


@dataclass
class BitflipLog:
    fraction: float
    seed: int
    bits: int = 0  # bits flipped so far
    masks: int = 0  # packed masks corrupted so far
    _generators: dict[torch.device, torch.Generator] = field(default_factory=dict, repr=False)

    def generator(self, device: torch.device) -> torch.Generator:
        if device not in self._generators:
            self._generators[device] = torch.Generator(device=device).manual_seed(self.seed)
        return self._generators[device]


@contextmanager
def inject_bitflips(fraction: float, seed: int = 0) -> Iterator[BitflipLog]:
    """Flip each bit of every packed mask saved inside, independently with probability ``fraction``."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"bit-flip fraction has to be between 0 and 1, but got {fraction}")
    previous = getattr(_local, "log", None)
    _local.log = BitflipLog(fraction, seed)
    injections_open[0] += 1
    try:
        yield _local.log
    finally:
        injections_open[0] -= 1
        _local.log = previous


def corrupt(packed: torch.Tensor) -> torch.Tensor:
    """``packed`` with the active injection's bit flips applied (unchanged outside :func:`inject_bitflips`)."""
    log = getattr(_local, "log", None)
    if log is None or log.fraction == 0.0:
        return packed
    flips = torch.rand(packed.numel() * 8, generator=log.generator(packed.device), device=packed.device) < log.fraction
    log.bits += int(flips.sum())
    log.masks += 1
    return packed ^ pack_flat(flips)
