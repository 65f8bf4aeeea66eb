"""Robustness: bit flips in packed masks while training (trainer.bitflip_fraction), FGSM after it (fgsm_epsilon)."""

import dataclasses
import json
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

import pmdrop
from experiments.data import TaskData
from experiments.robustness import BitFlips, fgsm_metrics
from experiments.train import check_config, run_training

from .cfg import CONF, TINY_BERT, compose_run

SHORT = ["trainer.steps=3", "trainer.batch_size=8", "trainer.warmup_steps=1", "trainer.log_every=1",
         "trainer.measure_step=1", "trainer.eval_batches=2", "trainer.eval_batch_size=32", "trainer.threads=1",
         "trainer.device=cpu"]
# A 2-block ViT-Tiny on 16-px digits (patch 4): a second per run.
TINY_VIT = ["model=vit_tiny", "dataset=digits", "dataset.image_size=16", "+model.arch_overrides.depth=2",
            "trainer.lr=1e-3"]


def train(*overrides: str) -> tuple[dict, list]:
    cfg = compose_run(*SHORT, *overrides)
    check_config(cfg)
    logged = []
    return dataclasses.asdict(run_training(cfg, lambda step, values: logged.append((step, values)))), logged


def flipped_dropout(variant: str, fraction: float | None = None, n: int = 20_000):
    """y and x's gradient of one dropout call on a fresh input of n elements, the call inside ``BitFlips.inject``
    when ``fraction`` is given."""
    torch.manual_seed(0)
    x = torch.randn(n, requires_grad=True)
    flips = None if fraction is None else BitFlips(fraction, seed=1, variant=variant)
    with nullcontext() if flips is None else flips.inject():
        y = pmdrop.dropout(x, 0.3, variant=variant)
    y.backward(torch.ones_like(y))
    return y.detach(), x.grad, flips


@pytest.mark.parametrize("n", [20_000, 3_000_000])  # from 8 MiB, the noise route's Function that saves in place
def test_flips_change_the_backward_only_at_the_requested_rate(n):
    clean_y, clean_grad, _ = flipped_dropout("pmdrop", n=n)
    y, grad, flips = flipped_dropout("pmdrop", 0.05, n=n)
    assert torch.equal(y, clean_y)  # the forward applied the true mask
    changed = (grad != clean_grad).float().mean().item()
    assert abs(changed - 0.05) < 4 * (0.05 * 0.95 / n) ** 0.5  # binomial bound
    assert flips.masks == 1 and abs(flips.bits / (n // 8 * 8) - 0.05) < 0.01


def test_flips_reach_the_hooks_around_them_and_the_bytes_are_still_counted():
    torch.manual_seed(0)
    x = torch.randn(4096, requires_grad=True)
    flips = BitFlips(1.0, seed=0, variant="pmdrop_4bit")
    with pmdrop.track_saved_tensors() as saved, flips.inject():
        y = pmdrop.dropout(x, 0.3, variant="pmdrop_4bit")
    assert saved.mask_bytes == 4096 // 4 and saved.mask_tensors == 1 and flips.bits == 8 * 4096 // 4
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad != 0, y == 0)  # every bit flipped: backward applied the complement of the mask


@pytest.mark.parametrize(("fraction", "variant", "message"), [
    (1.5, "pmdrop", r"bit-flip fraction has to be in \(0, 1\], got 1\.5"),
    (0.0, "pmdrop", r"got 0\.0"),
    (0.05, "seeded", r"needs a variant that stores packed masks, not 'seeded'; valid: pmdrop, "),
    (0.05, "baseline", r"not 'baseline'"),
])
def test_a_bad_fraction_or_a_variant_without_packed_masks_is_named(fraction, variant, message):
    with pytest.raises(ValueError, match=message):
        BitFlips(fraction, seed=0, variant=variant)


def test_bit_flips_corrupt_the_backward_only():
    clean, clean_log = train(*TINY_BERT, "variant=pmdrop")
    flipped, flipped_log = train(*TINY_BERT, "variant=pmdrop", "trainer.bitflip_fraction=0.05")
    assert clean["bitflips"] is None
    flips = flipped["bitflips"]
    # every training forward's packed masks (1 + 3 per layer + the classifier's = 5 calls) were corrupted
    assert flips["fraction"] == 0.05 and flips["masks"] == 5 * 3
    masked_elements = clean["saved_mask_bytes"] * 8 * 3  # bits saved per step (one bit per element), 3 steps
    assert 0.03 * masked_elements < flips["bits"] < 0.07 * masked_elements
    # the first forward used the true masks: the same loss; its backward read corrupted ones: different weights
    assert clean_log[0][1]["loss"] == flipped_log[0][1]["loss"]
    assert clean["param_sha256"] != flipped["param_sha256"]


def test_no_flips_leave_the_run_bit_identical_to_the_baseline():
    baseline, _ = train(*TINY_BERT, "variant=baseline")
    packed, _ = train(*TINY_BERT, "variant=pmdrop_4bit", "trainer.bitflip_fraction=0.0")
    assert packed["param_sha256"] == baseline["param_sha256"] and packed["bitflips"] is None


class SumClassifier(torch.nn.Module):
    """Two classes, logits (sum x, -sum x): FGSM moves the sum of an image of class 0 by exactly -ε per pixel."""

    def forward(self, pixel_values, labels=None):
        total = pixel_values.flatten(1).sum(1)
        logits = torch.stack([total, -total], dim=1)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        return SimpleNamespace(loss=loss, logits=logits)


def test_fgsm_flips_exactly_the_images_within_epsilon_of_the_boundary():
    sums = torch.tensor([0.5, 1.5, 2.5, 3.5, 5.0, 7.0, 9.0, 11.0])  # class 0 needs a positive sum
    pixels = (sums / 4).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).contiguous()  # 4 pixels each
    data = TaskData("image_classification", train={}, eval={"pixel_values": pixels, "labels": torch.zeros(8).long()},
                    num_labels=2, image_size=2)
    trainer = OmegaConf.create({"fgsm_epsilon": 1.0, "eval_batch_size": 3, "eval_batches": None})
    metrics = fgsm_metrics(SumClassifier(), data, trainer, torch.device("cpu"), nullcontext, clean_accuracy=1.0)
    # ε = 1 on 4 pixels lowers each sum by 4: those at 0.5 to 3.5 cross zero
    assert metrics == {"fgsm_accuracy": 0.5, "fgsm_drop": 0.5}


