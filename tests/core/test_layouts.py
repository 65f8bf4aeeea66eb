"""Output and gradient memory layouts equal torch's, on both routes, for every exact variant.

Values alone are not enough: the op after dropout runs its own backward on the layout it receives and
rounds differently on another one (the Linear test below).
"""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import pmdrop

from .helpers import EXACT_VARIANTS
from .routes import ROUTES, bits_equal, route, skip_baseline_on_native, torch_reference


@st.composite
def strided_inputs(draw):
    """(x0, prepare, grad_layout): a base tensor, the view dropout gets, and how the upstream gradient is laid out."""
    sizes = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    ndim = len(sizes)
    permutation = draw(st.permutations(range(ndim)))
    step_dim = draw(st.none() | st.integers(0, ndim - 1))
    expand = draw(st.booleans())
    channels_last = ndim == 4 and draw(st.booleans())
    base = list(sizes)
    if step_dim is not None:
        base[step_dim] *= 2

    def prepare(leaf):
        x = leaf.contiguous(memory_format=torch.channels_last) if channels_last else leaf * 1
        if step_dim is not None:
            x = x.narrow(step_dim, 1, sizes[step_dim] * 2 - 1)[(slice(None),) * step_dim + (slice(None, None, 2),)]
        x = x.permute(permutation)
        if expand:
            x = x.expand(*(3 if s == 1 else -1 for s in x.shape))
        return x

    grad_layout = draw(st.sampled_from(["contiguous", "permuted", "expanded", "transposed"]))
    return torch.randn(base), prepare, grad_layout


def upstream_grad(y: torch.Tensor, layout: str, seed: int) -> torch.Tensor:
    g = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.dtype)
    if layout == "expanded":  # what y.sum().backward() hands back
        return torch.ones((), dtype=y.dtype).expand(y.shape)
    if layout == "permuted" and g.dim() > 1:
        return g.permute(*range(g.dim() - 1, -1, -1)).contiguous().permute(*range(g.dim() - 1, -1, -1))
    if layout == "transposed" and g.dim() > 1:
        return g.transpose(0, -1).contiguous().transpose(0, -1)
    return g


def run(layer, x0, prepare, grad_layout, inplace=False):
    torch.manual_seed(0)
    leaf = x0.clone().requires_grad_()
    x = prepare(leaf)
    if inplace:
        x = x.clone()
    y = layer(x)
    (grad,) = torch.autograd.grad(y, x, upstream_grad(y, grad_layout, 1))
    return y.detach(), grad, torch.get_rng_state()


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("route_name", ROUTES)
@settings(max_examples=40, deadline=None)
@given(case=strided_inputs(), inplace=st.booleans())
@pytest.mark.usefixtures("eager_path")
def test_output_and_input_grad_have_torchs_strides(variant, route_name, case, inplace):
    skip_baseline_on_native(variant, route_name)
    x0, prepare, grad_layout = case
    reference = run(lambda x: torch_reference(route_name, x, 0.4, inplace), x0, prepare, grad_layout, inplace)
    with route(route_name):
        candidate = run(lambda x: pmdrop.dropout(x, 0.4, inplace=inplace, variant=variant), x0, prepare, grad_layout,
                        inplace)
    for what, a, b in zip(("output", "input grad"), reference[:2], candidate[:2], strict=False):
        assert bits_equal(a, b), f"{what} values differ"
        assert a.stride() == b.stride(), f"{what} strides {b.stride()} != torch's {a.stride()}"
    assert torch.equal(reference[2], candidate[2])


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("route_name", ROUTES)
@pytest.mark.usefixtures("eager_path")
def test_column_major_input_row_major_grad_keeps_the_previous_layers_grads(variant, route_name):
    """A Linear's output seen transposed (column-major) feeds dropout, and the op after it hands back a
    row-major gradient: the Linear's parameter gradients reduce over what dropout's backward returns,
    and its bias gradient rounds differently on the other layout."""
    skip_baseline_on_native(variant, route_name)

    def parameter_grads(drop):
        torch.manual_seed(0)
        first, second = torch.nn.Linear(17, 33), torch.nn.Linear(1500, 9)
        x = first(torch.randn(1500, 17)).t()  # (33, 1500), column-major
        second(drop(x).contiguous()).pow(2).sum().backward()  # contiguous: the gradient arrives row-major
        return first.weight.grad, first.bias.grad

    reference = parameter_grads(lambda x: torch_reference(route_name, x, 0.3))
    with route(route_name):
        candidate = parameter_grads(lambda x: pmdrop.dropout(x, 0.3, variant=variant))
    assert all(torch.equal(a, b) for a, b in zip(reference, candidate, strict=True))
