"""Model builders, one per ``model.family`` (a registry). Every model is called as ``model(**batch)`` and
returns an object with ``.loss`` and ``.logits``.

Built from config offline (``pretrained: false``); ``pretrained: true`` loads the hub checkpoint, and offline
fails with one sentence saying what to do. ``attn_implementation``: ``eager`` applies attention-probability
dropout as a separate call (a stored mask, which pmdrop packs); ``sdpa`` runs it inside the fused kernel.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace

import torch
from omegaconf import DictConfig
from torch import nn

from .data import TaskData

MODELS: dict[str, Callable[[DictConfig, TaskData], nn.Module]] = {}


def register(family: str):
    def add(builder):
        MODELS[family] = builder
        return builder

    return add


def build_model(model: DictConfig, data: TaskData) -> nn.Module:
    if model.family not in MODELS:
        raise ValueError(f"unknown model.family {model.family!r}; valid: {', '.join(MODELS)}")
    return MODELS[model.family](model, data)


def _offline_error(model: DictConfig, error: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load {model.checkpoint!r} from the hub ({type(error).__name__}): set model.pretrained=false to "
        "build it from config, or point model.checkpoint at a local directory holding the checkpoint"
    )


def _hf_head(data: TaskData, families: dict[str, type]):
    if data.task not in families:
        raise ValueError(f"this model family has no head for task {data.task!r}; valid: {', '.join(families)}")
    return families[data.task]


def _hf_model(model: DictConfig, data: TaskData, config, heads: dict[str, type]) -> nn.Module:
    head = _hf_head(data, heads)
    if model.pretrained:
        try:
            return head.from_pretrained(model.checkpoint, config=config, attn_implementation=model.attn_implementation)
        except OSError as error:
            raise _offline_error(model, error) from error
    return head(config)


def _bert_config(model: DictConfig, data: TaskData):
    from transformers import BertConfig

    fields = dict(
        hidden_size=model.hidden_size, num_hidden_layers=model.num_hidden_layers,
        num_attention_heads=model.num_attention_heads, intermediate_size=model.intermediate_size,
        hidden_dropout_prob=model.hidden_dropout_prob, attention_probs_dropout_prob=model.attention_probs_dropout_prob,
        max_position_embeddings=max(model.max_position_embeddings, data.seq_len or 0),
        num_labels=max(data.num_labels, 1), attn_implementation=model.attn_implementation,
    )
    if model.pretrained:
        return BertConfig.from_pretrained(model.checkpoint, num_labels=fields["num_labels"])
    return BertConfig(vocab_size=data.vocab_size, **fields)


@register("bert")
def bert(model: DictConfig, data: TaskData) -> nn.Module:
    from transformers import BertForMaskedLM, BertForSequenceClassification

    heads = {"pair_classification": BertForSequenceClassification, "classification": BertForSequenceClassification,
             "mlm": BertForMaskedLM}
    try:
        config = _bert_config(model, data)
    except OSError as error:
        raise _offline_error(model, error) from error
    return _hf_model(model, data, config, heads)


@register("longformer")
def longformer(model: DictConfig, data: TaskData) -> nn.Module:
    """Longformer-Base; the position table grows to ``seq_len + 2`` (ids start at pad + 1 = 2) past 4098."""
    from transformers import LongformerConfig, LongformerForMaskedLM, LongformerForSequenceClassification

    heads = {"classification": LongformerForSequenceClassification,
             "pair_classification": LongformerForSequenceClassification, "mlm": LongformerForMaskedLM}
    config = LongformerConfig(
        vocab_size=max(model.vocab_size, data.vocab_size or 0), hidden_size=model.hidden_size,
        num_hidden_layers=model.num_hidden_layers, num_attention_heads=model.num_attention_heads,
        intermediate_size=model.intermediate_size, hidden_dropout_prob=model.hidden_dropout_prob,
        attention_probs_dropout_prob=model.attention_probs_dropout_prob, type_vocab_size=1,
        layer_norm_eps=1e-5, max_position_embeddings=max(model.max_position_embeddings, (data.seq_len or 0) + 2),
        attention_window=model.attention_window, num_labels=max(data.num_labels, 1), pad_token_id=0,
    )
    if model.pretrained:
        try:
            return _hf_head(data, heads).from_pretrained(model.checkpoint, num_labels=config.num_labels)
        except OSError as error:
            raise _offline_error(model, error) from error
    return _hf_head(data, heads)(config)


class VisionClassifier(nn.Module):
    """A timm image classifier with the text models' calling convention."""

    def __init__(self, net: nn.Module, label_smoothing: float) -> None:
        super().__init__()
        self.net, self.label_smoothing = net, label_smoothing

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None) -> SimpleNamespace:
        logits = self.net(pixel_values)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels,
                                                                      label_smoothing=self.label_smoothing)
        return SimpleNamespace(loss=loss, logits=logits)


@register("vit")
def vit(model: DictConfig, data: TaskData) -> nn.Module:
    """timm ViT; its dropout rates default to 0, so they come from config. ``eager`` turns fused attention off."""
    import timm

    if data.task != "image_classification":
        raise ValueError(f"model.family=vit needs an image dataset, got task {data.task!r}")
    previous = timm.layers.use_fused_attn()
    timm.layers.set_fused_attn(model.attn_implementation == "sdpa")  # read when the Attention modules are built
    try:
        net = timm.create_model(
            model.arch, pretrained=model.pretrained, num_classes=data.num_labels, img_size=data.image_size,
            drop_rate=model.drop_rate, pos_drop_rate=model.drop_rate, attn_drop_rate=model.drop_rate,
            proj_drop_rate=model.drop_rate, **dict(model.get("arch_overrides") or {}),
        )
    except (OSError, RuntimeError) as error:
        if not model.pretrained:
            raise
        raise _offline_error(model, error) from error
    finally:
        timm.layers.set_fused_attn(previous)
    return VisionClassifier(net, model.label_smoothing)
