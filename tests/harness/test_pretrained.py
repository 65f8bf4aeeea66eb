"""Pretrained checkpoints train as training runs: a checkpoint written in the test (``save_pretrained``, timm's
``save_for_hf``) is loaded through the harness's own loading code (``model.pretrained=true``, ``model.checkpoint``
a local directory), dropout runs in every training step (masks stored, pmdrop fewer than the baseline), and a
checkpoint gets more positions than it was trained with only by ``model.extend_positions``."""

import dataclasses
import json

import pytest
import torch

from experiments.data import build_data
from experiments.models import build_model
from experiments.train import check_config, run_training

from .cfg import TINY_BERT, compose_run

SHORT = ["trainer.steps=3", "trainer.batch_size=4", "trainer.warmup_steps=1", "trainer.log_every=1",
         "trainer.eval_batches=1", "trainer.threads=1", "trainer.device=cpu", "trainer.measure_step=2"]
TINY_TEXT = [*TINY_BERT, "dataset=synthetic_lm", "dataset.seq_len=16", "dataset.train_size=8", "dataset.eval_size=4"]
FAMILIES = {
    "bert": ["model=tinybert", *TINY_BERT],
    "longformer": ["model=longformer_base", *TINY_TEXT, "model.attention_window=8", "model.vocab_size=300",
                   "model.max_position_embeddings=18"],
    "vit": ["model=vit_tiny", "dataset=digits", "dataset.image_size=16",
            *(f"++model.arch_overrides.{key}" for key in ("embed_dim=32", "depth=2", "num_heads=2"))],
}


def save_checkpoint(family: str, directory, *overrides: str) -> None:
    """A checkpoint as its library writes one: transformers' save_pretrained, timm's save_for_hf (config.json and
    model.safetensors, which the harness's timm loading reads from a local directory)."""
    cfg = compose_run(*FAMILIES[family], *overrides)
    net = build_model(cfg.model, build_data(cfg.dataset, cfg.model, 0))
    if family == "vit":
        from timm.models._hub import save_for_hf

        save_for_hf(net.net, str(directory), safe_serialization=True)
    else:
        net.save_pretrained(directory)


def pretrained(family: str, directory, *overrides: str):
    return compose_run(*FAMILIES[family], "model.pretrained=true", f"model.checkpoint={directory}", *overrides)


def train(cfg) -> dict:
    check_config(cfg)
    return dataclasses.asdict(run_training(cfg, lambda step, values: None))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_loaded_checkpoint_is_built_in_training_mode_with_dropout_on(family, tmp_path):
    save_checkpoint(family, tmp_path)
    cfg = pretrained(family, tmp_path)
    data = build_data(cfg.dataset, cfg.model, 0)
    net = build_model(cfg.model, data)
    assert all(module.training for module in net.modules())
    batch = {key: value[:4] for key, value in data.train.items()}
    with torch.no_grad():
        built = net(**batch).logits
        net.eval()
        evaluated = net(**batch).logits
    assert not torch.allclose(built, evaluated)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_a_pretrained_run_stores_masks_and_pmdrop_stores_fewer(family, tmp_path):
    save_checkpoint(family, tmp_path)
    runs = {variant: train(pretrained(family, tmp_path, f"variant={variant}", *SHORT))
            for variant in ("baseline", "pmdrop")}
    assert runs["baseline"]["saved_mask_bytes"] > 0
    assert 0 < runs["pmdrop"]["saved_mask_bytes"] < runs["baseline"]["saved_mask_bytes"]
    assert sum(runs["pmdrop"]["dropout_calls"].values()) > 0
    assert all(torch.isfinite(torch.tensor(run["final_loss"])) for run in runs.values())


@pytest.mark.parametrize("family", ["bert", "longformer"])
def test_extend_positions_copies_the_learned_table(family, tmp_path):
    # BERT: 16 positions, ids from 0. Longformer: 18 rows, ids from pad_token_id + 1 (rows up to the pad's are unused;
    # the released checkpoint's pad is 1, so its ids start at 2; a model built here pads with 0)
    positions = {"bert": ["dataset=synthetic_lm", "dataset.seq_len=16", "model.max_position_embeddings=16",
                          "dataset.train_size=8", "dataset.eval_size=4"], "longformer": []}[family]
    save_checkpoint(family, tmp_path, *positions)
    cfg = pretrained(family, tmp_path, *positions)
    table = build_model(cfg.model, build_data(cfg.dataset, cfg.model, 0)).base_model.embeddings.position_embeddings
    old = table.weight.detach().clone()
    cfg = pretrained(family, tmp_path, *positions, "dataset.seq_len=40", "model.extend_positions=true")
    data = build_data(cfg.dataset, cfg.model, 0)
    net = build_model(cfg.model, data)
    embeddings = net.base_model.embeddings
    new = embeddings.position_embeddings.weight.detach()
    first_id = {"bert": 0, "longformer": json.loads((tmp_path / "config.json").read_text())["pad_token_id"] + 1}
    rows, offset = len(old), first_id[family]
    assert len(new) == net.config.max_position_embeddings == {"bert": 40, "longformer": 42}[family]
    assert torch.equal(new[:rows], old)
    assert all(torch.equal(new[i], old[offset + (i - offset) % (rows - offset)]) for i in range(rows, len(new)))
    for name in ("position_ids", "token_type_ids"):
        if name in embeddings._buffers:
            assert embeddings._buffers[name].shape == (1, len(new))
    assert any("copied to" in note for note in data.notes)


def test_a_bert_checkpoint_with_16_positions_extended_to_40_trains(tmp_path):
    positions = ["dataset.seq_len=16", "model.max_position_embeddings=16"]
    save_checkpoint("bert", tmp_path, *TINY_TEXT[len(TINY_BERT):], *positions)
    cfg = pretrained("bert", tmp_path, *TINY_TEXT[len(TINY_BERT):], "dataset.seq_len=40",
                     "model.extend_positions=true", "variant=pmdrop", *SHORT)
    run = train(cfg)
    assert run["seq_len"] == 40 and run["saved_mask_bytes"] > 0
    assert torch.isfinite(torch.tensor(run["final_loss"]))
    assert any("16 learned positions were copied to 40" in note for note in run["notes"])


def test_without_extend_positions_a_longer_seq_len_is_refused_before_any_work(tmp_path):
    positions = ["dataset.seq_len=16", "model.max_position_embeddings=16"]
    save_checkpoint("bert", tmp_path, *TINY_TEXT[len(TINY_BERT):], *positions)
    cfg = pretrained("bert", tmp_path, *TINY_TEXT[len(TINY_BERT):], "dataset.seq_len=40", *SHORT)
    with pytest.raises(ValueError, match=r"has 16 positions but dataset.seq_len needs 40: set "
                                         r"model.extend_positions=true") as error:
        check_config(cfg)
    assert "\n" not in str(error.value)


def test_the_suite_workload_extends_bert_large_to_1024_positions_and_is_refused_without(tmp_path):
    """Read from the kept config.json of google-bert/bert-large-uncased (512 positions), with no data and no hub."""
    cfg = compose_run("experiment=suite1", "workload=bert_large_wikitext103")
    assert cfg.model.extend_positions and cfg.dataset.seq_len == 1024
    check_config(cfg)
    cfg = compose_run("experiment=suite1", "workload=bert_large_wikitext103", "model.extend_positions=false")
    with pytest.raises(ValueError, match=r"'google-bert/bert-large-uncased' has 512 positions but dataset.seq_len "
                                         r"needs 1024"):
        check_config(cfg)
