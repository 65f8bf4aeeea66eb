"""Model builders, one per ``model.family`` (a registry). Every model is called as ``model(**batch)`` and
returns an object with ``.loss`` and ``.logits``.

Built from config offline (``pretrained: false``); ``pretrained: true`` loads ``model.checkpoint`` (a hub id or a
local directory), and offline fails with one sentence saying what to do. Whatever built it, a model leaves
``build_model`` in training mode (``from_pretrained`` returns one in eval mode: dropout would be off). The
architecture of each checkpoint the paper's suites load is kept in ``conf/checkpoints/<hub id>/config.json``, so a
checkpoint's position count is known before any work (``checkpoint_config``). ``extend_positions: true`` gives a
checkpoint more positions than it was trained with by copying its learned table (``extend_position_table``).
``attn_implementation``: ``eager`` applies attention-probability dropout as a separate call (a stored mask, which
pmdrop packs); ``sdpa`` runs it inside the fused kernel. Each family declares its config keys (a dataclass checked
by ``check_model_config``), the tasks it has heads for, its attention implementations and the positions a sequence
length needs.
"""

from __future__ import annotations

import copy
import json
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlsplit

import torch
from omegaconf import MISSING, DictConfig, open_dict
from torch import nn

from .data import TaskData
from .schema import check_choice, check_range, typed

Builder = Callable[[DictConfig, TaskData], nn.Module]


@dataclass
class ModelSchema:
    """The keys every model config has."""

    name: str = MISSING
    family: str = MISSING
    checkpoint: str = MISSING  # hub id or local directory, read when pretrained
    pretrained: bool = False
    attn_implementation: str = "eager"


@dataclass
class BertSchema(ModelSchema):
    hidden_size: int = MISSING
    num_hidden_layers: int = MISSING
    num_attention_heads: int = MISSING
    intermediate_size: int = MISSING
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512  # grown from config to the dataset's seq_len when that is longer
    type_vocab_size: int = 2
    # pretrained: a seq_len beyond the checkpoint's positions grows its learned table by copying it (else refused)
    extend_positions: bool = False


@dataclass
class LongformerSchema(BertSchema):
    vocab_size: int = 50265
    attention_window: int = 512
    type_vocab_size: int = 1


@dataclass
class VitSchema(ModelSchema):
    arch: str = MISSING  # a timm model name
    drop_rate: float = 0.1  # timm's drop_rate, proj_drop_rate, attn_drop_rate and pos_drop_rate (timm defaults: 0)
    label_smoothing: float = 0.0
    arch_overrides: dict[str, Any] | None = None  # further timm.create_model kwargs: embed_dim, depth, patch_size...


Positions = Callable[[DictConfig, int], int]


@dataclass(frozen=True)
class ModelFamily:
    build: Builder
    schema: type[ModelSchema]
    tasks: tuple[str, ...]  # dataset tasks it has a head for
    attention: tuple[str, ...]  # attn_implementation choices
    positions: Positions | None = None  # rows of the position table a seq_len needs (None: no learned table)


MODELS: dict[str, ModelFamily] = {}
# Sizes a model is built with: zero or negative fails deep inside transformers (or builds an empty model).
_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings",
          "type_vocab_size", "vocab_size", "attention_window")


def register(family: str, schema: type[ModelSchema], tasks: tuple[str, ...], attention: tuple[str, ...],
             positions: Positions | None = None):
    def add(build: Builder) -> Builder:
        MODELS[family] = ModelFamily(build, schema, tasks, attention, positions)
        return build

    return add


def _family(name: str) -> ModelFamily:
    check_choice("model.family", name, MODELS)
    return MODELS[name]


def check_model_config(model: DictConfig, task: str) -> None:
    """One-line ValueError for a wrong key, type or choice of the model config, or a task it has no head for."""
    family = _family(model.family)
    model = typed(family.schema, model, "model")
    check_choice("model.attn_implementation", model.attn_implementation, family.attention)
    _check_task(model.family, task)
    for key in ("hidden_dropout_prob", "attention_probs_dropout_prob", "drop_rate", "label_smoothing"):
        if key in model:
            check_range(f"model.{key}", model[key], 0.0, 1.0)
    for key in _SIZES:
        if key in model:
            check_range(f"model.{key}", model[key], 1)


# Files whose presence in the Hugging Face cache means a checkpoint was downloaded before (transformers', timm's).
_CHECKPOINT_FILES = ("config.json", "model.safetensors", "pytorch_model.bin")
_TRUE = ("1", "on", "yes", "true")
_HUB_PROBE_TIMEOUT_S = 5.0


