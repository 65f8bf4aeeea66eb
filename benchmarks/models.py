"""The tiny offline models the benchmarks and the tests build: one builder per model family, sized by its arguments.

``tiny_bert`` defaults to TinyBERT-4L's shape (hidden 312, 12 heads, intermediate 1200); ``TinyBert`` is BERT's dropout
sites in plain torch, for costs measured without transformers.
"""

from __future__ import annotations

import torch
from torch import nn


def tiny_bert(hidden: int = 312, layers: int = 4, heads: int = 12, intermediate: int = 1200, vocab: int = 1000,
              positions: int = 128, attn: str = "eager", seed: int | None = None) -> nn.Module:
    """A randomly initialised ``BertForSequenceClassification`` with a 2-way head (``seed``: torch's seed first)."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate, max_position_embeddings=positions, num_labels=2, attn_implementation=attn,
    )
    if seed is not None:
        torch.manual_seed(seed)
    return BertForSequenceClassification(config)


def tiny_longformer() -> nn.Module:
    from transformers import LongformerConfig, LongformerForSequenceClassification

    config = LongformerConfig(
        vocab_size=500, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        max_position_embeddings=258, attention_window=[16, 16], type_vocab_size=1, layer_norm_eps=1e-5, num_labels=3,
        pad_token_id=1,
    )
    return LongformerForSequenceClassification(config)


def tiny_vit(drop: float = 0.1) -> nn.Module:
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


def _eager_attention(module: nn.Module, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    # As transformers' eager_attention_forward: the attention-probability dropout is a functional call.
    probs = nn.functional.softmax(torch.matmul(q, k.transpose(-1, -2)) * module.scaling, dim=-1)
    probs = nn.functional.dropout(probs, p=module.dropout_p, training=module.training)
    return torch.matmul(probs, v)


class _TinyBertLayer(nn.Module):
    def __init__(self, hidden: int, heads: int, p: float) -> None:
        super().__init__()
        self.heads, self.scaling, self.dropout_p = heads, (hidden // heads) ** -0.5, p
        self.qkv = nn.ModuleList(nn.Linear(hidden, hidden) for _ in range(3))
        self.attn_out, self.attn_drop, self.attn_norm = nn.Linear(hidden, hidden), nn.Dropout(p), nn.LayerNorm(hidden)
        self.up, self.down = nn.Linear(hidden, 2 * hidden), nn.Linear(2 * hidden, hidden)
        self.out_drop, self.out_norm = nn.Dropout(p), nn.LayerNorm(hidden)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, s, d = h.shape
        q, k, v = (lin(h).view(b, s, self.heads, -1).transpose(1, 2) for lin in self.qkv)
        a = _eager_attention(self, q, k, v).transpose(1, 2).reshape(b, s, d)
        h = self.attn_norm(h + self.attn_drop(self.attn_out(a)))
        return self.out_norm(h + self.out_drop(self.down(nn.functional.gelu(self.up(h)))))


class TinyBert(nn.Module):
    """BERT's dropout sites in plain torch (embeddings, 3 per layer, one functional; classifier):
    4 layers, hidden 64, 2 labels, for the routing cost without transformers."""

    def __init__(self, layers: int = 4, hidden: int = 64, heads: int = 4, vocab: int = 1000, p: float = 0.1) -> None:
        super().__init__()
        self.words, self.positions = nn.Embedding(vocab, hidden), nn.Embedding(64, hidden)
        self.embed_norm, self.embed_drop = nn.LayerNorm(hidden), nn.Dropout(p)
        self.layers = nn.ModuleList(_TinyBertLayer(hidden, heads, p) for _ in range(layers))
        self.pooler, self.head_drop, self.classifier = nn.Linear(hidden, hidden), nn.Dropout(p), nn.Linear(hidden, 2)

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        h = self.embed_drop(self.embed_norm(self.words(input_ids) + self.positions(positions)))
        for layer in self.layers:
            h = layer(h)
        logits = self.classifier(self.head_drop(torch.tanh(self.pooler(h[:, 0]))))
        return nn.functional.cross_entropy(logits, labels)
