"""Triton kernels of the fused path: dropout that writes its 1-bit mask in the same pass, and its backward.

Importing this module imports Triton; ``pmdrop.fused`` imports it lazily, on first use. Triton decides
whether ``@triton.jit`` compiles for the GPU or runs in its CPU interpreter when the function is
decorated, i.e. when this module is imported: set ``TRITON_INTERPRET=1`` before that to run the
kernels on CPU tensors (tests), and check :data:`INTERPRETED` afterwards.

Random stream (Philox4x32-10, as curand and ``tl.philox`` compute it; key = the generator's seed): the tensor
is cut into chunks of :data:`CHUNK` elements, one program each. Chunk ``c`` draws from subsequence
``c`` (counter words 2-3) at counters ``base + j`` for ``j < CHUNK // 4`` (words 0-1); each counter
gives four 32-bit outputs, and output ``lane`` of counter ``j`` decides element ``lane * CHUNK // 4 + j``
of the chunk. Four contiguous sub-tiles per chunk, one per output, keep every load and store
contiguous without shuffling the random numbers. An element is kept when its output is
``>= threshold`` (``threshold = round(p * 2**32)``). The mask of an element depends only on
(seed, base, its index): not on the dtype, the packing density or the block sizes below. Mask layout: as
:mod:`pmdrop.packing`'s.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction

CHUNK = 2048  # elements per program of the random kernel; part of the random stream's definition
PHILOX_OUTPUTS = 4  # 32-bit outputs per Philox4x32 counter
COUNTERS_PER_CHUNK = CHUNK // PHILOX_OUTPUTS
MASK_BLOCK_BYTES = 256  # packed bytes per program of the kernels that read or write masks without drawing
NUM_WARPS = 4  # not tuned on a GPU yet (none was available): a starting point, not a measured optimum
_ROUND_A: tl.constexpr = tl.constexpr(0xD2511F53)
_ROUND_B: tl.constexpr = tl.constexpr(0xCD9E8D57)
_KEY_A: tl.constexpr = tl.constexpr(0x9E3779B9)
_KEY_B: tl.constexpr = tl.constexpr(0xBB67AE85)

# The kernels call only jit functions of this module (not tl.philox, tl.sum): Triton's interpreter can run
# only functions decorated while TRITON_INTERPRET=1 was set, and triton.language's own were decorated when
# triton was first imported, which may have been earlier (torch.compile imports it).


@triton.jit
def philox4x32(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 (Salmon et al., SC'11) on uint32 counter words c0..c3 and key k0, k1: four uint32 outputs."""
    for _ in tl.static_range(10):
        _c0, _c2 = c0, c2
        c0 = tl.umulhi(_ROUND_B, _c2) ^ c1 ^ k0
        c2 = tl.umulhi(_ROUND_A, _c0) ^ c3 ^ k1
        c1 = tl.mul(_ROUND_B, _c2, sanitize_overflow=False)
        c3 = tl.mul(_ROUND_A, _c0, sanitize_overflow=False)
        k0 = tl.add(k0, _KEY_A, sanitize_overflow=False)
        k1 = tl.add(k1, _KEY_B, sanitize_overflow=False)
    return c0, c1, c2, c3


@triton.jit
def _bit_or(a, b):
    return a | b


@triton.jit
def _masked_scale(v, keep, scale):
    # (v * mask) * scale in the accumulation type, as torch's native_dropout and its backward compute it:
    # a dropped inf or nan still gives nan, as in torch.
    return (v.to(scale.dtype) * keep.to(scale.dtype) * scale).to(v.dtype)


