"""Dropout that saves its mask for backward bit-packed, or not at all, bit-identical to torch's.

The eager path runs torch's own dropout, unchanged, under ``saved_tensors_hooks`` that take the one tensor it saves
for backward (:class:`_MaskStandIn`); large noise-route inputs take :class:`_InPlaceNoiseFn`, ``torch.func``
transforms :class:`_TransformPackedFn`, ``torch.compile`` and ``torch.export`` :mod:`pmdrop.compiled`. Calls that need
no backward and tensors that cannot be packed (nested, sparse, subclasses) are torch's own ``dropout``, unchanged.
"""

from __future__ import annotations

import functools
import operator

import torch
from torch.compiler import is_compiling

from . import compiled, routes
from .accounting import dropout_site, inside_dropout_site, trackers_open
from .packing import decode_table, fresh_packer, pack_bits, pack_flat, unpack_bits
from .routes import NOISE, Route, draw_noise, mask_stride, route_for, torch_dropout
from .variants import DropoutVariant, get_variant

# Tensors the Functions below can pack; subclasses (nested jagged, DTensor, FakeTensor...) take torch's dropout.
_PLAIN_TENSOR_TYPES = frozenset({torch.Tensor, torch.nn.Parameter})
# torch.func's own test of whether a transform wraps the call (torch.autograd.Function.apply uses it to pick
# its functorch path); private, but no public equivalent exists: inside vmap a wrapped x reads
# requires_grad=False even when a gradient is taken, so requires_grad alone cannot tell.
_transforms_active = torch._C._are_functorch_transforms_active
_profiling = torch._C._autograd._profiler_enabled  # private: record_function is not free when no profiler runs


@functools.lru_cache(maxsize=4096)
def _product_stride(shape: torch.Size, a: tuple[int, ...], b: tuple[int, ...], device: str) -> tuple[int, ...]:
    """Strides of torch's ``x * y`` for ``x``, ``y`` of ``shape`` with strides ``a``, ``b``.

    The answer comes from running it on uint8 stand-ins: TensorIterator picks strides with the same code on every real
    device, so ``device`` is "cpu" for all of them. Meta tensors do not (its ``mul`` differs for some size-1 dims),
    so meta inputs ask meta.
    """
    x = torch.empty_strided(shape, a, dtype=torch.uint8, device=device)
    return torch.mul(x, torch.empty_strided(shape, b, dtype=torch.uint8, device=device)).stride()


