"""Dataset builders: the offline synthetic tasks, real loaders on small local files the tests write, the offline
tokenizer, masked-LM targets, and the dataset configs checked before any work."""

import sys
from pathlib import Path

import pytest
import torch

from experiments.data import LISTOPS_VOCAB, TaskData, build_data, check_dataset_config

from .cfg import CONF, compose_run

MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"  # the original msr_paraphrase TSV's columns
MRPC_ROWS = [
    '1\t1\t2\tThe cat sat on the mat.\tA cat was sitting on the mat "quietly.\n',  # GLUE's TSVs have stray quotes
    "0\t3\t4\tStocks fell sharply today.\tThe weather is sunny.\n",
    "1\t5\t6\tHe bought a new car.\tHe purchased a new car.\n",
]


def build(*overrides: str):
    cfg = compose_run(*overrides)
    check_dataset_config(cfg.dataset)
    return build_data(cfg.dataset, cfg.model, 0)


def test_every_dataset_config_passes_its_check():
    for path in sorted((Path(CONF) / "dataset").glob("*.yaml")):
        check_dataset_config(compose_run(f"dataset={path.stem}").dataset)


def test_synthetic_pairs_are_sentence_pairs_with_the_configured_label_noise():
    data = build("dataset.seq_len=11", "dataset.train_size=4000", "dataset.eval_size=10")
    ids, segments = data.train["input_ids"], data.train["token_type_ids"]
    assert ids.shape == (4000, 11) and data.seq_len == 11 and data.num_labels == 2
    assert (ids[:, 0] == 1).all() and (ids[:, 5] == 2).all() and (ids[:, 10] == 2).all()  # [CLS] a [SEP] b [SEP]
    assert segments[0].tolist() == [0] * 6 + [1] * 5
    # A pair's polar words come from one band (positive 5-14, negative 15-24); its label is that band, flipped
    # for dataset.label_noise = 10 % of the pairs.
    positive = ((ids >= 5) & (ids < 15)).any(1)
    negative = ((ids >= 15) & (ids < 25)).any(1)
    assert not (positive & negative).any()
    polar = positive | negative
    flipped = (data.train["labels"][polar] != negative[polar].long()).float().mean()
    assert 0.08 < flipped < 0.12
    assert 0.45 < data.train["labels"].float().mean() < 0.55
    # the data come from dataset.data_seed, not the run's seed
    again = build("dataset.seq_len=11", "dataset.train_size=4000", "dataset.eval_size=10", "seed=7")
    assert torch.equal(again.train["input_ids"], ids)


def test_synthetic_lm_masked_lm_targets():
    data = build("dataset=synthetic_lm", "dataset.task=mlm", "dataset.seq_len=64", "dataset.vocab_size=1000",
                 "dataset.train_size=200")
    inputs, labels = data.train["input_ids"], data.train["labels"]
    targets = labels != -100
    assert inputs.shape == (200, 64) and 0.13 < targets.float().mean() < 0.17
    masked = (inputs == 3)[targets].float().mean()  # [MASK] is id 3 of the offline vocabulary
    kept = (inputs == labels)[targets].float().mean()
    assert 0.76 < masked < 0.84 and 0.07 < kept < 0.14  # 80 % [MASK], 10 % kept (and 10 % random)
    assert (labels[targets] >= 5).all()  # special tokens are never targets


def write_mrpc(folder: Path) -> str:
    for split in ("train", "dev"):
        (folder / f"{split}.tsv").write_text(MRPC_HEADER + "".join(MRPC_ROWS))
    return f"dataset.data_files={{train: {folder}/train.tsv, validation: {folder}/dev.tsv}}"


def test_local_mrpc_tsv_goes_through_dataset_mrpc(tmp_path, caplog):
    with caplog.at_level("INFO"):
        data = build("dataset=mrpc", "dataset.seq_len=16", write_mrpc(tmp_path))
    train = data.repeated_batch(3)
    assert data.task == "pair_classification" and train["input_ids"].shape == (3, 16)
    assert train["labels"].tolist() == [1, 0, 1] and next(data.eval_batches(8, None))["labels"].tolist() == [1, 0, 1]
    first = train["input_ids"][0]
    assert first[0] == 1 and (first == 2).sum() == 2  # [CLS] a [SEP] b [SEP]
    assert train["token_type_ids"][0].max() == 1  # the second sentence is segment 1
    assert train["attention_mask"][0].sum() == (first != 0).sum()  # padded to seq_len in the batch
    assert "offline WordPiece" in data.notes[0] and "offline WordPiece" in caplog.text  # said in the log


