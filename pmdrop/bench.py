"""Benchmark: each variant's fwd+bwd time as a ratio to ``torch.nn.Dropout``, and its saved bytes.

    python -m pmdrop.bench                         # fp32 (32, 512, 768) on the CPU, every variant
    python -m pmdrop.bench --dtype fp32 bf16 --shape 8,12,512,512 --pairs 15 --json out.json

Ratios, not absolute times, because shared machines are noisy: every repetition times the
baseline and the variant back to back (alternating which goes first) in this one process, and
the figure reported is the median of those per-pair ratios.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from .accounting import track_saved_tensors
from .modules import PackedDropout
from .variants import variant_names

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


@dataclass
class Row:
    variant: str
    dtype: str
    shape: str
    device: str
    fwd_ratio: float
    bwd_ratio: float
    fwd_bwd_ratio: float
    fwd_bwd_ratio_min: float
    fwd_bwd_ratio_max: float
    baseline_fwd_bwd_ms: float
    saved_bytes_per_element: float
    baseline_saved_bytes_per_element: float


def _sync(device: torch.device) -> None:
    if device.type != "cpu":
        torch.get_device_module(device.type).synchronize(device)


def _time_fwd_bwd(layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    x.grad = None
    _sync(x.device)
    start = time.perf_counter()
    y = layer(x)
    _sync(x.device)
    mid = time.perf_counter()
    y.backward(grad)
    _sync(x.device)
    return mid - start, time.perf_counter() - mid


def saved_bytes_per_element(layer: torch.nn.Module, x: torch.Tensor) -> float:
    with track_saved_tensors() as saved:
        layer(x)
    return saved.mask_bytes / x.numel()


def compare(
    variant: str, x: torch.Tensor, p: float, pairs: int, time_pair: Callable | None = None
) -> tuple[list[float], list[float], list[float], float]:
    """Per-pair ratios (fwd, bwd, fwd+bwd) of ``variant`` to nn.Dropout, and the median baseline fwd+bwd seconds."""
    baseline, candidate = torch.nn.Dropout(p), PackedDropout(p, variant=variant)
    grad = torch.ones_like(x)
    for layer in (baseline, candidate):  # warm-up: allocator, lazily built tables
        _time_fwd_bwd(layer, x, grad)
    fwd, bwd, total, base_total = [], [], [], []
    for i in range(pairs):
        order = (baseline, candidate) if i % 2 == 0 else (candidate, baseline)
        times = {id(layer): _time_fwd_bwd(layer, x, grad) for layer in order}
        (bf, bb), (cf, cb) = times[id(baseline)], times[id(candidate)]
        fwd.append(cf / bf)
        bwd.append(cb / bb)
        total.append((cf + cb) / (bf + bb))
        base_total.append(bf + bb)
    return fwd, bwd, total, statistics.median(base_total)


def git_commit() -> str:
    try:
        done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        return done.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def run(shape: tuple[int, ...], dtypes: list[str], variants: list[str], p: float, pairs: int, device: str) -> list[Row]:
    dev = torch.device(device)
    rows = []
    for dtype_name in dtypes:
        x = torch.randn(shape, dtype=DTYPES[dtype_name], device=dev, requires_grad=True)
        baseline_bytes = saved_bytes_per_element(torch.nn.Dropout(p), x)
        for variant in variants:
            fwd, bwd, total, base_s = compare(variant, x, p, pairs)
            rows.append(
                Row(
                    variant, dtype_name, "x".join(map(str, shape)), device_name(dev),
                    statistics.median(fwd), statistics.median(bwd), statistics.median(total), min(total), max(total),
                    base_s * 1e3, saved_bytes_per_element(PackedDropout(p, variant=variant), x), baseline_bytes,
                )
            )
            print(_format_row(rows[-1]), flush=True)
    return rows


_HEADER = (
    f"{'variant':<16}{'dtype':<6}{'fwd':>7}{'bwd':>7}{'fwd+bwd':>9}{'(min-max)':>15}{'base ms':>9}"
    f"{'mask B/elem':>13}{'vs torch':>10}"
)


def _format_row(r: Row) -> str:
    return (
        f"{r.variant:<16}{r.dtype:<6}{r.fwd_ratio:>6.3f}x{r.bwd_ratio:>6.3f}x{r.fwd_bwd_ratio:>8.3f}x"
        f"{f'({r.fwd_bwd_ratio_min:.2f}-{r.fwd_bwd_ratio_max:.2f})':>15}{r.baseline_fwd_bwd_ms:>9.1f}"
        f"{r.saved_bytes_per_element:>13.6f}{r.baseline_saved_bytes_per_element:>9.3f}B"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="32,512,768", help="comma-separated tensor shape")
    parser.add_argument("--dtype", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    parser.add_argument("--variants", nargs="+", default=None, help="default: every registered bit-exact variant")
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--pairs", type=int, default=9, help="interleaved baseline/variant pairs per variant")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the rows and provenance to this file")
    args = parser.parse_args(argv)
    from .variants import get_variant

    variants = args.variants or [v for v in variant_names() if get_variant(v).bit_exact]
    for name in variants:
        get_variant(name)  # one-line error naming valid choices before any timing
    shape = tuple(int(s) for s in args.shape.split(","))
    provenance = {
        "command": "python -m pmdrop.bench " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "device": device_name(torch.device(args.device)),
        "torch": torch.__version__,
        "commit": git_commit(),
        "p": args.p,
        "pairs": args.pairs,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print("# " + ", ".join(f"{k}: {v}" for k, v in provenance.items()))
    print("# ratios: median over interleaved pairs of (variant time / nn.Dropout time); bytes: saved for backward")
    print(_HEADER)
    rows = run(shape, args.dtype, variants, args.p, args.pairs, args.device)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"provenance": provenance, "rows": [asdict(r) for r in rows]}, f, indent=2)


if __name__ == "__main__":
    main()
