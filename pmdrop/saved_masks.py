"""Store every bool tensor that autograd saves for backward at one bit per element, with no module swap.

    with pmdrop.pack_saved_masks() as packed:
        loss = model(batch).loss      # each bool tensor an op saves is packed 8 per byte
    loss.backward()                   # and unpacked, bit for bit, when its backward reads it
    print(packed.bool_bytes, packed.packed_bytes)

Any op's bool saved tensors qualify: ``native_dropout``'s mask (``nn.Dropout`` on CUDA), the masks
torch.compile'd graphs save (Inductor's dropout keeps a bool mask on every device), ``where``'s
condition. Unpacking gives back a tensor of the same shape, strides, dtype and device holding the
same values, so backward computes exactly what it computes without the hooks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .packing import pack_flat, unpack_flat


@dataclass
class PackedSavedMasks:
    """What :func:`pack_saved_masks` packed so far."""

    tensors: int = 0  # bool saved tensors packed
    bool_bytes: int = 0  # bytes of the storage span they cover, at one byte per element
    packed_bytes: int = 0  # bytes kept instead
    kept: int = 0  # bool saved tensors left as they were (packing their span would not save memory)


def _span(t: torch.Tensor) -> tuple[int, int]:
    """First storage element ``t`` reads and how many consecutive elements reach its last one."""
    last = t.storage_offset() + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride(), strict=True))
    return t.storage_offset(), last - t.storage_offset() + 1


class _PackedBool:
    """A bool tensor's storage span, 8 elements per byte, and how to view it as the tensor again."""

    __slots__ = ("packed", "shape", "span", "stride", "view_offset")

    def __init__(self, t: torch.Tensor, first: int, span: int) -> None:
        region = t.new_empty(0).set_(t.untyped_storage(), first, (span,), (1,))
        self.packed = pack_flat(region, 8)
        self.shape, self.stride, self.span = t.shape, t.stride(), span
        self.view_offset = t.storage_offset() - first

    def restore(self) -> torch.Tensor:
        region = unpack_flat(self.packed, self.span, 8)
        return region.as_strided(self.shape, self.stride, region.storage_offset() + self.view_offset)


@contextmanager
def pack_saved_masks() -> Iterator[PackedSavedMasks]:
    """Save every bool tensor autograd keeps for backward bit-packed, restored exactly when backward reads it.

    No module swap: for an unconverted model whose dropout saves a bool mask (CUDA's ``nn.Dropout``, every
    ``torch.compile``'d dropout), or any op's bool saved tensor. On CPU eager ``nn.Dropout`` saves a float mask, which
    this leaves alone: use :func:`pmdrop.convert` there. Yields a :class:`PackedSavedMasks` counting what it packed.
    The storage span a tensor views is packed (so views, transposes, expanded and sliced tensors come back
    with their own strides); a tensor whose span is over 8x its element count is left as it was. Like any
    ``saved_tensors_hooks``, the innermost active pair applies: inside this context, outer hooks (for
    instance :class:`pmdrop.track_saved_tensors`) do not see the tensors saved.
    """
    stats = PackedSavedMasks()

    def pack(t: torch.Tensor) -> torch.Tensor | _PackedBool:
        if t.dtype != torch.bool or t.numel() == 0 or t.device.type == "meta" or t.layout != torch.strided:
            return t
        first, span = _span(t)
        if span > 8 * t.numel():
            stats.kept += 1
            return t
        packed = _PackedBool(t, first, span)
        stats.tensors += 1
        stats.bool_bytes += span
        stats.packed_bytes += packed.packed.numel()
        return packed

    def unpack(saved: torch.Tensor | _PackedBool) -> torch.Tensor:
        return saved.restore() if isinstance(saved, _PackedBool) else saved

    with torch.autograd.graph.saved_tensors_hooks(pack, unpack):
        yield stats
