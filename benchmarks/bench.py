"""Benchmark: each variant's fwd+bwd time as a ratio to ``torch.nn.Dropout``, its saved bytes, and the
launch-bound view (what a step pays per call where kernels are short: host work and dispatched ops).

    python -m benchmarks.bench                     # fp32 (32, 512, 768) on the CPU, every variant, then the launch view
    python -m benchmarks.bench --dtype fp32 bf16 --shape 8,12,512,512 --pairs 15 --json out.json
    python -m benchmarks.bench --views launch --threads 1      # per call, op counts, routing cost only

Ratios, not absolute times, because shared machines are noisy: every repetition times the
baseline and the variant back to back (alternating which goes first) in this one process, and
the figure reported is the median of those per-pair ratios.

The launch-bound view: fwd+bwd of a (64, 64) tensor per variant vs ``nn.Dropout``; the aten ops one
call dispatches forward and backward on each route (counted with a ``TorchDispatchMode``; the native
route is the one CUDA takes, its logic run here on CPU tensors; on a GPU each counted kernel is a
launch); and a tiny eager BERT's fwd+bwd converted to ``baseline`` and ``pmdrop`` vs unconverted,
under both routings of :func:`pmdrop.convert`.
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.models import TinyBert, tiny_bert
from pmdrop import PackedDropout, convert, functional, get_variant, track_saved_tensors, use_route, variant_names

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


class _DropoutAndRedraw(torch.nn.Dropout):
    """``nn.Dropout`` whose backward also draws the noise again (no packing, no bookkeeping): the least a redraw costs,
    i.e. the floor of ``seeded`` on the noise route."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        y.register_hook(self._redraw)
        return y

    def _redraw(self, grad: torch.Tensor) -> None:
        torch.empty_like(grad).bernoulli_(1 - self.p).div_(1 - self.p)  # drawn and dropped: only its cost counts


class _DropoutUnderHooks(torch.nn.Dropout):
    """``nn.Dropout`` under saved-tensor hooks pushed as pmdrop pushes them: with ``plan``, hooks that pack its mask and
    decode it with the plan's ops and nothing else (no record, no checks, no plan lookup); without, hooks that keep
    it as is. The steps between ``nn.Dropout`` and a packed call."""

    def __init__(self, p: float, plan: functional._CallPlan | None = None) -> None:
        super().__init__(p)
        self.hooks = (_as_is, _as_is) if plan is None else (plan.packer, plan.unpack)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        functional._push_hooks(*self.hooks)
        try:
            return super().forward(x)
        finally:
            functional._pop_hooks()


def _as_is(t: torch.Tensor) -> torch.Tensor:
    return t


def per_call_steps(x: torch.Tensor, p: float, pairs: int) -> dict[str, list[float]]:
    """Per-pair fwd+bwd ratios to nn.Dropout of each step from it to a ``pmdrop`` call: the hooks alone, the hooks with
    the pack and decode ops, the whole call. Their differences are what the hooks, the ops and the bookkeeping cost."""
    plan = functional._CallPlan(x, p, False, get_variant("pmdrop"))
    layers = {"hooks that keep the mask as is": _DropoutUnderHooks(p),
              "+ the pack and decode ops": _DropoutUnderHooks(p, plan),
              "pmdrop (+ plan lookup, checks, records)": PackedDropout(p, variant="pmdrop")}
    return {step: fwd_bwd_ratios(_against_dropout(layer, x, p, pairs))[2] for step, layer in layers.items()}


