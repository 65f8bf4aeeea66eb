"""Datasets, one builder per ``dataset.kind`` (a registry), read through ``TaskData``'s ``DataLoader``.

Real data come from local files in the formats the releases ship (``data_files`` / ``path``; the layouts are in
conf/dataset/*.yaml), or from the hub through ``datasets``; offline without files a builder stops with a sentence
naming the override. Their memory does not grow with the data set where it could: images are decoded per sample by
loader workers (experiments/images.py), WikiText is tokenized once into an on-disk cache read memory-mapped
(experiments/text_cache.py), and GLUE and ListOps keep their token ids end to end, padded per batch (``TokenRows``).
The offline defaults need no download: ``synthetic_pairs`` (a sentence-pair task a small BERT learns in a few dozen
steps), ``synthetic_lm`` (token sequences of any length, for memory and throughput at paper scale) and ``digits``
(scikit-learn's shipped 8x8 digits, upsampled, for a small ViT), held in memory as tensors.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import MISSING, DictConfig, OmegaConf
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler, SequentialSampler, default_collate

from . import distributed, images, text_cache
from .schema import check_choice, check_range, typed
from .tokenizers import SPECIALS, TextTokenizer, load_tokenizer

PAD, CLS, SEP, MASK = (SPECIALS.index(s) for s in ("[PAD]", "[CLS]", "[SEP]", "[MASK]"))


# A split: equal-length tensors held in memory (the small and synthetic sets), or a dataset read per batch or per
# sample (images, token blocks of a memory-mapped corpus) whose ``__getitems__`` returns a batch or whose
# ``__getitem__`` returns a sample (a dict of tensors).
Split = dict[str, torch.Tensor] | Dataset


class _TensorRows(Dataset):
    """In-memory tensors as a dataset whose batches are taken by indexing every tensor at once."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        self.tensors = tensors

    def __len__(self) -> int:
        return len(next(iter(self.tensors.values())))

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        index = torch.tensor(indices, dtype=torch.long)
        return {key: value[index] for key, value in self.tensors.items()}


def _dataset(split: Split) -> Dataset:
    return _TensorRows(split) if isinstance(split, dict) else split


