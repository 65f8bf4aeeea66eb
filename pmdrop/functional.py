"""Dropout that saves its mask for backward bit-packed, or not at all, bit-identical to torch's.

Torch's own dropout takes one of two routes, and each variant here reproduces the route torch
would take for the same call, so outputs, gradients and the RNG stream stay identical:

* **noise route** (CPU, and ``inplace=True`` everywhere): ``noise = empty_like(x).bernoulli_(1-p)
  .div_(1-p)``, ``y = x * noise``; the multiply saves ``noise`` in x's dtype (4 B/element for fp32).
  Here the same Bernoulli numbers are drawn in x's layout (same generator calls, same order), packed,
  and decoded through a {0, scale} table into exactly torch's ``noise`` (``scale`` is the value
  torch's ``div_`` gives in that dtype); the products are then torch's products, bit for bit.
* **fused route** (CUDA/XPU out of place): ``native_dropout`` returns ``(y, bool mask)``; the mask
  is packed here and unpacked into ``native_dropout_backward`` with the same scale.

Calls that need no backward (eval, p in {0, 1}, empty, no grad, non-float input) go straight to
torch's own ``dropout``, so torch's results, errors and aliasing apply unchanged.
"""

from __future__ import annotations

import functools

import torch

from . import compiled
from .accounting import dropout_site
from .faults import corrupt
from .packing import check_masks_per_byte, decode_table, pack_flat, unpack_flat
from .variants import DropoutVariant, get_variant, register_variant

_FUSED_DEVICE_TYPES = frozenset({"cuda", "xpu", "lazy", "privateuseone"})


def _torch_dropout(x: torch.Tensor, p: float, training: bool, inplace: bool) -> torch.Tensor:
    # torch.dropout is what F.dropout calls; calling it directly keeps dropout_mode from re-routing.
    return torch.dropout_(x, p, training) if inplace else torch.dropout(x, p, training)


def _uses_fused_route(x: torch.Tensor, inplace: bool) -> bool:
    return not inplace and x.device.type in _FUSED_DEVICE_TYPES


def _fused_scale(p: float) -> float:
    return 1.0 / (1.0 - p)


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

    __slots__ = ("numel", "shape", "stride")

    def __init__(self, mask: torch.Tensor) -> None:
        self.shape = mask.shape
        self.stride = mask.stride() if _is_dense(mask) else torch.empty(mask.shape, device="meta").stride()
        self.numel = mask.numel()

    def flat(self, mask: torch.Tensor) -> torch.Tensor:
        if mask.stride() == self.stride:
            return mask.as_strided((self.numel,), (1,))
        return mask.contiguous().view(-1)

    def restore(self, flat: torch.Tensor) -> torch.Tensor:
        # set_ rather than as_strided: the result may be returned from forward, and autograd forbids
        # in-place ops on a view made inside a custom Function. ``flat`` is a fresh private buffer.
        return flat.new_empty(0).set_(flat.untyped_storage(), flat.storage_offset(), self.shape, self.stride)