def op_costs(x: torch.Tensor, p: float, repeats: int) -> dict[str, dict[str, float]]:
    """Median microseconds of a ``pmdrop`` call's pack ops and of its decode ops on ``x``'s mask, run alone, after each
    prelude of :data:`OP_COST_PRELUDES`: nothing (a tight loop), a 4 MiB write (the data caches emptied), the backward
    of a 4-element sum (the autograd engine's code run, next to no data) and an ``nn.Dropout`` fwd+bwd of ``x`` (the
    caches as a call inside a step finds them). The gap to the loop is why the same ops cost a call more on one
    machine than on another."""
    plan = functional._CallPlan(x, p, False, get_variant("pmdrop"))
    noise = torch.dropout(torch.ones_like(x), p, True)  # what torch's noise route saves
    packed = plan.packer(noise)
    layer, grad = torch.nn.Dropout(p), torch.ones_like(x)
    written, summed = torch.empty(4 * 2**20, dtype=torch.uint8), torch.ones(4, requires_grad=True)
    preludes = dict(zip(OP_COST_PRELUDES, (lambda: None, lambda: written.fill_(1), lambda: summed.sum().backward(),
                                           lambda: layer(x).backward(grad)), strict=True))

    def median_us(op: Callable[[], object], before: Callable[[], object]) -> float:
        times = []
        for _ in range(repeats):
            before()
            start = time.perf_counter()
            op()
            times.append(time.perf_counter() - start)
        return statistics.median(times) * 1e6

    ops = {"pack": lambda: plan.packer(noise), "decode": lambda: plan.unpack(packed)}
    return {name: {prelude: median_us(op, before) for prelude, before in preludes.items()} for name, op in ops.items()}


OP_COST_PRELUDES = ("loop", "after_4mib_write", "after_tiny_backward", "after_dropout_fwd_bwd")


def redraw_floor(x: torch.Tensor, p: float, pairs: int) -> list[float]:
    """Per-pair fwd+bwd ratios of :class:`_DropoutAndRedraw` to nn.Dropout."""
    return fwd_bwd_ratios(_against_dropout(_DropoutAndRedraw(p), x, p, pairs))[2]


def saved_bytes_per_element(layer: torch.nn.Module, x: torch.Tensor) -> float:
    with track_saved_tensors() as saved:
        layer(x)
    return saved.mask_bytes / x.numel()


Times = tuple[float, ...]


def interleaved(reference: Callable[[], Times], candidate: Callable[[], Times], pairs: int,
                warmup: int = 1) -> list[tuple[Times, Times]]:
    """``pairs`` timings of ``reference`` and ``candidate`` back to back, alternating which goes first.

    Each callable runs once and returns its phase times (e.g. forward, backward). Shared machines
    are noisy; a ratio taken within one pair sees the same noise on both sides.
    """
    for _ in range(warmup):  # allocator, lazily built tables, compilation
        reference()
        candidate()
    timed = []
    for i in range(pairs):
        if i % 2 == 0:
            ref = reference()
            cand = candidate()
        else:
            cand = candidate()
            ref = reference()
        timed.append((ref, cand))
    return timed


def fwd_bwd_ratios(timed: list[tuple[Times, Times]]) -> tuple[list[float], list[float], list[float]]:
    """Per-pair candidate / reference ratios of forward, backward and their sum, from (fwd, bwd) timings."""
    fwd = [cf / bf for (bf, _), (cf, _) in timed]
    bwd = [cb / bb for (_, bb), (_, cb) in timed]
    return fwd, bwd, [sum(c) / sum(b) for b, c in timed]


def _against_dropout(layer: torch.nn.Module, x: torch.Tensor, p: float, pairs: int) -> list[tuple[Times, Times]]:
    """``pairs`` interleaved (fwd, bwd) timings of ``nn.Dropout(p)`` and ``layer`` on ``x``."""
    baseline, grad = torch.nn.Dropout(p), torch.ones_like(x)
    return interleaved(lambda: _time_fwd_bwd(baseline, x, grad), lambda: _time_fwd_bwd(layer, x, grad), pairs)


def compare(variant: str, x: torch.Tensor, p: float, pairs: int) -> tuple[list[float], list[float], list[float], float]:
    """Per-pair ratios (fwd, bwd, fwd+bwd) of ``variant`` to nn.Dropout, and the median baseline fwd+bwd seconds."""
    timed = _against_dropout(PackedDropout(p, variant=variant), x, p, pairs)
    fwd, bwd, total = fwd_bwd_ratios(timed)
    return fwd, bwd, total, statistics.median(sum(b) for b, _ in timed)


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


# --- launch-bound view: where a GPU step is bound by host work per call, not by bandwidth -------------

