"""A Triton pack kernel: the candidate that ``benchmarks.bench_gpu`` times against :func:`pmdrop.packing.pack_flat`.

Built on the jit helpers and launcher of :mod:`pmdrop.triton_kernels`, so it is decorated the way they were
(Triton's interpreter or the GPU, chosen by ``TRITON_INTERPRET`` when a module is imported; see there): import this
module in the mode :mod:`pmdrop.triton_kernels` was imported in, or with it. A mismatch is refused at import.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

from pmdrop.triton_kernels import INTERPRETED, MASK_BLOCK_BYTES, _check_flat, _launch, _mask_tile, _pack_bits


@triton.jit
def pack_kernel(mask_ptr, out_ptr, n, n_bytes, BLOCK_BYTES: tl.constexpr, K: tl.constexpr):
    """Pack a flat byte mask (bool viewed as uint8) K per byte: one read of n bytes, one write of n / K."""
    rows, cols, offsets = _mask_tile(BLOCK_BYTES, K)
    mask = tl.load(mask_ptr + offsets, mask=offsets < n, other=0)
    tl.store(out_ptr + rows, _pack_bits(mask != 0, cols, K), mask=rows < n_bytes)


if isinstance(pack_kernel, InterpretedFunction) != INTERPRETED:
    raise ImportError(
        f"benchmarks.triton_pack was imported {'without' if INTERPRETED else 'with'} TRITON_INTERPRET=1 and "
        f"pmdrop.triton_kernels {'with' if INTERPRETED else 'without'}: its kernel could not call their jit helpers; "
        "import both in one mode"
    )


def pack(mask: torch.Tensor, masks_per_byte: int = 8) -> torch.Tensor:
    """Triton twin of :func:`pmdrop.packing.pack_flat`, in one pass: ``mask`` flat, contiguous, bool or 0/1 uint8."""
    _check_flat(mask, "mask")
    if mask.dtype not in (torch.bool, torch.uint8):
        raise TypeError(f"pack takes a bool or uint8 mask, got {mask.dtype}")
    flat = mask.view(torch.uint8)
    n_bytes = -(-flat.numel() // masks_per_byte)
    out = torch.empty(n_bytes, dtype=torch.uint8, device=mask.device)
    if n_bytes:
        _launch(
            pack_kernel, triton.cdiv(n_bytes, MASK_BLOCK_BYTES), flat, out, flat.numel(), n_bytes,
            BLOCK_BYTES=MASK_BLOCK_BYTES, K=masks_per_byte,
        )
    return out
