"""Fused CUDA variants: Triton kernels that draw the mask, apply it and write it packed in one pass.

The ``apply`` of ``pmdrop_fused`` (and :func:`pmdrop.variants.fused_packed_variant`'s) and ``seeded_fused``, which
stores no mask: its backward kernel redraws it from the Philox seed and counter (:class:`_FusedFn`).

**Not bit-identical to torch.nn.Dropout** (``bit_exact=False``): the random bits come from Triton's
Philox stream (see :mod:`pmdrop.triton_kernels`), not from the one ``native_dropout`` draws, so the
masks differ from torch's for the same seed. What holds instead: the seed and counters are reserved
from torch's CUDA generator (``Generator.philox_state``, the protocol of the built-in CUDA random
kernels), so ``torch.manual_seed`` reproduces the masks and they never reuse numbers another random
op draws; each element is kept with probability ``1 - p`` (to within 2**-32); kept elements are
scaled by ``1 / (1 - p)`` computed as torch computes it (float32, float64 for float64 inputs);
backward uses exactly the forward's mask.

Inputs that are not contiguous are copied to a contiguous buffer first (one extra pass); the output
and the input gradient are contiguous. CUDA graph capture is not supported (refused with an error). On CPU
tensors the variants run only under Triton's interpreter (:mod:`pmdrop.triton_kernels`), for the tests.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from types import ModuleType
from typing import Any

import torch

from . import routes
from .packing import packed_numel

_KERNELS = "pmdrop.triton_kernels"


def interpreting() -> bool:
    """Whether the kernels run (or, once imported, will run) under Triton's CPU interpreter, as the tests run them."""
    kernels = sys.modules.get(_KERNELS)
    return kernels.INTERPRETED if kernels is not None else os.environ.get("TRITON_INTERPRET") == "1"


def kernels_for(x: torch.Tensor, user: str) -> ModuleType:
    """The Triton kernel module if it can run on ``x``'s device, else a one-line error (``user`` names the caller)."""
    if x.device.type == "cuda" or (x.device.type == "cpu" and interpreting()):
        return importlib.import_module(_KERNELS)
    if x.device.type == "cpu" and _KERNELS in sys.modules:
        raise RuntimeError(
            f"{user} got a cpu tensor, but {_KERNELS} was imported without TRITON_INTERPRET=1 and compiled its "
            "kernels for the GPU; set TRITON_INTERPRET=1 before its first use to run Triton's interpreter on CPU"
        )
    raise RuntimeError(
        f"{user} needs a CUDA tensor (or TRITON_INTERPRET=1 to run Triton's interpreter on CPU, for tests), "
        f"got a {x.device.type} tensor"
    )


def philox_position(device: torch.device, kernels: ModuleType) -> tuple[int, int]:
    """(seed, first counter) for one dropout call on ``device``, reserved from torch's generator."""
    if device.type == "cpu":  # Triton's interpreter; the CPU generator is not Philox-based: a seed drawn from it
        return int(torch.randint(2**63 - 1, (), dtype=torch.int64)), 0
    if torch.cuda.is_current_stream_capturing():
        raise RuntimeError("pmdrop's fused variants do not support CUDA graph capture; use pmdrop or seeded")
    generator = torch.cuda.default_generators[device.index if device.index is not None else 0]
    seed, offset, intragraph = generator.philox_state(kernels.CHUNK)
    return seed.item(), ((offset.item() + intragraph.item()) & (2**64 - 1)) // 4


@functools.lru_cache(maxsize=256)
def _scale(p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``1 / (1 - p)`` in the dtype torch's native_dropout multiplies in (float64 for float64, else float32)."""
    accumulate = torch.float64 if dtype == torch.float64 else torch.float32
    return torch.full((1,), routes.scale(p), dtype=accumulate, device=device)


class _FusedFn(torch.autograd.Function):
    """Both Triton variants: the forward kernel (storing the packed mask unless the variant regenerates it), and
    ``grad * mask * scale`` in backward from the stored or the redrawn mask."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, inplace: bool, variant: Any) -> torch.Tensor:
        # variant: a pmdrop.variants.DropoutVariant, not imported here (variants imports this module)
        kernels = kernels_for(x, variant.name)
        if x.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise TypeError(f"{variant.name} takes float16, bfloat16, float32 or float64 tensors, got {x.dtype}")
        src = x.contiguous()
        out = src if inplace else torch.empty_like(src, memory_format=torch.contiguous_format)
        k = variant.masks_per_byte or 8  # seeded: no mask stored, any tile shape draws the same bits
        packed = None if variant.masks_per_byte is None else x.new_empty(packed_numel(x.numel(), k), dtype=torch.uint8)
        ctx.seed, ctx.counter_base = philox_position(x.device, kernels)
        ctx.kernels, ctx.p, ctx.k, ctx.shape, ctx.stored = kernels, p, k, x.shape, packed is not None
        kernels.dropout(src.view(-1), out.view(-1), packed, _scale(p, x.dtype, x.device), p, ctx.seed,
                        ctx.counter_base, k)
        if packed is not None:
            ctx.save_for_backward(packed)
        if not inplace:
            return out
        if out is not x:
            x.copy_(out)
        ctx.mark_dirty(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        scale = _scale(ctx.p, grad.dtype, grad.device)

        def noise_of(v: torch.Tensor) -> torch.Tensor:  # v * mask * scale, from the stored or the redrawn mask
            if ctx.stored:
                return ctx.kernels.masked_scale(v, ctx.saved_tensors[0], scale, ctx.k)
            out = torch.empty_like(v)
            ctx.kernels.dropout(v, out, None, scale, ctx.p, ctx.seed, ctx.counter_base, ctx.k)
            return out

        flat = grad.contiguous().view(-1)
        if torch.is_grad_enabled():
            # create_graph: a differentiable product with the noise (mask * scale in grad's dtype), as torch's
            # derivative of native_dropout computes it then.
            return grad * noise_of(torch.ones_like(flat)).view(ctx.shape), None, None, None
        return noise_of(flat).view(ctx.shape), None, None, None


apply = _FusedFn.apply
