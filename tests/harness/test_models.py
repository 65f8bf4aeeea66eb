"""Model builders: every model config builds offline at tiny size, pretrained loading reads local checkpoints and
fails offline with one sentence, and the model configs are checked before any work."""

from pathlib import Path

import pytest
import torch
from torch import nn

from experiments.data import build_data
from experiments.models import build_model, check_model_config

from .cfg import CONF, TINY_BERT, compose_run

TINY_LONGFORMER = [*TINY_BERT, "model.attention_window=8", "model.vocab_size=300"]
TINY_VIT = [f"++model.arch_overrides.{key}" for key in ("embed_dim=32", "depth=1", "num_heads=2")]
TINY = {"tinybert": TINY_BERT, "bert_base": TINY_BERT, "bert_large": TINY_BERT, "longformer_base": TINY_LONGFORMER,
        "vit_b16": TINY_VIT, "vit_tiny": TINY_VIT}
DATASET_FOR = {"vit_b16": "digits", "vit_tiny": "digits", "longformer_base": "synthetic_lm"}


def tiny_run(model: str, *overrides: str):
    """A composed config of ``model`` at tiny size with a dataset it has a head for, and that dataset built."""
    dataset = DATASET_FOR.get(model, "synthetic_pairs")
    extra = ["dataset.seq_len=32", "dataset.train_size=8", "dataset.eval_size=4"] if dataset == "synthetic_lm" else []
    cfg = compose_run(f"model={model}", f"dataset={dataset}", *TINY[model], *extra, *overrides)
    return cfg, build_data(cfg.dataset, cfg.model, 0)


def test_model_configs_cover_the_model_group():
    assert set(TINY) == {path.stem for path in (Path(CONF) / "model").glob("*.yaml")}


@pytest.mark.parametrize("model", list(TINY))
def test_every_model_config_builds_offline_and_trains_a_step(model):
    cfg, data = tiny_run(model)
    check_model_config(cfg.model, cfg.dataset.task)
    net = build_model(cfg.model, data)
    out = net(**next(data.batches(2, torch.Generator().manual_seed(0))))
    out.loss.backward()
    assert out.logits.shape[0] == 2 and torch.isfinite(out.loss)
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_full_size_configs_have_the_papers_shapes():
    large = compose_run("model=bert_large").model
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads, large.intermediate_size) == (
        1024, 24, 16, 4096)
    base = compose_run("model=bert_base").model
    assert (base.hidden_size, base.num_hidden_layers, base.num_attention_heads) == (768, 12, 12)
    tiny = compose_run("model=tinybert").model
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads, tiny.intermediate_size) == (
        312, 4, 12, 1200)
    assert tiny.checkpoint == "huawei-noah/TinyBERT_General_4L_312D"
    lf = compose_run("model=longformer_base").model
    assert (lf.vocab_size, lf.max_position_embeddings, lf.type_vocab_size, lf.attention_window) == (50265, 4098, 1, 512)
    assert compose_run("model=vit_b16").model.arch == "vit_base_patch16_224"


@pytest.mark.parametrize(("attention", "fused"), [("eager", False), ("sdpa", True)])
def test_vit_dropout_rates_are_the_papers_and_eager_turns_fused_attention_off(attention, fused):
    cfg, data = tiny_run("vit_b16", f"model.attn_implementation={attention}")
    net = build_model(cfg.model, data)
    dropouts = [(name, module) for name, module in net.named_modules() if isinstance(module, nn.Dropout)]
    rates = {name.rsplit(".", 1)[-1]: module.p for name, module in dropouts}
    assert set(rates) >= {"pos_drop", "attn_drop", "proj_drop", "head_drop"} and set(rates.values()) == {0.1}
    assert {block.attn.fused_attn for block in net.net.blocks} == {fused}


