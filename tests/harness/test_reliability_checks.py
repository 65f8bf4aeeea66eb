"""Values and data files checked before any work, each with one line naming the value or file, line and expectation."""

from pathlib import Path

import pytest

from experiments import data
from experiments.data import build_data, check_dataset_config

from .cfg import compose_run

MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
MRPC_ROW = "1\t1\t2\tThe cat sat on the mat.\tA cat was on the mat.\n"
LISTOPS_HEADER = "Source\tTarget\n"


def files(train: Path, validation: Path | None = None) -> str:
    splits = f"train: {train}" + (f", validation: {validation}" if validation else "")
    return f"dataset.data_files={{{splits}}}"


def mrpc(tmp_path: Path, train: bytes, validation: bytes | None = None) -> list[str]:
    (tmp_path / "train.tsv").write_bytes(train)
    (tmp_path / "dev.tsv").write_bytes((MRPC_HEADER + MRPC_ROW).encode() if validation is None else validation)
    return ["dataset=mrpc", "dataset.seq_len=16", files(tmp_path / "train.tsv", tmp_path / "dev.tsv")]


def listops(tmp_path: Path, rows: str) -> list[str]:
    (tmp_path / "train.tsv").write_text(LISTOPS_HEADER + rows)
    return ["model=longformer_base", "dataset=listops", "dataset.seq_len=12",
            files(tmp_path / "train.tsv", tmp_path / "train.tsv")]


def check(*overrides: str) -> None:
    check_dataset_config(compose_run(*overrides).dataset)


@pytest.mark.parametrize(("train", "message"), [
    (b"", r"train.tsv: empty file \(dataset.data_files.train\); expected the train split's rows$"),
    (MRPC_HEADER.encode(), r"train.tsv: a header and no rows"),
    ((MRPC_HEADER + MRPC_ROW).encode() + b"0\t3\t4\tCaf\xe9 au lait.\tTea.\n",
     r"train.tsv:3: byte 0xe9 at column 10 is not UTF-8; expected UTF-8 text$"),
    ((MRPC_HEADER + MRPC_ROW + "5\t3\t4\tA.\tB.\n").encode(),
     r"train.tsv:3: Quality '5' is not a label; expected an integer 0 .. 1 \(dataset.num_labels=2\)$"),
    ((MRPC_HEADER + "yes\t3\t4\tA.\tB.\n").encode(), r"train.tsv:2: Quality 'yes' is not a label"),
    ((MRPC_HEADER + "1\t3\tA.\tB.\n").encode(), r"train.tsv:2: 4 fields, expected 5 \(the header's: Quality, #1 ID"),
    (b"label\tsentence1\n1\tA.\n", r"train.tsv:1: the header has none of the columns sentence2, #2 String"),
])
def test_a_damaged_glue_file_is_named_with_its_line(tmp_path, train, message):
    with pytest.raises(ValueError, match=message) as error:
        check(*mrpc(tmp_path, train))
    assert "\n" not in str(error.value)


def test_missing_validation_split_and_missing_file_are_named(tmp_path):
    (tmp_path / "train.tsv").write_text(MRPC_HEADER + MRPC_ROW)
    with pytest.raises(ValueError, match=r"^dataset.data_files has no 'validation' split \(splits given: train\); "
                                         r"expected dataset.data_files=\{train: PATH, validation: PATH\}$"):
        check("dataset=mrpc", files(tmp_path / "train.tsv"))
    with pytest.raises(ValueError, match=r"nowhere.tsv: no such file \(dataset.data_files.validation\)$"):
        check("dataset=mrpc", files(tmp_path / "train.tsv", tmp_path / "nowhere.tsv"))


def test_a_listops_token_outside_the_vocabulary_and_a_target_out_of_range(tmp_path):
    with pytest.raises(ValueError, match=r"train.tsv:3: token 'this' is not a ListOps symbol; expected one of 0 1 2"):
        check(*listops(tmp_path, "( [MAX 2 9 ] )\t9\n( [MIN this 3 ] )\t3\n"))
    with pytest.raises(ValueError, match=r"train.tsv:2: Target '10' is not a label; expected an integer 0 .. 9"):
        check(*listops(tmp_path, "( [MAX 2 9 ] )\t10\n"))


def test_a_wikitext_file_that_is_not_utf8(tmp_path):
    (tmp_path / "wiki.txt").write_bytes(b"good line\n\xff\xfe bad\n")
    with pytest.raises(ValueError, match=r"wiki.txt:2: byte 0xff at column 1 is not UTF-8"):
        check("dataset=wikitext103", files(tmp_path / "wiki.txt", tmp_path / "wiki.txt"))


