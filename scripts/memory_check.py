"""The analytic memory model against the harness's measured saved bytes, run configuration by configuration.

Shapes come from each run's resolved config (``results.json["config"]``) read the way ``experiments/models.py``
builds the model: the model group's transformers keys (BERT/Longformer) or timm architecture name and overrides
(ViT), the dataset group's task, classes, vocabulary and image size, and the measured batch size and sequence
length. Runs the model does not cover (gradient checkpointing, torch.compile, an unknown variant or family,
autocast on CPU; under autocast on CUDA the activations only) get a reason instead of a number.
"""

from __future__ import annotations

import re

import pandas as pd

from .load import CONFIG_KEY
from .memory_model import Shapes, Storage, mask_storage, predict

_ACTIVATION_BYTES = {"fp32": 4}  # bf16/fp16 runs use autocast, which keeps mixed-dtype copies
_COLUMNS = ["predicted_layer_activation_bytes", "predicted_layer_mask_bytes", "predicted_activation_bytes",
            "predicted_mask_bytes", "measured_activation_bytes", "measured_mask_bytes", "activation_rel_error",
            "mask_rel_error", "note"]
# Facts of the data kinds (experiments/data.py) that their dataset configs do not spell out.
_KIND_LABELS = {"synthetic_pairs": 2, "digits": 10, "listops": 10}
_KINDS_WITH_TOKEN_TYPES = ("synthetic_pairs", "glue")  # tokenised pairs pass token_type_ids to BERT
# timm ViT sizes: (embed_dim, depth, num_heads); names are vit_<size>_patch<p>_<img>, MLP ratio 4.
_VIT_SIZES = {"tiny": (192, 12, 3), "small": (384, 12, 6), "base": (768, 12, 12), "large": (1024, 24, 16),
              "huge": (1280, 32, 16)}


class NotModelled(ValueError):
    """The run is outside what the analytic model covers; the message says why."""


def _required(group: dict, key: str, where: str) -> object:
    if group.get(key) is None:
        raise NotModelled(f"{where} config lacks {key}")
    return group[key]


def _num_labels(dataset: dict) -> int:
    labels = dataset.get("num_labels") or _KIND_LABELS.get(dataset.get("kind"))
    if labels is None:
        raise NotModelled(f"dataset kind {dataset.get('kind')!r} does not say its number of classes")
    return max(int(labels), 1)


def _text_shapes(results: dict, family: str) -> Shapes:
    config = results["config"]
    model, dataset = config["model"], config.get("dataset", {})
    seq, head = int(results["seq_len"]), "mlm" if dataset.get("task") == "mlm" else "cls"
    vocab = dataset.get("vocab_size") or 0
    if family == "longformer":
        vocab = max(int(model.get("vocab_size") or 0), vocab)
    if head == "mlm" and not vocab:
        raise NotModelled("the vocabulary size of this masked-LM run is not in its config")
    window = model.get("attention_window", 512)
    return Shapes(
        family=family, batch=int(results["batch_size"]), seq=seq,
        hidden=int(_required(model, "hidden_size", "model")),
        heads=int(_required(model, "num_attention_heads", "model")),
        intermediate=int(_required(model, "intermediate_size", "model")),
        layers=int(_required(model, "num_hidden_layers", "model")), head=head,
        num_labels=1 if head == "mlm" else _num_labels(dataset), vocab=int(vocab or 1),
        max_positions=max(int(model.get("max_position_embeddings", 512)), seq),
        hidden_p=float(model.get("hidden_dropout_prob", 0.1)),
        attn_p=float(model.get("attention_probs_dropout_prob", 0.1)),
        token_type_ids=dataset.get("kind") in _KINDS_WITH_TOKEN_TYPES,
        window=int(window[0] if isinstance(window, list) else window),
    )


def _vit_shapes(results: dict, family: str) -> Shapes:
    config = results["config"]
    model, dataset = config["model"], config.get("dataset", {})
    arch = str(_required(model, "arch", "model"))
    match = re.fullmatch(r"vit_(\w+?)_patch(\d+)_\d+", arch)
    if match is None or match.group(1) not in _VIT_SIZES:
        raise NotModelled(f"timm architecture {arch!r} is not one of vit_{{{', '.join(_VIT_SIZES)}}}_patch<p>_<img>")
    embed_dim, depth, heads = _VIT_SIZES[match.group(1)]
    arch_kwargs = {"embed_dim": embed_dim, "depth": depth, "num_heads": heads, "mlp_ratio": 4.0,
                   "patch_size": int(match.group(2))} | dict(model.get("arch_overrides") or {})
    drop = float(model.get("drop_rate", 0.0))  # the harness sets every timm dropout rate to it
    return Shapes(
        family=family, batch=int(results["batch_size"]), seq=0, hidden=int(arch_kwargs["embed_dim"]),
        heads=int(arch_kwargs["num_heads"]), intermediate=int(arch_kwargs["embed_dim"] * arch_kwargs["mlp_ratio"]),
        layers=int(arch_kwargs["depth"]), num_labels=_num_labels(dataset), hidden_p=drop, attn_p=drop,
        classifier_p=drop, pos_p=drop, image_size=int(_required(dataset, "image_size", "dataset")),
        patch_size=int(arch_kwargs["patch_size"]), label_smoothing=float(model.get("label_smoothing", 0.0)),
    )