@functools.lru_cache(maxsize=4096)
def _decode_table(route: Route, k: int, p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(256, k) table: row b holds what torch saves (:meth:`Route.decoded`) for the k masks of packed byte b."""
    return route.decoded(decode_table(k, device), p, dtype)


# Whether the running backward keeps the graph (retain_graph=True): only then can a cached mask be reused.
# Private, no public equivalent; without it a retained graph is assumed (the cache is then kept).
_graph_is_retained = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", lambda: True)


class _CallPlan:
    """What every packed or seeded call with one input layout, p, dtype, device, route and variant shares, built once.

    ``draw``: torch's dropout on the route, ``draw(x, p, True)``; ``saved_dtype``: the dtype of the one tensor it saves
    (bool mask or noise), in ``mask_stride`` (a decoded mask comes back in it, so torch's backward computes with the
    very layout it saved); ``pack`` packs that tensor and ``table`` decodes it (packed variants only); ``noise_out``:
    whether torch's ``x * noise`` comes out in the noise's layout (then :class:`_InPlaceNoiseFn` writes the product
    into the noise's buffer).
    """

    __slots__ = (
        "cache", "device", "draw", "dtype", "k", "mask_stride", "noise_out", "numel_bytes", "p", "pack", "route",
        "saved_dtype", "shape", "stand_in_device", "stride", "table",
    )

    def __init__(self, x: torch.Tensor, p: float, inplace: bool, variant: DropoutVariant) -> None:
        self.p, self.dtype, self.device, self.shape, self.stride = p, x.dtype, x.device, x.shape, x.stride()
        self.numel_bytes = x.numel() * x.element_size()
        self.stand_in_device = "meta" if x.is_meta else "cpu"
        self.mask_stride = mask_stride(x)
        self.noise_out = self.into_noise(self.stride)
        self.route = route_for(x, inplace)
        self.draw, self.saved_dtype = self.route.eager_op(inplace), self.route.saved_dtype(x.dtype)
        self.k, self.cache = variant.masks_per_byte, variant.cache_unpacked
        if self.k is None:
            return
        self.table = _decode_table(self.route, self.k, p, self.saved_dtype, x.device)
        # The native route keeps CUDA's pack even where use_route runs it on CPU tensors: it is CUDA's logic that runs.
        # Noise is 0 or the table's one nonzero value (inf where fp16 overflows): its nonzeros are the mask. A byte
        # view of it needs its last dim's stride 1.
        if self.route.native:
            self.pack = functools.partial(pack_flat, masks_per_byte=self.k)
        else:
            value = self.table[1, 0] if self.mask_stride and self.mask_stride[-1] == 1 else None
            self.pack = fresh_packer(x.numel(), self.k, x.device, nonzero=True, value=value)

    def into_noise(self, stride: tuple[int, ...]) -> bool:
        """Whether torch's product of the noise and a tensor of ``stride`` comes out in the noise's layout."""
        return _product_stride(self.shape, stride, self.mask_stride, self.stand_in_device) == self.mask_stride


_PLANS: dict[tuple, _CallPlan] = {}


# Torch's private accessors for the saved-tensor hooks stack (torch.utils.checkpoint reads the top; the public
# saved_tensors_hooks is a Python class around push and pop): the packed mask is handed on to the enclosing hooks,
# as a Function's save_for_backward would.
_enclosing_hooks = torch._C._autograd._top_saved_tensors_default_hooks
_hooks_enabled = torch._C._autograd._saved_tensors_hooks_is_enabled
_push_hooks = torch._C._autograd._push_saved_tensors_default_hooks
_pop_hooks = torch._C._autograd._pop_saved_tensors_default_hooks


class _Passed:
    """A saved tensor that is not the dropout's mask (none is expected), kept as the enclosing hooks keep it."""

    __slots__ = ("enclosing", "value")

    def __init__(self, t: torch.Tensor, enclosing: tuple | None) -> None:
        self.enclosing, self.value = enclosing, t if enclosing is None else enclosing[0](t)

    def restore(self) -> torch.Tensor:
        return self.value if self.enclosing is None else self.enclosing[1](self.value)


def _labelled(label: str, fn, *args):
    """``fn(*args)``, labelled ``label`` in a profiler's trace while one runs."""
    if _profiling():
        with torch.autograd.profiler.record_function(label):
            return fn(*args)
    return fn(*args)


# The unpack hook: saved.restore(), called from C without a Python frame of its own.
_restore = operator.methodcaller("restore")


def _unpack(plan: _CallPlan, packed: torch.Tensor) -> torch.Tensor:
    """Decode ``packed`` through the plan's table into a fresh tensor in torch's mask layout."""
    # int32 indices: half the bytes of int64, and index_select takes them (.int(): half the cost of .to's argument
    # parsing). The rows' storage, seen in the mask's layout, holds the decoded masks in memory order.
    return plan.table.index_select(0, packed.int()).as_strided(plan.shape, plan.mask_stride)


class _MaskStandIn:
    """Kept by autograd in place of the one tensor torch's own dropout saves (``native_dropout``'s bool mask, or the
    noise route's ``noise``), through ``saved_tensors_hooks``: torch's dropout runs unchanged (its draw, output and C++
    backward node), so results, layouts and the RNG stream are torch's by construction.

    :meth:`pack` keeps the mask packed ``plan.k`` per byte, decoded (and, if the variant says so, cached while the
    graph is retained) when backward reads it; or, for seeded (``plan.k`` None), the generator state before the draw,
    from which backward draws the same mask again. What it keeps passes through the enclosing hooks (checkpointing,
    accounting), as a Function's saved tensor would.
    """

    __slots__ = ("alignment", "enclosing", "plan", "saved", "state", "unpacked")

    def __init__(self, plan: _CallPlan, x: torch.Tensor) -> None:
        self.plan, self.saved, self.unpacked, self.enclosing = plan, None, None, _enclosing_hooks(False)
        if plan.k is None:
            self.alignment = 0 if x.is_meta or not plan.route.native else x.data_ptr() % 16
            if x.is_meta:  # a stand-in the size of CUDA's Philox state (seed and offset)
                self.state = torch.empty(16, dtype=torch.uint8, device="meta")
            else:
                self.state = routes.default_generator(x.device).get_state()

    def pack(self, t: torch.Tensor) -> _MaskStandIn | _Passed:
        plan = self.plan
        if self.saved is not None or t.dtype is not plan.saved_dtype or t.shape != plan.shape:
            return _Passed(t, self.enclosing)
        # The usual packed case inline (one Python frame fewer on every call); keep() otherwise.
        kept = plan.pack(t) if plan.k is not None and not _profiling() else self.keep(t)
        self.saved = kept if self.enclosing is None else self.enclosing[0](kept)
        return self

    def keep(self, mask: torch.Tensor) -> torch.Tensor:
        if self.plan.k is None:
            return self.state
        return _labelled("pmdrop.pack", self.plan.pack, mask)

    def restore(self, saved: torch.Tensor | None = None) -> torch.Tensor:
        """What torch saved, from what :meth:`pack` kept (or from ``saved``, what :meth:`keep` returned)."""
        if saved is None:
            saved = self.saved if self.enclosing is None else self.enclosing[1](self.saved)
        plan = self.plan
        if plan.k is None:
            stride = plan.stride if plan.route.native else plan.mask_stride
            return _labelled("pmdrop.redraw", plan.route.redraw, saved, plan.shape, stride, plan.dtype, plan.device,
                             plan.p, self.alignment)
        if self.unpacked is not None:
            return self.unpacked
        # The usual case with no frame between the hook and the ops (backward pays for each, cold).
        unpacked = _labelled("pmdrop.unpack", _unpack, plan, saved) if _profiling() else _unpack(plan, saved)
        # Cached only for a later pass through this node, which needs a retained graph; the cache is freed with
        # the graph's saved tensors, i.e. with this object.
        if plan.cache and _graph_is_retained():
            self.unpacked = unpacked
        return unpacked


# From this many bytes of input, the noise route takes _InPlaceNoiseFn: its products go into buffers it already holds,
# where torch's backward allocates one more activation-sized tensor, fresh pages from the OS each time under glibc.
# Measured on the 2-core CPU (fp32, vs nn.Dropout): hooks 1.13x / in place 1.16x at 4 MB (1 thread), 1.08x / 1.04x
# at 16 MB and 1.15x / 0.97x at 32 MB (2 threads).
_IN_PLACE_FROM_BYTES = 8 * 2**20


class _InPlaceNoiseFn(torch.autograd.Function):
    """The noise route for large inputs (see ``_IN_PLACE_FROM_BYTES``): torch's draw (same generator calls, same
    layout), kept by ``stand_in``, and torch's products written into the noise's buffer where they have its layout,
    forward and backward. IEEE multiplication commutes bit for bit, so values and layouts are torch's.
    ``forward(ctx, ...)`` style: ``setup_context`` makes ``apply`` bind arguments through ``inspect.signature`` on every
    call.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, stand_in: _MaskStandIn, inplace: bool) -> torch.Tensor:
        plan, ctx.stand_in, ctx.inplace = stand_in.plan, stand_in, inplace
        noise = draw_noise(plan.shape, plan.mask_stride, plan.dtype, plan.device, plan.p)
        kept = stand_in.keep(noise)
        ctx.save_for_backward(kept)
        ctx.save_for_forward(kept)
        if inplace:
            ctx.mark_dirty(x)
            return x.mul_(noise)
        return noise.mul_(x) if plan.noise_out else x * noise

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        stand_in = ctx.stand_in
        noise = stand_in.restore(ctx.saved_tensors[0])
        if stand_in.unpacked is not None:  # cached for a later pass: not to be overwritten
            torch.autograd.Variable._execution_engine.queue_callback(lambda: _drop_cache_if_released(ctx))
        elif stand_in.plan.into_noise(grad.stride()):
            return noise.mul_(grad), None, None
        return grad * noise, None, None

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_: None) -> torch.Tensor:
        return NOISE.tangent(x_tangent, ctx.stand_in.restore(ctx.saved_tensors[0]), ctx.stand_in.plan.p, ctx.inplace)


def _drop_cache_if_released(ctx) -> None:
    """Run at the end of a backward pass: a node's cached mask lives only while its graph is retained (the node
    itself may live on with its output, through the next step's forward)."""
    try:
        _ = ctx.saved_tensors
    except RuntimeError:  # released: backward cannot run through this node again
        ctx.stand_in.unpacked = None


class _TransformPackedFn(torch.autograd.Function):
    """Every exact variant under torch.func transforms (which disable saved-tensor hooks).

    :func:`_apply_transformed` draws at the caller's level with :meth:`Route.draw`, so vmap's "error" raises torch's
    error, "different" and "same" give torch's masks, for batched and unbatched inputs alike. This Function only
    multiplies or passes on native_dropout's output, with ops vmap batches by itself, and saves the packed mask; seeded
    too: a redraw in a vmapped backward would not see the forward's batch layout.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor, drawn: torch.Tensor, packed: torch.Tensor, p: float, inplace: bool,
                masks_per_byte: int, route: Route) -> torch.Tensor:
        y = route.apply_drawn(x, drawn, inplace)
        return y.clone() if y is drawn else y  # native_dropout's own output, an input here: returned as a new tensor

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: torch.Tensor) -> None:
        x, _, packed, ctx.p, ctx.inplace, ctx.k, ctx.route = inputs
        ctx.shape, ctx.dtype = x.shape, x.dtype
        ctx.set_materialize_grads(False)
        if ctx.inplace:
            ctx.mark_dirty(x)
        ctx.save_for_backward(packed)
        ctx.save_for_forward(packed)

    @staticmethod
    def _decode(ctx) -> torch.Tensor:
        (packed,) = ctx.saved_tensors
        return ctx.route.decoded(unpack_bits(packed, ctx.shape, ctx.k), ctx.p, ctx.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None) -> tuple:
        if grad is None:
            return (None,) * 7
        return ctx.route.backward(grad, _TransformPackedFn._decode(ctx), ctx.p), *(None,) * 6

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_: None) -> torch.Tensor:
        return ctx.route.tangent(x_tangent, _TransformPackedFn._decode(ctx), ctx.p, ctx.inplace)


def _apply_transformed(x: torch.Tensor, p: float, inplace: bool, masks_per_byte: int) -> torch.Tensor:
    route = route_for(x, inplace)
    with torch.no_grad():  # the draw's own autograd would save torch's mask
        drawn, mask = route.draw(x, p)
        packed = pack_bits(mask, masks_per_byte)
    return _TransformPackedFn.apply(x, drawn, packed, p, inplace, masks_per_byte, route)


def dropout(
    x: torch.Tensor,
    p: float = 0.5,
    training: bool = True,
    inplace: bool = False,
    variant: str | DropoutVariant = "pmdrop",
) -> torch.Tensor:
    """``torch.nn.functional.dropout`` with the mask stored for backward as ``variant`` says.

    Variants (:func:`pmdrop.variant_names`; by name or a :class:`pmdrop.DropoutVariant`):

    * ``"pmdrop"`` (default): the mask packed 8 per byte (1 bit per element, 1/32 of fp32's mask on the CPU, 1/8 of
      CUDA's bool mask), decoded in backward. The choice for most uses.
    * ``"pmdrop_4bit"``: 4 masks per byte (the paper's ablation); ``"pmdrop_nocache"``: as ``"pmdrop"`` but decoded
      again on every backward through a retained graph; :func:`pmdrop.packed_variant` builds 2 or 1 per byte.
    * ``"seeded"``: no mask at all, only the generator state (~5 KB on CPU, 16 B on CUDA per call, whatever the
      size): backward draws the mask again. Least memory for large tensors; slowest on small ones (a second draw).
    * ``"baseline"``: torch's own dropout, unchanged (the reference).
    * ``"pmdrop_fused"``, ``"seeded_fused"``: Triton kernels, CUDA only; their own random stream, so not
      bit-identical to torch (``bit_exact=False``).

    Every variant with ``bit_exact`` gives torch's dropout bit for bit: output, input gradient, their memory layouts
    and the RNG state after the call, in eager mode, under ``torch.func`` transforms, ``torch.compile`` and
    ``torch.export``. Calls that need no backward (eval, p in {0, 1}, no grad, integer or empty input, tensor
    subclasses) are torch's own dropout. Raises ValueError for p outside [0, 1] or an unknown variant (naming the
    valid ones).
    """
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p}")
    spec = variant if type(variant) is DropoutVariant else get_variant(variant)
    if is_compiling():  # dynamo and export cannot trace the eager path's hooks
        return compiled.dropout(x, p, training, inplace, spec)
    if trackers_open[0] and not inside_dropout_site():  # accounting: what this call saves is its mask
        with dropout_site("pmdrop"):
            return dropout(x, p, training, inplace, spec)
    # Where the call may be differentiated and x is a tensor kind spec can pack, spec's dropout; torch's elsewhere.
    if not (
        training
        and 0.0 < p < 1.0
        and ((x.requires_grad and torch.is_grad_enabled()) or _transforms_active())
        and type(x) in _PLAIN_TENSOR_TYPES
        and x.layout is torch.strided
        and not x.is_nested
        and x.is_floating_point()
        and x.numel() > 0
    ) or (spec.apply is None and spec.storage == "torch"):
        return torch_dropout(x, p, training, inplace)
    if spec.apply is not None:
        return spec.apply(x, p, inplace, spec)
    # Torch's own dropout for the route x takes, its saved mask kept packed (seeded: the generator state), inline here:
    # a call pays for every Python frame.
    # Hooks are disabled under vmap and while AOTAutograd traces; a Function saves the packed mask there.
    if _transforms_active() or not _hooks_enabled():
        return _apply_transformed(x, p, inplace, spec.masks_per_byte or 8)
    # The route table (a frozenset, its hash cached) rather than the route: reading the route off x.device.type costs
    # more than the whole lookup, and use_route swaps the table.
    key = (x.shape, x.stride(), x.dtype, x.device, p, inplace, spec.name, routes._NATIVE_DEVICE_TYPES)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= 4096:  # bound the cache for shape-varying workloads
            _PLANS.clear()
        plan = _PLANS[key] = _CallPlan(x, p, inplace, spec)
    stand_in = _MaskStandIn(plan, x)
    if plan.route is NOISE and plan.numel_bytes >= _IN_PLACE_FROM_BYTES:
        return _InPlaceNoiseFn.apply(x, stand_in, inplace)
    # What torch.autograd.graph.saved_tensors_hooks does on enter and exit, without its Python object per call.
    _push_hooks(stand_in.pack, _restore)
    try:
        if _profiling():  # the draw with its pack inside, as a trace shows them
            return _labelled("pmdrop.draw", plan.draw, x, p, True)
        return plan.draw(x, p, True)
    finally:
        _pop_hooks()
