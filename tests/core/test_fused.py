"""The fused Triton variants (pmdrop_fused, seeded_fused) and their kernels.

They are not bit-identical to nn.Dropout (their own Philox stream), so these tests check what must
hold instead: same seed -> same mask, keep rate 1 - p, the packed mask decodes to the mask applied,
kept values scaled by 1 / (1 - p) as torch rounds it, backward applies exactly the forward's mask.

With a GPU every test runs the compiled kernels on CUDA tensors. Without one they run on CPU
tensors through Triton's interpreter, which Triton switches on when the kernels are decorated: the
kernel module (whose kernels call only its own jit functions) is imported here once with
TRITON_INTERPRET=1 and the variable restored right after, so nothing else in the process sees it.
The interpreter is slow: sizes stay small.
"""

import math
import os
import subprocess
import sys

import pytest
import torch

import pmdrop

from .helpers import import_triton_module

# triton.language's own jit functions are decorated in the normal mode here, before the variable is set below:
# triton asserts they are compiled-mode ones when it later imports gluon with the variable unset.
pytest.importorskip("triton.language")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
kernels = import_triton_module("pmdrop.triton_kernels", DEVICE)
from pmdrop import fused, variants  # noqa: E402 - after the kernels are decorated in the mode chosen above

K4 = variants.fused_packed_variant(4)  # not registered: the registry stays what the harness's configs list
VARIANTS = ["pmdrop_fused", K4, "seeded_fused"]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
SHAPES = [(7,), (3, 5, 143), (2, 2049)]  # below one byte; one chunk + a ragged tail; two chunks + a tail
requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def name_of(value) -> str:
    return value.name if isinstance(value, pmdrop.DropoutVariant) else str(value)


def nonzero_randn(shape, dtype=torch.float32, seed=0):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    x[x == 0] = 1  # so that y != 0 exactly where the element was kept
    return x.to(DEVICE)


