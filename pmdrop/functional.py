"""Dropout that saves its mask for backward bit-packed, or not at all, bit-identical to torch's.

Torch's own dropout takes one of two routes, and each variant here reproduces the route torch
would take for the same call, so outputs, gradients, memory layouts and the RNG stream stay identical:

* **noise route** (CPU, and ``inplace=True`` everywhere): ``noise = empty_like(x).bernoulli_(1-p)
  .div_(1-p)``, ``y = x * noise``; the multiply saves ``noise`` in x's dtype (4 B/element for fp32).
  Here the same Bernoulli numbers are drawn in x's layout (same generator calls, same order), packed,
  and decoded into exactly torch's ``noise`` (0 and ``scale``, the values torch's ``div_`` gives in
  that dtype); the products are then torch's products, bit for bit.
* **fused route** (CUDA/XPU out of place, and ``meta``, which plans memory with CUDA's semantics):
  ``native_dropout`` returns ``(y, bool mask)``; the mask is packed here and unpacked into
  ``native_dropout_backward`` with the same scale.

Calls that need no backward (eval, p in {0, 1}, empty, no grad, non-float input) and tensors that
cannot be packed (nested, sparse, tensor subclasses) go straight to torch's own ``dropout``, so
torch's results, errors and aliasing apply unchanged.

Under ``torch.func`` transforms (``grad``, ``vjp``, ``vmap``, ``jvp``, ...) the mask is drawn by
torch's own dropout op at the caller's level, so each transform treats it as it treats ``F.dropout``
(vmap's randomness modes included), and :class:`_TransformPackedFn` saves it packed.
"""

from __future__ import annotations

import threading

import torch

from . import compiled
from .accounting import dropout_site
from .faults import corrupt
from .packing import check_masks_per_byte, decode_table, pack_fresh, pack_rows, unpack_rows
from .variants import DropoutVariant, get_variant, register_variant

# Where torch's dropout takes native_dropout out of place. Tests add "cpu" to run the CUDA route's logic.
_FUSED_DEVICE_TYPES = frozenset({"cuda", "xpu", "lazy", "privateuseone", "meta"})
# Tensors the Functions below can pack; subclasses (nested jagged, DTensor, FakeTensor...) take torch's dropout.
_PLAIN_TENSOR_TYPES = frozenset({torch.Tensor, torch.nn.Parameter})
# torch.func's own test of whether a transform wraps the call (torch.autograd.Function.apply uses it to pick
# its functorch path); private, but no public equivalent exists: inside vmap a wrapped x reads
# requires_grad=False even when a gradient is taken, so requires_grad alone cannot tell.
_transforms_active = torch._C._are_functorch_transforms_active
_profiling = torch._C._autograd._profiler_enabled  # private: record_function is not free when no profiler runs
_local = threading.local()


def _torch_dropout(x: torch.Tensor, p: float, training: bool, inplace: bool) -> torch.Tensor:
    # torch.dropout is what F.dropout calls; calling it directly keeps dropout_mode from re-routing.
    return torch.dropout_(x, p, training) if inplace else torch.dropout(x, p, training)


def _uses_fused_route(x: torch.Tensor, inplace: bool) -> bool:
    return not inplace and x.device.type in _FUSED_DEVICE_TYPES


def _fused_scale(p: float) -> float:
    return 1.0 / (1.0 - p)


class _label:
    """``record_function(name)`` while a profiler runs, nothing otherwise: a trace shows pmdrop's draw/pack/unpack."""

    __slots__ = ("name", "scope")

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.scope = torch.autograd.profiler.record_function(self.name) if _profiling() else None
        if self.scope is not None:
            self.scope.__enter__()

    def __exit__(self, *exc: object) -> None:
        if self.scope is not None:
            self.scope.__exit__(*exc)


