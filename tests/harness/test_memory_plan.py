"""experiments/memory_plan.py: the meta-device plan against the same step measured on the CPU, and CUDA semantics."""

import math
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from experiments import memory_plan
from experiments.memory_plan import ConcreteValues, CudaAutocast, CudaKernels, check_plan_config, step_memory

from .cfg import compose_run

TINY_LM = ["model=tinybert", "model.num_hidden_layers=2", "model.hidden_size=64", "model.num_attention_heads=4",
           "model.intermediate_size=128", "dataset=synthetic_lm", "dataset.seq_len=128", "dataset.vocab_size=1000",
           "dataset.train_size=4", "trainer.batch_size=4", "trainer.device=cpu"]
TINY_LONGFORMER = ["model=longformer_base", "model.num_hidden_layers=1", "model.hidden_size=64",
                   "model.num_attention_heads=4", "model.intermediate_size=128", "model.attention_window=32",
                   "model.vocab_size=1000", "dataset=synthetic_lm", "dataset.seq_len=128", "dataset.vocab_size=1000",
                   "dataset.train_size=2", "trainer.batch_size=2", "trainer.device=cpu"]
TINY_VIT = ["model=vit_tiny", "+model.arch_overrides={depth: 2, patch_size: 8}", "dataset=digits",
            "dataset.image_size=32", "trainer.batch_size=8", "trainer.device=cpu"]


@pytest.mark.parametrize(("overrides", "variant"), [
    *[(TINY_LM, v) for v in ("baseline", "pmdrop", "pmdrop_nocache", "pmdrop_4bit")],
    ([*TINY_LM, "model.attn_implementation=sdpa", "trainer.grad_checkpointing=true"], "pmdrop"),
    (TINY_LONGFORMER, "baseline"), (TINY_LONGFORMER, "pmdrop"), (TINY_VIT, "pmdrop")],
    ids=["baseline", "pmdrop", "pmdrop_nocache", "pmdrop_4bit", "sdpa-checkpointing", "longformer-baseline",
         "longformer-pmdrop", "vit-pmdrop"])
def test_cpu_route_plan_equals_the_step_measured_on_cpu(overrides, variant):
    cfg = compose_run(*overrides, f"variant={variant}")
    planned, _ = step_memory(cfg, "meta", "cpu")
    measured, _ = step_memory(cfg, "cpu")
    assert planned.phase == measured.phase
    assert abs(planned.peak_bytes - measured.peak_bytes) <= 0.01 * measured.peak_bytes
    # What differs at all: AdamW's per-parameter step counters (CPU tensors, so off a meta or CUDA device) and
    # pmdrop's decode tables (256 entries, cached once per process and device: new in one step, older in another).
    steps = 4 * sum(1 for _ in torch.nn.Module.parameters(_built(cfg)))
    assert abs(measured.peak_bytes - planned.peak_bytes) <= steps + 2 * 256 * 8 * 4
    assert (planned.saved_mask_bytes, planned.saved_activation_bytes) == (measured.saved_mask_bytes,
                                                                          measured.saved_activation_bytes)


def _built(cfg):
    from experiments.data import build_data
    from experiments.models import build_model

    with torch.device("meta"):
        return build_model(cfg.model, build_data(cfg.dataset, cfg.model, cfg.seed))


def _dropout_elements(batch: int, seq: int, hidden: int, heads: int, layers: int) -> list[int]:
    """Elements of each dropout call of BertForSequenceClassification: embeddings, per layer the attention
    probabilities, the attention output and the FFN output, then the classifier."""
    return [batch * seq * hidden] + [batch * heads * seq * seq, batch * seq * hidden, batch * seq * hidden] * layers + [
        batch * hidden]


@pytest.mark.parametrize(("variant", "bytes_per_call"), [
    ("baseline", lambda n: n), ("pmdrop", lambda n: math.ceil(n / 8)), ("pmdrop_4bit", lambda n: math.ceil(n / 4)),
    ("seeded", lambda n: 16)])  # pmdrop's stand-in of CUDA's Philox state (seed and offset) per call
def test_cuda_semantics_save_bool_masks_for_torch_and_packed_ones_for_pmdrop(variant, bytes_per_call):
    cfg = compose_run(*TINY_LM, f"variant={variant}", "dataset.seq_len=36", "trainer.batch_size=3")
    planned, _ = step_memory(cfg, "meta", "cuda")
    expected = sum(bytes_per_call(n) for n in _dropout_elements(3, 36, 64, 4, 2))
    assert planned.saved_mask_bytes == expected
    assert planned.block_bytes == 512 and planned.peak_bytes % 512 == 0


def test_autocast_lists_are_the_installed_torch_header():
    header = Path(torch.__file__).parent / "include" / "ATen" / "autocast_mode.h"
    if not header.exists():
        pytest.skip("this torch ships no ATen headers")
    text = header.read_text()

    def names(macro: str) -> set[str]:
        body = re.search(rf"#define {macro}\(_\)(.*?)\n\n", text, re.S)[1]
        return set(re.findall(r"_\((\w+)", body))

    assert names("AT_FORALL_LOWER_PRECISION_FP") == memory_plan.LOWER_PRECISION
    assert names("AT_FORALL_FP32") == memory_plan.FP32
    assert names("AT_FORALL_FP32_SET_OPT_DTYPE") == memory_plan.FP32_SET_OPT_DTYPE
    assert names("AT_FORALL_PROMOTE") == memory_plan.PROMOTE


