"""pmdrop under ``torch.compile`` and ``torch.export``: traceable paths that keep the mask packed.

Dynamo cannot trace the eager path's Python saved-tensor hooks and generator states: :func:`pmdrop.dropout` sends
every call here while ``torch.compiler.is_compiling()``, and this path honours the variant's registered ``storage``
("torch": torch's own dropout, or the variant's own ``apply``, traced as is):

* **"packed", torch.compile**: the forward calls ``aten.native_dropout`` (what Inductor turns ``nn.Dropout`` into on
  every device: :data:`pmdrop.routes.NATIVE`) and packs its bool mask; the backward unpacks it and takes the route's
  backward. AOTAutograd's partitioner never recomputes a random op, so it saves what the backward reads: the packed
  uint8, not the bool. Inductor draws exactly the random numbers it draws for compiled ``nn.Dropout`` (its own RNG,
  or aten's under ``fallback_random``), so a compiled pmdrop model trains as the compiled torch model.
* **"regenerated", torch.compile**: a custom op (``pmdrop::seeded_dropout``, opaque to Inductor) runs
  ``native_dropout`` with aten's generator and returns the generator state, which is all that is saved; the backward
  draws the mask again from it. Aten's generator is what Inductor uses under ``fallback_random``, so there seeded
  matches compiled ``nn.Dropout``; with Inductor's own RNG it cannot (that stream is internal to the generated kernels).
* **torch.export**: custom ops (``pmdrop::packed_dropout``, ``pmdrop::seeded_dropout``) that draw on the route eager
  torch takes on the device, so the exported program's module is bit-identical to eager ``nn.Dropout``, and its
  backward (``register_autograd``) reads only the packed mask or the generator state. The two packed forwards share
  their draw (:func:`_dropout`), setup (:func:`_save`) and backward.

Inductor fuses the pack into the draw's kernel, except while :func:`pmdrop.track_saved_tensors` is open: the pack is
then the op ``pmdrop::pack``, which marks its output as a dropout mask. The unpack is always an op
(``pmdrop::unpack``), run as it is at run time: it keeps the bit arithmetic out of the kernel that reads the mask
(fused into a softmax backward's reduction, say, it changes how Inductor vectorises that kernel and so the order of
its sums).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .accounting import note_mask, trackers_open
from .packing import pack_bits, pack_mask, packed_numel, unpack_bits
from .routes import NATIVE, ROUTES, Route, default_generator, mask_stride, route_for, torch_dropout
from .variants import DropoutVariant

_SEEDED = (torch.Tag.nondeterministic_seeded,)


@torch.library.custom_op("pmdrop::pack", mutates_args=())
def pack(mask: torch.Tensor, masks_per_byte: int) -> torch.Tensor:
    """:func:`pmdrop.pack_mask` as an op of its own."""
    return note_mask(pack_mask(mask, masks_per_byte))


@pack.register_fake
def _(mask: torch.Tensor, masks_per_byte: int) -> torch.Tensor:
    return mask.new_empty(packed_numel(mask.numel(), masks_per_byte), dtype=torch.uint8)


@torch.library.custom_op("pmdrop::unpack", mutates_args=())
def unpack(packed: torch.Tensor, shape: Sequence[int], stride: Sequence[int], masks_per_byte: int) -> torch.Tensor:
    """:func:`pmdrop.packing.unpack_bits` into a bool tensor of the given strides, as an op of its own."""
    out = torch.empty_strided(shape, stride, dtype=torch.bool, device=packed.device)
    return out.copy_(unpack_bits(packed, shape, masks_per_byte))


@unpack.register_fake
def _(packed, shape, stride, masks_per_byte) -> torch.Tensor:
    return torch.empty_strided(shape, stride, dtype=torch.bool, device=packed.device)


def _dropout(x: torch.Tensor, p: float, route: Route) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch's out-of-place dropout of ``x`` on ``route``: its output and its bool mask."""
    drawn, mask = route.draw(x, p)
    return route.apply_drawn(x, drawn, False), mask


def _save(ctx, inputs: tuple, output: tuple, route: Route, stride: Sequence[int]) -> None:
    """Setup of every path here: ``output[1]`` (the packed mask or the generator state) is all the backward reads."""
    x, ctx.p, ctx.arg = inputs  # arg: masks_per_byte, or seeded's route name
    ctx.route, ctx.layout = route, (x.shape, stride, x.dtype)
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(output[1])


def _packed_backward(ctx, grad: torch.Tensor, _grad_packed: None) -> tuple[torch.Tensor, None, None]:
    (packed,) = ctx.saved_tensors
    shape, stride, dtype = ctx.layout
    mask = torch.ops.pmdrop.unpack(packed, shape, stride, ctx.arg)
    return ctx.route.backward(grad, ctx.route.decoded(mask, ctx.p, dtype), ctx.p), None, None


class _CompiledPackedDropout(torch.autograd.Function):
    """Dynamo/Inductor path of the packed variants: torch's ``native_dropout``, mask saved packed."""

    @staticmethod
    def forward(x: torch.Tensor, p: float, masks_per_byte: int) -> tuple[torch.Tensor, torch.Tensor]:
        y, mask = _dropout(x, p, NATIVE)
        # Inductor fuses the traceable pack into the draw's kernel (the op costs a compiled BERT step 1.09x compiled
        # nn.Dropout's time, the fused pack 0.87x). While a tracker is open the pack is the op that marks its output
        # as a mask: dynamo guards on trackers_open, so opening one compiles that graph, with the same bytes.
        if trackers_open[0]:
            return y, torch.ops.pmdrop.pack(mask, masks_per_byte)
        return y, pack_bits(mask, masks_per_byte)

    @staticmethod
    def setup_context(ctx, inputs: tuple, output: tuple) -> None:
        _save(ctx, inputs, output, NATIVE, mask_stride(inputs[0]))

    backward = staticmethod(_packed_backward)