def _collate(samples: dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """A batch fetched whole (``__getitems__``) as it is; samples stacked."""
    return samples if isinstance(samples, dict) else default_collate(samples)


@dataclass
class TaskData:
    """Train and eval splits (see ``Split``) plus what the model builder needs to know.

    Batches come from a ``DataLoader``: a ``DistributedSampler`` gives each DDP rank (experiments/distributed.current)
    its disjoint share of a seeded permutation, reshuffled every epoch; splits read per sample are decoded by
    ``num_workers`` worker processes."""

    task: str
    train: Split
    eval: Split
    num_labels: int
    vocab_size: int | None = None  # text tasks
    seq_len: int | None = None
    image_size: int | None = None  # image tasks
    notes: list[str] = field(default_factory=list)
    num_workers: int = 0  # loader worker processes; 0: batches are read in the training process

    @property
    def train_samples(self) -> int:
        return len(_dataset(self.train))

    def check_holds_batch(self, batch_size: int) -> None:
        """The batch iterator yields whole batches only: from a rank's share smaller than one it would never yield."""
        ranks = distributed.current()
        share = self.train_samples // ranks.world_size
        if share < batch_size:
            where = f" on rank {ranks.rank} of {ranks.world_size}" if ranks.world_size > 1 else ""
            raise ValueError(f"trainer.batch_size={batch_size} is larger than the training set ({share} samples"
                             f"{where}): lower trainer.batch_size or use more training data")

    def _loader(self, split: Split, batch_sampler: BatchSampler, seed: int) -> DataLoader:
        """Its own generator seeds the workers (RandAugment's draws), so the global RNG (dropout's) is not used."""
        workers = 0 if isinstance(split, dict) else self.num_workers
        return DataLoader(_dataset(split), batch_sampler=batch_sampler, num_workers=workers, collate_fn=_collate,
                          persistent_workers=workers > 0, pin_memory=workers > 0 and torch.cuda.is_available(),
                          generator=torch.Generator().manual_seed(seed))

    def batches(self, batch_size: int, generator: torch.Generator) -> Iterator[dict[str, torch.Tensor]]:
        """Endless shuffled training batches of this rank; the permutation is seeded from ``generator`` (the same on
        every rank) and redrawn each epoch."""
        self.check_holds_batch(batch_size)
        ranks, seed = distributed.current(), int(torch.randint(0, 2**62, (), generator=generator))
        sampler = DistributedSampler(_dataset(self.train), num_replicas=ranks.world_size, rank=ranks.rank,
                                     shuffle=True, seed=seed, drop_last=True)
        loader = self._loader(self.train, BatchSampler(sampler, batch_size, drop_last=True), seed + ranks.rank)
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from loader

    def repeated_batch(self, batch_size: int) -> dict[str, torch.Tensor]:
        """``batch_size`` training samples in order, repeating them when the set is smaller than the batch: for a
        size probe or a memory plan, which need a batch's shapes, not an epoch."""
        dataset = _dataset(self.train)
        indices = [i % len(dataset) for i in range(batch_size)]
        if hasattr(dataset, "__getitems__"):
            return dataset.__getitems__(indices)
        return default_collate([dataset[i] for i in indices])

    def eval_batches(self, batch_size: int, max_batches: int | None) -> Iterator[dict[str, torch.Tensor]]:
        """The eval split in order, in batches (the last one may be short), the first ``max_batches`` of them."""
        order = SequentialSampler(range(len(_dataset(self.eval))))
        return itertools.islice(self._loader(self.eval, BatchSampler(order, batch_size, drop_last=False), 0),
                                max_batches)


@dataclass
class DatasetSchema:
    """The keys every dataset config has."""

    name: str = MISSING
    kind: str = MISSING
    task: str = MISSING
    seq_len: int | None = MISSING  # null for images
    metric: str | None = None  # the headline metric; None: the task's default


@dataclass
class SyntheticPairsSchema(DatasetSchema):
    band_size: int = MISSING
    polar_fraction: float = MISSING
    label_noise: float = 0.0
    train_size: int = MISSING
    eval_size: int = MISSING
    data_seed: int = MISSING


@dataclass
class SyntheticLMSchema(DatasetSchema):
    num_labels: int = MISSING
    vocab_size: int = MISSING
    train_size: int = MISSING
    eval_size: int = MISSING
    data_seed: int = MISSING


@dataclass
class DigitsSchema(DatasetSchema):
    num_labels: int = 10  # the digits 0 .. num_labels - 1
    image_size: int = MISSING
    eval_size: int = MISSING
    data_seed: int = MISSING


@dataclass
class LocalFilesSchema(DatasetSchema):
    """Real datasets: the hub, or local ``data_files`` ({split: path}) read with ``datasets``."""

    num_labels: int = MISSING
    eval_split: str = "validation"
    data_files: dict[str, Any] | None = None


@dataclass
class GlueSchema(LocalFilesSchema):
    glue_task: str = MISSING
    text_columns: list[list[str]] = MISSING  # per text, the column names to look for (GLUE's, then the original's)
    label_columns: list[str] = MISSING
    vocab_size: int = 30522  # of the offline WordPiece tokenizer


@dataclass
class WikitextSchema(LocalFilesSchema):
    vocab_size: int = 30522
    data_seed: int = MISSING
    cache_dir: str | None = None  # where token ids are cached; None: $PMDROP_DATA_CACHE, else ~/.cache/pmdrop


@dataclass
class ImageFolderSchema(DatasetSchema):
    num_labels: int = MISSING
    image_size: int = MISSING
    path: str | None = None
    train_augment: str | None = None  # timm's auto_augment string (RandAugment: rand-m9-mstd0.5-inc1); None: none
    num_workers: int = MISSING  # DataLoader worker processes decoding images (per rank)


Builder = Callable[[DictConfig, DictConfig, int], TaskData]


@dataclass(frozen=True)
class DatasetKind:
    build: Builder
    schema: type[DatasetSchema]
    tasks: tuple[str, ...]


DATASETS: dict[str, DatasetKind] = {}


def register(kind: str, schema: type[DatasetSchema], tasks: tuple[str, ...]):
    def add(build: Builder) -> Builder:
        DATASETS[kind] = DatasetKind(build, schema, tasks)
        return build

    return add


# Sizes that must be at least this (a zero would fail later: an empty split divides by zero, a zero band draws from
# an empty range, a vocabulary of only the special tokens has no words); keys a kind lacks are skipped.
_AT_LEAST = {"band_size": 1, "train_size": 1, "eval_size": 1, "num_labels": 1, "image_size": 1,
             "vocab_size": len(SPECIALS) + 1}


def check_dataset_config(dataset: DictConfig) -> None:
    """One-line ValueError for a wrong key, type, choice or range of the dataset config, then for its local files
    (``check_data_files``)."""
    check_choice("dataset.kind", dataset.kind, DATASETS)
    kind = DATASETS[dataset.kind]
    dataset = typed(kind.schema, dataset, "dataset")
    check_choice("dataset.task", dataset.task, kind.tasks)
    if dataset.seq_len is not None:
        check_range("dataset.seq_len", dataset.seq_len, 1)
    if dataset.kind == "synthetic_pairs" and dataset.seq_len < 5:
        raise ValueError(f"dataset.seq_len={dataset.seq_len} is too short for a sentence pair (need >= 5)")
    for key in ("polar_fraction", "label_noise"):
        if key in dataset:
            check_range(f"dataset.{key}", dataset[key], 0.0, 1.0)
    for key, low in _AT_LEAST.items():
        if key in dataset and not (key == "num_labels" and dataset.task == "mlm"):  # masked LM has no labels
            check_range(f"dataset.{key}", dataset[key], low)
    if dataset.kind == "digits":
        check_range("dataset.num_labels", dataset.num_labels, 1, 10)
    if dataset.kind == "imagefolder":
        check_range("dataset.num_workers", dataset.num_workers, 1)  # workers seed the augmentation draws
        images.check_augment(dataset.train_augment)
    check_data_files(dataset)


def build_data(dataset: DictConfig, model: DictConfig, seed: int) -> TaskData:
    check_choice("dataset.kind", dataset.kind, DATASETS)
    data = DATASETS[dataset.kind].build(dataset, model, seed)
    if model.get("type_vocab_size") == 1:  # one segment embedding (Longformer): pairs are told apart by [SEP] alone
        for split in (data.train, data.eval):
            if isinstance(split, dict):
                split.pop("token_type_ids", None)
            elif isinstance(split, TokenRows):
                split.segments = None
    return data


def _hub_dataset(dataset: DictConfig, override: str, *hub_args: str):
    """``datasets.load_dataset(*hub_args)``, or one line saying how to run without the hub (or without ``datasets``,
    which the GPU machine's stack lacks)."""
    try:
        import datasets

        return datasets.load_dataset(*hub_args)
    except ImportError as error:
        raise RuntimeError(f"dataset {dataset.name!r} is read from the Hugging Face hub with the `datasets` package, "
                           f"which is not installed: pip install datasets, or point it at a local copy with "
                           f"{override}") from error
    except Exception as error:  # offline: ConnectionError, HFValidationError, DatasetNotFoundError...
        raise RuntimeError(f"could not load dataset {dataset.name!r} from the Hugging Face hub "
                           f"({type(error).__name__}); offline, point it at a local copy with {override}") from error


# ----------------------------------------------------------------------------- offline synthetic tasks


@register("synthetic_pairs", SyntheticPairsSchema, ("pair_classification",))
def synthetic_pairs(dataset: DictConfig, model: DictConfig, seed: int) -> TaskData:
    """Sentence pairs ``[CLS] a [SEP] b [SEP]``: the label is the polarity of the pair's polar words,
    flipped for a fraction ``label_noise`` of the pairs.

    Each word is polar with probability ``polar_fraction`` (from the positive or the negative band, as the
    pair's polarity says) or neutral; so the polarity is readable from any polar word of either sentence, which
    a freshly initialised TinyBERT picks up within a few dozen steps. Data are fixed by ``dataset.data_seed``, not the
    run's seed, so every seed and variant sees the same train and eval sets.
    """
    band, sentence = dataset.band_size, (dataset.seq_len - 3) // 2  # seq_len >= 5: check_dataset_config
    generator = torch.Generator().manual_seed(dataset.data_seed)

    def make(n: int) -> dict[str, torch.Tensor]:
        polarity = torch.randint(0, 2, (n,), generator=generator)
        offset = torch.randint(0, band, (n, 2 * sentence), generator=generator)
        polar = len(SPECIALS) + polarity[:, None] * band + offset
        neutral = len(SPECIALS) + 2 * band + torch.randint(0, band, (n, 2 * sentence), generator=generator)
        words = torch.where(torch.rand(n, 2 * sentence, generator=generator) < dataset.polar_fraction, polar, neutral)
        column = torch.full((n, 1), 0)
        ids = torch.cat([column + CLS, words[:, :sentence], column + SEP, words[:, sentence:], column + SEP], dim=1)
        segment = torch.cat([torch.zeros(n, sentence + 2), torch.ones(n, sentence + 1)], dim=1).long()
        labels = polarity ^ (torch.rand(n, generator=generator) < dataset.label_noise).long()
        return {"input_ids": ids, "token_type_ids": segment, "attention_mask": torch.ones_like(ids), "labels": labels}

    return TaskData(
        "pair_classification", make(dataset.train_size), make(dataset.eval_size), 2,
        vocab_size=len(SPECIALS) + 3 * band, seq_len=2 * sentence + 3,
    )


@register("synthetic_lm", SyntheticLMSchema, ("classification", "mlm"))
def synthetic_lm(dataset: DictConfig, model: DictConfig, seed: int) -> TaskData:
    """Uniform random tokens of exactly ``seq_len``: for memory and throughput at the paper's shapes.

    ``task: mlm`` has BERT's masked-LM targets (see ``_mask_tokens``); ``task: classification`` labels a sequence
    by its first word, so the loss still falls.
    """
    generator = torch.Generator().manual_seed(dataset.data_seed)
    vocab = dataset.vocab_size

    def make(n: int) -> dict[str, torch.Tensor]:
        ids = torch.randint(len(SPECIALS), vocab, (n, dataset.seq_len), generator=generator)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if dataset.task == "mlm":
            return {**batch, **_mask_tokens(ids, generator, MASK, range(len(SPECIALS)), vocab)}
        return {**batch, "labels": ids[:, 0] % dataset.num_labels}

    return TaskData(dataset.task, make(dataset.train_size), make(dataset.eval_size),
                    dataset.num_labels, vocab_size=vocab, seq_len=dataset.seq_len)


def _mask_tokens(ids: torch.Tensor, generator: torch.Generator, mask_id: int, special_ids: Sequence[int],
                 vocab_size: int, fraction: float = 0.15) -> dict[str, torch.Tensor]:
    """BERT's masked-LM targets, drawn once: ``fraction`` of the non-special tokens are targets (labels; -100
    elsewhere), and of those 80 % become ``mask_id``, 10 % a random token, 10 % stay as they are."""
    targets = (torch.rand(ids.shape, generator=generator) < fraction) & ~torch.isin(ids, torch.tensor(special_ids))
    draw = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(0, vocab_size, ids.shape, generator=generator)
    inputs = torch.where(targets & (draw < 0.8), mask_id, ids)
    inputs = torch.where(targets & (draw >= 0.8) & (draw < 0.9), random_ids, inputs)
    return {"input_ids": inputs, "labels": torch.where(targets, ids, -100)}


@register("digits", DigitsSchema, ("image_classification",))
def digits(dataset: DictConfig, model: DictConfig, seed: int) -> TaskData:
    """scikit-learn's 1,797 8x8 digit images (shipped with the package), upsampled to ``image_size``; the
    classes are the digits ``0 .. num_labels - 1``."""
    from sklearn.datasets import load_digits

    images, labels = load_digits(return_X_y=True)
    kept = labels < dataset.num_labels
    images, labels = images[kept], labels[kept]
    pixels = torch.tensor(images, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    pixels = torch.nn.functional.interpolate(pixels, size=dataset.image_size, mode="bilinear").expand(-1, 3, -1, -1)
    pixels = (pixels - 0.5) / 0.5
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(dataset.data_seed))
    split = len(order) - dataset.eval_size
    data = {"pixel_values": pixels.contiguous(), "labels": torch.tensor(labels)}
    train = {k: v[order[:split]] for k, v in data.items()}
    held_out = {k: v[order[split:]] for k, v in data.items()}
    return TaskData("image_classification", train, held_out, dataset.num_labels, image_size=dataset.image_size)


# ----------------------------------------------------------------------------- real datasets


class TokenRows(Dataset):
    """Token sequences of varying length held end to end (one flat array and offsets: memory in proportion to the
    tokens, not to rows x ``seq_len``), padded to ``seq_len`` per batch; segment ids too when the rows are pairs."""

    def __init__(self, rows: Sequence[Sequence[int]], labels: Sequence[int], seq_len: int, pad_id: int,
                 segments: Sequence[Sequence[int]] | None = None) -> None:
        lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
        self.offsets = np.concatenate([[0], np.cumsum(lengths)])
        self.tokens = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.int32, count=int(self.offsets[-1]))
        self.segments = None if segments is None else np.fromiter(
            itertools.chain.from_iterable(segments), dtype=np.uint8, count=int(self.offsets[-1]))
        self.labels = torch.tensor(list(labels), dtype=torch.long)
        self.seq_len, self.pad_id = seq_len, pad_id

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        ids = torch.full((len(indices), self.seq_len), self.pad_id, dtype=torch.long)
        mask, segments = torch.zeros_like(ids), torch.zeros_like(ids)
        for row, index in enumerate(indices):
            start, end = self.offsets[index], self.offsets[index + 1]
            ids[row, : end - start] = torch.from_numpy(self.tokens[start:end].astype(np.int64))
            mask[row, : end - start] = 1
            if self.segments is not None:
                segments[row, : end - start] = torch.from_numpy(self.segments[start:end].astype(np.int64))
        batch = {"input_ids": ids, "attention_mask": mask, "labels": self.labels[indices]}
        return batch if self.segments is None else {**batch, "token_type_ids": segments}


