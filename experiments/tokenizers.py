"""Text to token ids: the checkpoint's own tokenizer for a pretrained model, else a WordPiece vocabulary trained
offline on the training text with the ``tokenizers`` library.

A model built from config (``pretrained: false``) has freshly initialised embeddings, so any consistent
vocabulary serves. Which tokenizer a run used is logged and kept in the run's notes, so nobody mistakes one for
the other.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import DictConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")  # ids 0-4 of every offline vocabulary
_CHUNK = 10_000  # texts per tokenizer call when streaming a corpus (bounds the Python lists alive at once)

log = logging.getLogger(__name__)


@dataclass
class TextTokenizer:
    """A Hugging Face tokenizer and where it came from (``source``, for the log and the run's notes)."""

    tokenizer: PreTrainedTokenizerBase
    source: str

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def mask_id(self) -> int:
        return self.tokenizer.mask_token_id

    @property
    def special_ids(self) -> list[int]:
        return self.tokenizer.all_special_ids

    def encode(self, first: Sequence[str], second: Sequence[str] | None, max_length: int) -> dict[str, torch.Tensor]:
        """Single texts or pairs, truncated and padded to ``max_length``, with segment ids."""
        encoded = self.tokenizer(list(first), None if second is None else list(second), truncation=True,
                                 max_length=max_length, padding="max_length", return_token_type_ids=True,
                                 return_tensors="pt")
        return {key: encoded[key] for key in ("input_ids", "token_type_ids", "attention_mask")}

    def stream(self, texts: Sequence[str]) -> torch.Tensor:
        """All texts' token ids, concatenated, without special tokens (for language-model blocks)."""
        chunks = []
        for start in range(0, len(texts), _CHUNK):
            ids = self.tokenizer(list(texts[start : start + _CHUNK]), add_special_tokens=False, verbose=False)
            chunks.append(np.fromiter(itertools.chain.from_iterable(ids["input_ids"]), dtype=np.int64))
        return torch.from_numpy(np.concatenate(chunks)) if chunks else torch.zeros(0, dtype=torch.long)


def train_wordpiece(corpus: Sequence[str], vocab_size: int) -> PreTrainedTokenizerBase:
    """A BERT-style (lower-cased WordPiece) fast tokenizer trained on ``corpus``; ``SPECIALS`` get ids 0-4."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.train_from_iterator(
        corpus, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=list(SPECIALS), show_progress=False)
    )
    cls, sep = SPECIALS.index("[CLS]"), SPECIALS.index("[SEP]")
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
                                   mask_token="[MASK]", unk_token="[UNK]")


def load_tokenizer(model: DictConfig, dataset: DictConfig, corpus: Sequence[str]) -> TextTokenizer:
    """The checkpoint's tokenizer for a pretrained model; else WordPiece trained on the training text."""
    if model.pretrained:
        from transformers import AutoTokenizer

        try:
            tokenizer = TextTokenizer(AutoTokenizer.from_pretrained(model.checkpoint),
                                      f"tokenizer: {model.checkpoint}")
        except OSError as error:
            raise RuntimeError(
                f"could not load the tokenizer of {model.checkpoint!r} (offline?): set model.pretrained=false to "
                "build the model from config with an offline WordPiece tokenizer, or point model.checkpoint at a "
                "local directory"
            ) from error
    else:
        vocab = train_wordpiece(corpus, dataset.vocab_size)
        tokenizer = TextTokenizer(vocab, f"tokenizer: offline WordPiece, {len(vocab)} tokens trained on the "
                                         f"training text of {dataset.name} (model.pretrained=false)")
    log.info(tokenizer.source)
    return tokenizer
