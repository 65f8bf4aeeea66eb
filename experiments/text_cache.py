"""A corpus tokenized once into a cache on disk and read memory-mapped (WikiText-103: ~540 MB of text, ~120 M tokens).

An entry of the cache holds each split's token ids, concatenated, as one flat binary file (uint16 when the vocabulary
fits, else int32), the offline tokenizer when one was trained, and ``meta.json``. Its key is a digest of what
determines the ids: the tokenizer (the checkpoint's, by the digest of its serialised form; or the offline WordPiece's
vocabulary size and training text), each split's source (a file's path, size and modification time; a hub table's
fingerprint) and the versions of ``tokenizers`` and ``transformers``. The block length is not in it: blocks are views
of the stream, cut at read time.

Runs and DDP ranks share entries: the first process to take the entry's lock (``flock`` on ``<key>.lock``) builds it
in a temporary directory and renames it into place, so an entry is complete or absent; the others wait on the lock and
then read it. Nothing of the corpus stays in memory: lines are read, tokenized and written in chunks (a progress bar
counts the bytes), and the ids are read back with ``numpy.memmap``.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from .tokenizers import TextTokenizer, load_tokenizer

CACHE_FORMAT = 1  # bump when the layout or the way lines become ids changes
_CHUNK = 10_000  # lines per tokenizer call: bounds the Python strings alive at once

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextSource:
    """One split's text: what identifies it (for the cache key), its size for the progress bar (``unit``s), and a
    reader yielding ``(lines, progress)`` chunks."""

    identity: list
    total: int
    unit: str
    chunks: Callable[[], Iterator[tuple[list[str], int]]]

    def lines(self) -> Iterator[str]:
        for lines, _ in self.chunks():
            yield from lines


def file_source(path: Path) -> TextSource:
    """A text file's non-blank lines (WikiText's ``wiki.*.raw``: headings kept, blank lines dropped)."""
    stat = path.stat()

    def chunks() -> Iterator[tuple[list[str], int]]:
        lines, size = [], 0
        with path.open("rb") as file:
            for raw in file:
                size += len(raw)
                line = raw.decode("utf-8").rstrip("\n")
                if line.strip():
                    lines.append(line)
                if len(lines) == _CHUNK:
                    yield lines, size
                    lines, size = [], 0
        yield lines, size

    return TextSource([str(path.resolve()), stat.st_size, stat.st_mtime_ns], stat.st_size, "B", chunks)


def table_source(table, name: str) -> TextSource:
    """The non-blank ``text`` rows of a ``datasets`` table (a hub download), identified by its fingerprint."""

    def chunks() -> Iterator[tuple[list[str], int]]:
        for batch in table.iter(batch_size=_CHUNK):
            yield [line for line in batch["text"] if line.strip()], len(batch["text"])

    return TextSource([name, table._fingerprint], len(table), "rows", chunks)


def default_root() -> Path:
    return Path(os.environ.get("PMDROP_DATA_CACHE") or Path.home() / ".cache" / "pmdrop")


def _fingerprint(tokenizer: TextTokenizer) -> str:
    backend = tokenizer.tokenizer
    serialised = (backend.backend_tokenizer.to_str() if backend.is_fast
                  else json.dumps(sorted(backend.get_vocab().items())))
    return hashlib.sha256(f"{type(backend).__name__}\n{serialised}".encode()).hexdigest()


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    with path.open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("waiting for %s: another process is building that cache entry", path)
            fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _write_stream(source: TextSource, tokenizer: TextTokenizer, dtype: np.dtype, path: Path, split: str) -> int:
    tokens = 0
    with path.open("wb") as out, tqdm(total=source.total, unit=source.unit, unit_scale=True, mininterval=1.0,
                                      desc=f"tokenizing {split}") as bar:
        for lines, progress in source.chunks():
            ids = tokenizer.token_ids(lines).astype(dtype)
            out.write(ids.tobytes())
            tokens += len(ids)
            bar.update(progress)
    return tokens


def _build(entry: Path, sources: dict[str, TextSource], tokenizer: TextTokenizer | None, model: DictConfig,
           dataset: DictConfig) -> None:
    """The entry, built in a temporary directory beside it and renamed into place when complete."""
    building = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f"{entry.name}.building-"))
    building.chmod(0o755)  # mkdtemp's 0700 would keep the shared entry from other users
    try:
        if tokenizer is None:  # the offline WordPiece, trained on the training text and kept with the ids
            tokenizer = load_tokenizer(model, dataset, corpus=sources["train"].lines())
            tokenizer.tokenizer.save_pretrained(building / "tokenizer")
        dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32)
        tokens = {split: _write_stream(source, tokenizer, dtype, building / f"{split}.bin", split)
                  for split, source in sources.items()}
        meta = {"format": CACHE_FORMAT, "dtype": dtype.name, "tokens": tokens, "tokenizer": tokenizer.source,
                "sources": {split: source.identity for split, source in sources.items()}}
        (building / "meta.json").write_text(json.dumps(meta, indent=1))
        os.replace(building, entry)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def token_streams(sources: dict[str, TextSource], model: DictConfig, dataset: DictConfig,
                  root: Path) -> tuple[TextTokenizer, dict[str, np.ndarray], Path]:
    """The tokenizer and each split's token ids (memory-mapped, read-only) from the cache entry of ``sources``,
    building the entry first if no run has; and the entry's path."""
    tokenizer = load_tokenizer(model, dataset, corpus=()) if model.pretrained else None
    tokenizer_key = (["checkpoint", _fingerprint(tokenizer)] if tokenizer is not None
                     else ["offline WordPiece", dataset.vocab_size, sources["train"].identity])
    versions = {name: importlib.metadata.version(name) for name in ("tokenizers", "transformers")}
    key = json.dumps([CACHE_FORMAT, versions, tokenizer_key, {split: s.identity for split, s in sources.items()}],
                     sort_keys=True)
    entry = root / hashlib.sha256(key.encode()).hexdigest()[:24]
    root.mkdir(parents=True, exist_ok=True)
    with _locked(root / f"{entry.name}.lock"):
        if not entry.is_dir():
            log.info("tokenizing %s once into %s", dataset.name, entry)
            _build(entry, sources, tokenizer, model, dataset)
    meta = json.loads((entry / "meta.json").read_text())
    if tokenizer is None:
        from transformers import PreTrainedTokenizerFast

        tokenizer = TextTokenizer(PreTrainedTokenizerFast.from_pretrained(entry / "tokenizer"), meta["tokenizer"])
        log.info(tokenizer.source)
    streams = {split: np.memmap(entry / f"{split}.bin", dtype=meta["dtype"], mode="r") if meta["tokens"][split]
               else np.zeros(0, dtype=meta["dtype"]) for split in sources}
    return tokenizer, streams, entry
