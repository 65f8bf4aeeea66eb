"""The one-line swap on whole models: every dropout site routed, trajectories bit-identical."""

import copy

import pytest
import torch

import pmdrop

from .helpers import EXACT_VARIANTS
from .models import tiny_longformer, tiny_vit, tinybert_classifier, token_batch


def dropout_calls(model, inputs):
    model.train()
    with pmdrop.track_saved_tensors(model.parameters()) as saved:
        out = model(**inputs) if isinstance(inputs, dict) else model(inputs)
    del out
    return saved


@pytest.mark.parametrize("layers", [1, 2])
def test_every_bert_site_goes_through_pmdrop(layers):
    model = tinybert_classifier(layers=layers)
    before = dropout_calls(model, token_batch())
    pmdrop.convert(model, "pmdrop")
    after = dropout_calls(model, token_batch())
    sites = 1 + 3 * layers + 1  # BertModel: embeddings + 3 per layer; the classifier head adds 1
    assert before.dropout_calls == {"torch": sites}
    assert after.dropout_calls == {"pmdrop": sites}
    assert after.mask_bytes < before.mask_bytes / 8 * 1.01


def test_every_longformer_site_goes_through_pmdrop():
    model = tiny_longformer()
    batch = {"input_ids": torch.randint(2, 500, (2, 64)), "attention_mask": torch.ones(2, 64, dtype=torch.long)}
    before = dropout_calls(model, batch)
    pmdrop.convert(model, "pmdrop")
    after = dropout_calls(model, batch)
    assert set(before.dropout_calls) == {"torch"} and set(after.dropout_calls) == {"pmdrop"}
    assert after.dropout_calls["pmdrop"] == before.dropout_calls["torch"] >= 1 + 3 * 2


def test_every_unfused_vit_site_goes_through_pmdrop():
    model = tiny_vit()
    images = torch.randn(2, 3, 32, 32)
    before = dropout_calls(model, images)
    pmdrop.convert(model, "pmdrop")
    after = dropout_calls(model, images)
    assert set(after.dropout_calls) == {"pmdrop"}
    assert after.dropout_calls["pmdrop"] == before.dropout_calls["torch"] >= 4 * 2


def test_replaced_modules_keep_their_settings_and_state_dict():
    model = tinybert_classifier(layers=1)
    keys = list(model.state_dict())
    originals = {n: (m.p, m.inplace) for n, m in model.named_modules() if type(m) is torch.nn.Dropout}
    pmdrop.convert(model, "pmdrop_4bit")
    replaced = {n: m for n, m in model.named_modules() if isinstance(m, pmdrop.PackedDropout)}
    assert set(replaced) == set(originals)
    assert all((m.p, m.inplace) == originals[n] and m.variant == "pmdrop_4bit" for n, m in replaced.items())
    assert "variant='pmdrop_4bit'" in repr(model)
    assert list(model.state_dict()) == keys
    pmdrop.convert(model, "seeded")
    assert {m.variant for m in replaced.values()} == {"seeded"}


def test_convert_rejects_unknown_variant_and_warns_about_fused_attention_dropout():
    with pytest.raises(ValueError, match="valid: baseline"):
        pmdrop.convert(torch.nn.Sequential(torch.nn.Dropout()), "fast")
    with pytest.warns(UserWarning, match="runs inside the fused kernel and is not packed"):
        pmdrop.convert(tinybert_classifier(attn="sdpa", layers=1), "pmdrop")


def test_dropout_mode_routes_functional_code_outside_modules():
    x = torch.randn(4096, requires_grad=True)
    with pmdrop.track_saved_tensors() as saved, pmdrop.dropout_mode("pmdrop"):
        torch.nn.functional.dropout(x, 0.1, training=True)
        assert pmdrop.active_variant() == "pmdrop"
    assert saved.dropout_calls == {"pmdrop": 1} and saved.mask_bytes == 4096 // 8
    assert pmdrop.active_variant() is None


def train(model, steps: int, checkpointing: bool = False) -> torch.nn.Module:
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch.manual_seed(1234)
    for step in range(steps):
        loss = model(**token_batch(seed=step)).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return model


@pytest.fixture(scope="module")
def tinybert_and_baseline_after_20_steps():
    torch.manual_seed(0)
    initial = tinybert_classifier()
    return initial, train(copy.deepcopy(initial), 20)


@pytest.mark.parametrize("variant", EXACT_VARIANTS)
def test_20_step_tinybert_training_is_bit_identical(variant, tinybert_and_baseline_after_20_steps):
    initial, baseline = tinybert_and_baseline_after_20_steps
    trained = train(pmdrop.convert(copy.deepcopy(initial), variant), 20)
    for (name, a), b in zip(baseline.named_parameters(), trained.parameters(), strict=True):
        assert torch.equal(a, b), f"{variant}: parameter {name} differs after 20 steps"
    assert any(not torch.equal(a, b) for a, b in zip(initial.parameters(), trained.parameters(), strict=True))


@pytest.mark.parametrize("variant", ["pmdrop", "seeded"])
def test_training_with_hf_gradient_checkpointing_is_bit_identical(variant):
    """Checkpointing re-runs layers during backward, outside the root forward: they must still route."""
    torch.manual_seed(0)
    initial = tinybert_classifier(layers=2)
    baseline = train(copy.deepcopy(initial), 3, checkpointing=True)
    trained = train(pmdrop.convert(copy.deepcopy(initial), variant), 3, checkpointing=True)
    assert all(torch.equal(a, b) for a, b in zip(baseline.parameters(), trained.parameters(), strict=True))
