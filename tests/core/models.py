"""Tiny offline builds of the paper's model families for the core's model-level tests."""

import torch
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    LongformerConfig,
    LongformerForSequenceClassification,
)


def tinybert_classifier(attn: str = "eager", layers: int = 4) -> BertForSequenceClassification:
    """TinyBERT-4L's shape (hidden 312, 12 heads, intermediate 1200) with a 2-way head."""
    config = BertConfig(
        vocab_size=1000, hidden_size=312, num_hidden_layers=layers, num_attention_heads=12, intermediate_size=1200,
        max_position_embeddings=128, num_labels=2, attn_implementation=attn,
    )
    return BertForSequenceClassification(config)


def tiny_longformer() -> LongformerForSequenceClassification:
    config = LongformerConfig(
        vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=258, attention_window=[16, 16], type_vocab_size=1, layer_norm_eps=1e-5, num_labels=3,
        pad_token_id=1,
    )
    return LongformerForSequenceClassification(config)


def tiny_vit(drop: float = 0.1) -> torch.nn.Module:
    import timm

    timm.layers.set_fused_attn(False)
    try:
        return timm.create_model(
            "vit_base_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=2,
            num_classes=10, drop_rate=drop, pos_drop_rate=drop, attn_drop_rate=drop, proj_drop_rate=drop,
        )
    finally:
        timm.layers.set_fused_attn(True)


def token_batch(batch: int = 4, seq: int = 32, vocab: int = 1000, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(2, vocab, (batch, seq), generator=g),
        "attention_mask": torch.ones(batch, seq, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch,), generator=g),
    }
