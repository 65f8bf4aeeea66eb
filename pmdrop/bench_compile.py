"""Compiled training step of each variant against compiled ``nn.Dropout``: ``python -m pmdrop.bench_compile``.

A 2-layer eager-attention BERT (hidden 128, batch 16 x 64 tokens) under ``torch.compile`` (Inductor), converted to each
exact variant, and the unconverted model under :func:`pmdrop.pack_saved_masks`. Ratios are medians of interleaved
pairs in this one process (:func:`pmdrop.bench.interleaved`, alternating which side goes first); the bytes saved for
backward per step come with them.
"""

from __future__ import annotations

import copy
import time

import torch

from .bench import interleaved
from .modules import convert
from .saved_masks import pack_saved_masks


def compiled_step_ratios(pairs: int = 15, layers: int = 2, hidden: int = 128, batch: int = 16, seq: int = 64) -> None:
    """Compiled training step of an eager-attention BERT, each variant against compiled ``nn.Dropout``.

    Prints the median of interleaved per-pair time ratios, and the bytes saved for backward per step.
    """
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(
        vocab_size=1000, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=4 * hidden, max_position_embeddings=seq, num_labels=2, attn_implementation="eager",
    )
    torch.manual_seed(0)
    reference = BertForSequenceClassification(config).train()
    generator = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, 1000, (batch, seq), generator=generator),
              "labels": torch.randint(0, 2, (batch,), generator=generator)}
    steps = {}
    for name in ("baseline", "pmdrop", "pmdrop_4bit", "seeded"):
        model = copy.deepcopy(reference)
        if name != "baseline":
            convert(model, name)
        steps[name] = (torch.compile(model), model)
    steps["baseline+pack_saved_masks"] = steps["baseline"]

    saved_bytes: dict[str, str] = {}

    def step(name: str) -> tuple[float]:
        compiled, model = steps[name]
        saved: list[int] = []
        count = torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.untyped_storage().nbytes()) or t,
                                                         lambda t: t)
        with pack_saved_masks() if name.endswith("pack_saved_masks") else count as packed:
            start = time.perf_counter()
            loss = compiled(**inputs).loss
        loss.backward()
        elapsed = time.perf_counter() - start
        model.zero_grad(set_to_none=True)
        # inside pack_saved_masks only its hooks run: report what it packed
        saved_bytes[name] = (f"bool masks {packed.bool_bytes} B kept as {packed.packed_bytes} B" if packed is not None
                             else f"saved for backward {sum(saved)} B")
        return (elapsed,)

    ratios = {name: sorted(other[0] / base[0] for base, other in interleaved(
                  lambda: step("baseline"), lambda name=name: step(name), pairs, warmup=2))  # compile, warm up
              for name in steps if name != "baseline"}
    print(f"compiled BERT ({layers} layers, hidden {hidden}, batch {batch}x{seq}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {pairs} interleaved pairs; "
          f"compiled nn.Dropout: {saved_bytes['baseline']}")
    for name, values in ratios.items():
        print(f"  {name:26s} step time / compiled nn.Dropout: median {values[len(values) // 2]:.3f} "
              f"(range {values[0]:.3f}-{values[-1]:.3f}); {saved_bytes[name]}")


if __name__ == "__main__":
    compiled_step_ratios()
