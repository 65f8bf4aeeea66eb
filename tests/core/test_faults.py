import pytest
import torch

import pmdrop


def grads(variant, fraction=None, n=20_000):
    torch.manual_seed(0)
    x = torch.randn(n, requires_grad=True)
    if fraction is None:
        y = pmdrop.dropout(x, 0.3, variant=variant)
        log = None
    else:
        with pmdrop.inject_bitflips(fraction, seed=1) as log:
            y = pmdrop.dropout(x, 0.3, variant=variant)
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad, log


def test_flips_change_the_backward_only_at_the_requested_rate():
    clean_y, clean_grad, _ = grads("pmdrop")
    y, grad, log = grads("pmdrop", 0.05)
    assert torch.equal(y, clean_y)  # the forward applied the true mask
    changed = (grad != clean_grad).float().mean().item()
    assert abs(changed - 0.05) < 4 * (0.05 * 0.95 / 20_000) ** 0.5  # binomial bound
    assert log.masks == 1 and abs(log.bits / (20_000 // 8 * 8) - 0.05) < 0.01


def test_zero_fraction_and_unpacked_variants_are_untouched():
    assert torch.equal(grads("pmdrop", 0.0)[1], grads("pmdrop")[1])
    for variant in ("baseline", "seeded"):
        _, grad, log = grads(variant, 0.5)
        assert torch.equal(grad, grads(variant)[1]) and log.masks == 0


def test_bad_fraction_is_named():
    with pytest.raises(ValueError, match=r"1\.5"), pmdrop.inject_bitflips(1.5):
        pass
