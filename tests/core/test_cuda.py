"""The exact CUDA route (native_dropout's mask packed, unpacked into native_dropout_backward). Skips without a GPU."""

import pytest
import torch

import pmdrop

from .helpers import EXACT_VARIANTS, assert_identical, step

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", [(3, 5, 7), (64, 33), (4, 12, 128, 128)], ids=str)
@pytest.mark.parametrize("inplace", [False, True], ids=["fused_route", "noise_route"])
def test_matches_nn_dropout_on_cuda(variant, dtype, shape, inplace):
    x0 = torch.randn(shape, dtype=dtype, device="cuda")
    for p in (0.1, 0.5):
        reference = step(torch.nn.Dropout(p, inplace=inplace), x0, inplace=inplace)
        candidate = step(pmdrop.PackedDropout(p, inplace, variant), x0, inplace=inplace)
        assert_identical(reference, candidate, f"{variant} p={p}")


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_cuda_odd_layouts_and_unaligned_views(variant):
    base = torch.randn(5, 6, 7, 9, device="cuda")
    for prepare in (lambda x: x.transpose(1, 3), lambda x: x.reshape(-1)[1:].view(-1)):
        reference = step(torch.nn.Dropout(0.3), base, prepare=prepare)
        assert_identical(reference, step(pmdrop.PackedDropout(0.3, variant=variant), base, prepare=prepare), variant)


@pytest.mark.parametrize(
    ("variant", "bytes_per_element"), [("baseline", 1.0), ("pmdrop", 1 / 8), ("pmdrop_4bit", 1 / 4)]
)
def test_cuda_saved_mask_bytes(variant, bytes_per_element):
    x = torch.randn(4096, 64, device="cuda", requires_grad=True)
    with pmdrop.track_saved_tensors() as saved:
        pmdrop.dropout(x, 0.1, variant=variant)
    assert saved.mask_bytes / x.numel() == bytes_per_element


def test_cuda_create_graph_double_backward_matches():
    x0 = torch.randn(33, 17, dtype=torch.float64, device="cuda")

    def grads(layer):
        torch.manual_seed(0)
        x = x0.clone().requires_grad_()
        (g,) = torch.autograd.grad(layer(x).pow(2).sum(), x, create_graph=True)
        g.sum().backward()
        return g.detach(), x.grad

    reference, candidate = grads(torch.nn.Dropout(0.3)), grads(pmdrop.PackedDropout(0.3))
    assert all(torch.equal(a, b) for a, b in zip(reference, candidate, strict=True))