def _local_columns(path: Path) -> dict[str, list]:
    """A local table's columns: text tables read as the checks read them (``_table_rows``); parquet or JSON lines
    with ``datasets``."""
    if path.suffix in (".tsv", ".txt", ".csv"):
        header, rows = _table_rows(path)
        columns: dict[str, list] = {name: [] for name in header}
        for _, fields in rows:
            for name, value in zip(header, fields, strict=True):
                columns[name].append(value)
        return columns
    try:
        import datasets
    except ImportError as error:
        raise RuntimeError(f"{path}: parquet and JSON-lines files are read with the `datasets` package, which is not "
                           "installed: pip install datasets, or give the split as a .tsv, .txt or .csv") from error
    table = datasets.load_dataset("parquet" if path.suffix == ".parquet" else "json", data_files=str(path))["train"]
    return {name: table[name] for name in table.column_names}


def _split_columns(dataset: DictConfig, hub_args: tuple[str, ...]) -> dict[str, dict[str, list]]:
    """The train and eval splits' columns: local ``data_files`` (tsv/txt/csv/parquet/json) or the hub."""
    if dataset.get("data_files"):
        return {split: _local_columns(path) for split, path in _split_paths(dataset).items()}
    tables = _hub_dataset(dataset, "dataset.data_files={train: PATH, validation: PATH}", *hub_args)
    return {split: {name: tables[split][name] for name in tables[split].column_names}
            for split in ("train", dataset.eval_split)}


