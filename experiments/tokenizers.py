"""Text to token ids: the checkpoint's own tokenizer for a pretrained model, else a WordPiece vocabulary trained
offline on the training text with the ``tokenizers`` library.

A model built from config (``pretrained: false``) has freshly initialised embeddings, so any consistent
vocabulary serves. Which tokenizer a run used is logged and kept in the run's notes, so nobody mistakes one for
the other.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from omegaconf import DictConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")  # ids 0-4 of every offline vocabulary

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

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    def encode(self, first: Sequence[str], second: Sequence[str] | None,
               max_length: int) -> tuple[list[list[int]], list[list[int]]]:
        """Single texts or pairs with their special tokens, truncated to ``max_length`` (not padded): token ids and
        segment ids per text."""
        encoded = self.tokenizer(list(first), None if second is None else list(second), truncation=True,
                                 max_length=max_length, return_token_type_ids=True, verbose=False)
        return encoded["input_ids"], encoded["token_type_ids"]

    def token_ids(self, texts: Sequence[str]) -> np.ndarray:
        """The texts' token ids, concatenated, without special tokens (a chunk of a language-model stream)."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        ids = self.tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        return np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64)


def train_wordpiece(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerBase:
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


def load_tokenizer(model: DictConfig, dataset: DictConfig, corpus: Iterable[str]) -> TextTokenizer:
    """The checkpoint's tokenizer for a pretrained model; else WordPiece trained on the training text (``corpus``, read
    once: a generator of lines will do)."""
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