PER_CALL_SHAPE = (64, 64)
# Ops that dispatch but launch no kernel on a GPU (allocation, aliasing); views are recognised by their schema.
_NO_KERNEL = frozenset({"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "set_", "detach",
                        "alias", "lift_fresh", "_unsafe_view"})


@dataclass
class OpCount:
    variant: str
    route: str  # "noise" (CPU, in place) or "native" (CUDA out of place: native_dropout)
    fwd_ops: int
    bwd_ops: int
    fwd_kernels: int  # ops that launch a kernel on a GPU (views and allocations left out)
    bwd_kernels: int
    fwd_op_names: list[str]
    bwd_op_names: list[str]
    error: str | None = None  # why the route was not counted (then no counts)


class _CountOps(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []
        self.kernels = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.names.append(name)
        self.kernels += name not in _NO_KERNEL and not func.is_view
        return func(*args, **(kwargs or {}))


def count_ops(variant: str, route: str, p: float = 0.1) -> OpCount:
    """Aten ops one fwd and one bwd of a (64, 64) fp32 call dispatch, on ``route``; "nn.Dropout" is torch's own."""
    x = torch.randn(PER_CALL_SHAPE, requires_grad=True)
    grad = torch.ones_like(x)
    if variant == "nn.Dropout":  # torch's own routes: F.dropout on CPU, native_dropout where the native route runs
        layer = (lambda t: torch.native_dropout(t, p, True)[0]) if route == "native" else torch.nn.Dropout(p)
    elif route == "native" and get_variant(variant).storage == "torch":
        return OpCount(variant, route, 0, 0, 0, 0, [], [], "torch's own dropout: on its device, nn.Dropout's ops")
    else:
        layer = PackedDropout(p, variant=variant)
    try:
        with use_route(route):
            layer(x).backward(grad)  # warm-up: lazily built tables are not part of a call
            x.grad = None  # so that backward's count has no gradient accumulation in it
            with _CountOps() as fwd:
                y = layer(x)
            with _CountOps() as bwd:
                y.backward(grad)
    except (AttributeError, RuntimeError) as error:  # device-specific code the CPU cannot stand in for
        return OpCount(variant, route, 0, 0, 0, 0, [], [], f"{type(error).__name__}: {error}")
    return OpCount(variant, route, len(fwd.names), len(bwd.names), fwd.kernels, bwd.kernels, fwd.names, bwd.names)


@dataclass
class RoutingRow:
    variant: str
    routing: str
    fwd_bwd_ratio: float  # converted model / plain model, median of interleaved pairs
    fwd_bwd_ratio_min: float
    fwd_bwd_ratio_max: float
    plain_fwd_bwd_ms: float
    extra_python_calls: int  # per fwd+bwd step, beyond the unconverted model's


def _tiny_model(kind: str) -> tuple[nn.Module, Callable[[nn.Module], torch.Tensor]]:
    """The tiny model and its loss on a batch of 1 x 8 tokens."""
    torch.manual_seed(0)
    ids, labels = torch.randint(2, 1000, (1, 8)), torch.tensor([1])
    if kind == "torch":
        return TinyBert().train(), lambda m: m(ids, labels)
    model = tiny_bert(hidden=64, layers=4, heads=4, intermediate=128, positions=64)  # needs transformers
    return model.train(), lambda m: m(input_ids=ids, labels=labels).loss


def _python_calls(fn: Callable[[], object]) -> int:
    """Python function calls (frames entered) while ``fn`` runs: a count that timing noise cannot move."""
    calls = 0

    def profile(frame, event, arg) -> None:
        nonlocal calls
        calls += event == "call"

    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return calls


def routing_cost(variants: list[str], routings: list[str], pairs: int, kind: str = "torch",
                 steps_per_sample: int = 5) -> list[RoutingRow]:
    """fwd+bwd of the tiny model converted to each variant, as a ratio to the same model unconverted.

    Each sample times ``steps_per_sample`` steps, so that one preemption of a shared machine is a
    small part of it; also counts the Python calls a step makes beyond the unconverted model's.
    """
    plain, loss_of = _tiny_model(kind)

    def steps(model: nn.Module) -> Times:
        start = time.perf_counter()
        for _ in range(steps_per_sample):
            loss_of(model).backward()
        return ((time.perf_counter() - start) / steps_per_sample,)

    plain_calls = _python_calls(lambda: loss_of(plain).backward())
    rows = []
    for variant in variants:
        for routing in routings:
            converted = convert(copy.deepcopy(plain), variant, routing=routing)
            timed = interleaved(lambda: steps(plain), lambda c=converted: steps(c), pairs)
            ratios = [c[0] / b[0] for b, c in timed]
            extra = _python_calls(lambda c=converted: loss_of(c).backward()) - plain_calls
            rows.append(RoutingRow(variant, routing, statistics.median(ratios), min(ratios), max(ratios),
                                   statistics.median(b[0] for b, _ in timed) * 1e3, extra))
    return rows


def launch_bound(variants: list[str], p: float, pairs: int, routing_pairs: int, tiny_model: str,
                 device: torch.device) -> dict:
    """The three launch-bound figures: per-call cost on a small tensor (on ``device``), aten ops per call
    per route, and the routing cost of a tiny model (on the CPU)."""
    x = torch.randn(PER_CALL_SHAPE, device=device, requires_grad=True)
    per_call = []
    print(f"\n# launch-bound view, per call: fwd+bwd of a {'x'.join(map(str, PER_CALL_SHAPE))} fp32 tensor "
          "vs nn.Dropout (median of interleaved pairs)")
    print(f"{'variant':<16}{'fwd':>7}{'bwd':>7}{'fwd+bwd':>9}{'(min-max)':>15}{'base us':>9}")
    for variant in variants:
        fwd, bwd, total, base_s = compare(variant, x, p, pairs)
        per_call.append({"variant": variant, "fwd_ratio": statistics.median(fwd), "bwd_ratio": statistics.median(bwd),
                         "fwd_bwd_ratio": statistics.median(total), "fwd_bwd_ratio_min": min(total),
                         "fwd_bwd_ratio_max": max(total), "baseline_fwd_bwd_us": base_s * 1e6})
        r = per_call[-1]
        print(f"{variant:<16}{r['fwd_ratio']:>6.3f}x{r['bwd_ratio']:>6.3f}x{r['fwd_bwd_ratio']:>8.3f}x"
              f"{f'({min(total):.2f}-{max(total):.2f})':>15}{base_s * 1e6:>9.1f}", flush=True)
    redraw = redraw_floor(x, p, pairs)
    print(f"floor of a redraw (nn.Dropout + a second draw in backward, seeded's least cost): "
          f"{statistics.median(redraw):.3f}x ({min(redraw):.2f}-{max(redraw):.2f})", flush=True)
    print("\n# where a pmdrop call's time goes: each step from nn.Dropout to it, fwd+bwd vs nn.Dropout (same tensor)")
    steps = []
    for step, ratios in per_call_steps(x, p, pairs).items():
        steps.append({"step": step, "fwd_bwd_ratio": statistics.median(ratios), "fwd_bwd_ratio_min": min(ratios),
                      "fwd_bwd_ratio_max": max(ratios)})
        print(f"{step:<44}{steps[-1]['fwd_bwd_ratio']:>8.3f}x{f'({min(ratios):.2f}-{max(ratios):.2f})':>15}",
              flush=True)
    print("\n# the pack and the decode ops alone (us, median): in a tight loop, and right after a 4 MiB write, the "
          "backward of a 4-element sum, an nn.Dropout fwd+bwd")
    costs = op_costs(x, p, pairs)
    print(f"{'ops':<10}" + "".join(f"{prelude.removeprefix('after_'):>20}" for prelude in OP_COST_PRELUDES))
    for name, by_prelude in costs.items():
        loop_us = by_prelude["loop"]
        print(f"{name:<10}" + "".join(f"{f'{us:.1f} ({us / loop_us:.1f}x)':>20}" for us in by_prelude.values()),
              flush=True)
    print("\n# aten ops dispatched per call (kernels: those a GPU launches, views and allocations left out); "
          "native = the CUDA route's logic, run on CPU tensors")
    print(f"{'variant':<16}{'route':<7}{'fwd ops':>8}{'bwd ops':>8}{'fwd kern':>9}{'bwd kern':>9}")
    ops = []
    for variant in ["nn.Dropout", *variants]:
        for route in ("noise", "native"):
            ops.append(count_ops(variant, route, p))
            c = ops[-1]
            counts = (f"  not counted: {c.error}" if c.error else
                      f"{c.fwd_ops:>8}{c.bwd_ops:>8}{c.fwd_kernels:>9}{c.bwd_kernels:>9}")
            print(f"{variant:<16}{route:<7}{counts}")
    routed = [v for v in ("baseline", "pmdrop") if v in variants] or variants[:1]
    print(f"\n# routing cost: tiny eager BERT ({tiny_model}; 4 layers, hidden 64, batch 1 x 8 tokens) fwd+bwd, "
          "converted / plain (median of interleaved pairs)")
    print(f"{'variant':<16}{'routing':<9}{'ratio':>8}{'(min-max)':>15}{'plain ms':>10}{'+Python calls/step':>20}")
    routing = routing_cost(routed, ["static", "all"], routing_pairs, tiny_model)
    for r in routing:
        print(f"{r.variant:<16}{r.routing:<9}{r.fwd_bwd_ratio:>7.3f}x"
              f"{f'({r.fwd_bwd_ratio_min:.2f}-{r.fwd_bwd_ratio_max:.2f})':>15}{r.plain_fwd_bwd_ms:>10.2f}"
              f"{r.extra_python_calls:>20}", flush=True)
    return {"per_call": per_call, "redraw_floor_ratio": statistics.median(redraw), "per_call_steps": steps,
            "op_costs_us": costs,
            "op_counts": [asdict(c) for c in ops], "routing": [asdict(r) for r in routing]}


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


VIEWS = ("size", "launch")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--views", nargs="+", default=list(VIEWS), choices=VIEWS,
                        help="size: the --shape table; launch: per-call cost, op counts and routing cost")
    parser.add_argument("--shape", default="32,512,768", help="comma-separated tensor shape")
    parser.add_argument("--dtype", nargs="+", default=["fp32"], choices=sorted(DTYPES))
    parser.add_argument("--variants", nargs="+", default=None, help="default: every registered bit-exact variant")
    parser.add_argument("--p", type=float, default=0.1)
    parser.add_argument("--pairs", type=int, default=9, help="interleaved baseline/variant pairs per variant")
    parser.add_argument("--call-pairs", type=int, default=101, help="pairs per variant of the per-call figure")
    parser.add_argument("--routing-pairs", type=int, default=101, help="pairs per variant of the routing figure")
    parser.add_argument("--tiny-model", default="torch", choices=["torch", "transformers"],
                        help="the routing figure's model: plain torch, or transformers' BertForSequenceClassification")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (the floors: 1)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", help="also write the rows and provenance to this file")
    args = parser.parse_args(argv)
    variants = args.variants or [v for v in variant_names() if get_variant(v).bit_exact]
    for name in variants:
        get_variant(name)  # one-line error naming valid choices before any timing
    if args.threads:
        torch.set_num_threads(args.threads)
    shape = tuple(int(s) for s in args.shape.split(","))
    provenance = {
        "command": "python -m benchmarks.bench " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": device_name(torch.device(args.device)),
        "torch": torch.__version__,
        "commit": git_commit(),
        "p": args.p,
        "pairs": args.pairs,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    print("# " + ", ".join(f"{k}: {v}" for k, v in provenance.items()))
    report: dict = {"provenance": provenance, "rows": []}
    if "size" in args.views:
        print("# ratios: median over interleaved pairs of (variant time / nn.Dropout time); bytes: saved for backward")
        print(_HEADER)
        report["rows"] = [asdict(r) for r in run(shape, args.dtype, variants, args.p, args.pairs, args.device)]
    if "launch" in args.views:
        report["launch_bound"] = launch_bound(variants, args.p, args.call_pairs, args.routing_pairs, args.tiny_model,
                                              torch.device(args.device))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)


if __name__ == "__main__":
    main()
