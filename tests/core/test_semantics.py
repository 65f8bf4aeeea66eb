"""nn.Dropout's contract kept: argument checks, identity cases, refused dtypes, nothing saved without grad."""

import pytest
import torch

import pmdrop

from .helpers import EXACT_VARIANTS
from .routes import ROUTES, bits_equal, route, skip_baseline_on_native, torch_reference


@pytest.mark.parametrize("p", [-0.1, 1.5])
def test_probability_out_of_range_is_a_value_error_naming_it(p):
    with pytest.raises(ValueError, match=str(p)):
        pmdrop.PackedDropout(p)
    with pytest.raises(ValueError, match=str(p)):
        pmdrop.dropout(torch.ones(3), p)


def test_unknown_variant_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown dropout variant 'pmdropp'; valid: baseline, pmdrop"):
        pmdrop.dropout(torch.ones(3), 0.1, variant="pmdropp")


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("case", ["p0", "eval", "empty"])
def test_identity_cases_return_what_torch_returns(variant, case):
    x = torch.randn(0 if case == "empty" else 9, requires_grad=True)
    p, training = (0.0, True) if case == "p0" else (0.5, case != "eval")
    reference = torch.nn.functional.dropout(x, p, training)
    with pmdrop.track_saved_tensors() as saved:
        got = pmdrop.dropout(x, p, training, variant=variant)
    assert (got is x) == (reference is x)
    assert torch.equal(got, reference)
    assert saved.mask_bytes == 0


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_p_one_gives_zeros_and_zero_grad(variant):
    x = torch.randn(17, requires_grad=True)
    y = pmdrop.dropout(x, 1.0, variant=variant)
    y.sum().backward()
    assert torch.equal(y, torch.zeros(17)) and torch.equal(x.grad, torch.zeros(17))


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_and_bool_inputs_are_refused_as_torch_refuses_them(variant, dtype):
    x = torch.ones(8, dtype=dtype)
    with pytest.raises(RuntimeError) as torch_error:
        torch.nn.functional.dropout(x, 0.5)
    with pytest.raises(RuntimeError) as ours:
        pmdrop.dropout(x, 0.5, variant=variant)
    assert str(ours.value) == str(torch_error.value)


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_no_grad_input_saves_nothing_and_matches(variant):
    x = torch.randn(64)
    torch.manual_seed(3)
    reference = torch.nn.functional.dropout(x, 0.3)
    torch.manual_seed(3)
    with pmdrop.track_saved_tensors() as saved:
        got = pmdrop.dropout(x, 0.3, variant=variant)
    assert torch.equal(got, reference) and saved.total_bytes == 0


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_inplace_on_a_leaf_that_requires_grad_is_refused_like_torch(variant):
    with pytest.raises(RuntimeError, match="leaf Variable"):
        torch.nn.functional.dropout(torch.ones(4, requires_grad=True), 0.5, inplace=True)
    with pytest.raises(RuntimeError, match="leaf Variable"):
        pmdrop.dropout(torch.ones(4, requires_grad=True), 0.5, inplace=True, variant=variant)


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_inplace_returns_the_input_tensor(variant):
    x = torch.randn(10, requires_grad=True).clone()
    assert pmdrop.dropout(x, 0.5, inplace=True, variant=variant) is x


def test_module_keeps_p_inplace_and_a_readable_repr():
    layer = pmdrop.PackedDropout(0.25, inplace=True, variant="pmdrop_4bit")
    assert isinstance(layer, torch.nn.Dropout)
    assert (layer.p, layer.inplace) == (0.25, True)
    assert repr(layer) == "PackedDropout(p=0.25, inplace=True, variant='pmdrop_4bit')"


