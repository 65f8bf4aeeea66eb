"""Torch's two dropout routes as references, and a switch that runs pmdrop's CUDA-route logic on CPU.

CPU has ``native_dropout`` (and its backward) too, so the fused route, the one every CUDA call takes,
can be checked bit for bit in CI: pmdrop is told that CPU is a fused device, and the reference is
``native_dropout`` itself, whose autograd formula is what ``nn.Dropout`` runs on CUDA.
"""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

import pmdrop.functional as functional

ROUTES = ["noise", "fused"]


def skip_baseline_on_fused(variant: str, route_name: str) -> None:
    """``baseline`` is torch's own dropout: on CPU it takes the noise route whatever pmdrop is told."""
    if variant == "baseline" and route_name == "fused":
        pytest.skip("baseline is torch's dropout, which takes the CPU route on CPU")


@contextmanager
def route(name: str) -> Iterator[None]:
    """Inside, CPU tensors take pmdrop's ``name`` route ("noise": torch's CPU route, "fused": CUDA's)."""
    previous = functional._FUSED_DEVICE_TYPES
    if name == "fused":
        functional._FUSED_DEVICE_TYPES = previous | {"cpu"}
    try:
        yield
    finally:
        functional._FUSED_DEVICE_TYPES = previous


def torch_reference(route_name: str, x: torch.Tensor, p: float, inplace: bool = False) -> torch.Tensor:
    """What ``nn.Dropout`` computes on the given route."""
    if route_name == "fused" and not inplace:
        return torch.ops.aten.native_dropout(x, p, True)[0]
    return torch.nn.functional.dropout(x, p, True, inplace)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (tells -0 from +0 and compares NaNs by payload)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.view(as_int), b.view(as_int))
