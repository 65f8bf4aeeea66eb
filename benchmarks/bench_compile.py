"""Compiled training of each variant against compiled ``nn.Dropout``: step time, and whole-model bit-identity.

    python -m benchmarks.bench_compile             # step time and saved bytes
    python -m benchmarks.bench_compile --identity  # whole-model training bit-identical or not, per Inductor setting

Step time: a 2-layer eager-attention BERT (hidden 128, batch 16 x 64 tokens) under ``torch.compile`` (Inductor),
converted to each exact variant, and the unconverted model under :func:`pmdrop.pack_saved_masks`. Ratios are medians
of interleaved pairs in this one process (:func:`benchmarks.bench.interleaved`, alternating which side goes first); the
bytes saved for backward per step come with them.

Identity: a 2-layer eager-attention BERT (hidden 64, batch 8 x 32 tokens, padded or not) trained 3 compiled steps
by AdamW, converted and not, under each of a few settings (dtype, threads, Inductor config); "identical" means every
parameter ends bit for bit equal to the compiled ``nn.Dropout`` model's.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch._inductor.config as inductor_config

from benchmarks.bench import interleaved
from benchmarks.models import tiny_bert
from pmdrop import convert, pack_saved_masks


def compiled_step_ratios(pairs: int = 15, layers: int = 2, hidden: int = 128, batch: int = 16, seq: int = 64) -> None:
    """Compiled training step of an eager-attention BERT, each variant against compiled ``nn.Dropout``.

    Prints the median of interleaved per-pair time ratios, and the bytes saved for backward per step.
    """
    reference = tiny_bert(hidden, layers, heads=2, intermediate=4 * hidden, positions=seq, seed=0).train()
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


# (dtype, threads, padded batches, Inductor config) per setting; Inductor's defaults otherwise.
IDENTITY_SETTINGS = {
    "fp32, fallback_random, 1 thread": (torch.float32, 1, True, {"fallback_random": True}),
    "fp32, fallback_random, 2 threads": (torch.float32, 2, True, {"fallback_random": True}),
    "fp32, Inductor's RNG, 1 thread": (torch.float32, 1, True, {}),
    "fp32, Inductor's RNG, 1 thread, no padding": (torch.float32, 1, False, {}),
    "fp32, Inductor's RNG, 1 thread, no padding, pattern_matcher=False": (
        torch.float32, 1, False, {"pattern_matcher": False}),
    "bf16 autocast, fallback_random, 1 thread": (torch.bfloat16, 1, True, {"fallback_random": True}),
    "bf16 autocast, fallback_random, 1 thread, emulate_precision_casts": (
        torch.bfloat16, 1, True, {"fallback_random": True, "emulate_precision_casts": True}),
}


def whole_model_identity(variants: tuple[str, ...] = ("pmdrop", "pmdrop_4bit", "seeded"), steps: int = 3) -> None:
    """Print, per Inductor setting, whether each variant's compiled training ends with compiled nn.Dropout's
    parameters."""
    reference = tiny_bert(hidden=64, layers=2, heads=2, intermediate=256, positions=32, seed=0).train()
    generator = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 1000, (8, 32), generator=generator),
                "labels": torch.randint(0, 2, (8,), generator=generator),
                "attention_mask": (torch.arange(32) < torch.randint(16, 33, (8, 1), generator=generator)).long()}
               for _ in range(steps)]

    def train(variant: str, dtype: torch.dtype, threads: int, padded: bool, patch: dict) -> list[torch.Tensor]:
        torch.compiler.reset()
        torch.set_num_threads(threads)
        model = copy.deepcopy(reference)
        if variant != "baseline":
            convert(model, variant)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
        compiled = torch.compile(model)
        torch.manual_seed(1)
        with inductor_config.patch(patch):
            for batch in batches:
                inputs = batch if padded else {k: v for k, v in batch.items() if k != "attention_mask"}
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
                    loss = compiled(**inputs).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad()
        return [p.detach().clone() for p in model.parameters()]

    print(f"compiled BERT (2 layers, hidden 64, batch 8x32), {steps} AdamW steps, "
          f"torch {torch.__version__}: parameters vs compiled nn.Dropout's")
    threads_before = torch.get_num_threads()
    print("| setting | " + " | ".join(variants) + " |\n|---|" + "---|" * len(variants))
    try:
        for setting, (dtype, threads, padded, patch) in IDENTITY_SETTINGS.items():
            expected = train("baseline", dtype, threads, padded, patch)
            cells = []
            for variant in variants:
                got = train(variant, dtype, threads, padded, patch)
                same = all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))
                cells.append("identical" if same else "differs")
            print(f"| {setting} | " + " | ".join(cells) + " |", flush=True)
    finally:  # also when a compile fails: the caller's thread count, not the last setting's
        torch.set_num_threads(threads_before)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--identity", action="store_true", help="whole-model bit-identity per Inductor setting")
    parser.add_argument("--pairs", type=int, default=15, help="interleaved pairs per variant of the step time")
    args = parser.parse_args()
    if args.identity:
        whole_model_identity()
    else:
        compiled_step_ratios(args.pairs)
