"""Model and dataset builders: every config builds offline; real loaders read small local files."""

import pytest
import torch

from experiments.data import build_data
from experiments.models import build_model

from .cfg import TINY_BERT, compose_run

TINY = {
    "tinybert": TINY_BERT,
    "bert_base": TINY_BERT,
    "bert_large": TINY_BERT,
    "longformer_base": ["model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
                        "model.intermediate_size=64", "model.attention_window=8", "model.vocab_size=300"],
    "vit_b16": ["model.arch_overrides={embed_dim: 32, depth: 1, num_heads: 2, patch_size: 8}"],
    "vit_tiny": ["+model.arch_overrides.embed_dim=32", "+model.arch_overrides.depth=1",
                 "+model.arch_overrides.num_heads=2"],
}
DATASET_FOR = {"vit_b16": "digits", "vit_tiny": "digits", "longformer_base": "synthetic_lm"}


@pytest.mark.parametrize("model", list(TINY))
def test_every_model_config_builds_offline_and_trains_a_step(model):
    dataset = DATASET_FOR.get(model, "synthetic_pairs")
    extra = ["dataset.seq_len=32"] if dataset == "synthetic_lm" else []
    cfg = compose_run(f"model={model}", f"dataset={dataset}", *TINY[model], *extra)
    data = build_data(cfg.dataset, cfg.model, 0)
    net = build_model(cfg.model, data)
    batch = next(data.batches(2, torch.Generator().manual_seed(0)))
    out = net(**batch)
    out.loss.backward()
    assert out.logits.shape[0] == 2 and torch.isfinite(out.loss)


def test_full_size_configs_have_the_papers_shapes():
    large = compose_run("model=bert_large").model
    assert (large.hidden_size, large.num_hidden_layers, large.num_attention_heads) == (1024, 24, 16)
    tiny = compose_run("model=tinybert").model
    assert (tiny.hidden_size, tiny.num_hidden_layers, tiny.num_attention_heads, tiny.intermediate_size) == (
        312, 4, 12, 1200)
    lf = compose_run("model=longformer_base").model
    assert (lf.vocab_size, lf.max_position_embeddings, lf.attention_window) == (50265, 4098, 512)
    assert compose_run("model=vit_b16").model.drop_rate == 0.1


def test_longformer_position_table_grows_past_4098():
    cfg = compose_run("model=longformer_base", "dataset=synthetic_lm", "dataset.seq_len=5000", *TINY["longformer_base"],
                      "dataset.train_size=1", "dataset.eval_size=1")
    net = build_model(cfg.model, build_data(cfg.dataset, cfg.model, 0))
    assert net.config.max_position_embeddings == 5002


@pytest.mark.parametrize("model", ["tinybert", "vit_tiny"])
def test_pretrained_offline_fails_with_one_sentence_saying_what_to_do(model):
    dataset = DATASET_FOR.get(model, "synthetic_pairs")
    cfg = compose_run(f"model={model}", f"dataset={dataset}", "model.pretrained=true")
    with pytest.raises(RuntimeError, match=r"set model\.pretrained=false"):
        build_model(cfg.model, build_data(cfg.dataset, compose_run(f"model={model}").model, 0))


def test_local_mrpc_tsv_goes_through_dataset_mrpc(tmp_path):
    header = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    rows = [
        '1\t1\t2\tThe cat sat on the mat.\tA cat was sitting on the mat "quietly.\n',
        "0\t3\t4\tStocks fell sharply today.\tThe weather is sunny.\n",
        "1\t5\t6\tHe bought a new car.\tHe purchased a new car.\n",
    ]
    for split in ("train", "dev"):
        (tmp_path / f"{split}.tsv").write_text(header + "".join(rows))
    cfg = compose_run("dataset=mrpc", "dataset.seq_len=16",
                      f"dataset.data_files={{train: {tmp_path}/train.tsv, validation: {tmp_path}/dev.tsv}}")
    data = build_data(cfg.dataset, cfg.model, 0)
    assert data.train["input_ids"].shape == (3, 16)
    assert data.train["labels"].tolist() == [1, 0, 1]
    assert data.train["token_type_ids"][0].max() == 1  # the second sentence is segment 1
    assert "offline word-level" in data.notes[0]


def test_glue_offline_without_files_names_the_override():
    cfg = compose_run("dataset=sst2")
    with pytest.raises(RuntimeError, match=r"dataset\.data_files="):
        build_data(cfg.dataset, cfg.model, 0)


def test_local_listops_and_wikitext_files(tmp_path):
    (tmp_path / "train.tsv").write_text("Source\tTarget\n( ( [MAX 2 9 ] 1 )\t9\n( [MIN 4 3 ] )\t3\n")
    cfg = compose_run("model=longformer_base", "dataset=listops", "dataset.seq_len=12",
                      f"dataset.data_files={{train: {tmp_path}/train.tsv, validation: {tmp_path}/train.tsv}}")
    data = build_data(cfg.dataset, cfg.model, 0)
    assert data.train["labels"].tolist() == [9, 3] and data.num_labels == 10
    text = tmp_path / "wiki.txt"
    text.write_text("\n".join(f"the history of item {i} is long and varied ." for i in range(40)))
    cfg = compose_run("model=bert_large", "dataset=wikitext103", "dataset.seq_len=16",
                      f"dataset.data_files={{train: {text}, validation: {text}}}")
    data = build_data(cfg.dataset, cfg.model, 0)
    assert data.task == "mlm" and data.train["input_ids"].shape[1] == 16
    assert (data.train["labels"] != -100).any()


def test_local_image_folder(tmp_path):
    from PIL import Image

    for split in ("train", "val"):
        for label in ("cat", "dog"):
            folder = tmp_path / split / label
            folder.mkdir(parents=True)
            Image.new("RGB", (40, 30), (200 if label == "cat" else 10, 90, 30)).save(folder / "a.png")
    cfg = compose_run("model=vit_b16", "dataset=imagenet1k", f"dataset.path={tmp_path}", "dataset.image_size=32")
    data = build_data(cfg.dataset, cfg.model, 0)
    assert data.train["pixel_values"].shape == (2, 3, 32, 32)
    assert sorted(data.train["labels"].tolist()) == [0, 1]
