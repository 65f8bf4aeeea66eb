"""run_training on tiny configs: every contract field, learning, paired mode's gradient cosine, the measurements,
precision and checkpointing, and config checks."""

import dataclasses
import gc
import math

import pytest
import torch

import pmdrop
from experiments import train
from experiments.step import peak_memory, reset_peak_memory
from experiments.train import check_config, run_training

from .cfg import TINY_BERT, compose_run

FIELDS = {"device", "steps", "batch_size", "seq_len", "num_params", "precision", "peak_memory_bytes",
          "peak_memory_kind", "saved_mask_bytes", "saved_activation_bytes", "saved_parameter_bytes",
          "dropout_calls", "throughput_samples_per_s", "tokens_per_s", "step_time_s", "task_metric", "metrics",
          "final_loss", "grad_cosine"}
SHORT = ["trainer.steps=4", "trainer.batch_size=4", "trainer.warmup_steps=1", "trainer.log_every=2",
         "trainer.eval_batches=1", "trainer.threads=1", "trainer.device=cpu"]
EXACT = [name for name in pmdrop.variant_names() if pmdrop.get_variant(name).bit_exact]


TINY_VIT = ["model=vit_tiny", "dataset=digits", "dataset.image_size=16",
            *(f"++model.arch_overrides.{key}" for key in ("embed_dim=32", "depth=2", "num_heads=2"))]


def run(*overrides, model=TINY_BERT):
    cfg = compose_run(*model, *SHORT, *overrides)
    check_config(cfg)
    logged = []
    return dataclasses.asdict(run_training(cfg, lambda step, values: logged.append((step, values)))), logged


def test_run_training_returns_every_contract_field_with_sane_values():
    result, logged = run("variant=pmdrop")
    assert set(result) >= FIELDS
    assert result["device"] == "cpu" and result["peak_memory_kind"] == "cpu_tensor_peak"
    seq_len = compose_run().dataset.seq_len
    assert (result["steps"], result["batch_size"], result["seq_len"], result["precision"]) == (4, 4, seq_len, "fp32")
    assert result["num_params"] > 0 and result["process_peak_rss_bytes"] > 50 * 2**20
    assert 0 < result["memory_at_start_bytes"] <= result["peak_memory_bytes"]
    # the run's own peak: its live tensors over measure_step, split by what held them
    split = result["tensor_peak_split"]
    assert result["peak_memory_bytes"] == result["tensor_peak_bytes"] == sum(split.values())
    assert split["parameters"] == 4 * result["num_params"]
    assert 0 < split["optimizer_state"] - 8 * result["num_params"] < 4096  # AdamW's moments and its step counters
    assert result["tensor_peak_phase"] in ("forward", "backward", "optimizer")
    assert result["task_metric"] == "f1" and set(result["metrics"]) >= {"f1", "accuracy"}
    assert all(0 <= result["metrics"][key] <= 1 for key in ("f1", "accuracy"))
    assert result["dropout_calls"] == {"pmdrop": 1 + 3 + 1}  # embeddings, 3 per layer, classifier
    assert 0 < result["saved_mask_bytes"] < result["saved_activation_bytes"] and result["saved_parameter_bytes"] > 0
    assert result["throughput_samples_per_s"] == pytest.approx(4 / result["step_time_s"])
    assert result["tokens_per_s"] == pytest.approx(result["throughput_samples_per_s"] * seq_len)
    assert math.isfinite(result["final_loss"]) and result["grad_cosine"] is None
    losses = [(step, values) for step, values in logged if "loss" in values]
    assert [step for step, _ in losses] == [2, 4] and losses[-1][1]["loss"] == result["final_loss"]
    # the rate each logged step used: 1 warm-up step, then linear decay over steps 2-4
    assert [values["lr"] for _, values in losses] == pytest.approx([2e-5, 2e-5 / 3])


def test_synthetic_pairs_learns_well_above_chance_in_seconds():
    result, _ = run("trainer.steps=60", "trainer.batch_size=16", "trainer.lr=3e-3", "trainer.warmup_steps=5",
                    "trainer.eval_batches=4", "variant=pmdrop")
    assert result["metrics"]["accuracy"] > 0.75 and result["metrics"]["f1"] > 0.75  # chance: 0.5


def test_packed_masks_save_a_fraction_of_torchs_bytes_and_train_identically():
    baseline, _ = run("variant=baseline")
    packed, _ = run("variant=pmdrop")
    # CPU fp32: torch keeps 4 bytes per masked element, pmdrop 1/8 (rounded up per call)
    assert packed["saved_mask_bytes"] * 30 < baseline["saved_mask_bytes"]
    assert packed["saved_activation_bytes"] == baseline["saved_activation_bytes"]
    assert packed["final_loss"] == baseline["final_loss"] and packed["metrics"] == baseline["metrics"]