def test_cuda_autocast_casts_as_cuda_does_and_caches_weight_casts_for_the_region():
    linear = torch.nn.Linear(16, 16, device="meta")
    norm = torch.nn.LayerNorm(16, device="meta")
    x = torch.empty(4, 16, device="meta", requires_grad=True)
    autocast = CudaAutocast(torch.bfloat16)
    with autocast:
        h = linear(x)
        assert h.dtype is torch.bfloat16
        assert norm(h).dtype is torch.float32 and F.softmax(h, dim=-1).dtype is torch.float32
        assert F.cross_entropy(h, torch.zeros(4, dtype=torch.long, device="meta")).dtype is torch.float32
        assert (norm(h) @ norm(h).t()).dtype is torch.bfloat16
        cast = autocast._cache[id(linear.weight)][1]
        linear(x)
        assert autocast._cache[id(linear.weight)][1] is cast  # one cast per weight per region
        assert len(autocast._cache) == 3  # weight, bias and x: CUDA caches every fp32 leaf that requires grad
    assert not autocast._cache


def test_cuda_sdpa_keeps_no_attention_matrix_for_backward():
    q = torch.empty(2, 4, 256, 32, device="meta", dtype=torch.bfloat16, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t), CudaKernels():
        F.scaled_dot_product_attention(q, q, q, dropout_p=0.1)
    assert saved and all(tuple(shape[-2:]) != (256, 256) for shape in saved)  # q, k, v, out, log-sum-exp, seeds
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.shape) or t, lambda t: t):
        F.scaled_dot_product_attention(q, q, q, dropout_p=0.1)  # the meta/CPU math fallback keeps it
    assert any(tuple(shape[-2:]) == (256, 256) for shape in saved)


def test_concrete_values_answer_the_questions_a_model_asks_of_its_batch():
    ids = torch.tensor([[3, 0, 5], [1, 2, 0]])
    meta = ids.to("meta")
    activation = torch.empty(3, device="meta")
    with ConcreteValues([(meta, ids)]):
        assert bool((meta > 0).all()) is False and bool((meta >= 0).all()) is True
        assert (meta == 0).nonzero().shape == (2, 2)
        pairs = (meta[:, None, :, None] == meta[:, None, None, :]).expand(2, 1 << 22, 3, 3)  # a view: kept
        big = pairs & (meta[:, None, :, None] > 0)  # 75M elements: kept as a recipe, not computed
        assert bool(big[:, 7, 0, :].any()) is True and bool(big[1, 0, 2, :].any()) is False
        with pytest.raises(RuntimeError, match="not computed from the batch alone"):
            bool(activation.sum() > 0)


def test_plan_search_finds_the_largest_batch_within_the_budget():
    cfg = compose_run(*TINY_LM, "variant=pmdrop", "dataset.train_size=8")
    at = {b: step_memory(compose_run(*TINY_LM, "variant=pmdrop", "dataset.train_size=8", f"trainer.batch_size={b}"),
                         "meta", "cuda")[0].peak_bytes for b in (5, 6)}
    assert at[5] < at[6]
    plan = compose_run(*TINY_LM, "experiment=memory_plan", "variant=pmdrop", "trainer.precision=fp32",
                       "dataset.train_size=8", f"memory_plan.budget_bytes={at[5]}",
                       "+memory_plan.search={axis: batch_size, start: 1, limit: 8}")
    check_plan_config(plan)
    result = memory_plan.run_plan(plan, lambda step, metrics: None)
    assert result.maxfit.largest == 5 and result.peak_memory_bytes == at[5] and result.batch_size == 5
    assert result.peak_memory_kind == "planned" and cfg.trainer.batch_size == 4
    assert [size for size, _, _ in result.maxfit.probes] == [1, 2, 4, 8, 6, 5]


def test_a_batch_larger_than_the_training_set_is_planned_from_repeated_samples():
    """A plan needs a batch's shapes only (it once waited for ever for a whole batch from 256 samples at batch 512)."""
    small, enough = ("dataset.train_size=2", "dataset.train_size=8")
    at = [step_memory(compose_run(*TINY_LM, "variant=pmdrop", size, "trainer.batch_size=5"), "meta", "cuda")[0]
          for size in (small, enough)]
    assert at[0].peak_bytes == at[1].peak_bytes > 0


def test_plan_config_errors_are_one_line():
    cfg = compose_run(*TINY_LM, "experiment=memory_plan")
    check_plan_config(cfg)
    for override, message in (("memory_plan.semantics=rocm", "memory_plan.semantics='rocm' is not valid"),
                              ("trainer.compile=true", "trainer.compile=true is not planned")):
        with pytest.raises(ValueError, match=re.escape(message)):
            check_plan_config(compose_run(*TINY_LM, "experiment=memory_plan", override))


@pytest.mark.parametrize(("experiment", "axis"), [("memory_plan_maxfit", "batch_size"),
                                                  ("memory_plan_context", "seq_len")])
def test_search_experiments_resolve_their_steps_from_the_run_config(experiment, axis):
    cfg = compose_run(f"experiment={experiment}")
    check_plan_config(cfg)
    search = memory_plan._schema(cfg).search
    assert search["axis"] == axis and all(isinstance(search[key], int) for key in ("start", "limit", "multiple_of"))
