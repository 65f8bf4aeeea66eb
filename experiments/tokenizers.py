"""Text to token ids: the checkpoint's own tokenizer when it can be loaded, else a word-level one built offline.

A model built from config (``pretrained: false``) has freshly initialised embeddings, so any consistent
vocabulary serves; the offline tokenizer takes the training text's most frequent words. The choice is recorded
in the run's notes so nobody mistakes one for the other.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import torch
from omegaconf import DictConfig

SPECIALS = ("[PAD]", "[CLS]", "[SEP]", "[MASK]", "[UNK]")
_WORDS = re.compile(r"\w+|[^\w\s]")


class TextTokenizer:
    """``encode`` single texts or pairs to padded ``input_ids``/``token_type_ids``/``attention_mask`` tensors."""

    def __init__(self, vocab: Sequence[str] | None = None, pretrained=None, source: str = "") -> None:
        self.pretrained = pretrained
        self.index = {word: i for i, word in enumerate(vocab or ())}
        self.source = source

    @property
    def vocab_size(self) -> int:
        return len(self.pretrained) if self.pretrained is not None else len(self.index)

    def word_ids(self, text: str) -> list[int]:
        if self.pretrained is not None:
            return self.pretrained.encode(text, add_special_tokens=False)
        unknown = self.index["[UNK]"]
        return [self.index.get(word, unknown) for word in _WORDS.findall(text.lower())]

    def encode(self, first: Sequence[str], second: Sequence[str] | None = None, max_length: int = 128):
        if self.pretrained is not None:
            encoded = self.pretrained(list(first), None if second is None else list(second), truncation=True,
                                      max_length=max_length, padding="max_length", return_tensors="pt")
            return {k: v for k, v in encoded.items() if k in ("input_ids", "token_type_ids", "attention_mask")}
        rows = len(first)
        ids = torch.full((rows, max_length), SPECIALS.index("[PAD]"))
        segments = torch.zeros((rows, max_length), dtype=torch.long)
        cls, sep = SPECIALS.index("[CLS]"), SPECIALS.index("[SEP]")
        for row in range(rows):
            a = [cls, *self.word_ids(first[row]), sep]
            b = [*self.word_ids(second[row]), sep] if second is not None else []
            while len(a) + len(b) > max_length:  # trim the longer sentence, keeping its [SEP]
                longer = a if len(a) > len(b) else b
                del longer[-2]
            tokens = a + b
            ids[row, : len(tokens)] = torch.tensor(tokens)
            segments[row, len(a) : len(tokens)] = 1
        return {"input_ids": ids, "token_type_ids": segments, "attention_mask": (ids != 0).long()}


def build_word_vocab(corpus: Sequence[str], size: int) -> list[str]:
    counts = Counter(word for text in corpus for word in _WORDS.findall(text.lower()))
    return [*SPECIALS, *(word for word, _ in counts.most_common(size - len(SPECIALS)))]


def load_tokenizer(model: DictConfig, dataset: DictConfig, corpus: Sequence[str]) -> TextTokenizer:
    """The checkpoint's tokenizer for a pretrained model; else a word-level vocabulary of the training text."""
    if model.pretrained:
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(model.checkpoint)
        except OSError as error:
            raise RuntimeError(
                f"could not load the tokenizer of {model.checkpoint!r} (offline?): set model.pretrained=false to "
                "build the model from config with an offline word-level tokenizer, or point model.checkpoint at a "
                "local directory"
            ) from error
        return TextTokenizer(pretrained=tokenizer, source=f"tokenizer: {model.checkpoint}")
    vocab = build_word_vocab(corpus, dataset.get("vocab_size") or 30522)
    return TextTokenizer(vocab, source=f"tokenizer: offline word-level, {len(vocab)} words from the training text")
