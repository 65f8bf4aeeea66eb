"""pmdrop under ``torch.compile`` and ``torch.export``: traceable paths that keep the mask packed.

The eager path pushes saved-tensor hooks written in Python and reads generator states, which
dynamo cannot trace. :func:`pmdrop.dropout` sends the calls that need a backward here while
``torch.compiler.is_compiling()``:

* **torch.compile, packed variants**: the forward calls ``aten.native_dropout`` (what Inductor
  turns ``nn.Dropout`` into on every device) and packs its bool mask with plain tensor ops; the
  backward unpacks and calls ``native_dropout_backward``. AOTAutograd's partitioner never
  recomputes a random op, so it saves what the backward reads: the packed uint8, not the bool.
  Inductor draws exactly the random numbers it draws for compiled ``nn.Dropout`` (its own RNG, or
  aten's under ``fallback_random``), so a compiled pmdrop model trains as the compiled torch model.
* **torch.compile, seeded**: a custom op (``pmdrop::seeded_dropout``, opaque to Inductor) runs
  ``native_dropout`` with aten's generator and returns the generator state, which is all that is
  saved; the backward regenerates the mask from it. Aten's generator is what Inductor uses under
  ``fallback_random``, so there seeded matches compiled ``nn.Dropout``; with Inductor's own RNG it
  cannot (that stream is internal to the generated kernels).
* **torch.export**: custom ops (``pmdrop::packed_dropout``, ``pmdrop::seeded_dropout``) that draw
  on the route eager torch takes on the device (bernoulli noise on CPU, ``native_dropout`` on
  CUDA), so the exported program's module is bit-identical to eager ``nn.Dropout``, and its
  backward (``register_autograd``) reads only the packed mask or the generator state.

Run ``python -m pmdrop.bench_compile`` for the compiled-step timing against compiled ``nn.Dropout``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .packing import check_masks_per_byte
from .variants import DropoutVariant

# torch's dropout takes native_dropout (bool mask) on these devices out of place, bernoulli noise elsewhere.
_NATIVE_DROPOUT_DEVICE_TYPES = frozenset({"cuda", "xpu", "lazy", "privateuseone"})


def _eager_takes_native_dropout(x: torch.Tensor) -> bool:
    return x.device.type in _NATIVE_DROPOUT_DEVICE_TYPES


def _bit_shifts(masks_per_byte: int, device: torch.device) -> torch.Tensor:
    return torch.arange(0, 8, 8 // masks_per_byte, dtype=torch.uint8, device=device)


def pack_traceable(mask: torch.Tensor, masks_per_byte: int) -> torch.Tensor:
    """Pack a bool mask in row-major order into ``ceil(numel / k)`` uint8 with ops Inductor fuses.

    Same bit layout as :func:`pmdrop.pack_mask`: mask ``i`` at byte ``i // k``, bit ``(i % k) * (8 // k)``.
    """
    k = check_masks_per_byte(masks_per_byte)
    flat = mask.reshape(-1)
    tail = -flat.numel() % k
    if tail:
        flat = torch.cat([flat, flat.new_zeros(tail)])
    # One pointwise or of k strided columns, not a sum over a last dim of k: Inductor's CPU code for that uint8
    # reduction took 17.7 ms where this takes 0.06 ms for a (16, 64, 512) mask at k = 8.
    columns = flat.view(-1, k).to(torch.uint8)
    packed = columns[:, 0]
    for i in range(1, k):
        packed = packed | (columns[:, i] << i * (8 // k))
    return packed


def unpack_traceable(packed: torch.Tensor, shape: Sequence[int], masks_per_byte: int) -> torch.Tensor:
    """Inverse of :func:`pack_traceable`: a contiguous bool tensor of ``shape``."""
    bits = (packed.unsqueeze(-1) >> _bit_shifts(masks_per_byte, packed.device)) & 1
    numel = 1
    for size in shape:
        numel *= size
    return bits.reshape(-1)[:numel].view(shape).to(torch.bool)


def _scale(p: float) -> float:
    return 1.0 / (1.0 - p)


def _mask_stride(x: torch.Tensor) -> tuple[int, ...]:
    """Strides of ``native_dropout``'s mask for ``x`` (``empty_like``: x's own if dense, else row-major)."""
    expected = 1
    for stride, size in sorted((st, s) for s, st in zip(x.shape, x.stride(), strict=True) if s != 1):
        if stride != expected:
            return torch.empty(x.shape, device="meta").stride()
        expected *= size
    return tuple(x.stride())


@torch.library.custom_op("pmdrop::unpack_mask", mutates_args=())
def unpack_mask_strided(
    packed: torch.Tensor, shape: Sequence[int], stride: Sequence[int], masks_per_byte: int
) -> torch.Tensor:
    """:func:`unpack_traceable` into a bool tensor of the given strides, as one kernel Inductor does not fuse.

    Opaque on purpose: fused into the kernel that reads it (a softmax backward's reduction, say), the bit
    arithmetic changes how Inductor vectorises that kernel and so the order of its sums; as a tensor of its
    own the mask is read exactly as compiled ``nn.Dropout``'s saved bool mask is.
    """
    out = torch.empty_strided(shape, stride, dtype=torch.bool, device=packed.device)
    return out.copy_(unpack_traceable(packed, shape, masks_per_byte))


@unpack_mask_strided.register_fake
def _(packed, shape, stride, masks_per_byte) -> torch.Tensor:
    return torch.empty_strided(shape, stride, dtype=torch.bool, device=packed.device)


class _CompiledPackedDropout(torch.autograd.Function):
    """Dynamo/Inductor path of the packed variants: torch's ``native_dropout``, mask saved packed."""

    @staticmethod
    def forward(x: torch.Tensor, p: float, masks_per_byte: int) -> tuple[torch.Tensor, torch.Tensor]:
        y, mask = torch.ops.aten.native_dropout(x, p, True)
        return y, pack_traceable(mask, masks_per_byte)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        x, ctx.p, ctx.masks_per_byte = inputs
        ctx.layout = (x.shape, _mask_stride(x))
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _grad_packed: None) -> tuple[torch.Tensor, None, None]:
        (packed,) = ctx.saved_tensors
        mask = torch.ops.pmdrop.unpack_mask(packed, *ctx.layout, ctx.masks_per_byte)
        return torch.ops.aten.native_dropout_backward(grad, mask, _scale(ctx.p)), None, None