@triton.jit
def _pack_bits(keep, cols, K: tl.constexpr):
    """[rows, K] booleans -> [rows] packed bytes."""
    return tl.reduce(keep.to(tl.uint8) << (cols * (8 // K)).to(tl.uint8)[None, :], 1, _bit_or)


@triton.jit
def _dropout_sub_tile(x_ptr, y_ptr, mask_ptr, start, n, bits, threshold, scale, K: tl.constexpr,
                      STORE_MASK: tl.constexpr):
    """Apply one Philox output (``bits``, [COUNTERS // K, K]) to the elements ``start ..`` of its sub-tile."""
    rows = tl.arange(0, bits.shape[0])
    cols = tl.arange(0, K)
    offsets = start + rows[:, None] * K + cols[None, :]
    inside = offsets < n
    keep = (bits >= threshold) & inside  # bits past the end stay zero in the packed mask
    x = tl.load(x_ptr + offsets, mask=inside)
    tl.store(y_ptr + offsets, _masked_scale(x, keep, scale), mask=inside)
    if STORE_MASK:
        tl.store(mask_ptr + start // K + rows, _pack_bits(keep, cols, K), mask=start + rows * K < n)


@triton.jit
def dropout_kernel(x_ptr, y_ptr, mask_ptr, scale_ptr, n, seed, counter_base, threshold,
                   COUNTERS: tl.constexpr, K: tl.constexpr, STORE_MASK: tl.constexpr):
    """y = x * keep * scale for one chunk of 4 * COUNTERS elements, and (STORE_MASK) keep packed K per byte.

    The seeded variant's backward runs this same kernel on the gradient without storing the mask.
    """
    chunk = tl.program_id(0).to(tl.int64)
    rows = tl.arange(0, COUNTERS // K)
    cols = tl.arange(0, K)
    counter = tl.cast(counter_base, tl.int64) + rows[:, None] * K + cols[None, :]
    subsequence = chunk + counter * 0
    seed = tl.cast(seed, tl.uint64)
    bits0, bits1, bits2, bits3 = philox4x32(
        counter.to(tl.uint32), (counter >> 32).to(tl.uint32), subsequence.to(tl.uint32),
        (subsequence >> 32).to(tl.uint32), seed.to(tl.uint32), (seed >> 32).to(tl.uint32),
    )
    # tl.cast, not .to(): a launch value of 1 arrives as a constexpr, which tl.cast makes a tensor first
    threshold = tl.cast(threshold, tl.uint32)
    scale = tl.load(scale_ptr)
    start = chunk * 4 * COUNTERS
    _dropout_sub_tile(x_ptr, y_ptr, mask_ptr, start, n, bits0, threshold, scale, K, STORE_MASK)
    _dropout_sub_tile(x_ptr, y_ptr, mask_ptr, start + COUNTERS, n, bits1, threshold, scale, K, STORE_MASK)
    _dropout_sub_tile(x_ptr, y_ptr, mask_ptr, start + 2 * COUNTERS, n, bits2, threshold, scale, K, STORE_MASK)
    _dropout_sub_tile(x_ptr, y_ptr, mask_ptr, start + 3 * COUNTERS, n, bits3, threshold, scale, K, STORE_MASK)


@triton.jit
def _mask_tile(block_bytes: tl.constexpr, K: tl.constexpr):
    """Byte indices [block_bytes] of this program and element indices [block_bytes, K] they hold."""
    rows = tl.program_id(0).to(tl.int64) * block_bytes + tl.arange(0, block_bytes)
    cols = tl.arange(0, K)
    return rows, cols, rows[:, None] * K + cols[None, :]


@triton.jit
def masked_scale_kernel(grad_ptr, mask_ptr, out_ptr, scale_ptr, n, n_bytes, BLOCK_BYTES: tl.constexpr,
                        K: tl.constexpr):
    """out = grad * unpacked mask * scale: the backward of the packed variant, reading 1/K byte per element."""
    rows, cols, offsets = _mask_tile(BLOCK_BYTES, K)
    packed = tl.load(mask_ptr + rows, mask=rows < n_bytes, other=0)
    keep = ((packed[:, None] >> (cols * (8 // K))[None, :]) & 1) != 0
    inside = offsets < n
    grad = tl.load(grad_ptr + offsets, mask=inside)
    tl.store(out_ptr + offsets, _masked_scale(grad, keep, tl.load(scale_ptr)), mask=inside)


INTERPRETED = isinstance(dropout_kernel, InterpretedFunction)


def _launch(kernel, n_programs: int, *args, **constexprs) -> None:
    # Triton launches on the current CUDA device, which need not be the tensors' (args[0] is one of them).
    with torch.cuda.device(args[0].device) if args[0].is_cuda else contextlib.nullcontext():
        kernel[(n_programs,)](*args, **constexprs, num_warps=NUM_WARPS)


def _check_flat(t: torch.Tensor, what: str) -> None:
    if t.dim() != 1 or not t.is_contiguous():
        raise ValueError(f"{what} must be a flat contiguous tensor, got shape {tuple(t.shape)} strides {t.stride()}")


def philox_threshold(p: float) -> int:
    """The 32-bit output below which an element is dropped: P(drop) = threshold / 2**32, within 2**-33 of p."""
    return min(round(p * 2**32), 2**32 - 1)


def dropout(
    x: torch.Tensor, out: torch.Tensor, packed: torch.Tensor | None, scale: torch.Tensor, p: float,
    seed: int, counter_base: int, masks_per_byte: int,
) -> None:
    """Launch :func:`dropout_kernel`: ``out = x * keep * scale`` (may alias ``x``); ``packed`` gets the mask if given.

    ``x``, ``out``: flat, contiguous, same dtype; ``packed``: ``ceil(n / masks_per_byte)`` uint8; ``scale``: a
    one-element tensor in the accumulation dtype (float64 for float64 inputs, float32 otherwise).
    """
    _check_flat(x, "x")
    _check_flat(out, "out")
    n = x.numel()
    _launch(
        dropout_kernel, triton.cdiv(n, CHUNK), x, out, x if packed is None else packed, scale, n, seed, counter_base,
        philox_threshold(p), COUNTERS=COUNTERS_PER_CHUNK, K=masks_per_byte, STORE_MASK=packed is not None,
    )


def masked_scale(grad: torch.Tensor, packed: torch.Tensor, scale: torch.Tensor, masks_per_byte: int) -> torch.Tensor:
    """``grad * unpack(packed) * scale`` in one pass; ``grad`` flat and contiguous."""
    _check_flat(grad, "grad")
    out = torch.empty_like(grad)
    _launch(
        masked_scale_kernel, triton.cdiv(packed.numel(), MASK_BLOCK_BYTES), grad, packed, out, scale, grad.numel(),
        packed.numel(), BLOCK_BYTES=MASK_BLOCK_BYTES, K=masks_per_byte,
    )
    return out
