"""Files shaped as the real releases ship them, each run through ``run.py`` as a user would (a tiny model, a few steps):
GLUE MRPC and SST-2 TSVs (unbalanced double quotes), the original Microsoft MRPC files (UTF-8 BOM, CRLF), WikiText-103
raw, the LRA ListOps TSVs and an ImageFolder of RGB, grayscale and CMYK JPEGs; malformed ones stop the run first with
one line naming the file."""

from pathlib import Path

import pytest

from .conftest import TINY_RUN, all_results
from .test_data_streaming import write_image_folder, write_wikitext

TINY_BERT = [arg for arg in TINY_RUN if not arg.startswith("dataset=")]
TRAINER = [arg for arg in TINY_RUN if arg.startswith("trainer.")]
MRPC_HEADER = "Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"
MRPC_ROWS = [  # as in GLUE's MRPC/train.tsv: quotes are text, some of them unbalanced
    '1\t702876\t702977\tAmrozi accused his brother , whom he called " the witness " , of deliberately distorting his '
    'evidence .\tReferring to him as only " the witness " , Amrozi accused his brother of deliberately distorting his '
    "evidence .",
    '0\t2108705\t2108831\tYucaipa owned Dominick \'s before selling the chain to Safeway in 1998 for $ 2.5 billion .\t'
    'He said "hello to them and sold the chain for $ 1.8 billion in 1998 .',
    "1\t1330381\t1330521\tThey had published an advertisement on the Internet on June 10 , offering the cargo for "
    "sale .\tOn June 10 , the ship 's owners had published an advertisement on the Internet , offering the explosives "
    "for sale .",
    '0\t3344667\t3344648\tAround 0335 GMT , Tab shares were up 19 cents , or 4.4 % , at A $ 4.56 .\tTab shares jumped '
    '20 cents , or 4.6 % , to set a record closing high at A $ 4.57 . "',
]
SST2_ROWS = [  # as in GLUE's SST-2/train.tsv: lower-cased, a trailing space, quotes unescaped
    "hide new secretions from the parental units \t0", "contains no wit , only labored gags \t0",
    'that loves its characters and communicates something rather beautiful about " human nature \t1',
    "remains utterly satisfied to remain the same throughout \t0", "the greatest musicians \t1",
    "are more deeply thought through than in most ` right-thinking ' films \t1",
]
LISTOPS_ROWS = [  # as in LRA's listops-1000/basic_train.tsv
    "( ( [MAX 2 9 ( [MIN 4 7 ] 0 ) ] ) )\t9", "( [MIN 4 ( [SM 3 5 ] ) 6 ] )\t4",
    "( ( [MED 1 ( [MAX 0 8 ] ) 3 ] ) )\t3", "( [SM ( [MIN 1 2 ] ) 7 9 ] )\t7",
    "( [MAX 1 2 ] )\t2", "( ( [SM 2 ( [MED 1 5 6 ] ) 1 ] ) )\t8",
]


def lines(path: Path, rows: list[str], header: str, newline: str = "\n", bom: bool = False, repeat: int = 3) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes((("\ufeff" if bom else "") + newline.join([header, *rows * repeat]) + newline).encode())
    return path


def files(train: Path, validation: Path) -> str:
    return f"dataset.data_files={{train: {train}, validation: {validation}}}"


def run_one(launch, runs_root: Path, *overrides: str, masks: bool = True) -> dict:
    """One run of ``run.py`` (pmdrop), its results.json checked to be a finished run (with dropout masks stored, when
    ``masks``)."""
    assert launch("variant=pmdrop", *overrides) == 0
    (result,) = all_results(runs_root).values()
    assert result["status"] == "ok", result.get("traceback") or result.get("error")
    assert result["steps"] == 4 and (result["saved_mask_bytes"] > 0 or not masks)
    return result


