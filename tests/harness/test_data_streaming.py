"""Data that streams: images decoded per sample by loader workers with timm's transforms (peak memory flat in the
number of images), training batches shared out by a DistributedSampler, WikiText tokenized once into an on-disk cache
read memory-mapped."""

import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from experiments import distributed
from experiments.data import build_data, check_dataset_config
from experiments.models import build_model

from .cfg import compose_run
from .conftest import REPO_ROOT, harness_env


def write_image_folder(root: Path, per_class: int, classes: int = 3, size: tuple[int, int] = (160, 120)) -> None:
    """JPEGs of noise (they compress like photographs, not like flat colour), in RGB, grayscale and CMYK as ImageNet
    holds them, under train/<wnid>/ and val/<wnid>/."""
    rng = np.random.default_rng(0)
    modes = ("RGB", "L", "CMYK")
    for split, count in (("train", per_class), ("val", 2)):
        for label in range(classes):
            folder = root / split / f"n{label:08d}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                mode = modes[i % len(modes)]
                channels = len(mode)
                pixels = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
                image = Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode=mode)
                image.save(folder / f"n{label:08d}_{i}.JPEG", format="JPEG", quality=90)


def image_overrides(root: Path, *extra: str) -> list[str]:
    return ["model=vit_tiny", "dataset=imagenet1k", f"dataset.path={root}", "dataset.num_labels=3",
            "dataset.num_workers=2", *extra]


# Builds the image data of a folder, reads one epoch of training batches and every evaluation batch, and prints the
# samples read, the peak RSS (KiB) of this process and the largest peak RSS of its training loader's workers (read from
# /proc while they are alive: RUSAGE_CHILDREN would also count processes the interpreter waited for before).
PEAK_RSS_SCRIPT = """
import itertools, os, resource, sys, torch
sys.path.insert(0, {repo!r})
from tests.harness.cfg import compose_run
from experiments.data import build_data, check_dataset_config
cfg = compose_run(*{overrides!r})
check_dataset_config(cfg.dataset)
data = build_data(cfg.dataset, cfg.model, 0)
batches = data.batches(8, torch.Generator().manual_seed(0))
seen = sum(len(batch["labels"]) for batch in itertools.islice(batches, data.train_samples // 8))
tasks = os.listdir("/proc/self/task")
workers = [pid for task in tasks for pid in open(f"/proc/self/task/{{task}}/children").read().split()]
status = [line for pid in workers for line in open(f"/proc/{{pid}}/status")]
worker_kib = max(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
seen += sum(len(batch["labels"]) for batch in data.eval_batches(8, None))
batches.close()
print(seen, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, worker_kib, len(workers))
"""