@functools.lru_cache(maxsize=256)
def _noise_scale(p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The non-zero value of torch's dropout noise, ``1 / (1 - p)`` rounded as ``div_`` rounds it."""
    return torch.ones((), dtype=dtype, device=device).div_(1 - p)


@functools.lru_cache(maxsize=256)
def _noise_table(masks_per_byte: int, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return decode_table(masks_per_byte, device).to(dtype) * _noise_scale(p, dtype, device)


def _decode_noise(packed: torch.Tensor, layout: _MaskLayout, p: float, dtype: torch.dtype, k: int) -> torch.Tensor:
    """Torch's noise tensor (0 and scale, in ``dtype`` and the mask's layout) from a packed mask."""
    return layout.restore(unpack_flat(packed, layout.numel, k, _noise_table(k, p, dtype, packed.device)))


def _torch_noise(buffer: torch.Tensor, p: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """The noise route's own ops, in place on ``buffer``."""
    return buffer.bernoulli_(1 - p, generator=generator).div_(1 - p)


def _draw_noise(x: torch.Tensor, p: float, k: int) -> tuple[torch.Tensor, torch.Tensor, _MaskLayout]:
    """Torch's dropout noise for ``x`` (x's dtype and layout), its packed mask, and the mask layout."""
    if x.device.type == "cpu":
        # CPU bernoulli_ draws the same numbers per element whatever the dtype (checked by the tests);
        # a bool draw is cheaper, and decoding its packed form skips a bool-to-float pass.
        mask = torch.empty_like(x, dtype=torch.bool).bernoulli_(1 - p)
        layout = _MaskLayout(mask)
        packed = pack_flat(layout.flat(mask), k)
        return _decode_noise(packed, layout, p, x.dtype, k), packed, layout
    # Elsewhere the dtype may change how raw random numbers map to elements: draw exactly as torch does.
    noise = _torch_noise(torch.empty_like(x), p)
    layout = _MaskLayout(noise)
    return noise, pack_flat(layout.flat(noise.ne(0)), k), layout


def _fused_backward(grad: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    # Mirrors torch's derivative of native_dropout, which rounds differently under create_graph.
    if torch.is_grad_enabled():
        return grad * (mask.type_as(grad) * _fused_scale(p))
    return torch.ops.aten.native_dropout_backward(grad, mask, _fused_scale(p))


def _graph_is_retained() -> bool:
    """Whether the running backward keeps the graph (``retain_graph=True``): only then can a cache be reused."""
    probe = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)  # private; assume yes if gone
    return True if probe is None else probe()


def _drop_cache_if_released(ctx) -> None:
    """Run at the end of a backward pass: keep the unpacked mask only while the graph is retained.

    Without this the cache would live as long as the graph object, usually through the next
    step's forward, and cost the memory that packing saved.
    """
    try:
        _ = ctx.saved_tensors
    except RuntimeError:  # released: backward cannot run through this node again
        ctx.cached_unpacked = None


class _PackedDropoutFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, inplace: bool, variant: DropoutVariant) -> torch.Tensor:
        ctx.p, ctx.fused, ctx.variant, ctx.dtype = p, _uses_fused_route(x, inplace), variant, x.dtype
        if ctx.fused:
            y, mask = torch.ops.aten.native_dropout(x, p, True)
            ctx.layout = _MaskLayout(mask)
            packed = pack_flat(ctx.layout.flat(mask), variant.masks_per_byte)
        else:
            noise, packed, ctx.layout = _draw_noise(x, p, variant.masks_per_byte)
            if inplace:
                y = x.mul_(noise)
                ctx.mark_dirty(x)
            else:
                y = noise.mul_(x)  # IEEE multiplication commutes bit for bit: this is torch's x * noise
        ctx.save_for_backward(corrupt(packed))
        ctx.cached_unpacked = None
        return y

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        unpacked = ctx.cached_unpacked
        if unpacked is None:
            (packed,) = ctx.saved_tensors
            k = ctx.variant.masks_per_byte
            if ctx.fused:
                unpacked = ctx.layout.restore(unpack_flat(packed, ctx.layout.numel, k))
            else:
                unpacked = _decode_noise(packed, ctx.layout, ctx.p, ctx.dtype, k)
        # Cache only for a later pass through this node, which needs a retained graph; otherwise
        # this is the mask's last use and its buffer can take the gradient in place.
        keep = ctx.variant.cache_unpacked and _graph_is_retained()
        if keep and ctx.cached_unpacked is None:
            torch.autograd.Variable._execution_engine.queue_callback(lambda: _drop_cache_if_released(ctx))
        ctx.cached_unpacked = unpacked if keep else None
        if ctx.fused:
            return _fused_backward(grad, unpacked, ctx.p), None, None, None
        if keep:
            return grad * unpacked, None, None, None
        return unpacked.mul_(grad), None, None, None  # IEEE multiplication commutes: torch's grad * noise


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
    buffer = torch.empty(layout.numel + 16 // itemsize, dtype=dtype, device=device)
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
        buffer = torch.empty_strided(ctx.layout.shape, ctx.layout.stride, dtype=dtype, device=device)
        return _torch_noise(buffer, ctx.p, generator).mul_(grad), None, None, None


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
    if spec.bit_exact and torch.compiler.is_compiling():  # dynamo and export cannot trace the Functions below
        return compiled.dropout(x, p, training, inplace, spec)
    with dropout_site("pmdrop"):
        if not _needs_backward(x, p, training):
            return _torch_dropout(x, p, training, inplace)
        return spec.apply(x, p, inplace, spec)


def _baseline(x: torch.Tensor, p: float, inplace: bool, variant: DropoutVariant) -> torch.Tensor:
    return _torch_dropout(x, p, True, inplace)


register_variant(DropoutVariant("baseline", _baseline, "torch.nn.Dropout as is (the reference)"))
register_variant(
    DropoutVariant(
        "pmdrop", _PackedDropoutFn.apply, "mask packed 8 per byte; unpacked mask cached while the graph is retained",
        masks_per_byte=8, cache_unpacked=True,
    )
)
register_variant(
    DropoutVariant(
        "pmdrop_nocache", _PackedDropoutFn.apply, "mask packed 8 per byte; unpacked on every access",
        masks_per_byte=8,
    )
)
register_variant(
    DropoutVariant(
        "pmdrop_4bit", _PackedDropoutFn.apply, "the paper's 4-bit ablation: 4 masks per byte",
        masks_per_byte=4, cache_unpacked=True,
    )
)
register_variant(
    DropoutVariant("seeded", _SeededDropoutFn.apply, "no mask: saves the RNG state, redraws it in backward")
)


def packed_variant(masks_per_byte: int, cache_unpacked: bool = True) -> DropoutVariant:
    """A packed variant at any supported density (``masks_per_byte`` in {8, 4, 2, 1}), registered on first use."""
    check_masks_per_byte(masks_per_byte)
    name = f"pmdrop_k{masks_per_byte}" + ("" if cache_unpacked else "_nocache")
    return register_variant(
        DropoutVariant(
            name, _PackedDropoutFn.apply, f"mask packed {masks_per_byte} per byte",
            masks_per_byte=masks_per_byte, cache_unpacked=cache_unpacked,
        )
    )
