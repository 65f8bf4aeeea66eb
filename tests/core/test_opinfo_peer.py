"""PyTorch's own OpInfo sample inputs for nn.functional.dropout as a peer suite, and tensor kinds pmdrop does not pack.

Every sample, every exact variant: the same output, input gradient and RNG state as F.dropout from the
same seed. Tensor kinds torch's dropout accepts but pmdrop cannot pack (nested) go to torch unchanged.
"""

import pytest
import torch

pytest.importorskip("expecttest")  # torch.testing._internal imports it
from torch.testing._internal.common_methods_invocations import op_db

import pmdrop

from .helpers import EXACT_VARIANTS
from .routes import bits_equal

DROPOUT_OPINFO = next(op for op in op_db if op.name == "nn.functional.dropout" and op.variant_test_name == "")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


def run(fn, sample, requires_grad):
    torch.manual_seed(0)
    x = sample.input.detach().clone().requires_grad_(requires_grad)
    kwargs = dict(sample.kwargs)
    inplace = kwargs.get("inplace", False)
    y = fn(x.clone() if inplace and requires_grad else x, *sample.args, **kwargs)
    grad = None
    if requires_grad and y.requires_grad:
        (grad,) = torch.autograd.grad(y, x, torch.ones_like(y))
    return y.detach(), grad, torch.get_rng_state()


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_every_opinfo_sample_matches_f_dropout(variant, dtype):
    samples = list(DROPOUT_OPINFO.sample_inputs("cpu", dtype, requires_grad=False))
    assert samples

    def ours(x, *args, **kwargs):
        return pmdrop.dropout(x, *args, **kwargs, variant=variant)

    for sample in samples:
        for requires_grad in (True, False):
            reference = run(torch.nn.functional.dropout, sample, requires_grad)
            candidate = run(ours, sample, requires_grad)
            assert bits_equal(reference[0], candidate[0]), sample
            assert (reference[1] is None) == (candidate[1] is None), sample
            assert reference[1] is None or bits_equal(reference[1], candidate[1]), sample
            assert torch.equal(reference[2], candidate[2]), sample


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("layout", [torch.strided, torch.jagged], ids=["nested_strided", "nested_jagged"])
def test_nested_tensors_go_to_torchs_dropout(variant, layout):
    def run_nested(fn):
        torch.manual_seed(0)
        nt = torch.nested.nested_tensor([torch.randn(3, 4), torch.randn(5, 4)], layout=layout, requires_grad=True)
        y = fn(nt)
        return [t.detach() for t in y.unbind()], torch.get_rng_state()

    reference = run_nested(lambda t: torch.nn.functional.dropout(t, 0.3))
    candidate = run_nested(lambda t: pmdrop.dropout(t, 0.3, variant=variant))
    assert all(torch.equal(a, b) for a, b in zip(reference[0], candidate[0], strict=True))
    assert torch.equal(reference[1], candidate[1])