def expected(v: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """v * keep * 1/(1-p), computed as torch's native_dropout does (float64 for float64, else float32)."""
    accumulate = torch.float64 if v.dtype == torch.float64 else torch.float32
    scale = torch.tensor(1 / (1 - p), dtype=accumulate, device=v.device)
    exact = v.to(accumulate) * keep.to(accumulate) * scale
    if kernels.INTERPRETED and v.dtype == torch.bfloat16:
        # The interpreter casts float32 to bfloat16 by truncation (triton/runtime/interpreter.py, cast_impl);
        # a GPU rounds to nearest.
        return (exact.float().view(torch.int32) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)
    return exact.to(v.dtype)


def forward(variant: str, x: torch.Tensor, p: float = 0.3, seed: int = 0):
    """Output and the mask it applied: decoded from the saved packed bytes, or y != 0 for seeded_fused."""
    torch.manual_seed(seed)
    y = pmdrop.dropout(x, p, variant=variant)
    masks_per_byte = pmdrop.get_variant(variant).masks_per_byte
    if masks_per_byte is None:
        assert y.grad_fn.saved_tensors == ()
        return y, y.detach() != 0
    (packed,) = y.grad_fn.saved_tensors
    keep = pmdrop.unpack_mask(packed, x.shape, masks_per_byte)
    assert torch.equal(pmdrop.pack_mask(keep, masks_per_byte), packed), "bits past the last element must be zero"
    return y, keep


def test_registered_as_not_bit_exact():
    pmdrop_fused, seeded_fused = pmdrop.get_variant("pmdrop_fused"), pmdrop.get_variant("seeded_fused")
    assert {"pmdrop_fused", "seeded_fused"} <= set(pmdrop.variant_names())
    assert variants.fused_packed_variant(8) == pmdrop_fused and K4.masks_per_byte == 4 and K4.name == "pmdrop_fused_k4"
    assert not pmdrop_fused.bit_exact and not seeded_fused.bit_exact
    assert (pmdrop_fused.masks_per_byte, seeded_fused.masks_per_byte) == (8, None)
    assert "not bit-identical" in pmdrop_fused.summary
    with pytest.raises(ValueError, match=r"masks_per_byte=3 is not supported; valid: \(8, 4, 2, 1\)"):
        variants.fused_packed_variant(3)


@pytest.mark.parametrize("shape", SHAPES[:2], ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("variant", VARIANTS, ids=name_of)
def test_output_packed_mask_and_gradient(variant, dtype, shape):
    x = nonzero_randn(shape, dtype).requires_grad_()
    y, keep = forward(variant, x)
    assert y.shape == x.shape and y.dtype == dtype and y.is_contiguous()
    assert torch.equal(keep, y.detach() != 0)
    assert torch.equal(y, expected(x.detach(), keep, 0.3))
    grad = nonzero_randn(shape, dtype, seed=1)
    torch.rand(100, device=DEVICE)  # the generator moves on: backward must not depend on it
    y.backward(grad)
    assert torch.equal(x.grad, expected(grad, keep, 0.3))


def test_same_seed_same_mask_across_variants_and_seeds():
    x = nonzero_randn(SHAPES[1]).requires_grad_()
    first = forward("pmdrop_fused", x, seed=0)[0]
    for variant in VARIANTS:  # the mask depends on the seed and index only, not on how it is stored
        assert torch.equal(forward(variant, x, seed=0)[0], first), name_of(variant)
    assert not torch.equal(pmdrop.dropout(x, 0.3, variant="pmdrop_fused"), first), "a second call redraws"
    assert not torch.equal(forward("pmdrop_fused", x, seed=1)[0], first)


def philox4x32_reference(counter: tuple[int, int, int, int], key: tuple[int, int]) -> list[int]:
    """Philox4x32-10 in plain Python, the published algorithm (Salmon et al., SC'11; Random123)."""
    (c0, c1, c2, c3), (k0, k1), word = counter, key, 2**32 - 1
    for _ in range(10):
        a, b = 0xD2511F53 * c0, 0xCD9E8D57 * c2
        c0, c1, c2, c3 = (b >> 32) ^ c1 ^ k0, b & word, (a >> 32) ^ c3 ^ k1, a & word
        k0, k1 = (k0 + 0x9E3779B9) & word, (k1 + 0xBB67AE85) & word
    return [c0, c1, c2, c3]


def test_reference_philox_gives_the_published_test_vectors():
    word = 2**32 - 1
    assert philox4x32_reference((0, 0, 0, 0), (0, 0)) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox4x32_reference((word,) * 4, (word, word)) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD]
    assert philox4x32_reference((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0)) == [
        0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1,
    ]


@pytest.mark.parametrize(("seed", "counter_base"), [(0, 0), (2**40 + 3, 2**32 - 5), (-7, 12345)])
def test_random_stream_is_the_documented_one(seed, counter_base):
    """Element i of chunk c: output i // Q of Philox at counter base + i % Q, subsequence c (Q = CHUNK / 4)."""
    n, p, word = kernels.CHUNK + 100, 0.5, 2**32 - 1
    x = torch.ones(n, device=DEVICE)
    y, packed = torch.empty_like(x), torch.empty(math.ceil(n / 8), dtype=torch.uint8, device=DEVICE)
    kernels.dropout(x, y, packed, torch.tensor([2.0], device=DEVICE), p, seed, counter_base, 8)
    key = (seed & word, (seed >> 32) & word)
    reference = []
    for i in range(n):
        chunk, (lane, j) = i // kernels.CHUNK, divmod(i % kernels.CHUNK, kernels.COUNTERS_PER_CHUNK)
        counter = counter_base + j
        bits = philox4x32_reference((counter & word, counter >> 32, chunk & word, chunk >> 32), key)[lane]
        reference.append(bits >= kernels.philox_threshold(p))
    keep = torch.tensor(reference, device=DEVICE)
    assert torch.equal(pmdrop.unpack_mask(packed, (n,)), keep) and torch.equal(y, keep * 2.0)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_rate_is_one_minus_p_per_chunk_and_lane(p):
    chunks = 3
    x = torch.ones(chunks * kernels.CHUNK, device=DEVICE, requires_grad=True)
    _, keep = forward("pmdrop_fused", x, p=p)
    # Each Philox output (lane) decides one contiguous quarter of a chunk: check every quarter separately.
    quarters = keep.view(chunks * kernels.PHILOX_OUTPUTS, -1)
    for sample in (keep, *quarters):
        n = sample.numel()
        assert abs(sample.sum().item() - n * (1 - p)) <= 5 * math.sqrt(n * p * (1 - p)), f"keep rate off (p={p})"
    assert len({tuple(q.tolist()) for q in quarters}) == len(quarters), "quarters repeat a random pattern"


def test_threshold_matches_p_to_32_bits():
    for p in (1e-12, 0.1, 0.5, 0.9, 1 - 1e-12):
        threshold = kernels.philox_threshold(p)
        assert 0 <= threshold < 2**32 and abs(threshold / 2**32 - p) <= 2**-32


def test_non_contiguous_input_is_processed_as_its_contiguous_copy():
    base = nonzero_randn((65, 70))
    x = base.t().requires_grad_()
    y, keep = forward("pmdrop_fused", x)
    y_contiguous, keep_contiguous = forward("pmdrop_fused", x.detach().contiguous().requires_grad_())
    assert torch.equal(y, y_contiguous) and torch.equal(keep, keep_contiguous) and y.is_contiguous()
    grad = nonzero_randn((65, 70), seed=1).t()
    y.backward(grad)
    assert torch.equal(x.grad, expected(grad, keep, 0.3))


@pytest.mark.parametrize("variant", ["pmdrop_fused", "seeded_fused"])
@pytest.mark.parametrize("transposed", [False, True], ids=["contiguous", "transposed"])
def test_inplace_writes_into_the_input(variant, transposed):
    leaf = nonzero_randn((40, 60)).requires_grad_()
    view = torch.t if transposed else torch.clone
    out_of_place, keep = forward(variant, view(leaf))
    x = view(leaf.clone())
    torch.manual_seed(0)
    y = pmdrop.dropout(x, 0.3, inplace=True, variant=variant)
    assert y is x and torch.equal(y, out_of_place)
    grad = nonzero_randn(x.shape, seed=1)
    y.backward(grad)
    assert torch.equal(view(leaf.grad), expected(grad, keep, 0.3))


@pytest.mark.parametrize(
    ("variant", "mask_bytes"), [("pmdrop_fused", 1 / 8), (K4, 1 / 4), ("seeded_fused", 0)], ids=name_of
)
def test_saved_bytes(variant, mask_bytes):
    x = torch.randn(1001, device=DEVICE, requires_grad=True)
    with pmdrop.track_saved_tensors() as saved:
        pmdrop.dropout(x, 0.1, variant=variant)
    assert saved.mask_bytes == math.ceil(1001 * mask_bytes) and saved.activation_bytes == 0
    assert saved.mask_tensors == (mask_bytes > 0) and saved.dropout_calls == {"pmdrop": 1}


def test_the_packed_mask_passes_through_saved_tensor_hooks_and_backward_reads_what_they_return():
    x = nonzero_randn(SHAPES[1]).requires_grad_()
    clean = forward("pmdrop_fused", x)[0]
    torch.manual_seed(0)
    seen = []
    # every bit flipped on its way through the hooks: backward applies the complement
    with torch.autograd.graph.saved_tensors_hooks(lambda t: seen.append(t.numel()) or ~t, lambda t: t):
        y = pmdrop.dropout(x, 0.3, variant="pmdrop_fused")
    assert torch.equal(y, clean) and seen == [math.ceil(x.numel() / 8)]
    grad = nonzero_randn(SHAPES[1], seed=1)
    y.backward(grad)
    assert torch.equal(x.grad, expected(grad, clean == 0, 0.3))


@pytest.mark.parametrize("variant", ["pmdrop_fused", "seeded_fused"])
def test_create_graph_gives_the_same_gradient_and_a_second_derivative(variant):
    x = nonzero_randn(SHAPES[1]).requires_grad_()
    y, keep = forward(variant, x)
    (grad,) = torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)
    assert torch.equal(grad, expected(2 * y.detach(), keep, 0.3))
    grad.sum().backward()  # d/dx sum(2 * y * noise) = 2 * noise**2
    noise = expected(torch.ones_like(x), keep, 0.3)
    assert torch.equal(x.grad, 2 * noise * noise)