def test_packed_variant_knob_registers_each_density(monkeypatch):
    from pmdrop import variants

    # Registrations are process-wide: keep them out of later tests that compare the registry with the configs.
    monkeypatch.setattr(variants, "_REGISTRY", dict(variants._REGISTRY))
    for k in pmdrop.VALID_MASKS_PER_BYTE:
        spec = pmdrop.packed_variant(k, cache_unpacked=False)
        x = torch.randn(1000, requires_grad=True)
        with pmdrop.track_saved_tensors() as saved:
            pmdrop.dropout(x, 0.2, variant=spec.name)
        assert saved.mask_bytes == 1000 // k
    with pytest.raises(ValueError, match="masks_per_byte=16"):
        pmdrop.packed_variant(16)


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("route_name", ROUTES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("p", [0.99998, 0.99999, 1 - 2**-24, 1 - 2**-30])
def test_p_close_to_one_gives_torchs_zeros_not_nan(variant, route_name, dtype, p):
    """fp16's 1 / (1 - p) overflows to inf: torch's noise is then {0, inf} (0 and 1 divided by 1 - p), never nan."""
    skip_baseline_on_native(variant, route_name)
    x0 = torch.randn(4000, dtype=dtype)

    def run(layer):
        torch.manual_seed(0)
        x = x0.clone().requires_grad_()
        y = layer(x)
        y.backward(torch.ones_like(y))
        return y.detach(), x.grad, torch.get_rng_state()

    reference = run(lambda x: torch_reference(route_name, x, p))
    with route(route_name):
        candidate = run(lambda x: pmdrop.dropout(x, p, variant=variant))
    assert all(bits_equal(a, b) for a, b in zip(reference, candidate, strict=True))


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("inplace", [False, True], ids=["native_route", "noise_route"])
def test_meta_tensors_run_forward_and_backward_and_save_cuda_sized_masks(variant, inplace):
    """Memory is planned on meta with CUDA's semantics: the native route out of place, nothing read from data."""
    saved = []

    def pack(t):
        saved.append((t.dtype, t.numel(), t.device.type))
        return t

    x = torch.randn(37, 11, device="meta", requires_grad=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = pmdrop.dropout(x.clone() if inplace else x, 0.3, inplace=inplace, variant=variant)
    y.sum().backward()
    assert x.grad.shape == x.shape and x.grad.device.type == "meta"
    spec = pmdrop.get_variant(variant)
    if spec.masks_per_byte is not None:
        assert saved == [(torch.uint8, -(-37 * 11 // spec.masks_per_byte), "meta")]
    elif variant == "seeded":
        assert saved == [(torch.uint8, 16, "meta")]


def test_use_route_and_variant_storage_refuse_bad_values_in_one_line():
    with pytest.raises(ValueError, match=r"^unknown dropout route 'fused'; valid: noise, native$"), \
            pmdrop.use_route("fused"):
        pass
    with pytest.raises(ValueError, match=r"storage='bits'; valid: torch, packed, regenerated$"):
        pmdrop.DropoutVariant("odd", "bits", "")
    with pytest.raises(ValueError, match=r"masks_per_byte goes with storage='packed', only with it$"):
        pmdrop.DropoutVariant("odd", "regenerated", "", masks_per_byte=8)


def test_compiled_path_honours_a_variants_own_apply():
    """torch.compile runs a registered variant's ``apply`` (it is the one source of its behaviour), not torch's."""
    calls = []

    def doubled(x, p, inplace, variant):
        calls.append(variant.name)
        return torch.nn.functional.dropout(x, p, True, inplace) * 2

    spec = pmdrop.DropoutVariant("doubled", "torch", "torch's dropout, times two", apply=doubled)
    torch._dynamo.reset()
    x = torch.randn(4, 8, requires_grad=True)
    torch.manual_seed(0)
    y = torch.compile(lambda t: pmdrop.dropout(t, 0.5, variant=spec), backend="eager")(x)
    torch.manual_seed(0)
    assert calls == ["doubled"] and torch.equal(y, torch.nn.functional.dropout(x, 0.5) * 2)
