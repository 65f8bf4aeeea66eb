"""Dropout that saves its mask for backward bit-packed, or not at all, bit-identical to torch's.

The eager path runs torch's own dropout, unchanged (its draw, output and C++ backward node: results, layouts and the RNG
stream are torch's by construction), under ``saved_tensors_hooks`` that take the one tensor it saves for backward
(:meth:`_CallPlan.pack` and :meth:`_CallPlan.restore`); large noise-route inputs take :class:`_InPlaceNoiseFn`,
``torch.func`` transforms :class:`_TransformPackedFn`, ``torch.compile`` and ``torch.export`` :mod:`pmdrop.compiled`.
Calls that need no backward and tensors that cannot be packed (nested, sparse, subclasses) are torch's own
``dropout``, unchanged.
"""

from __future__ import annotations

import functools

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
    very layout it saved); ``packer`` packs that tensor and ``table`` decodes it (packed variants only); ``noise_out``:
    whether torch's ``x * noise`` comes out in the noise's layout (then :class:`_InPlaceNoiseFn` writes the product
    into the noise's buffer). :meth:`pack` and :meth:`restore` are the call's saved-tensor hooks.
    """

    __slots__ = (
        "cache", "device", "draw", "dtype", "k", "mask_stride", "noise_out", "numel_bytes", "p", "packer", "route",
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
            self.packer = functools.partial(pack_flat, masks_per_byte=self.k)
        else:
            value = self.table[1, 0] if self.mask_stride and self.mask_stride[-1] == 1 else None
            self.packer = fresh_packer(x.numel(), self.k, x.device, nonzero=True, value=value)

    def keep(self, t: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """What a call keeps of torch's saved tensor ``t``: ``t`` packed, or (seeded) ``state``, the generator state
        before the draw."""
        return state if self.k is None else _labelled("pmdrop.pack", self.packer, t)

    def decode(self, kept: torch.Tensor, alignment: int) -> torch.Tensor:
        """Torch's saved tensor again, fresh and in its layout, from what :meth:`keep` returned (``alignment``: the
        input's address mod 16, which sets CUDA's vector width for seeded's redraw)."""
        if self.k is not None:
            return _labelled("pmdrop.unpack", self.unpack, kept)
        stride = self.stride if self.route.native else self.mask_stride
        return _labelled("pmdrop.redraw", self.route.redraw, kept, self.shape, stride, self.dtype, self.device, self.p,
                         alignment)

    def unpack(self, packed: torch.Tensor) -> torch.Tensor:
        """``packed`` decoded through the table into a fresh tensor in torch's mask layout."""
        # int32 indices: half the bytes of int64, and index_select takes them (.int(): half the cost of .to's argument
        # parsing). The rows' storage, seen in the mask's layout, holds the decoded masks in memory order.
        return self.table.index_select(0, packed.int()).as_strided(self.shape, self.mask_stride)

    def pack(self, t: torch.Tensor, enclosing: tuple | None = None, state: torch.Tensor | None = None,
             alignment: int = 0) -> list:
        """The pack hook, pushed around the call's draw (with the call's own arguments bound, where it has any): a
        record ``[kept, enclosing, alignment]`` for :meth:`restore`. ``kept`` is what :meth:`keep` returns, passed
        through the enclosing hooks (checkpointing, accounting) as a Function's saved tensor would be; any other tensor
        (torch's dropout saves only its mask) is passed on as it is, with ``alignment`` None."""
        if t.dtype is not self.saved_dtype or t.shape != self.shape:
            kept, alignment = t, None
        else:  # the usual case without keep()'s frame: a call pays for every one
            kept = self.packer(t) if self.k is not None and not _profiling() else self.keep(t, state)
        return [kept if enclosing is None else enclosing[0](kept), enclosing, alignment]

    def restore(self, record: list) -> torch.Tensor:
        """The unpack hook: what torch saved, from :meth:`pack`'s record. Where the variant caches, the decoded mask
        is appended to the record while the graph is retained (a later pass reads it; it is freed with the graph)."""
        if len(record) > 3:
            return record[3]
        kept, enclosing, alignment = record
        if enclosing is not None:
            kept = enclosing[1](kept)
        if alignment is None:
            return kept
        # The usual case without decode()'s frames: backward pays for every one, cold.
        decoded = self.unpack(kept) if self.k is not None and not _profiling() else self.decode(kept, alignment)
        if self.cache and _graph_is_retained():
            record.append(decoded)
        return decoded

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


def _labelled(label: str, fn, *args):
    """``fn(*args)``, labelled ``label`` in a profiler's trace while one runs."""
    if _profiling():
        with torch.autograd.profiler.record_function(label):
            return fn(*args)
    return fn(*args)


def _generator_state(plan: _CallPlan, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """What a seeded call keeps: the generator state before its draw (on meta, a stand-in the size of CUDA's Philox
    state), and the input's address mod 16 on the native route."""
    if x.is_meta:
        return torch.empty(16, dtype=torch.uint8, device="meta"), 0
    return routes.default_generator(x.device).get_state(), x.data_ptr() % 16 if plan.route.native else 0


# From this many bytes of input, the noise route takes _InPlaceNoiseFn: its products go into buffers it already holds,
# where torch's backward allocates one more activation-sized tensor, fresh pages from the OS each time under glibc.
# Measured on the 2-core CPU (fp32, vs nn.Dropout): hooks 1.13x / in place 1.16x at 4 MB (1 thread), 1.08x / 1.04x
# at 16 MB and 1.15x / 0.97x at 32 MB (2 threads).
_IN_PLACE_FROM_BYTES = 8 * 2**20


class _InPlaceNoiseFn(torch.autograd.Function):
    """The noise route for large inputs (see ``_IN_PLACE_FROM_BYTES``): torch's draw (same generator calls, same
    layout), kept as ``plan`` keeps it, and torch's products written into the noise's buffer where they have its layout,
    forward and backward. IEEE multiplication commutes bit for bit, so values and layouts are torch's.
    ``forward(ctx, ...)`` style: ``setup_context`` makes ``apply`` bind arguments through ``inspect.signature`` on every
    call.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, plan: _CallPlan, inplace: bool, state: torch.Tensor | None,
                alignment: int) -> torch.Tensor:
        ctx.plan, ctx.inplace, ctx.alignment, ctx.unpacked = plan, inplace, alignment, None
        noise = draw_noise(plan.shape, plan.mask_stride, plan.dtype, plan.device, plan.p)
        kept = plan.keep(noise, state)
        ctx.save_for_backward(kept)
        ctx.save_for_forward(kept)
        if inplace:
            ctx.mark_dirty(x)
            return x.mul_(noise)
        return noise.mul_(x) if plan.noise_out else x * noise

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None, None]:
        plan, noise = ctx.plan, ctx.unpacked
        if noise is None:
            noise = plan.decode(ctx.saved_tensors[0], ctx.alignment)
            if plan.cache and _graph_is_retained():
                ctx.unpacked = noise
        if ctx.unpacked is not None:  # cached for a later pass: not to be overwritten
            torch.autograd.Variable._execution_engine.queue_callback(lambda: _drop_cache_if_released(ctx))
        elif plan.into_noise(grad.stride()):
            return noise.mul_(grad), None, None, None, None
        return grad * noise, None, None, None, None

    @staticmethod
    def jvp(ctx, x_tangent: torch.Tensor, *_: None) -> torch.Tensor:
        return NOISE.tangent(x_tangent, ctx.plan.decode(ctx.saved_tensors[0], ctx.alignment), ctx.plan.p, ctx.inplace)


def _drop_cache_if_released(ctx) -> None:
    """Run at the end of a backward pass: a node's cached mask lives only while its graph is retained (the node
    itself may live on with its output, through the next step's forward)."""
    try:
        _ = ctx.saved_tensors
    except RuntimeError:  # released: backward cannot run through this node again
        ctx.unpacked = None


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
        and x.layout is torch.strided  # sparse COO tensors have strides too
    ) or (spec.apply is None and spec.storage == "torch"):
        return torch_dropout(x, p, training, inplace)
    # Only layouts found packable get a plan: the usual call skips the checks below (it pays for each attribute read).
    # The route table (a frozenset, its hash cached), which use_route swaps: cheaper than reading x.device.type.
    try:
        key = (x.shape, x.stride(), x.dtype, x.device, p, inplace, spec.name, routes._NATIVE_DEVICE_TYPES)
    except RuntimeError:  # nested tensors have no sizes
        key = None
    # Hooks are disabled under vmap and while AOTAutograd traces; a Function saves the packed mask there.
    plan, hooked = _PLANS.get(key), _hooks_enabled() and not _transforms_active()
    if plan is None or not hooked:
        if x.is_nested or not x.is_floating_point() or x.numel() == 0:
            return torch_dropout(x, p, training, inplace)
        if spec.apply is not None:
            return spec.apply(x, p, inplace, spec)
        if not hooked:
            return _apply_transformed(x, p, inplace, spec.masks_per_byte or 8)
        if len(_PLANS) >= 4096:  # bound the cache for shape-varying workloads
            _PLANS.clear()
        plan = _PLANS[key] = _CallPlan(x, p, inplace, spec)
    # Torch's own dropout for the route x takes, its saved mask kept packed (seeded: the generator state), inline here.
    state, alignment = (None, 0) if plan.k is not None else _generator_state(plan, x)
    if plan.route is NOISE and plan.numel_bytes >= _IN_PLACE_FROM_BYTES:
        return _InPlaceNoiseFn.apply(x, plan, inplace, state, alignment)
    # What torch.autograd.graph.saved_tensors_hooks does on enter and exit, without its Python object per call; the
    # usual call (packed, under no other hooks) makes no object of its own for them.
    enclosing = _enclosing_hooks(False)
    pack = plan.pack if enclosing is None and state is None else lambda t: plan.pack(t, enclosing, state, alignment)
    _push_hooks(pack, plan.restore)
    try:
        if _profiling():  # the draw with its pack inside, as a trace shows them
            return _labelled("pmdrop.draw", plan.draw, x, p, True)
        return plan.draw(x, p, True)
    finally:
        _pop_hooks()
