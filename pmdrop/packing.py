"""Bit-packing of boolean masks: ``masks_per_byte`` masks share one uint8.

Layout: mask ``i`` of a flat sequence goes to byte ``i // k`` at bit ``(i % k) * (8 // k)``
(least significant first), with ``k = masks_per_byte``. So ``k=8`` is one bit per mask, ``k=4``
puts a mask in every second bit (the paper's "4-bit" ablation), ``k=1`` is a plain byte mask.

One traceable definition (:func:`pack_bits`, :func:`unpack_bits`) and the eager fast paths that give the same bytes:
a multiply and a strided copy of 64-bit words (:func:`pack_flat`), a uint8 matrix-vector product for small CPU masks,
chosen per layout by :func:`fresh_packer`; one unpack, a 256-entry table gather (:func:`unpack_bits`).
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Sequence

import torch

VALID_MASKS_PER_BYTE = (8, 4, 2, 1)

# Multiplying a little-endian word of eight 0/1 bytes by _GATHER[k] moves byte i's bit to bit
# (i % k) * (8 // k) of byte k * (i // k) + k - 1 of the product, with no carries: byte j's bit lands
# at 8 * j + 8 * (k - 1) - (8 - 8 // k) * i for each term i < k, and these positions are all distinct
# (8 * dj == (8 - 8 // k) * di has no solution with |di| < k but di = dj = 0). So one multiply and
# one strided copy of every k-th byte pack a whole tensor.
_GATHER = {
    k: sum(1 << (8 * (k - 1) - (8 - 8 // k) * i) for i in range(k)) for k in VALID_MASKS_PER_BYTE if k > 1
}
# On the CPU, up to this many masks, packing is one uint8 matrix-vector product: rows of k mask bytes times the
# bits' weights, with no carries since a row's bits are distinct. Its generic integer kernel costs ~0.6 ns a mask
# where the multiply and strided copy cost ~2 us each at any small size (crossover near 12K masks on a 2-core
# Intel Xeon); CUDA has no integer matrix-vector product.
_MATVEC_UP_TO = 8192
_CPU_BIT_WEIGHTS = {
    k: torch.tensor([1 << (8 // k) * i for i in range(k)], dtype=torch.uint8) for k in VALID_MASKS_PER_BYTE if k > 1
}
# Dropout's noise holds 0 or one value v. Where a byte b of v is odd it has an inverse mod 256, so weighting that byte
# of a row's i-th element by 2**bit_i * b^-1 (and v's other bytes by 0) makes the row's uint8 sum, mod 256, its
# packed byte: one matrix-vector product over the noise's bytes packs it, with no bool copy first. It reads every
# byte of the noise: up to this many it beats the bool copy + pack (crossover near 128 KiB for fp32 and fp64 on a
# 2-core Intel Xeon).
_BYTE_MATVEC_UP_TO = 64 * 2**10
if sys.byteorder != "little":
    raise ImportError("pmdrop.packing reads 64-bit words as little-endian bytes; this machine is big-endian")


def check_masks_per_byte(masks_per_byte: int) -> int:
    if masks_per_byte not in VALID_MASKS_PER_BYTE:
        raise ValueError(f"masks_per_byte={masks_per_byte!r} is not supported; valid: {VALID_MASKS_PER_BYTE}")
    return masks_per_byte


def packed_numel(numel: int, masks_per_byte: int = 8) -> int:
    """Bytes needed to hold ``numel`` masks at ``masks_per_byte`` per byte."""
    return math.ceil(numel / check_masks_per_byte(masks_per_byte))


def pack_flat(mask: torch.Tensor, masks_per_byte: int = 8) -> torch.Tensor:
    """Pack a dense tensor of 0/1 bytes (bool or uint8), in its memory order, into ``ceil(n / k)`` uint8.

    A fresh mask (8-byte aligned) with rows of whole words, as dropout packs on every call, takes one view fewer.
    """
    k = check_masks_per_byte(masks_per_byte)
    n = mask.numel()
    aligned = n > 0 and mask.data_ptr() % 8 == 0  # a dtype view to int64 needs 8-byte alignment; odd views may lack it
    if k > 1 and aligned and mask.dim() and mask.shape[-1] % 8 == 0 and mask.is_contiguous():
        words = mask.view(torch.int64)
    else:
        flat = mask.as_strided((n,), (1,)).view(torch.uint8)
        if k == 1:
            return flat.clone()
        if n % 8 or not aligned:
            padded = flat.new_zeros(n + (-n % 8))
            padded[:n] = flat
            flat = padded
        words = flat.view(torch.int64)
    product = words * _GATHER[k]  # fresh, so its storage starts at the product's first byte
    # One view picks each k-th byte (from byte k - 1) of the first ceil(n / k): a call costs one op per step.
    return product.view(torch.uint8).as_strided((-(-n // k),), (k,), k - 1).clone()


def packs_by_matvec(numel: int, masks_per_byte: int, device: torch.device) -> bool:
    """Whether :func:`fresh_packer` packs ``numel`` masks on ``device`` by one matrix-vector product (where it pays)."""
    return device.type == "cpu" and masks_per_byte > 1 and numel % masks_per_byte == 0 and numel <= _MATVEC_UP_TO


def byte_weights(value: torch.Tensor, masks_per_byte: int) -> torch.Tensor | None:
    """uint8 weights that pack rows of ``masks_per_byte`` elements, each 0 or ``value``, from their bytes by one
    matrix-vector product (see ``_BYTE_MATVEC_UP_TO``); None where no byte of ``value`` is odd (fp16's 1 / 0.9, 2.0,
    inf)."""
    raw = value.detach().reshape(1).cpu().view(torch.uint8).tolist()
    odd = next((i for i, b in enumerate(raw) if b % 2), None)
    if odd is None:
        return None
    inverse, spacing = pow(raw[odd], -1, 256), 8 // check_masks_per_byte(masks_per_byte)
    weights = torch.zeros(masks_per_byte, len(raw), dtype=torch.uint8)
    weights[:, odd] = torch.tensor([(inverse << spacing * i) % 256 for i in range(masks_per_byte)], dtype=torch.uint8)
    return weights.view(-1)


def packs_from_bytes(numel: int, masks_per_byte: int, device: torch.device, value: torch.Tensor) -> bool:
    """Whether :func:`fresh_packer` packs ``numel`` elements, each 0 or ``value``, straight from their bytes."""
    return (device.type == "cpu" and numel % masks_per_byte == 0 and numel * value.element_size() <= _BYTE_MATVEC_UP_TO
            and byte_weights(value, masks_per_byte) is not None)


def fresh_packer(numel: int, masks_per_byte: int, device: torch.device, nonzero: bool = False,
                 value: torch.Tensor | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """:func:`pack_flat` for fresh dense tensors of ``numel`` elements on ``device``, with its choices made once.

    ``nonzero``: the tensor is not a bool mask but any dtype whose nonzero elements are the masks (dropout's noise).
    ``value``: moreover each element is 0 or this one-element tensor (dropout's ``1 / (1 - p)``), and the tensor's last
    dim has stride 1 (a byte view needs it): small CPU tensors then pack from their bytes (:func:`byte_weights`).
    Dropout packs every call of a layout the same way: the returned function runs its ops and nothing else.
    """
    k = masks_per_byte
    if value is not None and packs_from_bytes(numel, k, device, value):
        weights = byte_weights(value, k)
        rows, stride = (numel // k, weights.numel()), (weights.numel(), 1)
        return lambda t: t.view(torch.uint8).as_strided(rows, stride).mv(weights)
    if packs_by_matvec(numel, k, device):
        rows, stride, weights = (numel // k, k), (k, 1), _CPU_BIT_WEIGHTS[k]
        return lambda t: (t.bool() if nonzero else t).view(torch.uint8).as_strided(rows, stride).mv(weights)
    return lambda t: pack_flat(t.bool() if nonzero else t, k)


@functools.cache
def decode_table(masks_per_byte: int, device: torch.device) -> torch.Tensor:
    """(256, k) bool table: row b holds the k masks that packed byte b decodes to."""
    spacing = 8 // check_masks_per_byte(masks_per_byte)
    byte = torch.arange(256, dtype=torch.int64)[:, None]
    return ((byte >> torch.arange(0, 8, spacing)) & 1).to(device=device, dtype=torch.bool)


def pack_bits(mask: torch.Tensor, masks_per_byte: int) -> torch.Tensor:
    """The layout's one traceable definition: a bool mask in row-major order to ``ceil(numel / k)`` uint8.

    Plain tensor ops that ``torch.func.vmap`` batches (each sample packed on its own), dynamo traces and Inductor fuses:
    the ``torch.func``, ``torch.compile`` and ``torch.export`` paths pack with it; the eager paths run the faster
    implementations above, which give the same bytes.
    """
    k = check_masks_per_byte(masks_per_byte)
    flat = mask.reshape(-1)
    if flat.numel() % k:
        flat = torch.cat([flat, flat.new_zeros(-flat.numel() % k)])
    # One pointwise or of k strided columns, not a sum over a last dim of k: Inductor's CPU code for that uint8
    # reduction took 17.7 ms where this takes 0.06 ms for a (16, 64, 512) mask at k = 8.
    columns = flat.view(-1, k).to(torch.uint8)
    packed = columns[:, 0]
    for i in range(1, k):
        packed = packed | (columns[:, i] << i * (8 // k))
    return packed


def unpack_bits(packed: torch.Tensor, shape: Sequence[int], masks_per_byte: int) -> torch.Tensor:
    """The layout's one unpack, inverse of :func:`pack_bits` and :func:`pack_flat`: a contiguous bool tensor of
    ``shape``, each packed byte's row of :func:`decode_table` gathered (an ``index_select``, which ``torch.func.vmap``
    batches)."""
    # int32 indices: half the bytes of int64, and index_select takes them.
    rows = decode_table(masks_per_byte, packed.device).index_select(0, packed.reshape(-1).to(torch.int32))
    return rows.reshape(-1)[: math.prod(shape)].view(shape)


def pack_mask(mask: torch.Tensor, masks_per_byte: int = 8) -> torch.Tensor:
    """Pack a boolean tensor of any shape, in row-major order, into a flat uint8 tensor.

    ``masks_per_byte`` in {8, 4, 2, 1}. The result has ``ceil(mask.numel() / masks_per_byte)`` bytes;
    bits past the last mask are zero. Inverse: :func:`unpack_mask`.
    """
    if mask.dtype != torch.bool:
        raise TypeError(f"pack_mask takes a bool tensor, got {mask.dtype}")
    return pack_flat(mask.contiguous().view(-1), masks_per_byte)


def unpack_mask(packed: torch.Tensor, shape: torch.Size | tuple[int, ...], masks_per_byte: int = 8) -> torch.Tensor:
    """Unpack what :func:`pack_mask` produced back into a contiguous bool tensor of ``shape``."""
    numel = math.prod(shape)
    expected = packed_numel(numel, masks_per_byte)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed masks must be uint8, got {packed.dtype}")
    if packed.numel() != expected:
        raise ValueError(f"{packed.numel()} packed bytes cannot hold exactly {numel} masks at {masks_per_byte} per "
                         f"byte (expected {expected})")
    return unpack_bits(packed, shape, masks_per_byte)
