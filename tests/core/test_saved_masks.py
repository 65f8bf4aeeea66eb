"""pmdrop.pack_saved_masks: every bool tensor saved for backward kept at 1 bit, restored exactly."""

import torch
import torch._dynamo

import pmdrop


def _bool_saving_step(x: torch.Tensor) -> torch.Tensor:
    """Ops that save bool tensors of several layouts: native_dropout's mask, a transposed and an expanded condition."""
    y, _ = torch.ops.aten.native_dropout(x, 0.3, True)
    z = torch.where((x > 0).t(), y.t() * 2, y.t())
    return torch.where((x[:, :1] > 0).expand_as(x), z.t(), -z.t())


def _saved(fn, *args):
    """What the ops save for backward (the tensors themselves), and fn's output."""
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = fn(*args)
    return saved, out


class _KeepForBackward(torch.autograd.Function):
    """Saves ``kept`` for backward and hands what backward reads to ``seen``."""

    @staticmethod
    def forward(ctx, x, kept, seen):
        ctx.save_for_backward(kept)
        ctx.seen = seen
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        ctx.seen.extend(ctx.saved_tensors)
        return grad, None, None


def _round_trip(tensors):
    """The tensors as backward reads them when saved inside pack_saved_masks, and what was packed."""
    x, seen = torch.zeros((), requires_grad=True), []
    with pmdrop.pack_saved_masks() as packed:
        out = sum(_KeepForBackward.apply(x, t, seen) for t in tensors)
    out.backward()
    return seen, packed


def test_restores_every_saved_bool_tensor_with_its_values_shape_strides_and_device():
    x = torch.randn(8, 13, requires_grad=True)
    torch.manual_seed(0)
    saved, _ = _saved(_bool_saving_step, x)
    masks = [t for t in saved if t.dtype == torch.bool]
    assert {t.stride() for t in masks} == {(13, 1), (1, 13), (1, 0)}  # dense, transposed, expanded
    restored, packed = _round_trip(masks)
    by_stride = {t.stride(): t for t in restored}
    for mask in masks:
        back = by_stride[mask.stride()]
        assert back.dtype == torch.bool and back.device == mask.device
        assert back.shape == mask.shape and back.stride() == mask.stride()
        assert torch.equal(back, mask) and back.untyped_storage().data_ptr() != mask.untyped_storage().data_ptr()
    # the expanded (8, 13) condition covers 8 storage elements: one byte packed
    assert packed.tensors == 3 and packed.bool_bytes == 8 * 13 + 8 * 13 + 8 and packed.packed_bytes == 13 + 13 + 1


def test_eager_gradients_are_bit_identical_and_bool_masks_take_one_bit():
    x = torch.randn(64, 96, requires_grad=True)
    torch.manual_seed(0)
    (reference,) = torch.autograd.grad(_bool_saving_step(x).sum(), x)
    torch.manual_seed(0)
    with pmdrop.pack_saved_masks() as packed:
        out = _bool_saving_step(x)
    (got,) = torch.autograd.grad(out.sum(), x)
    assert torch.equal(got, reference)
    assert packed.bool_bytes == 2 * 64 * 96 + 64 and packed.packed_bytes == 2 * 64 * 96 // 8 + 8


def test_compiled_dropout_saves_its_bool_mask_through_the_hooks_at_one_bit_and_trains_identically():
    torch._dynamo.reset()
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.Dropout(0.2), torch.nn.Linear(64, 1)).train()
    compiled = torch.compile(model)
    x = torch.randn(16, 32)

    def grads(pack: bool):
        torch.manual_seed(1)
        model.zero_grad()
        if pack:
            with pmdrop.pack_saved_masks() as packed:
                loss = compiled(x).sum()
        else:
            packed, loss = None, compiled(x).sum()
        loss.backward()
        return [p.grad.clone() for p in model.parameters()], packed

    reference, _ = grads(False)
    got, packed = grads(True)
    assert all(torch.equal(a, b) for a, b in zip(got, reference, strict=True))
    assert packed.tensors == 1 and packed.bool_bytes == 16 * 64 and packed.packed_bytes == 16 * 64 // 8


def test_non_bool_and_sparse_views_are_left_as_they_are():
    big = torch.rand(64, 64) < 0.5
    column = big[:, 3]  # 64 elements spread over 4033 storage elements: packing the span would cost more
    weights = torch.randn(64)
    restored, packed = _round_trip([column, weights])
    assert {id(t) for t in restored} == {id(column), id(weights)}
    assert packed.tensors == 0 and packed.kept == 1