def _hub_offline() -> bool:
    return any(os.environ.get(name, "").lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cache() -> Path:
    from huggingface_hub import constants

    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    return Path(os.environ["HF_HOME"]) / "hub" if os.environ.get("HF_HOME") else Path(constants.HF_HUB_CACHE)


def _cached(checkpoint: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(checkpoint, name, cache_dir=_hub_cache()), str)
                   for name in _CHECKPOINT_FILES)
    except ValueError:  # not a valid repository id (HFValidationError): nothing of it can be cached
        return False


def _hub_unreachable() -> str | None:
    """Why the hub (or the HTTPS proxy in front of it) cannot be reached, in a few words; None when it answers."""
    from huggingface_hub import constants

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    address = urlsplit(proxy or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT)
    where = (address.hostname or "", address.port or (443 if address.scheme == "https" else 80))
    try:
        socket.create_connection(where, timeout=_HUB_PROBE_TIMEOUT_S).close()
    except OSError as error:
        return f"{where[0]}:{where[1]} cannot be reached ({type(error).__name__}: {error})"
    return None


@cache
def _checkpoint_problem(checkpoint: str) -> str | None:
    if Path(checkpoint).exists() or _cached(checkpoint):
        return None
    if _hub_offline():
        return "the hub is off (HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set)"
    return _hub_unreachable()


def check_checkpoint_available(model: DictConfig) -> None:
    """``model.pretrained``: the checkpoint is a local path, in the Hugging Face cache, or the hub answers within a few
    seconds; otherwise one line, at once, once per process (loading would retry an unreachable hub for ~30 s per run,
    then fail). Resources, not values: run once per sweep before its first run, not by the config checks."""
    if not model.pretrained:
        return
    problem = _checkpoint_problem(str(model.checkpoint))
    if problem is not None:
        raise ValueError(f"model.checkpoint={model.checkpoint!r} is neither a local path nor in the Hugging Face cache "
                         f"({_hub_cache()}), and {problem}: set model.pretrained=false to build it from config, or "
                         "point model.checkpoint at a local directory holding the checkpoint")


def _check_task(family: str, task: str) -> None:
    if task not in MODELS[family].tasks:
        raise ValueError(f"model.family={family} has no head for dataset.task={task!r}; valid: "
                         f"{', '.join(MODELS[family].tasks)}")


def build_model(model: DictConfig, data: TaskData) -> nn.Module:
    """The model, in training mode whatever built it: transformers' ``from_pretrained`` returns it in eval mode, in
    which every dropout is off (a pretrained run would train without dropout and store no masks)."""
    family = _family(model.family)
    _check_task(model.family, data.task)
    return family.build(model, data).train()


def _offline_error(model: DictConfig, error: Exception) -> RuntimeError:
    return RuntimeError(
        f"could not load {model.checkpoint!r} ({type(error).__name__}; offline?): set model.pretrained=false to "
        "build it from config, or point model.checkpoint at a local directory holding the checkpoint"
    )


# The architecture (config.json) of each checkpoint the paper's suites load, kept at conf/checkpoints/<hub id>/.
KEPT_CHECKPOINTS = Path(__file__).resolve().parents[1] / "conf" / "checkpoints"


def checkpoint_config(checkpoint: str) -> tuple[dict[str, Any], Path] | None:
    """A checkpoint's ``config.json`` and where it was read: a local checkpoint's own, else the copy kept in
    ``conf/checkpoints/<hub id>/``; None when there is neither (a hub checkpoint nobody kept)."""
    for path in (Path(checkpoint) / "config.json", KEPT_CHECKPOINTS / checkpoint / "config.json"):
        if path.is_file():
            return json.loads(path.read_text()), path
    return None


# config.json keys of a transformers checkpoint that are model.* keys of the harness (the architecture it builds).
_ARCHITECTURE_KEYS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                      "max_position_embeddings", "type_vocab_size", "vocab_size", "hidden_dropout_prob",
                      "attention_probs_dropout_prob", "attention_window")