@pytest.mark.parametrize("variant", ["pmdrop_fused", "seeded_fused"])
def test_activation_checkpointing_recomputes_the_same_mask(variant):
    x0 = nonzero_randn(SHAPES[1])

    def block(x: torch.Tensor) -> torch.Tensor:
        return pmdrop.dropout(x * 2, 0.3, variant=variant).sin()

    results = []
    for checkpointed in (False, True):
        torch.manual_seed(0)
        x = x0.clone().requires_grad_()
        y = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False) if checkpointed else block(x)
        y.sum().backward()
        results.append((y.detach(), x.grad))
    assert all(map(torch.equal, *results))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_masked_scale_kernel_is_native_dropout_backward(dtype):
    """So the exact route could run its backward straight from the packed mask (the hook in the report)."""
    if kernels.INTERPRETED and dtype == torch.bfloat16:
        pytest.skip("the interpreter truncates float32 to bfloat16 where torch and a GPU round to nearest")
    grad = nonzero_randn((3, 1367), dtype)
    mask = torch.rand(3, 1367, device=DEVICE) < 0.7
    scale = torch.tensor([1 / 0.7], dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=DEVICE)
    ours = kernels.masked_scale(grad.view(-1), pmdrop.packing.pack_flat(mask.view(-1)), scale, 8)
    assert torch.equal(ours, torch.ops.aten.native_dropout_backward(grad, mask, 1 / 0.7).view(-1))


