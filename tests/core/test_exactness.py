"""Every exact variant against torch.nn.Dropout: same output, input gradient and RNG state, bit for bit."""

import warnings
import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.checkpoint import checkpoint

import pmdrop

from .helpers import EXACT_VARIANTS, assert_identical, step

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
SHAPES = [(3, 5, 7), (13,), (2, 3, 8, 9), (64, 33)]  # 105, 13, 432, 2112 elements: tails not divisible by 8


def torch_dropout(p, inplace=False):
    return torch.nn.Dropout(p, inplace=inplace)


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("inplace", [False, True], ids=["out", "inplace"])
@pytest.mark.usefixtures("eager_path")
def test_matches_nn_dropout(variant, dtype, shape, inplace):
    x0 = torch.randn(shape, dtype=dtype)
    for p in (0.1, 0.5, 0.83):
        reference = step(torch_dropout(p, inplace), x0, inplace=inplace)
        candidate = step(pmdrop.PackedDropout(p, inplace, variant), x0, inplace=inplace)
        assert_identical(reference, candidate, f"{variant} p={p}")


LAYOUTS = {
    "transposed": lambda x: x.transpose(0, 2),
    "channels_last": lambda x: x.contiguous(memory_format=torch.channels_last),
    "expanded": lambda x: x[:1].expand(5, -1, -1, -1),
    "sliced": lambda x: x[:, 1:, ::2],
}


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.usefixtures("eager_path")
def test_matches_nn_dropout_on_odd_layouts(variant, layout):
    x0 = torch.randn(3, 4, 5, 6)
    prepare = LAYOUTS[layout]
    reference = step(torch_dropout(0.3), x0, prepare=prepare)
    candidate = step(pmdrop.PackedDropout(0.3, variant=variant), x0, prepare=prepare)
    assert_identical(reference, candidate, f"{variant} {layout}")


def _sin_dropout_sin(layer):
    return lambda x: layer(x.sin()).sin()


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)
@pytest.mark.parametrize("reentrant", [True, False], ids=["reentrant", "non_reentrant"])
@pytest.mark.usefixtures("eager_path")
def test_under_activation_checkpointing(variant, dtype, shape, reentrant):
    x0 = torch.randn(shape, dtype=dtype)

    def checkpointed(layer):
        return lambda x: checkpoint(_sin_dropout_sin(layer), x, use_reentrant=reentrant)

    plain = step(_sin_dropout_sin(torch_dropout(0.2)), x0)
    reference = step(checkpointed(torch_dropout(0.2)), x0)
    candidate = step(checkpointed(pmdrop.PackedDropout(0.2, variant=variant)), x0)
    assert_identical(plain, reference, "torch under checkpoint")
    assert_identical(reference, candidate, f"{variant} under checkpoint")


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.usefixtures("eager_path")
def test_under_cpu_autocast(variant, dtype):
    x0 = torch.randn(7, 3, 23)
    torch.manual_seed(0)
    linear = torch.nn.Linear(23, 13)

    def autocast(layer):
        def run(x):
            with torch.autocast("cpu", dtype=dtype):
                return layer(linear(x))

        return run

    reference = step(autocast(torch_dropout(0.3)), x0)
    candidate = step(autocast(pmdrop.PackedDropout(0.3, variant=variant)), x0)
    assert reference[0].dtype == dtype
    assert_identical(reference, candidate, f"{variant} under autocast")


