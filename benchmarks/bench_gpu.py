"""GPU micro-benchmark: every variant's fwd, bwd and fwd+bwd time as a ratio to torch.nn.Dropout, and bandwidth.

    python -m benchmarks.bench_gpu                              # paper shapes x fp32/bf16/fp16 x every variant
    python -m benchmarks.bench_gpu --shapes bert_hidden --dtype bf16 --reps 50 --json bench_gpu.json
    python -m benchmarks.bench_gpu --smoke                      # correctness smoke only (the one mode a CPU runs)

Timing: CUDA events around the op, with the GPU kept busy by a sleep kernel queued before the start event
so that the host's launch overhead is not counted (GPU time, not Python latency), and the L2 cache
flushed before each measurement. Every repetition times nn.Dropout and the variant back to back
(alternating which goes first) in this one process; the figures are medians over repetitions of the
per-repetition ratios. Bandwidth: the bytes the variant must move at least (read x, write y and its saved
mask; read the gradient and the mask, write the input gradient) over its time, as a fraction of the
bandwidth of ``y.copy_(x)`` measured in the same run.

Exact-route pieces: the two steps a CUDA hook could hand to Triton in the bit-exact ``pmdrop`` route, each
timed against the torch ops the core runs now (after checking that both give the same bytes): packing
``native_dropout``'s bool mask (``pack_flat`` vs the pack kernel of :mod:`benchmarks.triton_pack`) and the backward
from the packed mask (``unpack_bits`` + ``native_dropout_backward`` vs pmdrop's masked-scale kernel). A ratio below 1
supports the hook.

On a machine without CUDA, timing is refused; ``--smoke`` then runs the fused kernels under Triton's
interpreter on small CPU tensors and checks them (no timing).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch

from benchmarks.bench import DTYPES, device_name, fwd_bwd_ratios, git_commit, interleaved, saved_bytes_per_element
from pmdrop import PackedDropout, get_variant, unpack_mask, variant_names
from pmdrop.packing import pack_flat, unpack_bits

PAPER_SHAPES = {
    "bert_hidden": (32, 512, 768),  # BERT-Base hidden states, batch 32, sequence 512
    "bert_probs": (8, 12, 512, 512),  # BERT attention probabilities, batch 8, 12 heads
    "longformer_16k": (1, 12, 16384, 513),  # Longformer banded attention probabilities at 16k tokens
}
TARGETS = {  # fwd+bwd ratio to nn.Dropout at most, fraction of copy bandwidth at least (H100)
    "pmdrop_fused": {"fwd_bwd_ratio": 0.85, "copy_bandwidth_fraction": 0.80},
    "pmdrop": {"fwd_bwd_ratio": 1.10},
}
# Densities of the registered exact packed variants (pmdrop, pmdrop_4bit, ...): the exact route's pieces at each.
_EXACT = [get_variant(v) for v in variant_names() if get_variant(v).bit_exact]
PIECE_MASKS_PER_BYTE = tuple(sorted({v.masks_per_byte for v in _EXACT if v.masks_per_byte}, reverse=True))
_SLEEP_CYCLES = 2_000_000  # ~1 ms of GPU time: longer than the host needs to queue one op
_L2_FLUSH_BYTES = 256 * 2**20


@dataclass
class Row:
    shape: str
    dtype: str
    variant: str
    fwd_ratio: float
    bwd_ratio: float
    fwd_bwd_ratio: float
    fwd_bwd_ratio_min: float
    fwd_bwd_ratio_max: float
    fwd_ms: float
    bwd_ms: float
    baseline_fwd_bwd_ms: float
    mask_bytes_per_element: float
    copy_bandwidth_fraction: float
    meets_targets: bool | None  # None: no target for this variant


@dataclass
class PieceRow:
    shape: str
    dtype: str
    piece: str  # "pack" or "backward"
    masks_per_byte: int
    torch_ms: float  # the core's torch ops, median
    triton_ms: float  # benchmarks.triton_pack.pack or pmdrop.triton_kernels.masked_scale, median
    ratio: float  # median over interleaved repetitions of triton / torch


Timer = Callable[[Callable[[], object]], float]


class _GpuTimer:
    """GPU time of a callable: sleep kernel, L2 flush, then CUDA events around it."""

    def __init__(self) -> None:
        self._flush = torch.empty(_L2_FLUSH_BYTES, dtype=torch.uint8, device="cuda")

    def __call__(self, fn: Callable[[], object]) -> float:
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        self._flush.zero_()
        torch.cuda._sleep(_SLEEP_CYCLES)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3


def _layer(variant: str, p: float) -> torch.nn.Module:
    return torch.nn.Dropout(p) if variant == "nn.Dropout" else PackedDropout(p, variant=variant)


def _time_fwd_bwd(timer: _GpuTimer, layer: torch.nn.Module, x: torch.Tensor, grad: torch.Tensor) -> tuple[float, float]:
    x.grad = None
    out = []
    fwd = timer(lambda: out.append(layer(x)))
    bwd = timer(lambda: out[0].backward(grad))
    return fwd, bwd


def copy_seconds(timer: _GpuTimer, x: torch.Tensor, reps: int) -> float:
    y = torch.empty_like(x)
    timer(lambda: y.copy_(x))  # warm-up
    return statistics.median(timer(lambda: y.copy_(x)) for _ in range(reps))


def measure(variant: str, x: torch.Tensor, p: float, reps: int, timer: _GpuTimer, copy_s: float) -> Row:
    grad = torch.randn_like(x)
    baseline, candidate = _layer("nn.Dropout", p), _layer(variant, p)
    timed = interleaved(lambda: _time_fwd_bwd(timer, baseline, x, grad),
                        lambda: _time_fwd_bwd(timer, candidate, x, grad), reps, warmup=2)  # 2: Triton compiles first
    fwd, bwd, total = fwd_bwd_ratios(timed)
    base_total = [sum(b) for b, _ in timed]
    cand = [c for _, c in timed]
    mask_bytes = saved_bytes_per_element(candidate, x)
    fwd_s, bwd_s = statistics.median(c[0] for c in cand), statistics.median(c[1] for c in cand)
    # at least: read x + write y + write mask; read grad + read mask + write grad_x
    moved = 2 * (2 * x.element_size() + mask_bytes) * x.numel()
    copy_bandwidth = 2 * x.element_size() * x.numel() / copy_s
    row = Row(
        "x".join(map(str, x.shape)), {v: k for k, v in DTYPES.items()}[x.dtype], variant,
        statistics.median(fwd), statistics.median(bwd), statistics.median(total), min(total), max(total),
        fwd_s * 1e3, bwd_s * 1e3, statistics.median(base_total) * 1e3, mask_bytes,
        moved / (fwd_s + bwd_s) / copy_bandwidth, None,
    )
    target = TARGETS.get(variant)
    if target:
        row.meets_targets = row.fwd_bwd_ratio <= target["fwd_bwd_ratio"] and (
            row.copy_bandwidth_fraction >= target.get("copy_bandwidth_fraction", 0.0)
        )
    return row


_HEADER = (
    f"{'shape':<18}{'dtype':<6}{'variant':<16}{'fwd':>7}{'bwd':>7}{'fwd+bwd':>9}{'(min-max)':>13}"
    f"{'fwd ms':>8}{'bwd ms':>8}{'base ms':>9}{'mask B/el':>10}{'copy bw':>9}  target"
)


def _format_row(r: Row) -> str:
    verdict = {None: "", True: "met", False: "MISSED"}[r.meets_targets]
    return (
        f"{r.shape:<18}{r.dtype:<6}{r.variant:<16}{r.fwd_ratio:>6.3f}x{r.bwd_ratio:>6.3f}x{r.fwd_bwd_ratio:>8.3f}x"
        f"{f'({r.fwd_bwd_ratio_min:.2f}-{r.fwd_bwd_ratio_max:.2f})':>13}{r.fwd_ms:>8.3f}{r.bwd_ms:>8.3f}"
        f"{r.baseline_fwd_bwd_ms:>9.3f}{r.mask_bytes_per_element:>10.4f}{r.copy_bandwidth_fraction:>8.1%}  {verdict}"
    )


def _interleaved(timer: Timer, torch_op: Callable[[], object], triton_op: Callable[[], object], reps: int):
    """Median seconds of each op and median of the per-repetition ratios triton / torch (order alternating)."""
    timed = interleaved(lambda: (timer(torch_op),), lambda: (timer(triton_op),), reps)
    torch_s, triton_s = [a for (a,), _ in timed], [b for _, (b,) in timed]
    ratios = [b / a for a, b in zip(torch_s, triton_s, strict=True)]
    return statistics.median(torch_s), statistics.median(triton_s), statistics.median(ratios)


def exact_route_pieces(x: torch.Tensor, p: float, masks_per_byte: int, reps: int, timer: Timer) -> list[PieceRow]:
    """Time the steps of the exact route that Triton kernels could replace, after checking they agree bit for bit."""
    from benchmarks.triton_pack import pack
    from pmdrop.fused import _scale, kernels_for

    kernels = kernels_for(x, "bench_gpu")
    mask = torch.ops.aten.native_dropout(x.detach(), p, True)[1].view(-1)
    grad = torch.randn_like(x.detach()).view(-1)
    packed = pack_flat(mask, masks_per_byte)
    scale = _scale(p, x.dtype, x.device)
    pieces = {
        "pack": (lambda: pack_flat(mask, masks_per_byte), lambda: pack(mask, masks_per_byte)),
        "backward": (
            lambda: torch.ops.aten.native_dropout_backward(
                grad, unpack_bits(packed, mask.shape, masks_per_byte), 1 / (1 - p)
            ),
            lambda: kernels.masked_scale(grad, packed, scale, masks_per_byte),
        ),
    }
    rows = []
    for piece, (torch_op, triton_op) in pieces.items():
        if not torch.equal(torch_op(), triton_op()):
            raise SystemExit(f"{piece} kernel differs from the core's torch ops at masks_per_byte={masks_per_byte}")
        torch_s, triton_s, ratio = _interleaved(timer, torch_op, triton_op, reps)
        rows.append(PieceRow("x".join(map(str, x.shape)), {v: k for k, v in DTYPES.items()}[x.dtype], piece,
                             masks_per_byte, torch_s * 1e3, triton_s * 1e3, ratio))
    return rows


_PIECE_HEADER = f"{'shape':<18}{'dtype':<6}{'piece':<10}{'k':>3}{'torch ms':>10}{'triton ms':>11}{'triton/torch':>14}"


def _format_piece(r: PieceRow) -> str:
    return (f"{r.shape:<18}{r.dtype:<6}{r.piece:<10}{r.masks_per_byte:>3}{r.torch_ms:>10.3f}{r.triton_ms:>11.3f}"
            f"{r.ratio:>13.3f}x")


def run(
    shapes: list[str], dtypes: list[str], variants: list[str], p: float, reps: int
) -> tuple[list[Row], list[PieceRow]]:
    timer = _GpuTimer()
    rows, pieces = [], []
    for shape_name in shapes:
        for dtype_name in dtypes:
            x = torch.randn(PAPER_SHAPES[shape_name], dtype=DTYPES[dtype_name], device="cuda", requires_grad=True)
            copy_s = copy_seconds(timer, x.detach(), reps)
            for variant in variants:
                rows.append(measure(variant, x, p, reps, timer, copy_s))
                print(_format_row(rows[-1]), flush=True)
            for k in PIECE_MASKS_PER_BYTE:
                pieces += exact_route_pieces(x, p, k, reps, timer)
            del x
            torch.cuda.empty_cache()
    print("\n# exact-route pieces: the core's torch ops vs the Triton kernels a CUDA hook would call")
    print(_PIECE_HEADER)
    for piece in pieces:
        print(_format_piece(piece))
    return rows, pieces


def smoke(device: str) -> list[str]:
    """Check the fused kernels on a small tensor (CUDA, or Triton's interpreter on CPU); returns what was checked."""
    from benchmarks.triton_pack import pack
    from pmdrop import dropout

    x = torch.randn(3, 5, 701, device=device, requires_grad=True)  # 10515 elements: 6 chunks, a ragged tail
    grad = torch.randn_like(x)
    torch.manual_seed(0)
    y = dropout(x, 0.3, variant="pmdrop_fused")
    keep = unpack_mask(y.grad_fn.saved_tensors[0], x.shape)
    scale = torch.tensor(1 / 0.7, dtype=torch.float32, device=device)
    y.backward(grad)
    torch.manual_seed(0)
    y_seeded = dropout(x, 0.3, variant="seeded_fused")
    kept, n = keep.sum().item(), keep.numel()
    checks = {
        "packed mask decodes to the applied mask": torch.equal(keep, y != 0),
        "y = x * mask * 1/(1-p)": torch.equal(y, x.detach() * keep * scale),
        "backward = grad * forward mask * 1/(1-p)": torch.equal(x.grad, grad * keep * scale),
        "seeded_fused draws the same mask from the same seed": torch.equal(y_seeded, y),
        "keep rate within 6 sigma of 1 - p": abs(kept - 0.7 * n) <= 6 * (0.21 * n) ** 0.5,
        "pack kernel = pmdrop.packing.pack_flat": torch.equal(pack(keep.view(-1)), pack_flat(keep.view(-1))),
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise SystemExit(f"smoke FAILED on {device}: {'; '.join(failed)}")
    return list(checks)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", nargs="+", default=list(PAPER_SHAPES), choices=list(PAPER_SHAPES))
    parser.add_argument("--dtype", nargs="+", default=["fp32", "bf16", "fp16"], choices=sorted(DTYPES))
    parser.add_argument("--variants", nargs="+", default=None, help="default: every registered variant")
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--reps", type=int, default=25, help="interleaved nn.Dropout/variant repetitions")
    parser.add_argument("--smoke", action="store_true", help="only check the fused kernels' correctness, no timing")
    parser.add_argument("--json", help="also write the rows and provenance to this file")
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if args.smoke:
        if not cuda:
            # Triton reads this when the kernels are decorated, i.e. at the first import of pmdrop.triton_kernels
            # and of benchmarks.triton_pack, below.
            os.environ["TRITON_INTERPRET"] = "1"
        where = "cuda" if cuda else "cpu (Triton interpreter; no timing on CPU)"
        for check in smoke("cuda" if cuda else "cpu"):
            print(f"ok  {check}")
        print(f"smoke passed on {where}")
        return
    if not cuda:
        raise SystemExit("benchmarks.bench_gpu times CUDA kernels and no CUDA device is visible: timing refused. "
                         "Run with --smoke for the interpreter correctness check, or benchmarks.bench for CPU timings.")
    variants = args.variants or variant_names()  # the registry's, fused variants included (pmdrop imports them)
    for name in variants:
        get_variant(name)  # one-line error naming the valid choices before any timing
    import triton

    provenance = {
        "command": "python -m benchmarks.bench_gpu " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device_name(torch.device("cuda")),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "commit": git_commit(),
        "p": args.p,
        "reps": args.reps,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "targets": TARGETS,
    }
    print("# " + ", ".join(f"{k}: {v}" for k, v in provenance.items()))
    print("# ratios: median over interleaved repetitions of (variant GPU time / nn.Dropout GPU time); "
          "copy bw: minimum bytes moved / time, as a fraction of y.copy_(x)'s bandwidth")
    print(_HEADER)
    rows, pieces = run(args.shapes, args.dtype, variants, args.p, args.reps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"provenance": provenance, "rows": [asdict(r) for r in rows],
                       "exact_route_pieces": [asdict(r) for r in pieces]}, f, indent=2)


if __name__ == "__main__":
    main()