def test_an_image_folder_without_a_val_folder(tmp_path):
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"no val/ folder \(dataset.path\)"):
        check("model=vit_b16", "dataset=imagenet1k", f"dataset.path={tmp_path}")


def test_good_files_pass_and_build_and_are_read_once_per_version(tmp_path, monkeypatch):
    overrides = mrpc(tmp_path, (MRPC_HEADER + MRPC_ROW * 3).encode())
    reads = []
    real = data._check_text
    monkeypatch.setattr(data, "_check_text", lambda path, split: reads.append(path) or real(path, split))
    for _ in range(3):  # a sweep's jobs in one process
        check(*overrides)
    assert len(reads) == 2  # train and validation, once
    (tmp_path / "train.tsv").write_text(MRPC_HEADER + MRPC_ROW * 4)  # a new version of the file is read again
    check(*overrides)
    assert len(reads) == 4
    cfg = compose_run(*overrides)
    assert build_data(cfg.dataset, cfg.model, 0).repeated_batch(4)["labels"].tolist() == [1] * 4


@pytest.mark.parametrize(("overrides", "message"), [
    (["dataset.train_size=0"], r"^dataset.train_size=0 must be >= 1$"),
    (["dataset.eval_size=0"], r"^dataset.eval_size=0 must be >= 1$"),
    (["dataset.band_size=0"], r"^dataset.band_size=0 must be >= 1$"),
    (["dataset.seq_len=4"], r"^dataset.seq_len=4 is too short for a sentence pair \(need >= 5\)$"),
    (["dataset=synthetic_lm", "dataset.vocab_size=5"], r"^dataset.vocab_size=5 must be >= 6$"),
    (["dataset=synthetic_lm", "dataset.num_labels=0"], r"^dataset.num_labels=0 must be >= 1$"),
    (["dataset=digits", "dataset.num_labels=11"], r"^dataset.num_labels=11 must be between 1 and 10$"),
    (["dataset=digits", "dataset.image_size=0"], r"^dataset.image_size=0 must be >= 1$"),
    (["dataset=imagenet1k", "dataset.num_workers=0"], r"^dataset.num_workers=0 must be >= 1$"),
])
def test_dataset_sizes_that_would_fail_later_are_refused_first(overrides, message):
    with pytest.raises(ValueError, match=message):
        check(*overrides)


# ----------------------------------------------------------------------------- a pretrained checkpoint out of reach


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    from experiments import models

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    models._checkpoint_problem.cache_clear()
    yield tmp_path / "hub"
    models._checkpoint_problem.cache_clear()


def check_checkpoint(*overrides: str) -> None:
    from experiments.models import check_checkpoint_available

    check_checkpoint_available(compose_run("model=tinybert", *overrides).model)


def test_an_unreachable_hub_fails_at_once_with_one_line(empty_hub_cache, monkeypatch):
    import time

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # the discard port: nothing listens, refused at once
    started = time.perf_counter()
    with pytest.raises(ValueError, match=r"^model.checkpoint='huawei-noah/TinyBERT_General_4L_312D' is neither a local "
                                         r"path nor in the Hugging Face cache .*, and 127.0.0.1:9 cannot be reached "
                                         r"\(ConnectionRefusedError.*: set model.pretrained=false") as error:
        check_checkpoint("model.pretrained=true")
    assert time.perf_counter() - started < 5 and "\n" not in str(error.value)


def test_offline_without_a_cached_checkpoint_fails_at_once(empty_hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError, match=r"and the hub is off \(HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE is set\)"):
        check_checkpoint("model.pretrained=true")


def test_a_cached_or_local_checkpoint_or_none_at_all_passes(empty_hub_cache, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    check_checkpoint("model.pretrained=false")
    check_checkpoint("model.pretrained=true", f"model.checkpoint={tmp_path}")
    # the layout huggingface_hub downloads into: refs/main names the snapshot holding the files
    repo = empty_hub_cache / "models--huawei-noah--TinyBERT_General_4L_312D"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    (repo / "snapshots" / "abc123" / "config.json").write_text("{}")
    check_checkpoint("model.pretrained=true")


@pytest.mark.parametrize("overrides", [["model.num_hidden_layers=0"], ["model.hidden_size=-8"],
                                       ["model.num_attention_heads=0"], ["model.intermediate_size=0"],
                                       ["model=longformer_base", "model.attention_window=0"]])
def test_model_sizes_below_one_are_refused_first(overrides):
    from experiments.models import check_model_config

    cfg = compose_run(*overrides)
    key, value = overrides[-1].split("=")
    with pytest.raises(ValueError, match=rf"^{key}={value} must be >= 1$"):
        check_model_config(cfg.model, cfg.dataset.task)