def _column(table: dict[str, list], names: list[str]) -> list:
    for name in names:
        if name in table:
            return table[name]
    raise ValueError(f"none of the columns {names} is in the data (columns: {list(table)})")


def _encode_text_pairs(dataset: DictConfig, model: DictConfig, tables: dict[str, dict[str, list]],
                       text_columns: list[list[str]]) -> TaskData:
    """Tokenise one or two text columns and the label column of the train and eval splits."""
    train_texts = [_column(tables["train"], names) for names in text_columns]
    tokenizer = load_tokenizer(model, dataset, corpus=[t for column in train_texts for t in column])

    def encode(table: dict[str, list]) -> TokenRows:
        texts = [_column(table, names) for names in text_columns]
        ids, types = tokenizer.encode(texts[0], texts[1] if len(texts) > 1 else None, max_length=dataset.seq_len)
        labels = [int(float(v)) for v in _column(table, dataset.label_columns)]
        return TokenRows(ids, labels, dataset.seq_len, tokenizer.pad_id, types)

    return TaskData(dataset.task, encode(tables["train"]), encode(tables[dataset.eval_split]), dataset.num_labels,
                    vocab_size=tokenizer.vocab_size, seq_len=dataset.seq_len, notes=[tokenizer.source])


@register("glue", GlueSchema, ("pair_classification", "classification"))
def glue(dataset: DictConfig, model: DictConfig, seed: int) -> TaskData:
    """GLUE MRPC / SST-2: hub ``nyu-mll/glue`` or local files in GLUE's or the original TSV column names."""
    tables = _split_columns(dataset, ("nyu-mll/glue", dataset.glue_task))
    return _encode_text_pairs(dataset, model, tables, [list(names) for names in dataset.text_columns])


