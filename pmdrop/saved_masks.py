"""Store every bool tensor that autograd saves for backward at one bit per element, with no module swap.

    with pmdrop.pack_saved_masks() as packed:
        loss = model(batch).loss      # each bool tensor an op saves is packed 8 per byte
    loss.backward()                   # and unpacked, bit for bit, when its backward reads it
    print(packed.bool_bytes, packed.packed_bytes)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .packing import pack_flat, unpack_bits


@dataclass
class PackedSavedMasks:
    """What :func:`pack_saved_masks` packed so far."""

    tensors: int = 0  # bool saved tensors packed
    bool_bytes: int = 0  # bytes of the storage span they cover, at one byte per element
    packed_bytes: int = 0  # bytes kept instead
    kept: int = 0  # bool saved tensors left as they were (packing their span would not save memory)


@contextmanager
def pack_saved_masks() -> Iterator[PackedSavedMasks]:
    """Save every bool tensor autograd keeps for backward bit-packed, restored exactly when backward reads it.

    No module swap: for an unconverted model whose dropout saves a bool mask (CUDA's ``nn.Dropout``, every
    ``torch.compile``'d dropout: Inductor's keeps a bool mask on every device), or any op's bool saved tensor
    (``where``'s condition). On CPU eager ``nn.Dropout`` saves a float mask, which this leaves alone: use
    :func:`pmdrop.convert` there. Yields a :class:`PackedSavedMasks` counting what it packed. The storage span a
    tensor views is packed, so views, transposes, expanded and sliced tensors come back with their own shape, strides,
    dtype, device and values; a tensor whose span is over 8x its element count is left as it was. Like any
    ``saved_tensors_hooks``, the innermost active pair applies: inside this context, outer hooks (for instance
    :class:`pmdrop.track_saved_tensors`) do not see the tensors saved.
    """
    stats = PackedSavedMasks()

    def pack(t: torch.Tensor) -> torch.Tensor | tuple:
        if t.dtype != torch.bool or t.numel() == 0 or t.device.type == "meta" or t.layout != torch.strided:
            return t
        # The storage elements from the first t reads to its last.
        span = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
        if span > 8 * t.numel():
            stats.kept += 1
            return t
        packed = pack_flat(t.new_empty(0).set_(t.untyped_storage(), t.storage_offset(), (span,), (1,)), 8)
        stats.tensors += 1
        stats.bool_bytes += span
        stats.packed_bytes += packed.numel()
        return packed, span, t.shape, t.stride()  # the span 8 elements per byte, and how to view it as t again

    def unpack(saved: torch.Tensor | tuple) -> torch.Tensor:
        if isinstance(saved, torch.Tensor):
            return saved
        packed, span, shape, stride = saved
        return unpack_bits(packed, (span,), 8).as_strided(shape, stride)

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield stats