# ---- custom ops: seeded under compile and export, packed under export -------------------------------------

_SEEDED = (torch.Tag.nondeterministic_seeded,)


def _generator_state(device: torch.device) -> torch.Tensor:
    if device.type == "cpu":
        return torch.default_generator.get_state()
    return torch.get_device_module(device.type).get_rng_state(device)


def _state_numel(device: torch.device) -> int:
    # CUDA-like devices: one more byte for the input's address mod 16, which sets the kernel's vector width.
    return _generator_state(device).numel() + (device.type != "cpu")


def _saved_state(x: torch.Tensor) -> torch.Tensor:
    state = _generator_state(x.device).clone()
    if x.device.type == "cpu":
        return state
    return torch.cat([state, state.new_tensor([x.data_ptr() % 16])])


def _native_dropout_from_state(
    state: torch.Tensor, shape: Sequence[int], stride: Sequence[int], dtype: torch.dtype, device: torch.device,
    p: float,
) -> torch.Tensor:
    """``native_dropout``'s bool mask drawn again from a saved state, on a stand-in with x's layout and alignment."""
    numel = 1
    for size in shape:
        numel *= size
    extent = 1 + sum((size - 1) * st for size, st in zip(shape, stride, strict=True)) if numel else 0
    itemsize = torch.empty((), dtype=dtype).element_size()
    buffer = torch.empty(extent + 16 // itemsize, dtype=dtype, device=device)
    offset = 0
    if device.type != "cpu":
        alignment = int(state[-1])
        state = state[:-1]
        offset = (alignment - buffer.data_ptr() % 16) % 16 // itemsize
    stand_in = buffer.as_strided(shape, stride, offset)
    if device.type == "cpu":
        generator = torch.Generator()
        generator.set_state(state)
        mask = torch.empty_like(stand_in, dtype=torch.bool)
        # CPU native_dropout is bernoulli_ on an empty_like bool mask (same numbers per element as its kernel)
        return mask.bernoulli_(1 - p, generator=generator)
    module = torch.get_device_module(device.type)
    current = module.get_rng_state(device)
    try:
        module.set_rng_state(state, device)
        return torch.ops.aten.native_dropout(stand_in, p, True)[1]
    finally:
        module.set_rng_state(current, device)


def _noise_from_state(
    state: torch.Tensor, shape: Sequence[int], stride: Sequence[int], dtype: torch.dtype, device: torch.device,
    p: float,
) -> torch.Tensor:
    """Torch's bernoulli dropout noise (x's dtype and layout) drawn again from a saved state."""
    generator = torch.Generator(device=device)
    generator.set_state(state if device.type == "cpu" else state[:-1])
    noise = torch.empty_strided(shape, stride, dtype=dtype, device=device)
    return noise.bernoulli_(1 - p, generator=generator).div_(1 - p)


@torch.library.custom_op("pmdrop::seeded_dropout", mutates_args=(), tags=_SEEDED)
def seeded_dropout(x: torch.Tensor, p: float, native: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Dropout of ``x`` and the generator state before the draw (``native``: native_dropout, else bernoulli noise)."""
    state = _saved_state(x)
    if native:
        return torch.ops.aten.native_dropout(x, p, True)[0], state
    return x * torch.empty_like(x).bernoulli_(1 - p).div_(1 - p), state


@seeded_dropout.register_fake
def _(x: torch.Tensor, p: float, native: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), x.new_empty(_state_numel(x.device), dtype=torch.uint8, device="cpu")


@torch.library.custom_op("pmdrop::seeded_dropout_mask", mutates_args=())
def seeded_dropout_mask(
    grad: torch.Tensor, state: torch.Tensor, shape: Sequence[int], stride: Sequence[int], dtype: torch.dtype,
    p: float, native: bool,
) -> torch.Tensor:
    """What :func:`seeded_dropout` drew from ``state``: the bool mask (``native``) or the noise (x's dtype).

    ``grad`` (the incoming gradient) is read only for its device: depending on it keeps the op in the
    backward graph, where AOTAutograd's partitioner cannot move it to the forward and save the mask.
    """
    if native:
        return _native_dropout_from_state(state, shape, stride, dtype, grad.device, p)
    return _noise_from_state(state, shape, stride, dtype, grad.device, p)


@seeded_dropout_mask.register_fake
def _(grad, state, shape, stride, dtype, p, native) -> torch.Tensor:
    return torch.empty_strided(shape, stride, dtype=torch.bool if native else dtype, device=grad.device)


def _seeded_setup_context(ctx, inputs, output) -> None:
    x, ctx.p, ctx.native = inputs
    ctx.layout = (x.shape, x.stride(), x.dtype)
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _seeded_backward(ctx, grad: torch.Tensor, _grad_state: None) -> tuple[torch.Tensor, None, None]:
    (state,) = ctx.saved_tensors
    drawn = torch.ops.pmdrop.seeded_dropout_mask(grad, state, *ctx.layout, ctx.p, ctx.native)
    if ctx.native:
        return torch.ops.aten.native_dropout_backward(grad, drawn, _scale(ctx.p)), None, None
    return grad * drawn, None, None


seeded_dropout.register_autograd(_seeded_backward, setup_context=_seeded_setup_context)


def _noise_value(p: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """The non-zero value of torch's dropout noise, ``1 / (1 - p)`` rounded as ``div_`` rounds it."""
    return torch.ones((), dtype=dtype, device=device).div_(1 - p)


@torch.library.custom_op("pmdrop::packed_dropout", mutates_args=(), tags=_SEEDED)
def packed_dropout(x: torch.Tensor, p: float, masks_per_byte: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager torch's dropout of ``x`` on its device's route, and its mask packed ``masks_per_byte`` per byte."""
    if _eager_takes_native_dropout(x):
        y, mask = torch.ops.aten.native_dropout(x, p, True)
        return y, pack_traceable(mask, masks_per_byte)
    noise = torch.empty_like(x).bernoulli_(1 - p).div_(1 - p)
    return x * noise, pack_traceable(noise.ne(0), masks_per_byte)


@packed_dropout.register_fake
def _(x: torch.Tensor, p: float, masks_per_byte: int) -> tuple[torch.Tensor, torch.Tensor]:
    packed_numel = -(-x.numel() // check_masks_per_byte(masks_per_byte))
    return torch.empty_like(x), x.new_empty(packed_numel, dtype=torch.uint8)


def _packed_setup_context(ctx, inputs, output) -> None:
    x, ctx.p, ctx.masks_per_byte = inputs
    ctx.layout = (x.shape, x.stride(), x.dtype)
    ctx.native = _eager_takes_native_dropout(x)
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _packed_backward(ctx, grad: torch.Tensor, _grad_packed: None) -> tuple[torch.Tensor, None, None]:
    (packed,) = ctx.saved_tensors
    shape, stride, dtype = ctx.layout
    mask = unpack_traceable(packed, shape, ctx.masks_per_byte)
    if ctx.native:
        return torch.ops.aten.native_dropout_backward(grad, mask, _scale(ctx.p)), None, None
    # torch's noise tensor, in x's layout (the layout torch's multiply saved it in)
    noise = torch.empty_strided(shape, stride, dtype=dtype, device=grad.device)
    noise.copy_(torch.where(mask, _noise_value(ctx.p, dtype, grad.device), 0))
    return grad * noise, None, None


packed_dropout.register_autograd(_packed_backward, setup_context=_packed_setup_context)


def dropout(x: torch.Tensor, p: float, training: bool, inplace: bool, variant: DropoutVariant) -> torch.Tensor:
    """:func:`pmdrop.dropout` of an exact variant while dynamo or export traces (``torch.compiler.is_compiling()``)."""
    needs_backward = (
        training and 0.0 < p < 1.0 and x.numel() > 0 and x.is_floating_point() and x.requires_grad
        and torch.is_grad_enabled()
    )
    if not needs_backward or inplace or variant.name == "baseline":
        # torch's own dropout: nothing to save, in place (torch's noise route), or the reference variant
        return torch.dropout_(x, p, training) if inplace else torch.dropout(x, p, training)
    exporting = torch.compiler.is_exporting()
    if variant.masks_per_byte is not None:
        if exporting:
            return torch.ops.pmdrop.packed_dropout(x, p, variant.masks_per_byte)[0]
        return _CompiledPackedDropout.apply(x, p, variant.masks_per_byte)[0]
    # Under dynamo, draw as Inductor's fallback_random does (native_dropout); under export, as eager torch does.
    return torch.ops.pmdrop.seeded_dropout(x, p, not exporting or _eager_takes_native_dropout(x))[0]