@pytest.mark.parametrize("variant", EXACT)
def test_paired_mode_records_a_gradient_cosine_of_one_for_the_exact_variants(variant):
    result, logged = run(f"variant={variant}", "trainer.paired=true", "trainer.grad_cosine_every=2")
    assert [step for step, _ in result["grad_cosine"]] == [1, 2, 4]
    assert all(value > 1 - 1e-6 for _, value in result["grad_cosine"])
    assert [v["grad_cosine"] for _, v in logged if "grad_cosine" in v] == [v for _, v in result["grad_cosine"]]
    unpaired, _ = run(f"variant={variant}")
    assert result["final_loss"] == unpaired["final_loss"]  # the reference copy does not disturb the run


def test_paired_cosine_is_measured_not_assumed(monkeypatch):
    """A reference whose gradients differ shows a cosine below one."""
    convert = pmdrop.convert

    def reference_without_dropout(model, variant):
        if variant == "baseline":
            model.eval()  # the reference is the only model converted to baseline here
        return convert(model, variant)

    monkeypatch.setattr(pmdrop, "convert", reference_without_dropout)
    result, _ = run("variant=pmdrop", "trainer.paired=true", "trainer.grad_cosine_every=2")
    assert all(value < 0.999 for _, value in result["grad_cosine"])


def test_throughput_leaves_out_timing_warm_up_and_the_measured_step():
    trainer = compose_run("trainer.throughput_window=3", "trainer.timing_warmup_steps=2",
                          "trainer.measure_step=5").trainer
    times = [10.0, 9.0, 1.0, 1.0, 50.0, 2.0, 3.0, 4.0]
    assert train._steady_step_times(times, trainer) == [2.0, 3.0, 4.0]
    assert train._steady_step_times(times[:2], trainer) == times[:2]  # nothing steady left: every step


def test_cpu_peak_memory_is_this_runs():
    device = torch.device("cpu")
    block = torch.ones(300 * 2**20 // 4)  # 300 MiB touched
    del block
    # The RSS is the whole process's: memory freed inside the window (earlier tests' garbage collected, another
    # thread) lowers the level the peak grows from. Such a window is measured again, up to three times.
    gc.collect()
    for _ in range(3):
        start = reset_peak_memory(device)
        peak, kind = peak_memory(device)
        assert abs(peak - start) < 20 * 2**20
        block = torch.ones(100 * 2**20 // 4)
        grown, _ = peak_memory(device)
        del block
        if grown - peak > 90 * 2**20:
            break
    assert kind == "cpu_peak_rss" and grown - peak > 90 * 2**20
    reset_peak_memory(device)
    assert peak_memory(device)[0] < grown


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_precisions_and_masked_lm_run_on_cpu(precision):
    result, _ = run("variant=pmdrop", f"trainer.precision={precision}", "dataset=synthetic_lm", "dataset.task=mlm",
                    "dataset.seq_len=16", "dataset.vocab_size=200", "dataset.train_size=16", "dataset.eval_size=8")
    assert result["precision"] == precision and result["task_metric"] == "perplexity"
    assert 1 < result["metrics"]["perplexity"] < 1000 and math.isfinite(result["final_loss"])


@pytest.mark.parametrize("model", [TINY_BERT, TINY_VIT], ids=["tinybert", "vit_tiny"])
def test_activation_checkpointing_trains_identically_with_fewer_saved_bytes(model):
    plain, _ = run("variant=pmdrop", model=model)
    checkpointed, _ = run("variant=pmdrop", "trainer.grad_checkpointing=true", model=model)
    assert checkpointed["final_loss"] == plain["final_loss"]  # recomputation redraws the same dropout masks
    assert checkpointed["saved_activation_bytes"] < plain["saved_activation_bytes"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.precision=fp8", r"^trainer.precision='fp8' is not valid; valid: fp32, bf16, fp16$"),
        ("trainer.steps=abc", r"^trainer.steps: Value 'abc' of type 'str' could not be converted to Integer$"),
        ("+trainer.stpes=3", r"^trainer.stpes: Key 'stpes' not in 'TrainerSchema'$"),
        ("trainer.device=tpu", r"^trainer.device='tpu' is not valid; valid: auto, cpu, cuda$"),
        ("model.family=gpt", r"^model.family='gpt' is not valid; valid: bert, longformer, vit$"),
        ("dataset.kind=imagenet", r"^dataset.kind='imagenet' is not valid; valid: synthetic_pairs"),
        ("trainer.measure_step=50", r"^trainer.measure_step=50 is past trainer.steps=4$"),
        ("trainer.batch_size=0", r"^trainer.batch_size=0 must be >= 1$"),
    ],
)
def test_bad_values_fail_before_any_work_with_one_line(override, message):
    with pytest.raises(ValueError, match=message):
        check_config(compose_run(*SHORT, override))