@pytest.fixture
def tiny_bert_checkpoint(tmp_path) -> list[str]:
    """A 1-layer BERT and its WordPiece tokenizer written by save_pretrained: the model overrides that load them."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    text = " ".join(MRPC_ROWS).lower().replace("\t", " ")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *sorted(set(text.split()))]
    folder = tmp_path / "tiny-bert"
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(folder)
    BertForSequenceClassification(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=64)).save_pretrained(folder)
    return [*TINY_BERT, "model.pretrained=true", f"model.checkpoint={folder}"]


def test_glue_mrpc_tsvs(launch, runs_root, tmp_path):
    glue = tmp_path / "glue_data" / "MRPC"
    result = run_one(launch, runs_root, *TINY_BERT, "dataset=mrpc", "dataset.seq_len=48", "dataset.vocab_size=200",
                     files(lines(glue / "train.tsv", MRPC_ROWS, MRPC_HEADER),
                           lines(glue / "dev.tsv", MRPC_ROWS[:2], MRPC_HEADER)))
    assert result["task_metric"] == "f1" and result["seq_len"] == 48 and 0 <= result["metrics"]["accuracy"] <= 1
    assert any("offline WordPiece" in note for note in result["notes"])


def test_the_original_microsoft_mrpc_files_with_a_pretrained_checkpoint(launch, runs_root, tmp_path,
                                                                       tiny_bert_checkpoint):
    """msr_paraphrase_train.txt / msr_paraphrase_test.txt start with a UTF-8 byte order mark and end lines with CRLF."""
    release = tmp_path / "MRPC"
    train = lines(release / "msr_paraphrase_train.txt", MRPC_ROWS, MRPC_HEADER, newline="\r\n", bom=True)
    test = lines(release / "msr_paraphrase_test.txt", MRPC_ROWS[1:], MRPC_HEADER, newline="\r\n", bom=True)
    # (masks: whether a model loaded by from_pretrained trains in train mode is the models' tests' concern)
    result = run_one(launch, runs_root, *tiny_bert_checkpoint, "dataset=mrpc", "dataset.seq_len=48",
                     files(train, test), masks=False)
    assert any(note.startswith("tokenizer: ") and "tiny-bert" in note for note in result["notes"])


def test_glue_sst2_tsvs(launch, runs_root, tmp_path):
    glue = tmp_path / "glue_data" / "SST-2"
    result = run_one(launch, runs_root, *TINY_BERT, "dataset=sst2", "dataset.seq_len=24", "dataset.vocab_size=200",
                     files(lines(glue / "train.tsv", SST2_ROWS, "sentence\tlabel"),
                           lines(glue / "dev.tsv", SST2_ROWS, "sentence\tlabel", repeat=1)))
    assert result["task_metric"] == "accuracy" and result["seq_len"] == 24


def test_wikitext_103_raw(launch, runs_root, tmp_path, data_cache):
    folder = tmp_path / "wikitext-103-raw"
    result = run_one(launch, runs_root, *TINY_BERT, *write_wikitext(folder, 20), "dataset.vocab_size=200",
                     f"dataset.data_files.validation={folder}/wiki.valid.raw")
    assert result["task_metric"] == "perplexity" and result["metrics"]["perplexity"] > 1
    assert any(note.startswith(f"token cache: {data_cache}") for note in result["notes"])


def test_lra_listops_tsvs(launch, runs_root, tmp_path):
    release = tmp_path / "listops-1000"
    header = "Source\tTarget"
    overrides = ["model=longformer_base", "model.num_hidden_layers=1", "model.hidden_size=32",
                 "model.num_attention_heads=2", "model.intermediate_size=64", "model.attention_window=8",
                 *TRAINER, "dataset=listops", "dataset.seq_len=32"]
    result = run_one(launch, runs_root, *overrides,
                     files(lines(release / "basic_train.tsv", LISTOPS_ROWS, header),
                           lines(release / "basic_val.tsv", LISTOPS_ROWS, header, repeat=1)))
    assert result["task_metric"] == "accuracy" and result["seq_len"] == 32


def test_an_imagenet_folder_of_rgb_grayscale_and_cmyk_jpegs(launch, runs_root, tmp_path):
    write_image_folder(tmp_path / "imagenet", 4)
    result = run_one(launch, runs_root, "model=vit_tiny", "+model.arch_overrides.depth=1", "model.arch_overrides."
                     "patch_size=8", "dataset=imagenet1k", f"dataset.path={tmp_path}/imagenet", "dataset.image_size=32",
                     "dataset.num_labels=3", "dataset.num_workers=2", *TRAINER)
    assert result["task_metric"] == "accuracy" and result["metrics"]["eval_loss"] > 0
    assert any("rand-m9-mstd0.5-inc1" in note for note in result["notes"])


def test_a_file_of_another_task_stops_the_run_before_training(launch, runs_root, tmp_path, capsys):
    sst2 = lines(tmp_path / "SST-2" / "train.tsv", SST2_ROWS, "sentence\tlabel")
    assert launch(*TINY_BERT, "dataset=mrpc", files(sst2, sst2)) == 1
    assert f"{sst2}:1: the header has none of the columns sentence1, #1 String (it has sentence, label)" in \
        capsys.readouterr().err
    assert not list(runs_root.rglob("results.json"))


def test_an_image_folder_with_an_empty_class_stops_the_run_before_training(launch, runs_root, tmp_path, capsys):
    write_image_folder(tmp_path, 1)
    (tmp_path / "train" / "n00000001" / "n00000001_0.JPEG").unlink()
    (tmp_path / "train" / "n00000001" / "readme.txt").write_text("not an image")
    assert launch("model=vit_tiny", "dataset=imagenet1k", f"dataset.path={tmp_path}", "dataset.num_labels=3",
                  "dataset.num_workers=1", *TRAINER) == 1
    assert f"{tmp_path}/train/n00000001: a class folder without images; expected files ending in .jpg" in \
        capsys.readouterr().err
    assert not list(runs_root.rglob("results.json"))


def test_an_image_that_is_not_one_is_named(tmp_path):
    from experiments.data import build_data, check_dataset_config

    from .cfg import compose_run

    write_image_folder(tmp_path, 1)
    broken = tmp_path / "val" / "n00000002" / "n00000002_1.JPEG"
    broken.write_bytes(b"<html>a download that failed</html>")
    cfg = compose_run("model=vit_tiny", "dataset=imagenet1k", f"dataset.path={tmp_path}", "dataset.num_labels=3",
                      "dataset.num_workers=1", "dataset.image_size=32")
    check_dataset_config(cfg.dataset)
    with pytest.raises(ValueError) as raised:  # decoded in a loader worker, whose traceback torch puts in the text
        list(build_data(cfg.dataset, cfg.model, 0).eval_batches(8, None))
    assert str(raised.value) == (f"{broken}: cannot be read as an image (UnidentifiedImageError); expected a JPEG, "
                                 "PNG or another format PIL reads")