def checkpoint_architecture(model: DictConfig) -> DictConfig:
    """The model config that builds, from config, what ``model`` loads from its checkpoint: the checkpoint's
    architecture (``checkpoint_config``; for timm, its ``architecture`` must be ``model.arch``) with
    ``pretrained: false``, so a pretrained model can be built at its real shape without its weights (on the meta
    device, for a memory plan). ValueError (one line) when the checkpoint's config is not at hand."""
    found = checkpoint_config(str(model.checkpoint))
    if found is None:
        raise ValueError(f"model.checkpoint={model.checkpoint!r}: no config.json at hand (neither a local checkpoint "
                         f"nor kept in {KEPT_CHECKPOINTS}/<hub id>/): keep a copy of its config.json there")
    config, path = found
    architecture = copy.deepcopy(model)
    with open_dict(architecture):
        architecture.pretrained = False
        if "architecture" in config:  # a timm checkpoint
            if config["architecture"] != model.arch:
                raise ValueError(f"model.arch={model.arch!r} but {path} is a {config['architecture']!r} checkpoint")
            return architecture
        for key in _ARCHITECTURE_KEYS:
            if key in config and key in architecture:
                value = config[key]
                architecture[key] = max(value) if isinstance(value, list) else value  # per-layer windows
    return architecture


def _check_positions(model: DictConfig, available: int, needed: int) -> None:
    """More positions than the checkpoint has only by ``model.extend_positions``; else say so, instead of failing on
    an index deep inside the model."""
    if needed > available and not model.get("extend_positions", False):
        raise ValueError(f"{model.checkpoint!r} has {available} positions but dataset.seq_len needs {needed}: set "
                         f"model.extend_positions=true (its learned table copied to {needed} rows), use a shorter "
                         "dataset.seq_len, or model.pretrained=false (the table is then sized from seq_len)")


def check_checkpoint_positions(model: DictConfig, seq_len: int | None) -> None:
    """A pretrained model's checkpoint has the positions ``seq_len`` needs (or ``model.extend_positions``), read
    from its config.json (``checkpoint_config``) before any work; one line otherwise. A checkpoint whose config is
    not at hand is checked when it is loaded."""
    family = _family(model.family)
    found = checkpoint_config(str(model.checkpoint)) if model.pretrained and family.positions and seq_len else None
    if found is not None and "max_position_embeddings" in found[0]:
        _check_positions(model, found[0]["max_position_embeddings"], family.positions(model, seq_len))


def extend_position_table(net: nn.Module, positions: int) -> str:
    """Grow a transformers model's learned position table to ``positions`` rows by copying it, as Longformer's
    conversion from RoBERTa did: the rows below the first position id (``padding_idx + 1`` where ids start after
    the padding index, as in RoBERTa and Longformer; 0 for BERT) stay, and new row ``offset + i`` is old row
    ``offset + i mod (old rows - offset)``. The buffers sized by the table (``position_ids``, ``token_type_ids``)
    grow with it and ``config.max_position_embeddings`` says the new size. Returns a line for the run's notes."""
    embeddings = net.base_model.embeddings
    old = embeddings.position_embeddings
    rows, width = old.weight.shape
    offset = 0 if old.padding_idx is None else old.padding_idx + 1
    device = old.weight.device
    index = torch.cat([torch.arange(offset, device=device),
                       offset + torch.arange(positions - offset, device=device) % (rows - offset)])
    table = nn.Embedding(positions, width, padding_idx=old.padding_idx, device=device, dtype=old.weight.dtype)
    with torch.no_grad():
        table.weight.copy_(old.weight[index])
    embeddings.position_embeddings = table
    if "position_ids" in embeddings._buffers:
        embeddings.position_ids = torch.arange(positions, device=device).expand((1, -1))
    if "token_type_ids" in embeddings._buffers:
        embeddings.token_type_ids = torch.zeros((1, positions), dtype=torch.long, device=device)
    net.config.max_position_embeddings = positions
    return (f"model.extend_positions: the checkpoint's {rows} learned positions were copied to {positions} "
            f"(rows {offset}..{rows - 1} repeated from row {rows})")


def _hf_model(model: DictConfig, data: TaskData, config_class, heads: dict[str, type], needed_positions: int,
              **from_config) -> nn.Module:
    """A transformers model: ``config_class(**from_config)`` and a fresh head, or the checkpoint's (its position
    table grown by copying when ``model.extend_positions`` and the seq_len needs it)."""
    head = heads[data.task]
    num_labels = max(data.num_labels, 1)
    if not model.pretrained:
        return head(config_class(num_labels=num_labels, attn_implementation=model.attn_implementation, **from_config))
    try:
        config = config_class.from_pretrained(model.checkpoint, num_labels=num_labels)
        _check_positions(model, config.max_position_embeddings, needed_positions)
        net = head.from_pretrained(model.checkpoint, config=config, attn_implementation=model.attn_implementation)
    except OSError as error:
        raise _offline_error(model, error) from error
    if needed_positions > config.max_position_embeddings:
        data.notes.append(extend_position_table(net, needed_positions))
    return net