def _train(variant: str, steps: int = 3) -> tuple[list[float], list[torch.Tensor]]:
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(64, 64),
        torch.nn.Dropout(0.2, inplace=True), torch.nn.ReLU(), torch.nn.Linear(64, 4),
    ).to(DEVICE)
    pmdrop.convert(model, variant)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    data = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(steps):
        x, target = torch.randn(16, 32, generator=data).to(DEVICE), torch.randint(4, (16,), generator=data).to(DEVICE)
        loss = torch.nn.functional.cross_entropy(model(x), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses, [p.detach().clone() for p in model.parameters()]


def test_training_steps_are_reproducible_and_identical_between_packed_and_seeded():
    losses, params = _train("pmdrop_fused")
    assert all(math.isfinite(loss) for loss in losses)
    for variant in ("pmdrop_fused", "seeded_fused"):  # same stream, same arithmetic: the same trajectory
        other_losses, other_params = _train(variant)
        assert other_losses == losses and all(map(torch.equal, params, other_params)), variant


def test_cpu_without_the_interpreter_is_refused_and_the_core_never_imports_triton():
    script = """
import os, sys, torch, pmdrop, pmdrop.fused
x = torch.randn(9, requires_grad=True)
for variant in ("baseline", "pmdrop", "pmdrop_nocache", "pmdrop_4bit", "seeded"):
    pmdrop.dropout(x, 0.5, variant=variant).sum().backward()
pmdrop.dropout(x.detach(), 0.5, variant="pmdrop_fused")  # no backward needed: torch's own dropout
print("triton imported:", "triton" in sys.modules)
for step in ("plain", "compiled"):
    try:
        pmdrop.dropout(x, 0.5, variant="pmdrop_fused")
    except RuntimeError as error:
        print(error)
    import pmdrop.triton_kernels  # decorated for the GPU: setting the variable now is too late
    os.environ["TRITON_INTERPRET"] = "1"
"""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "triton imported: False",
        "pmdrop_fused needs a CUDA tensor (or TRITON_INTERPRET=1 to run Triton's interpreter on CPU, for tests), "
        "got a cpu tensor",
        "pmdrop_fused got a cpu tensor, but pmdrop.triton_kernels was imported without TRITON_INTERPRET=1 and "
        "compiled its kernels for the GPU; set TRITON_INTERPRET=1 before its first use to run Triton's interpreter "
        "on CPU",
    ]


AOT_COMPILE = """
import os, re, subprocess, sys, tempfile
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import pmdrop.triton_kernels as tk
import benchmarks.triton_pack as tp

def compile_for(arch, kernel, signature, constexprs):
    # as Triton specializes a launch whose pointers are 16-byte aligned and sizes multiples of 16
    specialized = [i for i, name in enumerate(signature) if name.endswith("_ptr") or name in ("n", "n_bytes")]
    aligned = {(i,): [["tt.divisibility", 16]] for i in specialized}
    source = ASTSource(fn=kernel, signature=signature, constexprs=constexprs, attrs=aligned)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options={"num_warps": tk.NUM_WARPS})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
        usage = subprocess.run([tool, "--dump-resource-usage", cubin.name], capture_output=True, text=True).stdout
    ptx = compiled.asm["ptx"]
    wide = "ld.global.v4.b32" in ptx and "st.global.v4.b32" in ptx
    print(kernel.__name__, arch, constexprs, "128-bit" if wide else "narrow", re.search(r"LOCAL:\\d+", usage)[0])

def tensors(dtype, **names):
    return {name: kind.replace("T", dtype) for name, kind in names.items()}

for arch in (90, 80):
    compile_for(arch, tk.dropout_kernel, {
        **tensors("fp32", x_ptr="*T", y_ptr="*T", mask_ptr="*u8", scale_ptr="*T"), "n": "i32", "seed": "i64",
        "counter_base": "i64", "threshold": "u32", "COUNTERS": "constexpr", "K": "constexpr",
        "STORE_MASK": "constexpr"}, {"COUNTERS": tk.COUNTERS_PER_CHUNK, "K": 8, "STORE_MASK": True})
compile_for(90, tk.masked_scale_kernel, {
    **tensors("fp32", grad_ptr="*T", mask_ptr="*u8", out_ptr="*T", scale_ptr="*T"), "n": "i32", "n_bytes": "i32",
    "BLOCK_BYTES": "constexpr", "K": "constexpr"}, {"BLOCK_BYTES": tk.MASK_BLOCK_BYTES, "K": 4})
compile_for(90, tp.pack_kernel, {"mask_ptr": "*u8", "out_ptr": "*u8", "n": "i32", "n_bytes": "i32",
    "BLOCK_BYTES": "constexpr", "K": "constexpr"}, {"BLOCK_BYTES": tk.MASK_BLOCK_BYTES, "K": 8})
# Triton turns an int argument equal to 1 into a constexpr: threshold 1 is a launch with p ~ 2.3e-10.
compile_for(90, tk.dropout_kernel, {
    **tensors("bf16", x_ptr="*T", y_ptr="*T", mask_ptr="*u8"), "scale_ptr": "*fp32", "n": "i32", "seed": "i64",
    "counter_base": "i64", "threshold": "constexpr", "COUNTERS": "constexpr", "K": "constexpr",
    "STORE_MASK": "constexpr"}, {"threshold": 1, "COUNTERS": tk.COUNTERS_PER_CHUNK, "K": 8, "STORE_MASK": True})
"""


