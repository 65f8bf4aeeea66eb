"""Dropout that saves its mask for backward bit-packed, or not at all, bit-identical to torch's.

Torch's own dropout takes one of two routes, and each variant here reproduces the route torch
would take for the same call, so outputs, gradients and the RNG stream stay identical:

* **noise route** (CPU, and ``inplace=True`` everywhere): ``noise = empty_like(x).bernoulli_(1-p)
  .div_(1-p)``, ``y = x * noise``; the multiply saves ``noise`` in x's dtype (4 B/element for fp32).
  Here the same Bernoulli bits are drawn into a bool tensor of x's layout (same generator calls,
  same order), and ``x * mask * scale`` rounds exactly like ``x * noise`` because ``noise`` only
  holds 0 and ``scale``, the value torch's ``div_`` gives in that dtype.
* **fused route** (CUDA/XPU out of place): ``native_dropout`` returns ``(y, bool mask)``; the mask
  is packed here and unpacked into ``native_dropout_backward`` with the same scale.

Calls that need no backward (eval, p in {0, 1}, empty, no grad, non-float input) go straight to
torch's own ``dropout``, so torch's results, errors and aliasing apply unchanged.
"""

from __future__ import annotations

import functools

import torch

from .accounting import dropout_site
from .packing import pack_flat, unpack_flat
from .variants import DropoutVariant, get_variant, register_variant

_FUSED_DEVICE_TYPES = frozenset({"cuda", "xpu", "lazy", "privateuseone"})


def _torch_dropout(x: torch.Tensor, p: float, training: bool, inplace: bool) -> torch.Tensor:
    # torch.dropout is what F.dropout calls; calling it directly keeps dropout_mode from re-routing.
    return torch.dropout_(x, p, training) if inplace else torch.dropout(x, p, training)


def _uses_fused_route(x: torch.Tensor, inplace: bool) -> bool:
    return not inplace and x.device.type in _FUSED_DEVICE_TYPES