def _text_heads(sequence_classification: type, masked_lm: type) -> dict[str, type]:
    return {"pair_classification": sequence_classification, "classification": sequence_classification,
            "mlm": masked_lm}


TEXT_TASKS = ("pair_classification", "classification", "mlm")


def _bert_positions(model: DictConfig, seq_len: int) -> int:
    return seq_len


def _longformer_positions(model: DictConfig, seq_len: int) -> int:
    """Longformer pads inputs to a multiple of the attention window and its position ids start at pad + 1 = 2."""
    window = model.attention_window
    return -(-seq_len // window) * window + 2


@register("bert", BertSchema, TEXT_TASKS, attention=("eager", "sdpa"), positions=_bert_positions)
def bert(model: DictConfig, data: TaskData) -> nn.Module:
    """BERT of any size; the position table grows to the dataset's seq_len when built from config."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    seq_len = _bert_positions(model, data.seq_len or 0)
    return _hf_model(
        model, data, BertConfig, _text_heads(BertForSequenceClassification, BertForMaskedLM), seq_len,
        vocab_size=data.vocab_size, hidden_size=model.hidden_size, num_hidden_layers=model.num_hidden_layers,
        num_attention_heads=model.num_attention_heads, intermediate_size=model.intermediate_size,
        hidden_dropout_prob=model.hidden_dropout_prob, attention_probs_dropout_prob=model.attention_probs_dropout_prob,
        max_position_embeddings=max(model.max_position_embeddings, seq_len), type_vocab_size=model.type_vocab_size,
    )


@register("longformer", LongformerSchema, TEXT_TASKS, attention=("eager",), positions=_longformer_positions)
def longformer(model: DictConfig, data: TaskData) -> nn.Module:
    """Longformer (no sdpa path in transformers); a table built from config holds ``padded seq_len + 2``
    positions."""
    from transformers import LongformerConfig, LongformerForMaskedLM, LongformerForSequenceClassification

    window = model.attention_window
    positions = _longformer_positions(model, data.seq_len or 0)
    return _hf_model(
        model, data, LongformerConfig, _text_heads(LongformerForSequenceClassification, LongformerForMaskedLM),
        positions, vocab_size=max(model.vocab_size, data.vocab_size or 0), hidden_size=model.hidden_size,
        num_hidden_layers=model.num_hidden_layers, num_attention_heads=model.num_attention_heads,
        intermediate_size=model.intermediate_size, hidden_dropout_prob=model.hidden_dropout_prob,
        attention_probs_dropout_prob=model.attention_probs_dropout_prob, type_vocab_size=model.type_vocab_size,
        layer_norm_eps=1e-5, max_position_embeddings=max(model.max_position_embeddings, positions),
        attention_window=window, pad_token_id=0,
    )


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

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict | None = None) -> None:
        """transformers' name for it, so the trainer treats every family alike (timm checkpoints non-reentrantly)."""
        self.net.set_grad_checkpointing(True)


def _timm_weights(checkpoint: str) -> dict[str, str]:
    """Where timm reads pretrained weights: a local file or directory, else a hub repository."""
    path = Path(checkpoint)
    if path.is_dir():
        path = next((path / name for name in ("model.safetensors", "pytorch_model.bin") if (path / name).exists()),
                    path / "model.safetensors")
        return {"file": str(path)}
    return {"file": str(path)} if path.exists() else {"hf_hub_id": checkpoint}


@register("vit", VitSchema, ("image_classification",), attention=("eager", "sdpa"))
def vit(model: DictConfig, data: TaskData) -> nn.Module:
    """timm ViT; its dropout rates default to 0, so they come from config. ``eager`` turns fused attention off.
    A checkpoint's classifier is kept when the dataset has its class count (1000 for the ImageNet ones); for any
    other count timm starts a fresh head."""
    import timm

    previous = timm.layers.use_fused_attn()
    timm.layers.set_fused_attn(model.attn_implementation == "sdpa")  # read when the Attention modules are built
    try:
        net = timm.create_model(
            model.arch, pretrained=model.pretrained, num_classes=data.num_labels, img_size=data.image_size,
            drop_rate=model.drop_rate, pos_drop_rate=model.drop_rate, attn_drop_rate=model.drop_rate,
            proj_drop_rate=model.drop_rate, pretrained_cfg_overlay=_timm_weights(model.checkpoint),
            **dict(model.get("arch_overrides") or {}),
        )
    except (OSError, RuntimeError) as error:
        if not model.pretrained:
            raise
        raise _offline_error(model, error) from error
    finally:
        timm.layers.set_fused_attn(previous)
    return VisionClassifier(net, model.label_smoothing)
