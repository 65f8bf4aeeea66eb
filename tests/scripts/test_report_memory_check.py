"""Reading shapes and storage from runs' resolved configs, and saying why a run is not predicted."""

import pandas as pd
import pytest
from report_runs import PAIRS, TINYBERT, TRAINER, make_results, write_run

from scripts.load import load_runs
from scripts.memory_check import NotModelled, predictions, shapes_from_results, storage_from_results
from scripts.memory_model import Shapes, Storage, mask_storage, predict

GPU = "NVIDIA H100 80GB HBM3"
VIT = {"name": "vit_tiny", "family": "vit", "arch": "vit_tiny_patch16_224", "attn_implementation": "eager",
       "pretrained": False, "drop_rate": 0.1, "label_smoothing": 0.1, "arch_overrides": {"patch_size": 4}}
DIGITS = {"name": "digits", "kind": "digits", "task": "image_classification", "seq_len": None, "image_size": 32}


def _row(tmp_path, **fields):
    write_run(tmp_path, **fields)
    return predictions(load_runs([tmp_path])).iloc[0]


def test_shapes_and_storage_come_from_the_resolved_config():
    results = make_results(variant="pmdrop")
    assert shapes_from_results(results) == Shapes("bert", 4, 16, 32, 4, 64, 2, num_labels=2, vocab=1,
                                                  max_positions=64)
    storage = storage_from_results(results)
    assert (storage.activation_bytes, storage.mask.name, storage.attention) == (4, "packed 8/byte", "eager")
    sdpa_gpu = make_results(model=dict(TINYBERT, attn_implementation="sdpa"), device=GPU, variant="baseline")
    storage = storage_from_results(sdpa_gpu)
    assert (storage.attention, storage.mask.name, storage.stat) == ("sdpa_fused", "torch bool mask", 4)


def test_vit_shapes_from_the_timm_architecture_name_and_overrides():
    shapes = shapes_from_results(make_results(model=VIT, dataset=DIGITS))
    assert (shapes.hidden, shapes.layers, shapes.heads, shapes.intermediate) == (192, 12, 3, 768)
    assert (shapes.patch_size, shapes.image_size, shapes.num_labels) == (4, 32, 10)
    assert shapes.hidden_p == shapes.attn_p == shapes.classifier_p == shapes.pos_p == shapes.label_smoothing == 0.1


def test_autocast_on_cuda_predicts_masks_only(tmp_path):
    row = _row(tmp_path, device=GPU, precision="bf16", variant="pmdrop")
    expected = predict(shapes_from_results(make_results()), Storage(2, mask_storage("pmdrop", "cuda")))
    assert row["predicted_mask_bytes"] == expected.mask_bytes
    assert pd.isna(row["predicted_activation_bytes"])
    assert row["note"].startswith("activations not predicted: precision 'bf16'")


@pytest.mark.parametrize(("fields", "reason"), [
    ({"precision": "bf16"}, "autocast on CPU"),
    ({"variant": "pmdrop_k2"}, "no mask-storage model for variant 'pmdrop_k2'"),
    ({"model": dict(TINYBERT, family="gpt2")}, "no memory model for family 'gpt2'"),
    ({"model": {k: v for k, v in TINYBERT.items() if k != "hidden_size"}}, "model config lacks hidden_size"),
    ({"dataset": dict(PAIRS, task="mlm")}, "vocabulary size of this masked-LM run is not in its config"),
    ({"model": dict(VIT, arch="deit_small_patch16_224")}, "timm architecture 'deit_small_patch16_224' is not"),
])
def test_runs_outside_the_model_say_why(tmp_path, fields, reason):
    row = _row(tmp_path, **fields)
    assert row["note"].startswith("not predicted: ") and reason in row["note"]
    assert pd.isna(row["predicted_mask_bytes"])


def test_gradient_checkpointing_is_not_modelled():
    results = make_results()
    results["config"]["trainer"] = dict(TRAINER, grad_checkpointing=True)
    with pytest.raises(NotModelled, match="grad_checkpointing is on"):
        storage_from_results(results)


def test_runs_without_measured_bytes_are_left_out(tmp_path):
    write_run(tmp_path, variant="baseline")
    write_run(tmp_path, variant="pmdrop", saved_mask_bytes=None, saved_activation_bytes=None, maxfit={"axis": "x"})
    assert list(predictions(load_runs([tmp_path]))["variant"]) == ["baseline"]