def test_compiled_torch_dropout_itself_rounds_differently_in_half_precision():
    """Why compiled pmdrop is held to compiled nn.Dropout in half precision, not to eager (tests/core/test_compile.py):
    Inductor keeps torch's bf16 noise scale in fp32 inside its fused kernel, so compiled nn.Dropout's gradient is
    not eager nn.Dropout's."""
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    x0 = torch.randn(6, 37, dtype=torch.bfloat16)
    with inductor_config.patch(fallback_random=True), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        eager = step(torch_dropout(0.3), x0)
        compiled = step(torch.compile(torch_dropout(0.3)), x0)
    assert torch.equal(eager[0], compiled[0]) and not torch.equal(eager[1], compiled[1])


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.usefixtures("eager_path")
def test_gradcheck_and_double_backward_fp64(variant):
    def seeded(x):
        torch.manual_seed(0)
        return pmdrop.dropout(x, 0.4, variant=variant)

    x = torch.randn(3, 11, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(seeded, (x,))
    assert torch.autograd.gradgradcheck(seeded, (x,))


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.usefixtures("eager_path")
def test_retain_graph_second_backward_is_exact(variant):
    x0 = torch.randn(50)

    def twice(layer):
        def run(x):
            y = layer(x)
            y.backward(torch.ones_like(y), retain_graph=True)
            return y

        return run

    assert_identical(step(twice(torch_dropout(0.3)), x0), step(twice(pmdrop.PackedDropout(0.3, variant=variant)), x0))


class _Ops(TorchDispatchMode):
    """Weak references to what the ops run while it is active return: pmdrop's packed masks (uint8 of ``packed``
    bytes) and decoded masks (its table gathers, ``index_select``)."""

    def __init__(self, packed: int = 0) -> None:
        super().__init__()
        self.packed_bytes, self.packed, self.decoded = packed, [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket is torch.ops.aten.index_select:
            self.decoded.append(weakref.ref(out))
        elif isinstance(out, torch.Tensor) and out.dtype == torch.uint8 and out.numel() == self.packed_bytes:
            self.packed.append(weakref.ref(out))
        return out


@pytest.mark.parametrize(("variant", "backward_unpacks"), [("pmdrop", 1), ("pmdrop_nocache", 2)])
def test_cache_semantics_over_two_backward_passes(variant, backward_unpacks):
    x = torch.randn(40, requires_grad=True)
    with _Ops(packed=5) as forward:
        y = pmdrop.dropout(x, 0.3, variant=variant)
    (packed,) = [ref for ref in forward.packed if ref() is not None]
    with _Ops() as first:
        y.backward(torch.ones_like(y), retain_graph=True)
    (decoded,) = first.decoded
    assert (decoded() is not None) == (variant == "pmdrop")  # kept for the next pass by the caching variant only
    with _Ops() as second:
        y.backward(torch.ones_like(y))
    assert len(first.decoded) + len(second.decoded) == backward_unpacks
    # graph released: the packed mask and anything decoded from it are freed (y and its node live on)
    assert packed() is None and decoded() is None and all(ref() is None for ref in second.decoded)


def test_no_cache_is_kept_after_an_ordinary_backward():
    x = torch.randn(40, requires_grad=True)
    y = pmdrop.dropout(x, 0.3, variant="pmdrop")
    with _Ops() as backward:
        y.sum().backward()
    (decoded,) = backward.decoded
    assert decoded() is None


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.usefixtures("eager_path")
def test_hooks_around_the_call_see_what_pmdrop_keeps_not_torchs_mask(variant):
    """The packed mask (or seeded's generator state) passes through enclosing saved-tensor hooks, as a Function's
    saved tensor would, and whatever they hand back is what backward decodes."""
    kept = []

    def pack(t):
        kept.append(t)
        return t.clone()  # backward must read what the enclosing hook returns, not the original

    x0 = torch.randn(6, 50)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        candidate = step(pmdrop.PackedDropout(0.3, variant=variant), x0)
    assert_identical(step(torch_dropout(0.3), x0), candidate, variant)
    masks = [t for t in kept if t.shape == x0.shape]
    assert not masks or variant == "baseline", "torch's own mask reached the enclosing hooks"
    spec = pmdrop.get_variant(variant)
    if spec.masks_per_byte is not None:
        assert [t.dtype for t in kept] == [torch.uint8] and kept[0].numel() == -(-x0.numel() // spec.masks_per_byte)


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_with_saved_tensor_hooks_disabled_the_call_is_still_torchs(variant):
    """Where hooks are disabled (as AOTAutograd does while tracing), the call saves its mask through a Function, also
    for a layout whose hooks-based plan exists already."""
    x0 = torch.randn(6, 50)
    step(pmdrop.PackedDropout(0.3, variant=variant), x0)  # the layout's plan, outside the block
    with torch.autograd.graph.disable_saved_tensors_hooks("disabled here"):
        candidate = step(pmdrop.PackedDropout(0.3, variant=variant), x0)
    assert_identical(step(torch_dropout(0.3), x0), candidate, variant)


def test_a_tensor_saved_beside_the_mask_is_passed_on_as_it_is():
    """Torch's dropout saves one tensor, its mask: a tensor of another dtype or shape saved inside the call is handed
    back untouched, through enclosing hooks as well."""
    import pmdrop.functional as functional

    x = torch.randn(4, 8)
    plan = functional._CallPlan(x, 0.5, False, pmdrop.get_variant("pmdrop"))
    noise = torch.empty_like(x).bernoulli_(0.5).div_(0.5)
    record = plan.pack(noise)
    assert record[0].dtype == torch.uint8 and torch.equal(plan.restore(record), noise)
    enclosing = (lambda t: ("outer", t), lambda kept: kept[1])
    for other in (torch.randn(4, 8, dtype=torch.float64), torch.randn(3)):  # the mask's shape, and another shape
        assert plan.restore(plan.pack(other)) is other and plan.restore(plan.pack(other, enclosing)) is other


def test_in_place_path_drops_its_cached_mask_when_the_graph_is_released(monkeypatch):
    """The in-place Function's node lives as long as its output; the cached mask must not."""
    import pmdrop.functional as functional

    monkeypatch.setattr(functional, "_IN_PLACE_FROM_BYTES", 0)
    x = torch.randn(40, requires_grad=True)
    y = pmdrop.dropout(x, 0.3, variant="pmdrop")
    assert type(y.grad_fn).__name__ == "_InPlaceNoiseFnBackward"
    with _Ops() as first:
        y.backward(torch.ones_like(y), retain_graph=True)
    (decoded,) = first.decoded
    assert decoded() is not None
    y.backward(torch.ones_like(y))
    assert y.grad_fn is not None and decoded() is None  # y keeps its node alive, not the mask


def test_large_inputs_take_the_in_place_path_small_ones_the_hooks(monkeypatch):
    import pmdrop.functional as functional

    monkeypatch.setattr(functional, "_IN_PLACE_FROM_BYTES", 4 * 1000)
    small = pmdrop.dropout(torch.randn(999, requires_grad=True), 0.3)
    large = pmdrop.dropout(torch.randn(1000, requires_grad=True), 0.3)
    assert type(small.grad_fn).__name__ == "MulBackward0"  # torch's own node
    assert type(large.grad_fn).__name__ == "_InPlaceNoiseFnBackward"