class MaskedBlocks(Dataset):
    """``seq_len``-token blocks of a token stream (a memory map: read per batch, never held), with BERT's masked-LM
    targets drawn per block from ``(data_seed, split, block)``: the same for every run, order and rank."""

    def __init__(self, stream: np.ndarray, seq_len: int, data_seed: int, split: int, tokenizer: TextTokenizer) -> None:
        self.stream, self.seq_len, self.seeds = stream, seq_len, (data_seed, split)
        self.mask_id, self.special_ids, self.vocab_size = tokenizer.mask_id, tokenizer.special_ids, tokenizer.vocab_size

    def __len__(self) -> int:
        return len(self.stream) // self.seq_len

    def __getitems__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        rows = []
        for index in indices:
            block = self.stream[index * self.seq_len : (index + 1) * self.seq_len]
            seed = int(np.random.SeedSequence([*self.seeds, index]).generate_state(1, np.uint64)[0] >> 1)
            rows.append(_mask_tokens(torch.from_numpy(block.astype(np.int64))[None], torch.Generator().manual_seed(
                seed), self.mask_id, self.special_ids, self.vocab_size))
        masked = {key: torch.cat([row[key] for row in rows]) for key in ("input_ids", "labels")}
        return {"attention_mask": torch.ones_like(masked["input_ids"]), **masked}


