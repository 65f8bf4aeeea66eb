"""Run a dropout layer the way a training step does and capture everything exactness covers."""

import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType

import torch

import pmdrop

EXACT_VARIANTS = [name for name in pmdrop.variant_names() if pmdrop.get_variant(name).bit_exact]


def step(
    layer: Callable[[torch.Tensor], torch.Tensor],
    x0: torch.Tensor,
    seed: int = 0,
    inplace: bool = False,
    prepare: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Output, input gradient and CPU RNG state after one forward+backward from ``seed``."""
    torch.manual_seed(seed)
    if x0.is_cuda:
        torch.cuda.manual_seed(seed)
    leaf = x0.detach().clone().requires_grad_()
    x = prepare(leaf) if prepare else leaf
    if inplace:
        x = x.clone()  # in-place dropout needs a non-leaf
    y = layer(x)
    grad = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1)).to(y)
    y.backward(grad)
    state = torch.cuda.get_rng_state() if x0.is_cuda else torch.get_rng_state()
    return y.detach(), leaf.grad, state


def assert_identical(reference: tuple, candidate: tuple, label: str = "") -> None:
    for name, a, b in zip(("output", "input grad", "rng state"), reference, candidate, strict=True):
        assert a.dtype == b.dtype, f"{label}: {name} dtype {a.dtype} != {b.dtype}"
        assert torch.equal(a, b), f"{label}: {name} differs"


def import_triton_module(name: str, device: str) -> ModuleType:
    """Import the Triton kernel module ``name`` for ``device``: on CPU through Triton's interpreter, which Triton
    switches on when kernels are decorated (at the module's first import), so TRITON_INTERPRET=1 is set for that
    import only and restored right after; nothing else in the process sees it."""
    if device == "cuda" or name in sys.modules:
        return importlib.import_module(name)
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        return importlib.import_module(name)
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous
