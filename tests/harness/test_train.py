"""run_training on tiny configs: every contract field, paired mode's gradient cosine, config checks."""

import math

import pytest

from experiments.train import check_config, run_training

from .cfg import TINY_BERT, compose_run

FIELDS = {"device", "steps", "batch_size", "seq_len", "num_params", "precision", "peak_memory_bytes",
          "peak_memory_kind", "saved_mask_bytes", "saved_activation_bytes", "saved_parameter_bytes",
          "dropout_calls", "throughput_samples_per_s", "tokens_per_s", "step_time_s", "task_metric", "metrics",
          "final_loss", "grad_cosine"}
SHORT = ["trainer.steps=4", "trainer.batch_size=4", "trainer.warmup_steps=1", "trainer.log_every=2",
         "trainer.eval_batches=1", "trainer.threads=1"]


def train(*overrides):
    cfg = compose_run(*TINY_BERT, *SHORT, *overrides)
    check_config(cfg)
    logged = []
    return run_training(cfg, lambda step, values: logged.append((step, values))), logged


def test_run_training_returns_every_contract_field_with_sane_values():
    result, logged = train("variant=pmdrop")
    assert set(result) >= FIELDS
    assert result["device"] == "cpu" and result["peak_memory_kind"] == "cpu_peak_rss"
    assert result["task_metric"] == "f1" and set(result["metrics"]) >= {"f1", "accuracy"}
    assert result["dropout_calls"] == {"pmdrop": 1 + 3 + 1}
    assert result["saved_mask_bytes"] > 0 and result["saved_activation_bytes"] > result["saved_mask_bytes"]
    assert result["throughput_samples_per_s"] > 0
    assert result["seq_len"] == 11
    assert result["tokens_per_s"] == pytest.approx(result["throughput_samples_per_s"] * 11)
    assert math.isfinite(result["final_loss"]) and result["grad_cosine"] is None
    assert [step for step, values in logged if "loss" in values] == [2, 4]


def test_packed_masks_save_a_fraction_of_torchs_bytes():
    baseline, _ = train("variant=baseline")
    packed, _ = train("variant=pmdrop")
    # CPU fp32: torch keeps 4 bytes per masked element, pmdrop 1/8 (rounded up per call)
    assert packed["saved_mask_bytes"] * 30 < baseline["saved_mask_bytes"]
    assert packed["saved_activation_bytes"] == baseline["saved_activation_bytes"]
    assert packed["final_loss"] == baseline["final_loss"] and packed["metrics"] == baseline["metrics"]


@pytest.mark.parametrize("variant", ["pmdrop", "seeded"])
def test_paired_mode_records_a_gradient_cosine_of_one(variant):
    result, logged = train(f"variant={variant}", "trainer.paired=true", "trainer.grad_cosine_every=2")
    steps = [step for step, _ in result["grad_cosine"]]
    assert steps == [1, 2, 4]
    assert all(value > 1 - 1e-9 for _, value in result["grad_cosine"])
    assert [v["grad_cosine"] for _, v in logged if "grad_cosine" in v] == [v for _, v in result["grad_cosine"]]


def test_bf16_autocast_and_mlm_run_on_cpu():
    result, _ = train("variant=pmdrop", "trainer.precision=bf16", "dataset=synthetic_lm", "dataset.task=mlm",
                      "dataset.seq_len=16", "dataset.vocab_size=200")
    assert result["task_metric"] == "perplexity" and result["metrics"]["perplexity"] > 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("trainer.precision=fp8", r"trainer.precision='fp8' is not valid; valid: fp32, bf16, fp16"),
        ("trainer.steps=abc", r"trainer: Value 'abc' of type 'str' could not be converted to Integer"),
        ("model.family=gpt", r"model.family='gpt' is not valid; valid: bert, longformer, vit"),
        ("dataset.kind=imagenet", r"dataset.kind='imagenet' is not valid; valid: synthetic_pairs"),
        ("trainer.measure_step=50", r"trainer.measure_step=50 is past trainer.steps=4"),
    ],
)
def test_bad_values_fail_before_any_work_with_one_line(override, message):
    cfg = compose_run(*SHORT, override)
    with pytest.raises(ValueError, match=message) as error:
        check_config(cfg)
    assert "\n" not in str(error.value)
