"""The analytic memory model against bytes measured by pmdrop.track_saved_tensors on tiny models (CPU).

Tolerance: none. The model lists every tensor the installed transformers/timm code saves for backward, so
predicted and measured bytes agree exactly (deduplication by storage included); a non-zero difference means
the model or the library changed and is reported with the per-item breakdown.
"""

import pytest
import timm
import torch
import torch.nn.functional as F
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    LongformerConfig,
    LongformerForMaskedLM,
    LongformerForSequenceClassification,
)

import pmdrop
from scripts.memory_model import Shapes, Storage, mask_storage, predict

VARIANTS = ("baseline", "pmdrop", "pmdrop_4bit", "seeded")


def measured(model: torch.nn.Module, variant: str, inputs: dict) -> tuple[int, int]:
    pmdrop.convert(model, variant)
    with pmdrop.track_saved_tensors(model.parameters()) as saved:
        model(**inputs)
    return saved.activation_bytes, saved.mask_bytes


def check(model, shapes: Shapes, inputs: dict, attention="eager", dtype=torch.float32, variants=VARIANTS) -> None:
    e = torch.empty((), dtype=dtype).element_size()
    for variant in variants:
        p = predict(shapes, Storage(e, mask_storage(variant, "cpu"), attention))
        got = measured(model, variant, inputs)
        assert got == (p.activation_bytes, p.mask_bytes), (variant, got, p.breakdown)


def test_bert_layer_is_korthikanti_plus_layernorm_statistics():
    s, b, h, a = 512, 8, 1024, 16
    shapes = Shapes("bert", b, s, h, a, 4 * h, 1)
    p = predict(shapes, Storage(2, mask_storage("baseline", "cuda"), "eager", stat_bytes=4))
    layernorm_stats = 2 * 2 * b * s * 4
    assert p.layer_activation_bytes + p.layer_mask_bytes - layernorm_stats == s * b * h * (34 + 5 * a * s / h)
    assert p.layer_mask_bytes == 2 * s * b * h + a * s * s * b  # Korthikanti's mask share


def test_mask_bytes_scale_with_storage_per_element():
    shapes = Shapes("bert", 8, 128, 64, 4, 256, 2)
    per_layer = {v: predict(shapes, Storage(4, mask_storage(v, "cuda"))).layer_mask_bytes
                 for v in ("baseline", "pmdrop", "pmdrop_4bit")}
    assert per_layer["baseline"] == 8 * per_layer["pmdrop"] == 4 * per_layer["pmdrop_4bit"]
    assert predict(shapes, Storage(4, mask_storage("seeded", "cuda"))).layer_mask_bytes == 3 * 16
    assert predict(shapes, Storage(4, mask_storage("pmdrop_fused", "cuda"))).layer_mask_bytes == per_layer["pmdrop"]
    assert predict(shapes, Storage(4, mask_storage("seeded_fused", "cuda"))).layer_mask_bytes == 0


def test_bad_choices_name_the_valid_ones():
    with pytest.raises(ValueError, match="modelled: baseline, pmdrop"):
        mask_storage("pmdrop_k2", "cuda")
    with pytest.raises(ValueError, match="valid: eager, sdpa_math, sdpa_fused"):
        Storage(4, mask_storage("pmdrop", "cpu"), "flash")
    with pytest.raises(ValueError, match="valid: bert, vit, longformer"):
        predict(Shapes("gpt", 1, 8, 8, 2, 16, 1), Storage(4, mask_storage("pmdrop", "cpu")))


def _bert(cls, attention="eager", **extra):
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64, attn_implementation=attention, **extra)
    return cls(config).train()


def test_bert_classifier_eager_exact():
    ids = torch.randint(0, 100, (3, 13))
    inputs = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "labels": torch.randint(0, 2, (3,))}
    check(_bert(BertForSequenceClassification), Shapes("bert", 3, 13, 32, 4, 64, 2, vocab=100, max_positions=64),
          inputs)


@pytest.mark.filterwarnings("ignore:attention uses 'sdpa'")
def test_bert_sdpa_on_cpu_keeps_the_attention_mask_as_an_activation():
    inputs = {"input_ids": torch.randint(0, 100, (2, 16)), "labels": torch.randint(0, 2, (2,))}
    shapes = Shapes("bert", 2, 16, 32, 4, 64, 2, vocab=100, max_positions=64, token_type_ids=False)
    check(_bert(BertForSequenceClassification, "sdpa"), shapes, inputs, "sdpa_math", variants=("baseline", "pmdrop"))


def test_bert_masked_lm_bf16_exact():
    ids = torch.randint(0, 100, (2, 16))
    model = _bert(BertForMaskedLM).to(torch.bfloat16)
    inputs = {"input_ids": ids, "token_type_ids": torch.zeros_like(ids), "labels": torch.randint(0, 100, (2, 16))}
    check(model, Shapes("bert", 2, 16, 32, 4, 64, 2, head="mlm", vocab=100, max_positions=64), inputs,
          dtype=torch.bfloat16)


class _ImageClassifier(torch.nn.Module):
    def __init__(self, model: torch.nn.Module, label_smoothing: float) -> None:
        super().__init__()
        self.model, self.label_smoothing = model, label_smoothing

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(self.model(images), labels, label_smoothing=self.label_smoothing)


@pytest.mark.parametrize(("head_p", "label_smoothing"), [(0.0, 0.0), (0.1, 0.1)])
def test_vit_eager_exact(head_p, label_smoothing):
    fused = timm.layers.use_fused_attn()
    timm.layers.set_fused_attn(False)
    try:
        torch.manual_seed(0)
        vit = timm.create_model("vit_base_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                                depth=2, num_heads=4, mlp_ratio=2.0, num_classes=5, drop_rate=head_p,
                                proj_drop_rate=0.1, attn_drop_rate=0.1, pos_drop_rate=0.1)
    finally:
        timm.layers.set_fused_attn(fused)
    shapes = Shapes("vit", 3, 0, 32, 4, 64, 2, num_labels=5, image_size=32, patch_size=8, classifier_p=head_p,
                    pos_p=0.1, label_smoothing=label_smoothing)
    inputs = {"images": torch.randn(3, 3, 32, 32), "labels": torch.randint(0, 5, (3,))}
    check(_ImageClassifier(vit.train(), label_smoothing), shapes, inputs)


@pytest.mark.parametrize(("batch", "seq", "window", "head"), [(3, 40, 16, "cls"), (1, 64, 8, "mlm"), (1, 32, 8, "cls")])
def test_longformer_exact(batch, seq, window, head):
    torch.manual_seed(0)
    config = LongformerConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=48, max_position_embeddings=seq + 40, num_labels=3,
                              attention_window=window)
    model = (LongformerForSequenceClassification if head == "cls" else LongformerForMaskedLM)(config).train()
    labels = torch.randint(0, 3, (batch,)) if head == "cls" else torch.randint(0, 100, (batch, seq))
    shapes = Shapes("longformer", batch, seq, 32, 4, 48, 2, head=head, num_labels=3, vocab=100, window=window)
    check(model, shapes, {"input_ids": torch.randint(3, 100, (batch, seq)), "labels": labels})