def _wikitext_sources(dataset: DictConfig) -> dict[str, text_cache.TextSource]:
    """The train and eval splits' text: local files (``data_files``), else the hub's raw WikiText-103."""
    if dataset.get("data_files"):
        return {split: text_cache.file_source(path) for split, path in _split_paths(dataset).items()}
    tables = _hub_dataset(dataset, "dataset.data_files={train: wiki.train.raw, validation: wiki.valid.raw}",
                          "Salesforce/wikitext", "wikitext-103-raw-v1")
    return {split: text_cache.table_source(tables[split], f"Salesforce/wikitext-103-raw-v1 {split}")
            for split in ("train", dataset.eval_split)}


@register("wikitext", WikitextSchema, ("mlm",))
def wikitext(dataset: DictConfig, model: DictConfig, seed: int) -> TaskData:
    """WikiText-103 for masked-LM perplexity: non-blank lines tokenised once into the on-disk cache
    (experiments/text_cache.py), concatenated and cut into ``seq_len`` blocks read from the memory map."""
    root = Path(str(dataset.cache_dir)) if dataset.get("cache_dir") else text_cache.default_root()
    tokenizer, streams, entry = text_cache.token_streams(_wikitext_sources(dataset), model, dataset, root / "text")
    splits = {}
    for number, (split, stream) in enumerate(streams.items()):
        splits[split] = MaskedBlocks(stream, dataset.seq_len, dataset.data_seed, number, tokenizer)
        if not len(splits[split]):
            raise ValueError(f"the {split} text has {len(stream)} tokens, fewer than dataset.seq_len={dataset.seq_len}")
    return TaskData("mlm", splits["train"], splits[dataset.eval_split], 0, vocab_size=tokenizer.vocab_size,
                    seq_len=dataset.seq_len, notes=[tokenizer.source, f"token cache: {entry}"])


LISTOPS_VOCAB = [*SPECIALS, *[str(d) for d in range(10)], "[MIN", "[MAX", "[MED", "[SM", "]", "(", ")"]


@register("listops", LocalFilesSchema, ("classification",))
def listops(dataset: DictConfig, model: DictConfig, seed: int) -> TaskData:
    """LRA ListOps from local TSVs (``Source`` expression, ``Target`` 0-9); the symbols are the vocabulary."""
    if not dataset.get("data_files"):
        raise RuntimeError(
            "LRA ListOps is not on the hub: download the LRA release and set "
            "dataset.data_files={train: basic_train.tsv, validation: basic_val.tsv}"
        )
    index = {symbol: i for i, symbol in enumerate(LISTOPS_VOCAB)}

    def encode(path: Path) -> TokenRows:
        header, rows = _table_rows(path)
        source, target = header.index("Source"), header.index("Target")  # check_data_files: both are there
        ids, labels = [], []
        for _, fields in rows:
            ids.append([CLS, *(index[s] for s in _listops_symbols(fields[source]))][: dataset.seq_len])
            labels.append(int(float(fields[target])))
        return TokenRows(ids, labels, dataset.seq_len, PAD)

    paths = _split_paths(dataset)
    return TaskData("classification", encode(paths["train"]), encode(paths[dataset.eval_split]), 10,
                    vocab_size=len(LISTOPS_VOCAB), seq_len=dataset.seq_len)


def _listops_symbols(source: str) -> list[str]:
    return source.replace("(", " ( ").replace(")", " ) ").split()