def test_longformer_gets_no_segment_ids(tmp_path):
    data = build("model=longformer_base", "dataset=mrpc", "dataset.seq_len=16", write_mrpc(tmp_path))
    assert "token_type_ids" not in data.repeated_batch(2) and "token_type_ids" not in next(data.eval_batches(2, 1))


def test_glue_offline_without_files_names_the_override():
    with pytest.raises(RuntimeError, match=r"point it at a local copy with dataset\.data_files=") as error:
        build("dataset=sst2")
    assert "\n" not in str(error.value)


def test_hub_data_without_the_datasets_package_says_both_ways_out(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "datasets", None)  # the GPU machine's stack has no `datasets`: import fails
    with pytest.raises(RuntimeError) as error:
        build("dataset=sst2")
    assert str(error.value) == ("dataset 'sst2' is read from the Hugging Face hub with the `datasets` package, which "
                                "is not installed: pip install datasets, or point it at a local copy with "
                                "dataset.data_files={train: PATH, validation: PATH}")
    (tmp_path / "train.parquet").write_bytes(b"PAR1")
    with pytest.raises(RuntimeError, match=r"train\.parquet: parquet and JSON-lines files are read with the "
                                           r"`datasets` package, which is not installed") as error:
        build("dataset=sst2", f"dataset.data_files={{train: {tmp_path}/train.parquet, "
                              f"validation: {tmp_path}/train.parquet}}")
    assert "\n" not in str(error.value)


def test_the_hub_path_reads_glue_and_wikitext_as_the_hub_serves_them(monkeypatch):
    """The hub's own ids and column layouts (nyu-mll/glue: sentence(s), label, idx; Salesforce/wikitext: text, blank
    lines and " = Heading = " lines included), served by a stand-in for ``datasets.load_dataset``."""
    datasets = pytest.importorskip("datasets")

    served = {
        ("nyu-mll/glue", "sst2"): {split: {"sentence": ["a fine film ", "dull , dull , dull "] * 4, "label": [1, 0] * 4,
                                           "idx": list(range(8))} for split in ("train", "validation", "test")},
        ("nyu-mll/glue", "mrpc"): {split: {"sentence1": ["He said so ."] * 6,
                                           "sentence2": ['"He said so ," he said .'] * 6,
                                           "label": [1, 0, 1, 1, 0, 1], "idx": list(range(6))}
                                   for split in ("train", "validation", "test")},
        ("Salesforce/wikitext", "wikitext-103-raw-v1"): {
            split: {"text": ["", " = Valkyria Chronicles III = \n", ""] + [f" the game {i} is long and varied . \n"
                                                                       for i in range(60)]}
            for split in ("train", "validation", "test")},
    }
    asked = []

    def load_dataset(*args):
        asked.append(args)
        return datasets.DatasetDict({split: datasets.Dataset.from_dict(columns)
                                     for split, columns in served[args].items()})

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    sst2 = build("dataset=sst2", "dataset.seq_len=16")
    assert sst2.train_samples == 8 and sst2.repeated_batch(8)["labels"].tolist() == [1, 0] * 4
    mrpc = build("dataset=mrpc", "dataset.seq_len=24")
    assert mrpc.repeated_batch(6)["token_type_ids"][0].max() == 1  # the second sentence is segment 1
    wikitext = build("dataset=wikitext103", "dataset.seq_len=16")
    assert wikitext.task == "mlm" and wikitext.train_samples > 0
    assert asked == [("nyu-mll/glue", "sst2"), ("nyu-mll/glue", "mrpc"), ("Salesforce/wikitext", "wikitext-103-raw-v1")]


def test_local_listops_tsv(tmp_path):
    (tmp_path / "train.tsv").write_text("Source\tTarget\n( ( [MAX 2 9 ] 1 )\t9\n( [MIN 4 3 ] )\t3\n")
    data = build("model=longformer_base", "dataset=listops", "dataset.seq_len=12",
                 f"dataset.data_files={{train: {tmp_path}/train.tsv, validation: {tmp_path}/train.tsv}}")
    train = data.repeated_batch(2)
    assert train["labels"].tolist() == [9, 3] and data.num_labels == 10
    assert train["attention_mask"][1].tolist() == [1] * 7 + [0] * 5  # [CLS] ( [MIN 4 3 ] ) then padding
    symbols = ["(", "[MIN", "4", "3", "]", ")"]
    assert train["input_ids"][1, :7].tolist() == [1, *map(LISTOPS_VOCAB.index, symbols)]