@pytest.mark.parametrize(("seq_len", "window", "positions"), [(5000, 8, 5002), (5000, 512, 5122), (100, 8, 4098)])
def test_longformer_position_table_is_sized_from_the_padded_seq_len(seq_len, window, positions):
    cfg, data = tiny_run("longformer_base", f"dataset.seq_len={seq_len}", f"model.attention_window={window}",
                         "dataset.train_size=1", "dataset.eval_size=1")
    net = build_model(cfg.model, data)
    assert net.config.max_position_embeddings == positions
    if seq_len == 5000 and window == 512:  # the padded 5120 tokens run through the table
        assert torch.isfinite(net(**{k: v[:1] for k, v in data.train.items()}).loss)


def test_bert_position_table_grows_to_the_seq_len():
    cfg, data = tiny_run("tinybert", "dataset=synthetic_lm", "dataset.seq_len=600", "dataset.train_size=1",
                         "dataset.eval_size=1")
    assert build_model(cfg.model, data).config.max_position_embeddings == 600


@pytest.mark.parametrize("model", ["tinybert", "longformer_base", "vit_tiny"])
def test_pretrained_offline_fails_with_one_sentence_saying_what_to_do(model):
    cfg, data = tiny_run(model, "model.pretrained=true")
    with pytest.raises(RuntimeError, match=r"set model\.pretrained=false .* point model\.checkpoint at a local") as err:
        build_model(cfg.model, data)
    assert "\n" not in str(err.value)


def test_pretrained_bert_loads_a_local_checkpoint(tmp_path):
    cfg, data = tiny_run("tinybert")
    saved = build_model(cfg.model, data)
    saved.save_pretrained(tmp_path)
    cfg, _ = tiny_run("tinybert", "model.pretrained=true", f"model.checkpoint={tmp_path}")
    loaded = build_model(cfg.model, data)
    assert all(torch.equal(a, b) for a, b in zip(saved.state_dict().values(), loaded.state_dict().values(),
                                                  strict=True))
    assert loaded.config._attn_implementation == "eager"


def test_pretrained_checkpoint_too_short_for_the_seq_len_says_so(tmp_path):
    cfg, data = tiny_run("tinybert")
    build_model(cfg.model, data).save_pretrained(tmp_path)  # 512 positions
    cfg, _ = tiny_run("tinybert", "model.pretrained=true", f"model.checkpoint={tmp_path}")
    data.seq_len = 1024
    with pytest.raises(ValueError, match=r"has 512 positions but dataset.seq_len needs 1024"):
        build_model(cfg.model, data)


def test_pretrained_vit_loads_a_local_timm_checkpoint(tmp_path):
    from safetensors.torch import save_file

    cfg, data = tiny_run("vit_tiny")
    saved = build_model(cfg.model, data)
    save_file(saved.net.state_dict(), tmp_path / "model.safetensors")
    cfg, _ = tiny_run("vit_tiny", "model.pretrained=true", f"model.checkpoint={tmp_path}")
    loaded = build_model(cfg.model, data).state_dict()
    # timm keeps a checkpoint's classifier only for its pretrained_cfg's 1000 classes; other heads start afresh
    different = [key for key, value in saved.state_dict().items() if not torch.equal(value, loaded[key])]
    assert different == ["net.head.weight"]


def test_vit_activation_checkpointing_is_the_transformers_call():
    cfg, data = tiny_run("vit_tiny")
    net = build_model(cfg.model, data)
    net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert net.net.grad_checkpointing


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.hidden_size=abc"], r"^model.hidden_size: Value 'abc' of type 'str' could not be converted to Integer"),
        (["model=longformer_base", "model.attn_implementation=sdpa"],
         r"^model.attn_implementation='sdpa' is not valid; valid: eager$"),
        (["model=vit_tiny"], r"^model.family=vit has no head for dataset.task='pair_classification'; valid: image_"),
        (["model.family=gpt"], r"^model.family='gpt' is not valid; valid: bert, longformer, vit$"),
        (["model.hidden_dropout_prob=1.5"], r"^model.hidden_dropout_prob=1.5 must be between 0.0 and 1.0$"),
        (["~model.num_hidden_layers"], r"^model lacks model.num_hidden_layers \(BertSchema\)$"),
    ],
)
def test_bad_model_configs_fail_with_one_line(overrides, message):
    cfg = compose_run(*overrides)
    with pytest.raises(ValueError, match=message):
        check_model_config(cfg.model, cfg.dataset.task)
