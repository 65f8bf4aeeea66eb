"""The analytic memory model against the harness's measured saved bytes, run configuration by configuration.

Shapes come from each run's resolved config (``results.json["config"]``): the model group's architecture keys
(transformers names for BERT/Longformer, timm ``create_model`` names for ViT; looked up in the model group or
a ``config``/``overrides``/``kwargs`` mapping inside it), the dataset's task, and the measured batch size and
sequence length. Runs the model does not cover (gradient checkpointing, torch.compile, an unknown variant or
family, autocast on CPU; under autocast on CUDA the activations only) get a reason instead of a number.
"""

from __future__ import annotations

import pandas as pd

from .load import CONFIG_KEY
from .memory_model import Shapes, Storage, mask_storage, predict

_NESTED = ("config", "overrides", "kwargs")
_ACTIVATION_BYTES = {"fp32": 4}  # bf16/fp16 runs use autocast, which keeps mixed-dtype copies
_COLUMNS = ["predicted_layer_activation_bytes", "predicted_layer_mask_bytes", "predicted_activation_bytes",
            "predicted_mask_bytes", "measured_activation_bytes", "measured_mask_bytes", "activation_rel_error",
            "mask_rel_error", "note"]


class NotModelled(ValueError):
    """The run is outside what the analytic model covers; the message says why."""


def _lookup(model: dict, *names: str, default: object = None) -> object:
    scopes = [model, *(model[k] for k in _NESTED if isinstance(model.get(k), dict))]
    for name in names:
        for scope in scopes:
            if scope.get(name) is not None:
                return scope[name]
    if default is None:
        raise NotModelled(f"model config lacks {' / '.join(names)}")
    return default


def _text_shapes(results: dict, family: str) -> Shapes:
    config = results["config"]
    model, dataset = config["model"], config.get("dataset", {})
    hidden_p = float(_lookup(model, "hidden_dropout_prob", default=0.1))
    window = _lookup(model, "attention_window", default=512)
    return Shapes(
        family=family, batch=int(results["batch_size"]), seq=int(results["seq_len"]),
        hidden=int(_lookup(model, "hidden_size")), heads=int(_lookup(model, "num_attention_heads")),
        intermediate=int(_lookup(model, "intermediate_size")), layers=int(_lookup(model, "num_hidden_layers")),
        head="mlm" if dataset.get("task") == "mlm" else "cls",
        num_labels=int(dataset.get("num_labels") or _lookup(model, "num_labels", default=2)),
        vocab=int(_lookup(model, "vocab_size", default=30522)),
        max_positions=int(_lookup(model, "max_position_embeddings", default=512)),
        hidden_p=hidden_p, attn_p=float(_lookup(model, "attention_probs_dropout_prob", default=0.1)),
        classifier_p=_lookup(model, "classifier_dropout", default=hidden_p),
        window=int(window[0] if isinstance(window, list) else window),
    )


def _vit_shapes(results: dict, family: str) -> Shapes:
    config = results["config"]
    model, dataset = config["model"], config.get("dataset", {})
    hidden = int(_lookup(model, "embed_dim"))
    return Shapes(
        family=family, batch=int(results["batch_size"]), seq=0, hidden=hidden,
        heads=int(_lookup(model, "num_heads")),
        intermediate=int(hidden * float(_lookup(model, "mlp_ratio", default=4.0))),
        layers=int(_lookup(model, "depth")),
        num_labels=int(dataset.get("num_labels") or _lookup(model, "num_classes", default=1000)),
        hidden_p=float(_lookup(model, "proj_drop_rate", default=0.0)),
        attn_p=float(_lookup(model, "attn_drop_rate", default=0.0)),
        classifier_p=float(_lookup(model, "drop_rate", default=0.0)),
        pos_p=float(_lookup(model, "pos_drop_rate", default=0.0)),
        image_size=int(_lookup(model, "img_size", "image_size", default=224)),
        patch_size=int(_lookup(model, "patch_size", default=16)),
        channels=int(_lookup(model, "in_chans", default=3)),
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
    ok = runs[runs["status"] == "ok"]
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