@register("imagefolder", ImageFolderSchema, ("image_classification",))
def imagefolder(dataset: DictConfig, model: DictConfig, seed: int) -> TaskData:
    """ImageNet-1k (or any class-per-folder tree) from a local directory with ``train/`` and ``val/``, read per
    sample by ``num_workers`` loader workers with timm's transforms of ``model.arch`` (experiments/images.py)."""
    if not dataset.get("path"):
        raise RuntimeError("ImageNet-1k needs a local copy: set dataset.path=DIR (with train/ and val/ class folders)")
    root = Path(str(dataset.path))
    classes = images.class_folders(root)
    config = images.data_config(model.arch, dataset.image_size)
    train_transform, eval_transform = images.transforms(config, dataset.train_augment)
    train = images.ImageFolderSplit(root / "train", classes, train_transform)
    held_out = images.ImageFolderSplit(images.eval_folder(root), classes, eval_transform)
    return TaskData("image_classification", train, held_out, len(classes), image_size=dataset.image_size,
                    notes=[images.describe(config, dataset.train_augment, model.arch)],
                    num_workers=dataset.num_workers)


# ----------------------------------------------------------------------------- local files, checked before any run


def _check_text(path: Path, split: str) -> None:
    """The file exists, is not empty and is UTF-8 (read line by line: a corpus is not held)."""
    try:
        file = path.open("rb")
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (dataset.data_files.{split})") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot be read ({error.strerror}; dataset.data_files.{split})") from None
    empty = True
    with file:
        for number, line in enumerate(file, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(f"{path}:{number}: byte 0x{line[error.start]:02x} at column {error.start + 1} is not "
                                 "UTF-8; expected UTF-8 text") from None
            empty = empty and not line.strip()
    if empty:
        raise ValueError(f"{path}: empty file (dataset.data_files.{split}); expected the {split} split's rows")


def _table_rows(path: Path) -> tuple[list[str], Iterator[tuple[int, list[str]]]]:
    """The header and ``(line number, fields)`` of each row, read from the file as it goes (tabs for .tsv/.txt,
    commas for .csv; quotes kept verbatim, as GLUE's TSVs hold unbalanced ones; a UTF-8 byte order mark, which the
    original MRPC files start with, dropped); a row with another field count than the header is refused."""
    delimiter = "," if path.suffix == ".csv" else "\t"
    file = path.open(encoding="utf-8-sig", newline="")
    reader = csv.reader(file, delimiter=delimiter, quoting=csv.QUOTE_NONE)
    header = next(reader, [])

    def rows() -> Iterator[tuple[int, list[str]]]:
        with file:
            for fields in reader:
                if not fields:
                    continue
                if len(fields) != len(header):
                    raise ValueError(f"{path}:{reader.line_num}: {len(fields)} fields, expected {len(header)} (the "
                                     f"header's: {', '.join(header)})")
                yield reader.line_num, fields

    return header, rows()


def _find_column(path: Path, header: list[str], names: Sequence[str]) -> int:
    for name in names:
        if name in header:
            return header.index(name)
    raise ValueError(f"{path}:1: the header has none of the columns {', '.join(names)} (it has {', '.join(header)})")


def _check_label(path: Path, number: int, value: str, num_labels: int, column: str) -> None:
    try:
        label = float(value)
    except ValueError:
        label = math.nan
    if not label.is_integer() or not 0 <= label < num_labels:
        raise ValueError(f"{path}:{number}: {column} {value!r} is not a label; expected an integer 0 .. "
                         f"{num_labels - 1} (dataset.num_labels={num_labels})")


def _split_paths(dataset: DictConfig) -> dict[str, Path]:
    """The local files of the train and eval splits; a missing split is refused."""
    files = {str(split): Path(str(path)) for split, path in dataset.data_files.items()}
    for split in ("train", dataset.eval_split):
        if split not in files:
            raise ValueError(f"dataset.data_files has no {split!r} split (splits given: {', '.join(files) or 'none'});"
                             f" expected dataset.data_files={{train: PATH, {dataset.eval_split}: PATH}}")
    return {split: files[split] for split in ("train", dataset.eval_split)}


RowCheck = Callable[[int, list[str]], None]  # (line number, fields) -> raises on a bad row


def _check_tables(dataset: DictConfig, check_row: Callable[[Path, list[str]], RowCheck]) -> None:
    """Each split's file as a table (text formats only: parquet and JSON files are checked to exist and hold data)."""
    for split, path in _split_paths(dataset).items():
        if path.suffix not in (".tsv", ".txt", ".csv"):
            _check_size(path, split)
            continue
        _check_text(path, split)
        header, rows = _table_rows(path)
        check = check_row(path, header)
        count = 0
        for number, fields in rows:
            check(number, fields)
            count += 1
        if not count:
            raise ValueError(f"{path}: a header and no rows (dataset.data_files.{split}); expected the {split} "
                             "split's rows")


def _check_size(path: Path, split: str) -> None:
    try:
        empty = path.stat().st_size == 0
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file (dataset.data_files.{split})") from None
    if empty:
        raise ValueError(f"{path}: empty file (dataset.data_files.{split}); expected the {split} split's rows")


def _check_glue_files(dataset: DictConfig) -> None:
    def row_check(path: Path, header: list[str]) -> RowCheck:
        for names in dataset.text_columns:
            _find_column(path, header, list(names))
        label = _find_column(path, header, list(dataset.label_columns))
        return lambda number, fields: _check_label(path, number, fields[label], dataset.num_labels, header[label])

    _check_tables(dataset, row_check)


def _check_listops_files(dataset: DictConfig) -> None:
    symbols = set(LISTOPS_VOCAB[len(SPECIALS):])

    def row_check(path: Path, header: list[str]) -> RowCheck:
        source, target = _find_column(path, header, ["Source"]), _find_column(path, header, ["Target"])

        def check(number: int, fields: list[str]) -> None:
            for token in _listops_symbols(fields[source]):
                if token not in symbols:
                    raise ValueError(f"{path}:{number}: token {token!r} is not a ListOps symbol; expected one of "
                                     f"{' '.join(LISTOPS_VOCAB[len(SPECIALS):])}")
            _check_label(path, number, fields[target], 10, "Target")

        return check

    _check_tables(dataset, row_check)


def _check_text_files(dataset: DictConfig) -> None:
    for split, path in _split_paths(dataset).items():
        _check_text(path, split)


def _check_image_folder(dataset: DictConfig) -> None:
    root = Path(str(dataset.path))
    if not (root / "train").is_dir():
        raise ValueError(f"{root}: no train/ folder (dataset.path); expected train/ and val/ with a folder per class")
    eval_folder = images.eval_folder(root)
    if eval_folder is None:
        raise ValueError(f"{root}: no val/ folder (dataset.path); expected train/ and val/ with a folder per class")
    classes = images.class_folders(root)
    if len(classes) != dataset.num_labels:
        raise ValueError(f"dataset.num_labels={dataset.num_labels} but {root}/train has {len(classes)} class folders; "
                         f"set dataset.num_labels={len(classes)}")
    unknown = sorted({entry.name for entry in os.scandir(eval_folder) if entry.is_dir()} - set(classes))
    if unknown:
        raise ValueError(f"{eval_folder}/{unknown[0]}: a class folder that {root}/train lacks; expected the training "
                         "classes only")
    images.check_classes_hold_images(root / "train", classes)


# Per dataset kind: the check of its local files, and the config key that names them (unset: the hub, or an error
# from the builder saying what to set).
_FILE_CHECKS: dict[str, tuple[str, Callable[[DictConfig], None]]] = {
    "glue": ("data_files", _check_glue_files),
    "listops": ("data_files", _check_listops_files),
    "wikitext": ("data_files", _check_text_files),
    "imagefolder": ("path", _check_image_folder),
}
_checked_files: set[str] = set()


def _file_versions(dataset: DictConfig, key: str) -> list:
    paths = [dataset.path] if key == "path" else list(dataset.data_files.values())
    versions = []
    for path in map(Path, map(str, paths)):
        try:
            stat = path.stat()
            versions.append((str(path), stat.st_size, stat.st_mtime_ns))
        except OSError:
            versions.append((str(path), None, None))
    return versions


def check_data_files(dataset: DictConfig) -> None:
    """One-line ValueError naming the file, the line and what was expected: a missing or empty file, bytes that are not
    UTF-8, a split the config asks for and the files lack, a row of the wrong width, a missing column, a label out of
    range, a ListOps token outside the vocabulary. Each file version is read once per process, so a sweep's jobs pay
    for it once, before the first run."""
    if dataset.kind not in _FILE_CHECKS:
        return
    key, check = _FILE_CHECKS[dataset.kind]
    if not dataset.get(key):
        return
    fingerprint = json.dumps([OmegaConf.to_container(dataset, resolve=True), _file_versions(dataset, key)],
                             sort_keys=True, default=str)
    if fingerprint in _checked_files:
        return
    check(dataset)
    _checked_files.add(fingerprint)


__all__ = ["DATASETS", "TaskData", "build_data", "check_data_files", "check_dataset_config"]