def test_the_imagenet_attack_is_one_255th_of_the_pixel_range_for_the_checkpoint_s_normalisation():
    cfg = compose_run("experiment=robustness_fgsm_imagenet")
    kept = json.loads((Path(CONF) / "checkpoints" / cfg.model.checkpoint / "config.json").read_text())
    (std,) = set(kept["pretrained_cfg"]["std"])
    assert cfg.trainer.fgsm_epsilon * std == pytest.approx(1 / 255, rel=1e-3)


def test_fgsm_through_the_harness_on_a_small_vit():
    untouched, _ = train(*TINY_VIT, "variant=pmdrop", "trainer.fgsm_epsilon=0.0")
    assert untouched["metrics"]["fgsm_accuracy"] == untouched["metrics"]["accuracy"]
    assert untouched["metrics"]["fgsm_drop"] == 0.0
    attacked, _ = train(*TINY_VIT, "variant=pmdrop", "trainer.fgsm_epsilon=0.5")
    assert attacked["metrics"]["accuracy"] == untouched["metrics"]["accuracy"]
    assert attacked["metrics"]["fgsm_drop"] == pytest.approx(
        attacked["metrics"]["accuracy"] - attacked["metrics"]["fgsm_accuracy"])
    # exact variants train the same weights, so they are attacked alike
    baseline, _ = train(*TINY_VIT, "variant=baseline", "trainer.fgsm_epsilon=0.5")
    assert baseline["metrics"] == attacked["metrics"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["variant=baseline", "trainer.bitflip_fraction=0.05"],
         r"trainer.bitflip_fraction=0.05 needs a variant that stores packed masks, not 'baseline'; valid: pmdrop,"),
        (["variant=seeded", "trainer.bitflip_fraction=0.05"], r"not 'seeded'; valid: pmdrop, pmdrop_nocache"),
        (["variant=pmdrop", "trainer.bitflip_fraction=1.5"], r"trainer.bitflip_fraction=1.5 must be between 0 and 1"),
        (["trainer.fgsm_epsilon=0.1"],
         r"trainer.fgsm_epsilon=0.1 needs an image task, not dataset.task='pair_classification'"),
        ([*TINY_VIT, "trainer.fgsm_epsilon=-0.1"], r"trainer.fgsm_epsilon=-0.1 must be >= 0"),
    ],
)
def test_bad_robustness_settings_fail_with_one_line(overrides, message):
    cfg = compose_run(*SHORT, *overrides)
    with pytest.raises(ValueError, match=message) as error:
        check_config(cfg)
    assert "\n" not in str(error.value)