def test_image_peak_rss_is_flat_in_the_number_of_images(tmp_path):
    """N and 10 N training images, run side by side in fresh processes: the peak RSS of the training process and of
    its loader workers must not grow with the images. Decoding the split into one tensor (as before) would add
    216 images x 3 x 96 x 96 fp32 = 23 MiB for the tensor alone (the issue measured +250 MiB for 30 -> 450 images
    at 224 px)."""
    counts = {"small": 8, "large": 80}  # per class, 3 classes: 24 and 240 training images
    processes = {}
    for name, per_class in counts.items():
        write_image_folder(tmp_path / name, per_class)
        script = PEAK_RSS_SCRIPT.format(repo=str(REPO_ROOT), overrides=image_overrides(
            tmp_path / name, "dataset.image_size=96"))
        processes[name] = subprocess.Popen([sys.executable, "-c", script], cwd=REPO_ROOT, env=harness_env(),
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peaks = {}
    for name, process in processes.items():
        out, err = process.communicate(timeout=600)
        assert process.returncode == 0, err[-3000:]
        seen, main_kib, worker_kib, workers = map(int, out.split())
        assert workers == 2  # dataset.num_workers
        assert seen == counts[name] * 3 // 8 * 8 + 6  # whole training batches, then the 6 evaluation images
        peaks[name] = (main_kib, worker_kib)
    tolerance_kib = 8 * 1024
    assert peaks["large"][0] - peaks["small"][0] < tolerance_kib, peaks
    assert peaks["large"][1] - peaks["small"][1] < tolerance_kib, peaks


def test_images_get_randaugment_in_training_and_the_checkpoints_transform_in_evaluation(tmp_path):
    from timm.data import create_transform, resolve_data_config
    from timm.models import get_pretrained_cfg

    write_image_folder(tmp_path, 2)
    cfg = compose_run(*image_overrides(tmp_path, "dataset.image_size=32"))
    check_dataset_config(cfg.dataset)
    data = build_data(cfg.dataset, cfg.model, 0)
    assert data.train_samples == 6 and data.num_labels == 3
    assert "RandAugment" in repr(data.train.transform) and "RandAugment" not in repr(data.eval.transform)
    # evaluation: timm's transform of the checkpoint's pretrained_cfg (mean, std, crop_pct, interpolation)
    expected = create_transform(**resolve_data_config({"input_size": (3, 32, 32)},
                                                      pretrained_cfg=get_pretrained_cfg(cfg.model.arch).to_dict()))
    first = next(data.eval_batches(6, 1))
    for index, path in enumerate(sorted((tmp_path / "val").rglob("*.JPEG"))):  # grayscale and CMYK become RGB
        with Image.open(path) as image:
            assert torch.equal(first["pixel_values"][index], expected(image.convert("RGB")))
    assert first["labels"].tolist() == [0, 0, 1, 1, 2, 2]
    assert "mean (0.5, 0.5, 0.5) std (0.5, 0.5, 0.5) from timm's pretrained_cfg of vit_tiny_patch16_224" in \
        data.notes[0]
    # training: random crops and RandAugment, drawn in the workers from the loader's seed: reproducible
    one, two = (next(data.batches(6, torch.Generator().manual_seed(0)))["pixel_values"] for _ in range(2))
    assert one.shape == (6, 3, 32, 32) and torch.equal(one, two)
    assert not torch.equal(one, next(data.batches(6, torch.Generator().manual_seed(1)))["pixel_values"])


def test_the_vit_loss_uses_the_models_label_smoothing(tmp_path):
    write_image_folder(tmp_path, 2)
    cfg = compose_run(*image_overrides(tmp_path, "dataset.image_size=32"))
    data = build_data(cfg.dataset, cfg.model, 0)
    model = build_model(cfg.model, data).eval()
    batch = data.repeated_batch(4)
    out = model(**batch)
    assert cfg.model.label_smoothing == 0.1
    smoothed = torch.nn.functional.cross_entropy(out.logits, batch["labels"], label_smoothing=0.1)
    assert torch.allclose(out.loss, smoothed) and not torch.allclose(out.loss, torch.nn.functional.cross_entropy(
        out.logits, batch["labels"]))


@pytest.mark.parametrize(("overrides", "message"), [
    (["dataset.num_workers=0"], r"^dataset.num_workers=0 must be >= 1$"),
    (["dataset.train_augment=rand-m9-q3"], r"^dataset.train_augment='rand-m9-q3' is not a timm augmentation policy"),
    (["dataset.num_labels=4"], r"^dataset.num_labels=4 but .*/train has 3 class folders; set dataset.num_labels=3$"),
])
def test_bad_image_settings_are_refused_before_any_work(tmp_path, overrides, message):
    write_image_folder(tmp_path, 1)
    with pytest.raises(ValueError, match=message):
        check_dataset_config(compose_run(*image_overrides(tmp_path), *overrides).dataset)


def test_a_validation_class_the_training_set_lacks_is_refused(tmp_path):
    write_image_folder(tmp_path, 1)
    (tmp_path / "val" / "n99999999").mkdir()
    with pytest.raises(ValueError, match=r"val/n99999999: a class folder that .*/train lacks"):
        check_dataset_config(compose_run(*image_overrides(tmp_path)).dataset)


def test_ranks_train_on_disjoint_shares_of_each_epoch(monkeypatch):
    """Under DDP (three ranks here) each rank's batches of an epoch are its own samples; together they cover the set
    but for the remainder a DistributedSampler drops so that every rank gets as many."""
    cfg = compose_run("dataset.train_size=100")
    data = build_data(cfg.dataset, cfg.model, 0)
    labelled = dict(data.train, labels=torch.arange(100))  # each sample's label is its index
    data.train = labelled
    shares = []
    for rank in range(3):
        monkeypatch.setattr(distributed, "current", lambda rank=rank: distributed.Ranks(rank, rank, 3))
        batches = data.batches(11, torch.Generator().manual_seed(0))
        shares.append(torch.cat([batch["labels"] for batch in itertools.islice(batches, 3)]).tolist())
    assert all(len(share) == 33 for share in shares)
    assert len(set().union(*shares)) == 99  # disjoint: 99 different samples
    assert shares[0] != sorted(shares[0])  # shuffled
    monkeypatch.setattr(distributed, "current", lambda: distributed.Ranks(0, 0, 10))
    with pytest.raises(ValueError, match=r"^trainer.batch_size=11 is larger than the training set \(10 samples on "
                                         r"rank 0 of 10\)"):
        data.check_holds_batch(11)


WIKI_ARTICLE = [  # WikiText-103 raw as released: a space before each line, ' = Heading = ' lines, blank lines between
    " \n", " = Valkyria Chronicles III = \n", " \n",
    " The history of the game is long and varied , and its story is told in 3 parts . \n", " \n",
    " = = Gameplay = = \n", " \n", " The game is played in turns ; each turn the player moves 1 unit . \n",
]


def write_wikitext(folder: Path, articles: int) -> list[str]:
    """wiki.train.raw (``articles`` copies of an article, each with its own number), wiki.valid.raw and wiki.test.raw;
    the dataset overrides pointing at them."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, count in (("train", articles), ("valid", 4), ("test", 4)):
        text = "".join(line.replace("3", str(i)) for i in range(count) for line in WIKI_ARTICLE)
        (folder / f"wiki.{split}.raw").write_text(text)
    return ["dataset=wikitext103", "dataset.seq_len=16",
            f"dataset.data_files={{train: {folder}/wiki.train.raw, validation: {folder}/wiki.valid.raw}}"]


@pytest.fixture
def bert_tokenizer(tmp_path) -> list[str]:
    """A local BERT tokenizer (save_pretrained) and the model overrides that use it."""
    from transformers import BertTokenizerFast

    words = sorted({w for line in WIKI_ARTICLE for w in line.lower().split()} | set(map(str, range(100))))
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    BertTokenizerFast(vocab={word: i for i, word in enumerate(vocab)}).save_pretrained(tmp_path / "checkpoint")
    return ["model=bert_large", "model.pretrained=true", f"model.checkpoint={tmp_path}/checkpoint"]


@pytest.fixture
def tokenizer_calls(monkeypatch) -> list[int]:
    """The number of lines of each tokenizer call that makes token ids."""
    from experiments.tokenizers import TextTokenizer

    calls, real = [], TextTokenizer.token_ids
    monkeypatch.setattr(TextTokenizer, "token_ids", lambda self, texts: calls.append(len(texts)) or real(self, texts))
    return calls


def test_wikitext_is_tokenized_once_into_the_cache_and_read_from_it(tmp_path, data_cache, bert_tokenizer,
                                                                      tokenizer_calls):
    files = write_wikitext(tmp_path / "wikitext", 30)
    first = build_data(compose_run(*bert_tokenizer, *files).dataset, compose_run(*bert_tokenizer).model, 0)
    assert sum(tokenizer_calls) == 30 * 4 + 4 * 4  # the non-blank lines of wiki.train.raw and wiki.valid.raw, once
    (entry,) = [path for path in (data_cache / "text").iterdir() if path.is_dir()]
    assert f"token cache: {entry}" in first.notes and (entry / "meta.json").is_file()
    train_bin = entry / "train.bin"
    assert train_bin.stat().st_size == first.train_samples * 16 * 2 + train_bin.stat().st_size % 32  # uint16 ids
    written = train_bin.stat().st_mtime_ns

    tokenizer_calls.clear()  # another run, or another rank: the entry is read, nothing is tokenized
    again = build_data(compose_run(*bert_tokenizer, *files).dataset, compose_run(*bert_tokenizer).model, 0)
    assert tokenizer_calls == [] and train_bin.stat().st_mtime_ns == written
    assert isinstance(again.train.stream, np.memmap)  # read from the file, not loaded
    for one, two in zip(first.eval_batches(4, None), again.eval_batches(4, None), strict=True):
        assert all(torch.equal(one[key], two[key]) for key in one)  # masks too: drawn per block from data_seed
    longer = build_data(compose_run(*bert_tokenizer, *files, "dataset.seq_len=32").dataset,
                        compose_run(*bert_tokenizer).model, 0)
    assert tokenizer_calls == [] and longer.train_samples == first.train_samples // 2  # blocks are cut when read

    (tmp_path / "wikitext" / "wiki.train.raw").open("a").write(" One more line . \n")  # a new version of the file
    build_data(compose_run(*bert_tokenizer, *files).dataset, compose_run(*bert_tokenizer).model, 0)
    assert sum(tokenizer_calls) == 30 * 4 + 1 + 4 * 4
    assert len([path for path in (data_cache / "text").iterdir() if path.is_dir()]) == 2


def test_the_offline_wordpiece_is_trained_once_and_kept_with_the_ids(tmp_path, monkeypatch, tokenizer_calls):
    from experiments import tokenizers

    trained, real = [], tokenizers.train_wordpiece
    monkeypatch.setattr(tokenizers, "train_wordpiece", lambda corpus, size: trained.append(size) or real(corpus, size))
    files = write_wikitext(tmp_path / "wikitext", 10)
    cfg = compose_run("model=tinybert", "dataset.vocab_size=200", *files)
    first = build_data(cfg.dataset, cfg.model, 0)
    again = build_data(cfg.dataset, cfg.model, 0)
    assert trained == [200] and sum(tokenizer_calls) == 10 * 4 + 4 * 4  # trained and tokenized by the first only
    assert again.vocab_size == first.vocab_size and "offline WordPiece" in again.notes[0]
    assert torch.equal(first.repeated_batch(3)["input_ids"], again.repeated_batch(3)["input_ids"])


def test_ranks_that_start_together_tokenize_once(tmp_path, bert_tokenizer, tokenizer_calls):
    """Two builders at once (ranks of one run, or two runs): the entry's lock lets one tokenize, the other reads."""
    import threading

    files = write_wikitext(tmp_path / "wikitext", 30)
    cfg = compose_run(*bert_tokenizer, *files)
    built = []
    threads = [threading.Thread(target=lambda: built.append(build_data(cfg.dataset, cfg.model, 0)))
               for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(built) == 2 and sum(tokenizer_calls) == 30 * 4 + 4 * 4
    assert torch.equal(built[0].repeated_batch(8)["labels"], built[1].repeated_batch(8)["labels"])


def test_wikitext_memory_is_flat_in_the_corpus_size(tmp_path, bert_tokenizer, monkeypatch):
    """Python-heap peak (tracemalloc: strings, lists, numpy and torch CPU buffers alike) of tokenizing a corpus and
    reading an epoch of its blocks, for N and 10 N articles: the lines are read and tokenized a chunk at a time and the
    ids read back memory-mapped, so it does not grow. Tokenizing the whole corpus in one chunk (holding its lines and
    ids at once, as before) makes the 10 N peak megabytes larger here."""
    import tracemalloc

    from experiments import text_cache

    monkeypatch.setattr(text_cache, "_CHUNK", 50)
    peaks = {}
    for articles in (6, 60, 600):  # the first builds what is built once per process (imports, caches): not measured
        files = write_wikitext(tmp_path / f"wikitext{articles}", articles)
        cfg = compose_run(*bert_tokenizer, *files)
        tracemalloc.start()
        data = build_data(cfg.dataset, cfg.model, 0)
        batches = data.batches(4, torch.Generator().manual_seed(0))
        assert sum(len(b["input_ids"]) for b in itertools.islice(batches, data.train_samples // 4)) > 0
        peaks[articles] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peaks[600] - peaks[60] < 64 * 1024, peaks