SHAPE_READERS = {"bert": _text_shapes, "longformer": _text_shapes, "vit": _vit_shapes}


def shapes_from_results(results: dict) -> Shapes:
    family = results["config"]["model"].get("family")
    if family not in SHAPE_READERS:
        raise NotModelled(f"no memory model for family {family!r}; modelled: {', '.join(SHAPE_READERS)}")
    return SHAPE_READERS[family](results, family)


def _device_type(results: dict) -> str:
    return "cpu" if str(results.get("device", "cpu")).startswith("cpu") else "cuda"


def autocast_note(results: dict) -> str | None:
    """Why activation bytes are not predicted for this run, or None when they are."""
    precision = results.get("precision") or results["config"].get("trainer", {}).get("precision")
    if precision in _ACTIVATION_BYTES:
        return None
    return f"activations not predicted: precision {precision!r} runs under autocast (mixed fp32/16-bit copies)"


def storage_from_results(results: dict) -> Storage:
    """How the run stored tensors. Under autocast, CUDA dropout masks (bool or packed) do not depend on the dtype,
    so masks are still predicted there; CPU masks are torch's noise in each call's input dtype, so they are not."""
    config = results["config"]
    trainer = config.get("trainer", {})
    for flag in ("grad_checkpointing", "compile"):
        if trainer.get(flag):
            raise NotModelled(f"trainer.{flag} is on: saved tensors differ from the eager graph")
    device_type = _device_type(results)
    if autocast_note(results) and device_type == "cpu":
        raise NotModelled("autocast on CPU: torch's masks take each dropout input's dtype (mixed); modelled: fp32")
    implementation = config["model"].get("attn_implementation", "eager")
    attention = "eager" if implementation == "eager" else ("sdpa_math" if device_type == "cpu" else "sdpa_fused")
    try:
        mask = mask_storage(results["variant"], device_type)
    except ValueError as err:
        raise NotModelled(str(err)) from None
    precision = results.get("precision") or trainer.get("precision")
    return Storage(_ACTIVATION_BYTES.get(precision, 2), mask, attention, None if device_type == "cpu" else 4)


def _rel_error(predicted: float | None, measured: float) -> float | None:
    if predicted is None or pd.isna(measured) or measured == 0:
        return None
    return (predicted - measured) / measured


def predictions(runs: pd.DataFrame) -> pd.DataFrame:
    """Predicted vs measured saved activation and mask bytes, one row per configuration, variant and shape.

    Measured values are the mean over finished seeds (CPU accounting is deterministic, so they agree)."""
    rows = []
    ok = runs[(runs["status"] == "ok") & runs["saved_mask_bytes"].notna()]  # searches (maxfit) measure no bytes
    keys = [*CONFIG_KEY, "variant", "batch_size", "seq_len"]
    for key, group in ok.groupby(keys, sort=True, dropna=False):
        results = group.iloc[0]["results"]
        row = dict(zip(keys, key, strict=True)) | {"device": results.get("device"),
                                                   "family": results["config"]["model"].get("family")}
        measured_act, measured_mask = group["saved_activation_bytes"].mean(), group["saved_mask_bytes"].mean()
        try:
            p = predict(shapes_from_results(results), storage_from_results(results))
            note = autocast_note(results)
            layer = (None if note else p.layer_activation_bytes, p.layer_mask_bytes)
            total = (None if note else p.activation_bytes, p.mask_bytes)
        except NotModelled as reason:
            layer, total, note = (None, None), (None, None), f"not predicted: {reason}"
        rows.append(row | dict(zip(_COLUMNS, [
            *layer, *total, measured_act, measured_mask, _rel_error(total[0], measured_act),
            _rel_error(total[1], measured_mask), note or ""], strict=True)))
    return pd.DataFrame(rows, columns=[*keys, "device", "family", *_COLUMNS])