def test_kernels_compile_to_gpu_code_without_a_gpu():
    """The interpreter never lowers to GPU code: compile for sm_90 and sm_80 ahead of time (Triton's bundled ptxas).

    The fp32 random kernel and the backward must use 128-bit loads and stores, and no kernel may spill.
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", AOT_COMPILE], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert [line.split(" ")[:2] for line in lines] == [
        ["dropout_kernel", "90"], ["dropout_kernel", "80"], ["masked_scale_kernel", "90"], ["pack_kernel", "90"],
        ["dropout_kernel", "90"],
    ]
    assert all(line.endswith("LOCAL:0") for line in lines), lines
    assert all("128-bit" in line for line in lines[:3]), lines


@pytest.mark.cuda
@requires_cuda
def test_cuda_seed_and_counter_come_from_torch_generator():
    torch.cuda.manual_seed(123)
    first, second = (fused.philox_position(torch.device("cuda"), kernels) for _ in range(2))
    # manual_seed resets the offset to 0; each call reserves CHUNK outputs per subsequence (CHUNK / 4 counters)
    assert first == (123, 0) and second == (123, kernels.COUNTERS_PER_CHUNK)
    assert torch.cuda.default_generators[torch.cuda.current_device()].get_offset() == 2 * kernels.CHUNK


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.cuda
@requires_cuda
def test_cuda_paper_sized_tensor(dtype):
    x = torch.randn(1, 12, 4096, 513, device="cuda").to(dtype)
    x[x == 0] = 1
    x.requires_grad_()
    y, keep = forward("pmdrop_fused", x, p=0.1)
    n = x.numel()
    assert abs(keep.sum().item() - 0.9 * n) <= 5 * math.sqrt(n * 0.09)
    assert torch.equal(keep, y.detach() != 0) and torch.equal(y, expected(x.detach(), keep, 0.1))
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, expected(torch.ones_like(y), keep, 0.1))


@pytest.mark.parametrize("variant", ["pmdrop_fused", "seeded_fused"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16_autocast"])
@pytest.mark.cuda
@requires_cuda
def test_cuda_bert_training_steps(variant, autocast):
    from benchmarks.models import tiny_bert, token_batch

    torch.manual_seed(0)
    model = pmdrop.convert(tiny_bert(attn="eager", layers=2).cuda().train(), variant)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = {k: v.cuda() for k, v in token_batch(batch=8, seq=64).items()}
    for _ in range(2):
        with torch.autocast("cuda", torch.bfloat16, enabled=autocast), pmdrop.track_saved_tensors() as saved:
            loss = model(**batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert math.isfinite(loss.item())
    assert saved.dropout_calls == {"pmdrop": 1 + 3 * 2 + 1}  # embeddings, 3 per layer, classifier
    tokens = 8 * 64
    hidden_masks = tokens * 312 * (1 + 2 * 2) + 8 * 312  # embeddings + 2 per layer, classifier input
    attention_masks = 2 * 8 * 12 * 64 * 64
    assert saved.mask_bytes == (0 if variant == "seeded_fused" else (hidden_masks + attention_masks) // 8)
