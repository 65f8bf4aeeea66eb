"""torch.func transforms and forward-mode AD: every exact variant against F.dropout, bit for bit, same RNG state.

Under a transform pmdrop runs torch's own dropout ops inside a Function whose vmap rule torch generates,
so vmap's randomness modes behave as for F.dropout: "error" raises torch's error, "different" and
"same" draw torch's masks. The mask is still saved packed when a gradient is taken.
"""

import pytest
import torch
import torch.autograd.forward_ad as fwAD
from torch.func import functional_call, grad, jacfwd, jvp, vjp, vmap

import pmdrop

from .helpers import EXACT_VARIANTS
from .routes import ROUTES, bits_equal, route, skip_baseline_on_native, torch_reference

P = 0.3


def tangent_like(x: torch.Tensor) -> torch.Tensor:
    t = torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    t[0] = -0.0  # a -0 tangent: tells x_t * noise from formulas that add a +0 term
    return t


TRANSFORMS = {
    "grad": lambda f, x: grad(lambda t: (f(t) * t).sum())(x),
    "vjp": lambda f, x: vjp(f, x)[1](torch.ones_like(x))[0],
    "vmap_grad_different": lambda f, x: vmap(grad(lambda t: f(t).pow(2).sum()), randomness="different")(x),
    "vmap_grad_same": lambda f, x: vmap(grad(lambda t: f(t).pow(2).sum()), randomness="same")(x),
    "vmap_different": lambda f, x: vmap(f, randomness="different", in_dims=1)(x),
    "vmap_same": lambda f, x: vmap(f, randomness="same")(x),
    "grad_of_vmap": lambda f, x: grad(lambda t: vmap(f, randomness="different")(t).pow(2).sum())(x),
    "jvp": lambda f, x: jvp(f, (x,), (tangent_like(x),)),
    "jacfwd_same": lambda f, x: jacfwd(f, randomness="same")(x[0]),
    "jacfwd_different": lambda f, x: jacfwd(f, randomness="different")(x[0]),
    "inplace_grad": lambda f, x: grad(lambda t: f(t * 1, inplace=True).pow(2).sum())(x),
}


def outcome(transform, layer, x):
    torch.manual_seed(0)
    out = transform(layer, x)
    return (out if isinstance(out, tuple) else (out,)), torch.get_rng_state()


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("route_name", ROUTES)
@pytest.mark.parametrize("name", TRANSFORMS)
def test_transform_matches_f_dropout(variant, route_name, name):
    skip_baseline_on_native(variant, route_name)
    x = torch.randn(5, 7)
    transform = TRANSFORMS[name]

    def ours(t, inplace=False):
        return pmdrop.dropout(t, P, inplace=inplace, variant=variant)

    reference = outcome(transform, lambda t, inplace=False: torch_reference(route_name, t, P, inplace), x)
    with route(route_name):
        candidate = outcome(transform, ours, x)
    assert len(reference[0]) == len(candidate[0])
    assert all(bits_equal(a, b) for a, b in zip(reference[0], candidate[0], strict=True))
    assert torch.equal(reference[1], candidate[1])


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_vmap_randomness_error_is_torchs_error(variant):
    def per_sample(layer):
        return vmap(grad(lambda t: layer(t).sum()))(torch.randn(3, 4))

    with pytest.raises(RuntimeError) as torch_error:
        per_sample(lambda t: torch.nn.functional.dropout(t, P))
    with pytest.raises(RuntimeError) as ours:
        per_sample(lambda t: pmdrop.dropout(t, P, variant=variant))
    assert str(ours.value) == str(torch_error.value)


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_functional_call_training_matches(variant):
    def train(dropout):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(6, 16), dropout, torch.nn.Linear(16, 3))
        params = {k: v.detach() for k, v in model.named_parameters()}
        inputs, targets = torch.randn(8, 6), torch.randn(8, 3)

        def loss(params):
            return (functional_call(model, params, (inputs,)) - targets).pow(2).mean()

        for _ in range(3):
            grads = grad(loss)(params)
            params = {k: v - 0.1 * grads[k] for k, v in params.items()}
        return params, torch.get_rng_state()

    reference, candidate = train(torch.nn.Dropout(P)), train(pmdrop.PackedDropout(P, variant=variant))
    assert all(torch.equal(reference[0][k], candidate[0][k]) for k in reference[0])
    assert torch.equal(reference[1], candidate[1])


@pytest.mark.usefixtures("eager_path")
@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("route_name", ROUTES)
@pytest.mark.parametrize("requires_grad", [True, False])
def test_forward_ad_on_dual_tensors_matches(variant, route_name, requires_grad):
    skip_baseline_on_native(variant, route_name)
    x = torch.randn(6, 9, requires_grad=requires_grad)

    def primal_and_tangent(layer):
        torch.manual_seed(0)
        with fwAD.dual_level():
            y = fwAD.unpack_dual(layer(fwAD.make_dual(x, tangent_like(x))))
        return y.primal.detach(), y.tangent, torch.get_rng_state()

    reference = primal_and_tangent(lambda t: torch_reference(route_name, t, P))
    with route(route_name):
        candidate = primal_and_tangent(lambda t: pmdrop.dropout(t, P, variant=variant))
    assert all(bits_equal(a, b) for a, b in zip(reference, candidate, strict=True))


@pytest.mark.parametrize("variant", ["pmdrop", "pmdrop_4bit", "seeded"])
def test_packs_under_vmap_when_a_gradient_is_taken(variant, monkeypatch):
    """Inside vmap(grad(...)) x reads requires_grad=False, yet the call saves the packed mask and nothing else.

    torch.func.grad refuses saved_tensors_hooks, so the probe records the packed mask the Function gets
    (its setup_context saves that tensor alone); plain autograd through a vmapped call is measured with
    track_saved_tensors.
    """
    import pmdrop.functional as functional

    k = pmdrop.get_variant(variant).masks_per_byte or 8  # seeded saves the packed mask under transforms
    saved = []
    setup_context = functional._TransformPackedFn.setup_context

    def recording_setup_context(ctx, inputs, output):
        saved.append((inputs[2].dtype, inputs[2].shape))
        setup_context(ctx, inputs, output)

    monkeypatch.setattr(functional._TransformPackedFn, "setup_context", staticmethod(recording_setup_context))
    x = torch.randn(4, 37)
    torch.manual_seed(0)
    ours = vmap(grad(lambda t: pmdrop.dropout(t, P, variant=variant).pow(2).sum()), randomness="different")(x)
    torch.manual_seed(0)
    reference = vmap(grad(lambda t: torch.nn.functional.dropout(t, P).pow(2).sum()), randomness="different")(x)
    assert torch.equal(ours, reference)
    assert saved and set(saved) == {(torch.uint8, torch.Size([-(-37 // k)]))}  # per sample, as vmap shows it

    # Plain autograd through a vmapped call (x requires grad outside vmap) packs the whole batch.
    leaf = x.clone().requires_grad_()
    with pmdrop.track_saved_tensors() as ledger:
        vmap(lambda t: pmdrop.dropout(t, P, variant=variant), randomness="different")(leaf).sum().backward()
    assert ledger.mask_bytes == 4 * -(-37 // k)