@functools.lru_cache(maxsize=256)
def _noise_scale(p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The non-zero value of torch's dropout noise, ``1 / (1 - p)`` rounded as ``div_`` rounds it."""
    return torch.ones((), dtype=dtype, device=device).div_(1 - p)


def _fused_scale(p: float) -> float:
    return 1.0 / (1.0 - p)


def _draw_keep_mask(like: torch.Tensor, keep: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The Bernoulli(keep) draw of torch's noise route, as a bool tensor in ``like``'s layout."""
    if like.device.type == "cpu":
        # CPU bernoulli_ draws the same numbers per element whatever the dtype (checked by the tests).
        return torch.empty_like(like, dtype=torch.bool).bernoulli_(keep, generator=generator)
    # Elsewhere the dtype may change how raw random numbers map to elements: draw in x's dtype.
    return torch.empty_like(like).bernoulli_(keep, generator=generator).bool()


def _is_dense(t: torch.Tensor) -> bool:
    """True when ``t`` covers exactly ``numel`` consecutive elements of its storage."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(t.shape, t.stride(), strict=True) if s != 1):
        if stride != expected:
            return False
        expected *= size
    return True


class _MaskLayout:
    """Shape and strides of a mask, so it can be packed in memory order and rebuilt as it was."""

    __slots__ = ("shape", "stride", "numel")

    def __init__(self, mask: torch.Tensor) -> None:
        self.shape = mask.shape
        self.stride = mask.stride() if _is_dense(mask) else torch.empty(mask.shape, device="meta").stride()
        self.numel = mask.numel()

    def flat(self, mask: torch.Tensor) -> torch.Tensor:
        if mask.stride() == self.stride:
            return mask.as_strided((self.numel,), (1,))
        return mask.contiguous().view(-1)

    def restore(self, flat: torch.Tensor) -> torch.Tensor:
        return flat.as_strided(self.shape, self.stride)


def _masked_scale_backward(grad: torch.Tensor, mask: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``grad * noise`` of the noise route, with ``noise`` rebuilt from its mask and scale."""
    return grad.mul(mask).mul_(scale)


def _fused_backward(grad: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    # Mirrors torch's derivative of native_dropout, which rounds differently under create_graph.
    if torch.is_grad_enabled():
        return grad * (mask.type_as(grad) * _fused_scale(p))
    return torch.ops.aten.native_dropout_backward(grad, mask, _fused_scale(p))


class _PackedDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, inplace: bool, variant: DropoutVariant) -> torch.Tensor:
        ctx.p, ctx.fused, ctx.variant = p, _uses_fused_route(x, inplace), variant
        if ctx.fused:
            y, mask = torch.ops.aten.native_dropout(x, p, True)
        else:
            mask = _draw_keep_mask(x, 1 - p)
            ctx.scale = _noise_scale(p, x.dtype, x.device)
            y = (x.mul_(mask) if inplace else x.mul(mask)).mul_(ctx.scale)
            if inplace:
                ctx.mark_dirty(x)
        ctx.layout = _MaskLayout(mask)
        ctx.save_for_backward(pack_flat(ctx.layout.flat(mask), variant.masks_per_byte))
        ctx.cached_mask = None
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        mask = ctx.cached_mask
        if mask is None:
            (packed,) = ctx.saved_tensors
            mask = ctx.layout.restore(unpack_flat(packed, ctx.layout.numel, ctx.variant.masks_per_byte))
            if ctx.variant.cache_unpacked:
                ctx.cached_mask = mask
        if ctx.fused:
            return _fused_backward(grad, mask, ctx.p), None, None, None
        return _masked_scale_backward(grad, mask, ctx.scale), None, None, None


def _saved_rng_state(device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return torch.default_generator.get_state()
    return torch.get_device_module(device.type).get_rng_state(device)


def _regenerate_fused_mask(state: torch.Tensor, layout: _MaskLayout, x_meta: tuple, p: float) -> torch.Tensor:
    """Re-run ``native_dropout`` from a saved RNG state on a stand-in of x's layout and alignment."""
    dtype, device, alignment = x_meta
    module = torch.get_device_module(device.type)
    itemsize = torch.empty((), dtype=dtype).element_size()
    # The kernel's vector width depends on the input's address mod 16 bytes: reproduce it.
    pad = 16 // itemsize
    buffer = torch.empty(layout.numel + pad, dtype=dtype, device=device)
    offset = (alignment - buffer.data_ptr() % 16) % 16 // itemsize
    stand_in = buffer[offset : offset + layout.numel].as_strided(layout.shape, layout.stride)
    current = module.get_rng_state(device)
    try:
        module.set_rng_state(state, device)
        return torch.ops.aten.native_dropout(stand_in, p, True)[1]
    finally:
        module.set_rng_state(current, device)


class _SeededDropoutFn(torch.autograd.Function):
    """Saves only the generator state and draws the same mask again in backward."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, inplace: bool, variant: DropoutVariant) -> torch.Tensor:
        ctx.p, ctx.fused = p, _uses_fused_route(x, inplace)
        ctx.layout = _MaskLayout(torch.empty_like(x, dtype=torch.bool, device="meta"))
        ctx.x_meta = (x.dtype, x.device, x.data_ptr() % 16)
        ctx.save_for_backward(_saved_rng_state(x.device))
        y = _torch_dropout(x, p, True, inplace)
        if inplace:
            ctx.mark_dirty(x)
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        (state,) = ctx.saved_tensors
        dtype, device, _ = ctx.x_meta
        if ctx.fused:
            mask = _regenerate_fused_mask(state, ctx.layout, ctx.x_meta, ctx.p)
            return _fused_backward(grad, mask, ctx.p), None, None, None
        generator = torch.Generator(device=device)
        generator.set_state(state)
        like = torch.empty_strided(ctx.layout.shape, ctx.layout.stride, dtype=dtype, device=device)
        mask = _draw_keep_mask(like, 1 - ctx.p, generator)
        return _masked_scale_backward(grad, mask, _noise_scale(ctx.p, dtype, device)), None, None, None


def _needs_backward(x: torch.Tensor, p: float, training: bool) -> bool:
    return (
        training
        and 0.0 < p < 1.0
        and x.numel() > 0
        and x.is_floating_point()
        and x.requires_grad
        and torch.is_grad_enabled()
    )


def dropout(
    x: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    variant: str | DropoutVariant = "pmdrop",
) -> torch.Tensor:
    """``torch.nn.functional.dropout`` with the mask stored as ``variant`` says.

    Bit-identical to torch's dropout (output, input gradient, RNG state) for every registered
    variant whose ``bit_exact`` is true.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    spec = get_variant(variant)
    with dropout_site("pmdrop"):
        if not _needs_backward(x, p, training):
            return _torch_dropout(x, p, training, inplace)
        return spec.apply(x, p, inplace, spec)


def _baseline(x: torch.Tensor, p: float, inplace: bool, variant: DropoutVariant) -> torch.Tensor:
    return _torch_dropout(x, p, True, inplace)


BASELINE = register_variant(
    DropoutVariant("baseline", _baseline, "torch.nn.Dropout as is (the reference)")
)
PMDROP = register_variant(
    DropoutVariant(
        "pmdrop", _PackedDropoutFn.apply, "mask packed 8 per byte; unpacked mask cached after first use",
        masks_per_byte=8, cache_unpacked=True,
    )
)
PMDROP_NOCACHE = register_variant(
    DropoutVariant(
        "pmdrop_nocache", _PackedDropoutFn.apply, "mask packed 8 per byte; unpacked on every access",
        masks_per_byte=8,
    )
)
PMDROP_4BIT = register_variant(
    DropoutVariant(
        "pmdrop_4bit", _PackedDropoutFn.apply, "the paper's 4-bit ablation: 4 masks per byte",
        masks_per_byte=4, cache_unpacked=True,
    )
)
SEEDED = register_variant(
    DropoutVariant("seeded", _SeededDropoutFn.apply, "no mask: saves the RNG state, redraws in backward")
)


def packed_variant(masks_per_byte: int, cache_unpacked: bool = True) -> DropoutVariant:
    """A packed variant at any supported density (``masks_per_byte`` in {8, 4, 2, 1}), registered on use."""
    from .packing import check_masks_per_byte

    check_masks_per_byte(masks_per_byte)
    name = f"pmdrop_k{masks_per_byte}" + ("" if cache_unpacked else "_nocache")
    return register_variant(
        DropoutVariant(
            name, _PackedDropoutFn.apply, f"mask packed {masks_per_byte} per byte",
            masks_per_byte=masks_per_byte, cache_unpacked=cache_unpacked,
        )
    )