class _Layout:
    """What torch's dropout does with an input of one shape and strides, computed once per layout.

    ``mask_stride``: the strides of ``empty_like(x)``, the layout torch draws its noise (and its mask) in;
    always dense. ``noise_out``: whether torch's ``x * noise`` comes out in the noise's layout, so the
    product may be written into the noise buffer. ``grad_into_noise(g)``: the same
    for ``grad * noise``.

    The answers come from running those ops on uint8 CPU stand-ins of the same shape and strides:
    ``empty_like`` and TensorIterator pick strides with the same code on every real device. Meta tensors
    do not (its ``empty_like`` and ``mul`` differ for some size-1 dims), so meta inputs ask meta.
    """

    __slots__ = ("_grad_into_noise", "device", "mask_stride", "noise_out", "numel", "shape", "where_out")

    def __init__(self, shape: torch.Size, stride: tuple[int, ...], is_meta: bool) -> None:
        self.device = "meta" if is_meta else "cpu"
        x = torch.empty_strided(shape, stride, dtype=torch.uint8, device=self.device)
        noise = torch.empty_like(x)
        self.shape, self.mask_stride, self.numel = shape, noise.stride(), x.numel()
        # The forward builds the noise as torch.where(bool mask, scale, 0); where's own layout can differ
        # from torch's noise layout (size-1 dims), and then the forward writes it into torch's layout.
        value = torch.zeros((), dtype=torch.uint8, device=self.device)
        self.where_out = torch.where(torch.empty_like(x, dtype=torch.bool), value, value).stride() == self.mask_stride
        self.noise_out = torch.mul(x, noise).stride() == self.mask_stride
        self._grad_into_noise: dict[tuple[int, ...], bool] = {}

    def grad_into_noise(self, grad: torch.Tensor) -> bool:
        stride = grad.stride()
        fits = self._grad_into_noise.get(stride)
        if fits is None:
            stand_in = torch.empty_strided(self.shape, stride, dtype=torch.uint8, device=self.device)
            noise = torch.empty_strided(self.shape, self.mask_stride, dtype=torch.uint8, device=self.device)
            fits = self._grad_into_noise[stride] = torch.mul(stand_in, noise).stride() == self.mask_stride
        return fits

    def restore(self, flat: torch.Tensor) -> torch.Tensor:
        """A fresh flat buffer of ``numel`` elements seen in the mask's layout."""
        return flat.as_strided(self.shape, self.mask_stride)


_LAYOUTS: dict[tuple[torch.Size, tuple[int, ...], bool], _Layout] = {}


def _layout_of(x: torch.Tensor) -> _Layout:
    key = (x.shape, x.stride(), x.is_meta)
    layout = _LAYOUTS.get(key)
    if layout is None:
        if len(_LAYOUTS) >= 4096:  # bound the cache for shape-varying workloads
            _LAYOUTS.clear()
        layout = _LAYOUTS[key] = _Layout(*key)
    return layout


# (p, dtype, device, masks_per_byte) -> values; plain dicts: cheaper than functools.lru_cache per call.
_SCALES: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
_TABLES: dict[tuple, torch.Tensor] = {}


def _noise_values(p: float, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, zero) as 0-dim tensors: torch's noise values, ``bernoulli`` 1 and 0 divided by ``1 - p`` in ``dtype``."""
    key = (p, dtype, device)
    values = _SCALES.get(key)
    if values is None:
        values = _SCALES[key] = tuple(torch.tensor(b, dtype=dtype, device=device).div_(1 - p) for b in (1, 0))
    return values