@torch.library.custom_op("pmdrop::packed_dropout", mutates_args=(), tags=_SEEDED)
def packed_dropout(x: torch.Tensor, p: float, masks_per_byte: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Eager torch's dropout of ``x`` on its device's route, and its mask packed ``masks_per_byte`` per byte."""
    y, mask = _dropout(x, p, route_for(x, False))
    return y, note_mask(pack_mask(mask, masks_per_byte))


@packed_dropout.register_fake
def _(x: torch.Tensor, p: float, masks_per_byte: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.empty_like(x), x.new_empty(packed_numel(x.numel(), masks_per_byte), dtype=torch.uint8)


packed_dropout.register_autograd(
    _packed_backward,
    setup_context=lambda ctx, inputs, output: _save(ctx, inputs, output, route_for(inputs[0], False),
                                                     mask_stride(inputs[0])),
)


@torch.library.custom_op("pmdrop::seeded_dropout", mutates_args=(), tags=_SEEDED)
def seeded_dropout(x: torch.Tensor, p: float, route: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Dropout of ``x`` on ``route`` ("native" or "noise") and the generator state before the draw."""
    state = default_generator(x.device).get_state()
    if x.device.type != "cpu":  # one more byte: the input's address mod 16, which sets CUDA's vector width
        state = torch.cat([state, state.new_tensor([x.data_ptr() % 16])])
    return _dropout(x, p, ROUTES[route])[0], note_mask(state)


@seeded_dropout.register_fake
def _(x: torch.Tensor, p: float, route: str) -> tuple[torch.Tensor, torch.Tensor]:
    numel = default_generator(x.device).get_state().numel() + (x.device.type != "cpu")
    return torch.empty_like(x), x.new_empty(numel, dtype=torch.uint8, device="cpu")


@torch.library.custom_op("pmdrop::seeded_dropout_mask", mutates_args=())
def seeded_dropout_mask(
    grad: torch.Tensor, state: torch.Tensor, shape: Sequence[int], stride: Sequence[int], dtype: torch.dtype,
    p: float, route: str,
) -> torch.Tensor:
    """What :func:`seeded_dropout` drew from ``state``: the bool mask (native route) or the noise (x's dtype).

    ``grad`` (the incoming gradient) is read only for its device: depending on it keeps the op in the
    backward graph, where AOTAutograd's partitioner cannot move it to the forward and save the mask.
    """
    alignment = 0
    if grad.device.type != "cpu":
        state, alignment = state[:-1], int(state[-1])
    return ROUTES[route].redraw(state, shape, stride, dtype, grad.device, p, alignment)


@seeded_dropout_mask.register_fake
def _(grad, state, shape, stride, dtype, p, route) -> torch.Tensor:
    # laid out as empty_like(x) lays out torch's mask or noise: x's strides if dense, row-major if x has gaps
    like_x = torch.empty_strided(shape, stride, dtype=ROUTES[route].saved_dtype(dtype), device=grad.device)
    return torch.empty_like(like_x)


def _seeded_setup_context(ctx, inputs: tuple, output: tuple) -> None:
    x, route = inputs[0], ROUTES[inputs[2]]
    _save(ctx, inputs, output, route, x.stride() if route.native else mask_stride(x))


def _seeded_backward(ctx, grad: torch.Tensor, _grad_state: None) -> tuple[torch.Tensor, None, None]:
    (state,) = ctx.saved_tensors
    shape, stride, dtype = ctx.layout
    drawn = torch.ops.pmdrop.seeded_dropout_mask(grad, state, shape, stride, dtype, ctx.p, ctx.arg)
    return ctx.route.backward(grad, drawn, ctx.p), None, None


seeded_dropout.register_autograd(_seeded_backward, setup_context=_seeded_setup_context)


def dropout(x: torch.Tensor, p: float, training: bool, inplace: bool, variant: DropoutVariant) -> torch.Tensor:
    """:func:`pmdrop.dropout` while dynamo or export traces (``torch.compiler.is_compiling()``)."""
    needs_backward = (
        training and 0.0 < p < 1.0 and x.numel() > 0 and x.is_floating_point() and x.requires_grad
        and torch.is_grad_enabled()
    )
    if needs_backward and variant.apply is not None:
        return variant.apply(x, p, inplace, variant)
    if not needs_backward or inplace or variant.storage == "torch":
        # torch's own dropout: nothing to save, in place (torch's noise route), or torch's storage
        return torch_dropout(x, p, training, inplace)
    exporting = torch.compiler.is_exporting()
    if variant.storage == "packed":
        if exporting:
            return torch.ops.pmdrop.packed_dropout(x, p, variant.masks_per_byte)[0]
        return _CompiledPackedDropout.apply(x, p, variant.masks_per_byte)[0]
    # Under dynamo, draw as Inductor's fallback_random does (native_dropout); under export, as eager torch does.
    return torch.ops.pmdrop.seeded_dropout(x, p, route_for(x, False).name if exporting else "native")[0]