def test_listops_without_files_says_where_to_get_them():
    with pytest.raises(RuntimeError, match=r"download the LRA release and set dataset\.data_files="):
        build("dataset=listops")


def test_local_wikitext_blocks_with_a_pretrained_tokenizer(tmp_path):
    """A local pretrained tokenizer whose [MASK] is not the offline vocabulary's id 3: targets use its ids."""
    from transformers import BertTokenizerFast

    words = ["the", "history", "of", "item", "is", "long", "and", "varied", ".", *map(str, range(40))]
    tokenizer = BertTokenizerFast(vocab={word: i for i, word in enumerate(["[PAD]", *words, "[UNK]", "[CLS]", "[SEP]",
                                                                           "[MASK]"])})
    tokenizer.save_pretrained(tmp_path / "checkpoint")
    lines = [f"the history of item {i} is long and varied ." for i in range(40)]
    (tmp_path / "wiki.txt").write_text("\n".join(lines))
    files = f"dataset.data_files={{train: {tmp_path}/wiki.txt, validation: {tmp_path}/wiki.txt}}"
    data = build("model=bert_large", "model.pretrained=true", f"model.checkpoint={tmp_path}/checkpoint",
                 "dataset=wikitext103", "dataset.seq_len=16", files)
    assert data.train_samples == len(stream := [i for line in lines for i in tokenizer(line, add_special_tokens=False)
                                                ["input_ids"]]) // 16  # the lines' tokens, cut into whole blocks
    batch = data.repeated_batch(data.train_samples)
    inputs, labels = batch["input_ids"], batch["labels"]
    assert data.task == "mlm" and inputs.shape[1] == 16 and data.vocab_size == len(tokenizer)
    assert torch.equal(torch.where(labels != -100, labels, inputs).flatten(), torch.tensor(stream[: inputs.numel()]))
    mask_id = tokenizer.mask_token_id
    assert mask_id != 3 and (inputs == mask_id).any() and ((inputs == mask_id) <= (labels != -100)).all()
    assert not torch.isin(labels, torch.tensor(tokenizer.all_special_ids)).any()
    assert f"tokenizer: {tmp_path}/checkpoint" in data.notes


def test_imagenet_without_a_folder_names_the_override():
    with pytest.raises(RuntimeError, match=r"set dataset\.path=DIR"):
        build("model=vit_b16", "dataset=imagenet1k")


def test_digits_keep_the_first_num_labels_classes():
    data = build("model=vit_tiny", "dataset=digits", "dataset.num_labels=3", "dataset.eval_size=50")
    assert data.train["pixel_values"].shape[1:] == (3, 32, 32) and data.num_labels == 3
    assert set(data.train["labels"].tolist()) == {0, 1, 2} and len(data.eval["labels"]) == 50


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["dataset.kind=imagenet"], r"^dataset.kind='imagenet' is not valid; valid: synthetic_pairs, synthetic_lm"),
        (["dataset.task=mlm"], r"^dataset.task='mlm' is not valid; valid: pair_classification$"),
        (["dataset.seq_len=abc"], r"^dataset.seq_len: Value 'abc' of type 'str' could not be converted to Integer"),
        (["dataset.seq_len=0"], r"^dataset.seq_len=0 must be >= 1$"),
        (["dataset.label_noise=2"], r"^dataset.label_noise=2.0 must be between 0.0 and 1.0$"),
        (["+dataset.text_columns=[a]"], r"^dataset.text_columns: Key 'text_columns' not in 'SyntheticPairsSchema'"),
    ],
)
def test_bad_dataset_configs_fail_with_one_line(overrides, message):
    with pytest.raises(ValueError, match=message):
        check_dataset_config(compose_run(*overrides).dataset)


def test_a_training_set_smaller_than_a_batch_is_refused_not_waited_on():
    data = TaskData("classification", {"x": torch.arange(3)}, {"x": torch.arange(3)}, num_labels=2)
    with pytest.raises(ValueError, match=r"^trainer.batch_size=4 is larger than the training set \(3 samples"):
        next(data.batches(4, torch.Generator()))
    assert data.repeated_batch(4)["x"].tolist() == [0, 1, 2, 0]