def _noise_table(k: int, p: float | None, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(256, k) table: row b holds torch's noise for the k masks of packed byte b (bool -> dtype, then div_).

    ``p=None``: the masks themselves (bool).
    """
    key = (k, p, dtype, device)
    table = _TABLES.get(key)
    if table is None and p is None:
        table = _TABLES[key] = decode_table(k, device)
    elif table is None:
        # As torch computes noise: 0/1 in dtype, then div_ by (1 - p). Multiplying by a precomputed scale
        # would give 0 * inf = nan for the dropped elements where the scale overflows (fp16, p near 1).
        table = _TABLES[key] = decode_table(k, device).to(dtype).div_(1 - p)
    return table


def _unpack(packed: torch.Tensor, layout: _Layout, k: int, table: torch.Tensor) -> torch.Tensor:
    """Decode ``packed`` through ``table`` into a fresh tensor in the mask's layout."""
    with _label("pmdrop.unpack"):
        # int32 indices: half the bytes of int64, and index_select takes them.
        rows = torch.index_select(table, 0, packed.to(torch.int32))
        return layout.restore(rows.view(-1)[: layout.numel] if layout.numel % k else rows.view(-1))


def _fused_backward(grad: torch.Tensor, mask: torch.Tensor, p: float) -> torch.Tensor:
    # Mirrors torch's derivative of native_dropout, which rounds differently under create_graph.
    if torch.is_grad_enabled():
        return grad * (mask.type_as(grad) * _fused_scale(p))
    return torch.ops.aten.native_dropout_backward(grad, mask, _fused_scale(p))


def _times_noise(grad: torch.Tensor, noise: torch.Tensor, layout: _Layout) -> torch.Tensor:
    """``grad * noise`` with torch's result layout, written into ``noise``'s buffer when that layout is the same."""
    if layout.grad_into_noise(grad):
        return noise.mul_(grad)  # IEEE multiplication commutes bit for bit: torch's grad * noise
    return grad * noise


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
    """Eager path of the packed variants.

    A ``forward(ctx, ...)`` Function, not the ``setup_context`` style: for a Function with
    ``setup_context``, ``Function.apply`` binds default arguments through ``inspect.signature`` on every
    call, which measured ~3x the whole apply here (141 vs 45 us on the 2-core machine). torch.func needs
    ``setup_context``, so calls under its transforms take :class:`_TransformPackedFn`, which has it.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, inplace: bool, variant: DropoutVariant) -> torch.Tensor:
        k = variant.masks_per_byte
        ctx.p, ctx.inplace, ctx.variant, ctx.dtype = p, inplace, variant, x.dtype
        ctx.fused, ctx.layout, ctx.cached_unpacked = _uses_fused_route(x, inplace), _layout_of(x), None
        if ctx.fused:
            y, mask = torch.ops.aten.native_dropout(x, p, True)
            with _label("pmdrop.pack"):
                packed = corrupt(pack_fresh(mask, k))
        else:
            with _label("pmdrop.draw"):
                # CPU bernoulli_ draws the same numbers per element whatever the dtype (checked by the tests);
                # a bool draw is cheaper, and its noise is one select between torch's two noise values.
                mask = torch.empty_strided(x.shape, ctx.layout.mask_stride, dtype=torch.bool, device=x.device)
                mask.bernoulli_(1 - p)
            with _label("pmdrop.pack"):
                packed = corrupt(pack_fresh(mask, k))
            values = _noise_values(p, x.dtype, x.device)
            if ctx.layout.where_out:
                noise = torch.where(mask, *values)
            else:
                noise = torch.where(mask, *values, out=torch.empty_strided(x.shape, ctx.layout.mask_stride,
                                                                          dtype=x.dtype, device=x.device))
            if inplace:
                y = x.mul_(noise)
                ctx.mark_dirty(x)
            elif ctx.layout.noise_out:
                y = noise.mul_(x)  # IEEE multiplication commutes bit for bit: torch's x * noise
            else:
                y = x * noise
        ctx.save_for_backward(packed)
        ctx.save_for_forward(packed)
        return y

    @staticmethod
    def _decode(ctx) -> torch.Tensor:
        """The forward's mask (fused route: bool) or noise (noise route), in the mask's layout."""
        (packed,) = ctx.saved_tensors
        k = ctx.variant.masks_per_byte
        if ctx.fused:
            return _unpack(packed, ctx.layout, k, _noise_table(k, None, torch.bool, packed.device))
        return _unpack(packed, ctx.layout, k, _noise_table(k, ctx.p, ctx.dtype, packed.device))

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        unpacked = ctx.cached_unpacked
        if unpacked is None:
            unpacked = _PackedDropoutFn._decode(ctx)
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
        return _times_noise(grad, unpacked, ctx.layout), None, None, None

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_: None) -> torch.Tensor:
        return _noise_tangent(ctx, x_tangent, _PackedDropoutFn._decode(ctx))


def _noise_tangent(ctx, x_tangent: torch.Tensor, unpacked: torch.Tensor) -> torch.Tensor:
    """Forward-mode derivative as torch computes it: native_dropout's ``x_t * scale * mask``, mul's ``x_t * noise``."""
    if ctx.fused:
        return x_tangent * _fused_scale(ctx.p) * unpacked
    if ctx.inplace:
        return x_tangent.mul_(unpacked)
    return x_tangent * unpacked


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cpu":
        return torch.default_generator
    module = torch.get_device_module(device.type)
    return module.default_generators[device.index if device.index is not None else module.current_device()]


def _regenerate_fused_mask(state: torch.Tensor, layout: _Layout, x_meta: tuple, p: float) -> torch.Tensor:
    """Re-run ``native_dropout`` from a saved RNG state on a stand-in of x's layout and alignment."""
    dtype, device, alignment = x_meta
    if device.type == "meta":
        return torch.ops.aten.native_dropout(torch.empty_strided(layout.shape, layout.mask_stride, dtype=dtype,
                                                                 device=device), p, True)[1]
    itemsize = torch.empty((), dtype=dtype).element_size()
    # The kernel's vector width depends on the input's address mod 16 bytes: reproduce it.
    buffer = torch.empty(layout.numel + 16 // itemsize, dtype=dtype, device=device)
    offset = (alignment - buffer.data_ptr() % 16) % 16 // itemsize
    stand_in = buffer[offset : offset + layout.numel].as_strided(layout.shape, layout.mask_stride)
    generator = _default_generator(device)
    current = generator.get_state()
    try:
        generator.set_state(state)
        return torch.ops.aten.native_dropout(stand_in, p, True)[1]
    finally:
        generator.set_state(current)


def _redraw_generator(device: torch.device, state: torch.Tensor) -> torch.Generator:
    """A generator at ``state``: one per thread and device, reused by every seeded backward (none built per call)."""
    generators = getattr(_local, "generators", None)
    if generators is None:
        generators = _local.generators = {}
    generator = generators.get(device)
    if generator is None:
        generator = generators[device] = torch.Generator(device=device)
    generator.set_state(state)
    return generator


class _SeededDropoutFn(torch.autograd.Function):
    """Saves only the generator state and draws the same mask again in backward (``forward(ctx, ...)``, see
    :class:`_PackedDropoutFn`)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, p: float, inplace: bool, variant: DropoutVariant) -> torch.Tensor:
        ctx.p, ctx.inplace = p, inplace
        ctx.fused, ctx.layout = _uses_fused_route(x, inplace), _layout_of(x)
        if x.is_meta:  # a stand-in the size of CUDA's Philox state (seed and offset)
            state = torch.empty(16, dtype=torch.uint8, device="meta")
        else:
            state = _default_generator(x.device).get_state()
        ctx.x_meta = (x.dtype, x.device, 0 if x.is_meta or not ctx.fused else x.data_ptr() % 16)
        ctx.save_for_backward(state)
        ctx.save_for_forward(state)
        if ctx.fused:  # what torch.dropout runs there
            return torch.ops.aten.native_dropout(x, p, True)[0]
        y = _torch_dropout(x, p, True, inplace)
        if inplace:
            ctx.mark_dirty(x)
        return y

    @staticmethod
    def _redraw(ctx) -> torch.Tensor:
        """The forward's mask (fused route: bool) or noise (noise route), drawn again from the saved state."""
        (state,) = ctx.saved_tensors
        dtype, device, _ = ctx.x_meta
        with _label("pmdrop.redraw"):
            if ctx.fused:
                return _regenerate_fused_mask(state, ctx.layout, ctx.x_meta, ctx.p)
            generator = None if device.type == "meta" else _redraw_generator(device, state)
            noise = torch.empty_strided(ctx.layout.shape, ctx.layout.mask_stride, dtype=dtype, device=device)
            return noise.bernoulli_(1 - ctx.p, generator=generator).div_(1 - ctx.p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:
        unpacked = _SeededDropoutFn._redraw(ctx)
        if ctx.fused:
            return _fused_backward(grad, unpacked, ctx.p), None, None, None
        return _times_noise(grad, unpacked, ctx.layout), None, None, None

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_: None) -> torch.Tensor:
        return _noise_tangent(ctx, x_tangent, _SeededDropoutFn._redraw(ctx))


class _TransformPackedFn(torch.autograd.Function):
    """Every exact variant under torch.func transforms: the draw is torch's own op, the mask saved packed.

    :func:`_apply_transformed` draws at the caller's level with the op torch's dropout runs there
    (``torch.dropout`` on a tensor of ones gives its noise, 1 * v being v; ``native_dropout`` on the
    fused route), so every transform treats the draw as it treats ``F.dropout``'s: vmap's "error" raises
    torch's error, "different" and "same" give torch's masks, for batched and unbatched inputs alike.
    This Function only multiplies (noise route) or passes on native_dropout's output (fused route), with
    ops vmap batches by itself, and saves the packed mask. Seeded saves the packed mask here too: a
    redraw in a vmapped backward would not see the forward's batch layout.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, drawn: torch.Tensor, packed: torch.Tensor, p: float, inplace: bool,
                masks_per_byte: int, fused: bool) -> torch.Tensor:
        if fused:
            return drawn.clone()  # native_dropout's own output, computed without a graph
        return x.mul_(drawn) if inplace else x * drawn

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        x, _, packed, ctx.p, ctx.inplace, ctx.k, ctx.fused = inputs
        ctx.shape, ctx.dtype = x.shape, x.dtype
        ctx.set_materialize_grads(False)
        if ctx.inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(packed)
        ctx.save_for_forward(packed)

    @staticmethod
    def _decode(ctx) -> torch.Tensor:
        """Fused route: the bool mask; noise route: torch's noise, 0/1 in x's dtype then ``div_`` by ``1 - p``."""
        (packed,) = ctx.saved_tensors
        mask = unpack_rows(packed, ctx.shape, ctx.k)
        return mask if ctx.fused else mask.to(ctx.dtype).div_(1 - ctx.p)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None) -> tuple:
        if grad is None:
            return (None,) * 7
        unpacked = _TransformPackedFn._decode(ctx)
        grad_x = _fused_backward(grad, unpacked, ctx.p) if ctx.fused else grad * unpacked
        return grad_x, *(None,) * 6

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_: None) -> torch.Tensor:
        return _noise_tangent(ctx, x_tangent, _TransformPackedFn._decode(ctx))


def _apply_transformed(x: torch.Tensor, p: float, inplace: bool, masks_per_byte: int) -> torch.Tensor:
    fused = _uses_fused_route(x, inplace)
    with torch.no_grad():  # the draw's own autograd would save torch's mask
        if fused:
            drawn, mask = torch.ops.aten.native_dropout(x, p, True)
        else:
            drawn = torch.dropout(torch.ones_like(x), p, True)
            mask = drawn != 0
        packed = pack_rows(mask, masks_per_byte)
    return _TransformPackedFn.apply(x, drawn, packed, p, inplace, masks_per_byte, fused)


def _apply_packed(x: torch.Tensor, p: float, inplace: bool, variant: DropoutVariant) -> torch.Tensor:
    if _transforms_active():
        return _apply_transformed(x, p, inplace, variant.masks_per_byte)
    return _PackedDropoutFn.apply(x, p, inplace, variant)


def _apply_seeded(x: torch.Tensor, p: float, inplace: bool, variant: DropoutVariant) -> torch.Tensor:
    if _transforms_active():
        return _apply_transformed(x, p, inplace, 8)
    return _SeededDropoutFn.apply(x, p, inplace, variant)


def _needs_backward(x: torch.Tensor, p: float, training: bool) -> bool:
    """Whether the call may be differentiated and ``x`` is a tensor kind the Functions above can pack."""
    return (
        training
        and 0.0 < p < 1.0
        and ((x.requires_grad and torch.is_grad_enabled()) or _transforms_active())
        and type(x) in _PLAIN_TENSOR_TYPES
        and x.layout is torch.strided
        and not x.is_nested
        and x.is_floating_point()
        and x.numel() > 0
    )


def dropout(
    x: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    variant: str | DropoutVariant = "pmdrop",
) -> torch.Tensor:
    """``torch.nn.functional.dropout`` with the mask stored as ``variant`` says.

    Bit-identical to torch's dropout (output, input gradient, their memory layouts, RNG state) for
    every registered variant whose ``bit_exact`` is true.
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    spec = variant if type(variant) is DropoutVariant else get_variant(variant)
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
        "pmdrop", _apply_packed, "mask packed 8 per byte; unpacked mask cached while the graph is retained",
        masks_per_byte=8, cache_unpacked=True,
    )
)
register_variant(
    DropoutVariant(
        "pmdrop_nocache", _apply_packed, "mask packed 8 per byte; unpacked on every access",
        masks_per_byte=8,
    )
)
register_variant(
    DropoutVariant(
        "pmdrop_4bit", _apply_packed, "the paper's 4-bit ablation: 4 masks per byte",
        masks_per_byte=4, cache_unpacked=True,
    )
)
register_variant(
    DropoutVariant("seeded", _apply_seeded, "no mask: saves the RNG state, redraws it in backward")
)


def packed_variant(masks_per_byte: int, cache_unpacked: bool = True) -> DropoutVariant:
    """A packed variant at any supported density (``masks_per_byte`` in {8, 4, 2, 1}), registered on first use."""
    check_masks_per_byte(masks_per_byte)
    name = f"pmdrop_k{masks_per_byte}" + ("" if cache_unpacked else "_nocache")
    return register_variant(
        DropoutVariant(
            name, _apply_packed, f"mask packed {masks_per_byte} per byte",
            masks_per_byte=masks_per_byte, cache_unpacked=cache_unpacked,
        )
    )
