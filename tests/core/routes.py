"""Torch's two dropout routes as references, and pmdrop's switch that runs its CUDA-route logic on CPU.

CPU has ``native_dropout`` (and its backward) too, so the native route, the one every CUDA call takes,
can be checked bit for bit in CI: ``pmdrop.use_route("native")`` sends CPU tensors by it, and the reference
is ``native_dropout`` itself, whose autograd formula is what ``nn.Dropout`` runs on CUDA.
"""

import pytest
import torch

import pmdrop

ROUTES = ["noise", "native"]
route = pmdrop.use_route  # inside ``with route(name):`` CPU tensors take pmdrop's ``name`` route


def skip_baseline_on_native(variant: str, route_name: str) -> None:
    """``baseline`` is torch's own dropout: on CPU it takes the noise route whatever pmdrop is told."""
    if variant == "baseline" and route_name == "native":
        pytest.skip("baseline is torch's dropout, which takes the CPU route on CPU")


def torch_reference(route_name: str, x: torch.Tensor, p: float, inplace: bool = False) -> torch.Tensor:
    """What ``nn.Dropout`` computes on the given route."""
    if route_name == "native" and not inplace:
        return torch.ops.aten.native_dropout(x, p, True)[0]
    return torch.nn.functional.dropout(x, p, True, inplace)


def bits_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (tells -0 from +0 and compares NaNs by payload)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    as_int = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.view(as_int), b.view(as_int))
