"""The GPU benchmark (benchmarks/bench_gpu.py) and the Triton pack kernel it evaluates (benchmarks/triton_pack.py).

Without a GPU they run on CPU tensors through Triton's interpreter: the pack kernel's module (and
pmdrop.triton_kernels, whose jit helpers it calls) is imported here with TRITON_INTERPRET=1, as
tests/core/test_fused.py imports the kernels, and the variable restored right after.
"""

import os
import subprocess
import sys
import time

import pytest
import torch

import pmdrop

from .helpers import import_triton_module

# triton.language's own jit functions are decorated in the normal mode here, before the variable is set below:
# triton asserts they are compiled-mode ones when it later imports gluon with the variable unset.
pytest.importorskip("triton.language")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
triton_pack = import_triton_module("benchmarks.triton_pack", DEVICE)
from benchmarks import bench_gpu  # noqa: E402 - after the kernels are decorated in the mode chosen above


def test_bench_gpu_smoke_runs_and_cpu_timing_is_refused():
    checked = bench_gpu.smoke(DEVICE)
    assert len(checked) == 6
    if DEVICE == "cpu":
        with pytest.raises(SystemExit, match="no CUDA device is visible: timing refused"):
            bench_gpu.main([])


def test_bench_gpu_exact_route_pieces_check_and_time_both_routes():
    """Checks both routes agree, then times them with any timer: here wall-clock on the interpreter."""
    calls = []

    def timer(op):
        calls.append(op)
        start = time.perf_counter()
        op()
        return time.perf_counter() - start

    x = torch.randn(3, 700, generator=torch.Generator().manual_seed(0)).to(torch.float16).to(DEVICE)
    rows = bench_gpu.exact_route_pieces(x.requires_grad_(), 0.1, 4, reps=3, timer=timer)
    assert [(r.shape, r.dtype, r.piece, r.masks_per_byte) for r in rows] == [
        ("3x700", "fp16", "pack", 4), ("3x700", "fp16", "backward", 4),
    ]
    assert all(r.torch_ms > 0 and r.triton_ms > 0 and r.ratio > 0 for r in rows)
    assert len(calls) == 2 * (2 + 2 * 3)  # per piece: one warm-up each, then both ops every repetition


@pytest.mark.parametrize("masks_per_byte", [8, 4, 2, 1])
def test_pack_kernel_matches_pack_flat(masks_per_byte):
    generator = torch.Generator().manual_seed(masks_per_byte)
    for n in (0, 1, 9, 2049 * 2 + 3):
        mask = (torch.rand(n + 1, generator=generator) < 0.5).to(DEVICE)
        for flat in (mask[:n], mask[1:], mask[:n].to(torch.uint8)):  # bool, unaligned view, 0/1 bytes
            assert torch.equal(triton_pack.pack(flat, masks_per_byte), pmdrop.packing.pack_flat(flat, masks_per_byte))


def test_pack_kernel_refuses_other_inputs():
    with pytest.raises(TypeError, match=r"bool or uint8 mask, got torch\.float32"):
        triton_pack.pack(torch.zeros(8, device=DEVICE))
    with pytest.raises(ValueError, match=r"flat contiguous tensor, got shape \(2, 4\)"):
        triton_pack.pack(torch.zeros(2, 4, dtype=torch.bool, device=DEVICE))


def test_pack_kernel_imported_in_another_mode_than_its_helpers_is_refused():
    script = """
import os, pmdrop.triton_kernels
os.environ["TRITON_INTERPRET"] = "1"  # pmdrop.triton_kernels' helpers are GPU ones already
try:
    import benchmarks.triton_pack
except ImportError as error:
    print(error)
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "benchmarks.triton_pack was imported with TRITON_INTERPRET=1 and pmdrop.triton_kernels without: its kernel "
        "could not call their jit helpers; import both in one mode",
    ]


@pytest.mark.parametrize("masks_per_byte", [8, 4])
@pytest.mark.parametrize("shape", [(3, 5, 7), (8, 12, 512, 512), (1, 12, 1000, 513)], ids=str)
@pytest.mark.cuda
@requires_cuda
def test_cuda_pack_kernel_packs_native_dropout_masks_exactly(shape, masks_per_byte):
    mask = torch.ops.aten.native_dropout(torch.randn(shape, device="cuda"), 0.1, True)[1].view(-1)
    assert torch.equal(triton_pack.pack(mask, masks_per_byte), pmdrop.packing.pack_flat(mask, masks_per_byte))
