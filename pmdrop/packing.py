"""Bit-packing of boolean masks: ``masks_per_byte`` masks share one uint8.

Layout: mask ``i`` of a flat sequence goes to byte ``i // k`` at bit ``(i % k) * (8 // k)``
(least significant first), with ``k = masks_per_byte``. So ``k=8`` is one bit per mask, ``k=4``
puts a mask in every second bit (the paper's "4-bit" ablation), ``k=1`` is a plain byte mask.

Packing reads the mask as 64-bit words (eight mask bytes each) and folds them with a few
whole-tensor integer ops, so the cost is a handful of passes over ``n`` bytes, not over ``n``
elements of the activation. Unpacking is a 256-entry table lookup: one gather that writes the
``k`` mask bytes of each packed byte at once.
"""

from __future__ import annotations

import functools
import math

import torch

VALID_MASKS_PER_BYTE = (8, 4, 2, 1)

# Multiplying a word of eight 0/1 bytes by this gathers byte i's bit into bit 56 + i, with no
# carries between the partial products (the shift amounts 56 - 7i are all distinct mod 8).
_GATHER_BITS = 0x0102040810204080


def check_masks_per_byte(masks_per_byte: int) -> int:
    if masks_per_byte not in VALID_MASKS_PER_BYTE:
        raise ValueError(f"masks_per_byte={masks_per_byte!r} is not supported; valid: {VALID_MASKS_PER_BYTE}")
    return masks_per_byte


def packed_numel(numel: int, masks_per_byte: int = 8) -> int:
    """Bytes needed to hold ``numel`` masks at ``masks_per_byte`` per byte."""
    return math.ceil(numel / check_masks_per_byte(masks_per_byte))


def _pack_words(words: torch.Tensor, masks_per_byte: int) -> torch.Tensor:
    """Pack int64 words, each holding eight 0/1 bytes, into ``8 // masks_per_byte`` bytes per word."""
    if masks_per_byte == 8:
        return torch.bitwise_right_shift(words * _GATHER_BITS, 56).to(torch.uint8)
    # Fold byte i of each group of k onto bit (i % k) * spacing of the group's first byte, then keep
    # every k-th byte. Only zeros land on the kept bytes' other bits (checked by the round-trip tests).
    spacing = 8 // masks_per_byte
    folded = words.clone()
    for i in range(1, masks_per_byte):
        folded |= words >> ((8 - spacing) * i)
    return folded.view(torch.uint8).view(-1, masks_per_byte)[:, 0].contiguous()


def _pack_tail(tail: torch.Tensor, masks_per_byte: int) -> torch.Tensor:
    """Pack fewer than eight mask bytes (the part that does not fill a 64-bit word)."""
    spacing = 8 // masks_per_byte
    size = packed_numel(tail.numel(), masks_per_byte) * masks_per_byte
    padded = torch.zeros(size, dtype=torch.uint8, device=tail.device)
    padded[: tail.numel()] = tail
    shifts = torch.arange(0, 8, spacing, dtype=torch.uint8, device=tail.device)
    return (padded.view(-1, masks_per_byte) << shifts).sum(dim=1, dtype=torch.uint8)


def pack_flat(mask_bytes: torch.Tensor, masks_per_byte: int = 8) -> torch.Tensor:
    """Pack a flat contiguous tensor of 0/1 bytes (bool or uint8) into ``ceil(n / k)`` uint8."""
    check_masks_per_byte(masks_per_byte)
    flat = mask_bytes.view(torch.uint8) if mask_bytes.dtype == torch.bool else mask_bytes
    if masks_per_byte == 1:
        return flat.clone()
    n = flat.numel()
    n_words = n // 8
    # A dtype view to int64 needs 8-byte alignment; fresh allocations have it, odd views may not.
    if n_words and flat.data_ptr() % 8 == 0:
        body = _pack_words(flat[: n_words * 8].view(torch.int64), masks_per_byte)
    else:
        n_words = 0
        body = flat.new_empty(0)
    if n_words * 8 == n:
        return body
    return torch.cat([body, _pack_tail(flat[n_words * 8 :], masks_per_byte)])


@functools.cache
def decode_table(masks_per_byte: int, device: torch.device) -> torch.Tensor:
    """(256, k) bool table: row b holds the k masks that packed byte b decodes to."""
    spacing = 8 // check_masks_per_byte(masks_per_byte)
    byte = torch.arange(256, dtype=torch.int64)[:, None]
    return ((byte >> torch.arange(0, 8, spacing)) & 1).to(device=device, dtype=torch.bool)


def unpack_flat(
    packed: torch.Tensor, numel: int, masks_per_byte: int = 8, table: torch.Tensor | None = None
) -> torch.Tensor:
    """Inverse of :func:`pack_flat`: a flat tensor of ``numel`` decoded masks.

    ``table`` maps each byte value to its k decoded elements (default :func:`decode_table`, giving
    bool); a table of other values decodes straight into them, e.g. dropout's {0, 1/(1-p)} noise.
    """
    check_masks_per_byte(masks_per_byte)
    if packed.dtype != torch.uint8:
        raise TypeError(f"packed masks must be uint8, got {packed.dtype}")
    if packed.numel() != packed_numel(numel, masks_per_byte):
        raise ValueError(
            f"{packed.numel()} packed bytes cannot hold exactly {numel} masks at {masks_per_byte} per byte "
            f"(expected {packed_numel(numel, masks_per_byte)})"
        )
    if table is None:
        table = decode_table(masks_per_byte, packed.device)
    # int32 indices: half the bytes of int64, and index_select takes them.
    rows = torch.index_select(table, 0, packed.reshape(-1).to(torch.int32))
    return rows.view(-1)[:numel]


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
    return unpack_flat(packed, numel, masks_per_byte).view(shape)
