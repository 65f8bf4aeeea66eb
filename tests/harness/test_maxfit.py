"""Max feasible batch / context: the search's exact boundary, pmdrop fitting more under a saved-bytes budget."""

import dataclasses
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from experiments.jobs import check_config
from experiments.maxfit import BUDGETS, SavedBytesBudget, largest_fitting, run_search

from .cfg import TINY_BERT, compose_run

BUDGET = 2**20  # 1 MiB of saved activations and masks: a tiny BERT at 16 tokens fits a batch of a few dozen
TINY_SEARCH = ["experiment=maxfit", "maxfit=tinybert_batch_cpu", *TINY_BERT, "dataset.seq_len=16",
               "dataset.vocab_size=200", f"maxfit.budget_bytes={BUDGET}", "trainer.threads=1"]


@settings(max_examples=300, deadline=None)
@given(boundary=st.integers(0, 600), start=st.integers(1, 64), multiple_of=st.integers(1, 16),
       limit=st.integers(16, 512))
def test_search_returns_the_exact_boundary_in_logarithmic_probes(boundary, start, multiple_of, limit):
    start = min(start, limit)
    asked = []

    def fits(size: int) -> bool:
        asked.append(size)
        return size <= boundary

    largest = largest_fitting(fits, start, limit, multiple_of)
    assert largest == min(boundary, limit) // multiple_of * multiple_of
    assert all(size % multiple_of == 0 and 0 < size <= limit for size in asked)
    assert len(asked) == len(set(asked))  # no size probed twice
    assert len(asked) <= 2 * math.ceil(math.log2(limit // multiple_of + 1)) + 2


def test_search_returns_zero_when_nothing_fits():
    assert largest_fitting(lambda size: False, start=8, limit=64) == 0


def search(variant: str, *overrides: str) -> dict:
    cfg = compose_run(*TINY_SEARCH, f"variant={variant}", *overrides)
    check_config(cfg)
    logged = []
    result = dataclasses.asdict(run_search(cfg, lambda step, values: logged.append(values)))
    assert [[v["size"], v["fits"], v["bytes"]] for v in logged] == result["maxfit"]["probes"]
    return result


def test_pmdrop_fits_a_strictly_larger_batch_than_the_baseline_under_a_saved_bytes_budget():
    largest = {}
    for variant in ("baseline", "pmdrop"):
        result = search(variant)
        maxfit = result["maxfit"]
        assert maxfit["budget"] == "saved_bytes" and maxfit["budget_bytes"] == BUDGET and maxfit["axis"] == "batch_size"
        assert result["batch_size"] == maxfit["largest"] >= 4
        # the boundary: the largest batch was measured within budget, one more was measured over it
        measured = {size: used for size, _, used in maxfit["probes"]}
        assert measured[maxfit["largest"]] <= BUDGET < measured[maxfit["largest"] + 1]
        largest[variant] = maxfit["largest"]
    assert largest["pmdrop"] > largest["baseline"]


def test_context_search_on_a_small_longformer():
    result = search("pmdrop", "maxfit=longformer_context_cpu", "model.num_hidden_layers=1", "model.hidden_size=32",
                    "model.num_attention_heads=2", "model.intermediate_size=64", "model.attention_window=16",
                    "dataset.vocab_size=200", "maxfit.start=64", "maxfit.multiple_of=32", "maxfit.limit=4096",
                    f"maxfit.budget_bytes={BUDGET}")
    maxfit = result["maxfit"]
    assert maxfit["axis"] == "seq_len" and result["seq_len"] == maxfit["largest"] > 64
    assert maxfit["largest"] % 32 == 0 and result["batch_size"] == 1


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("maxfit.axis=width", r"maxfit.axis='width' is not valid; valid: batch_size, seq_len"),
        ("maxfit.budget=disk", r"maxfit.budget='disk' is not valid; valid: auto, saved_bytes, cuda_memory"),
        ("maxfit.budget_bytes=null", r"maxfit.budget=saved_bytes needs maxfit.budget_bytes >= 1, got None"),
        ("maxfit.limit=0", r"maxfit.limit=0 is below maxfit.start=1"),
        ("maxfit.start=abc", r"maxfit: Value 'abc' of type 'str' could not be converted to Integer"),
    ],
)
def test_bad_search_configs_fail_with_one_line(override, message):
    cfg = compose_run(*TINY_SEARCH, override)
    with pytest.raises(ValueError, match=message) as error:
        check_config(cfg)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["maxfit=vit_mini_batch_cpu", "maxfit.axis=seq_len"],
         r"maxfit.axis=seq_len needs a dataset with a seq_len; 'digits' has none"),
        (["maxfit=vit_b16_imagenet_batch", "trainer.device=auto"],
         r"maxfit.budget=cuda_memory but no CUDA device is visible; use maxfit.budget=saved_bytes"),
    ],
)
def test_searches_that_cannot_run_here_fail_with_one_line(overrides, message):
    cfg = compose_run("experiment=maxfit", *overrides)
    with pytest.raises(ValueError, match=message):
        check_config(cfg)


def test_an_out_of_memory_probe_counts_as_not_fitting_and_the_search_goes_on(monkeypatch):
    """The GPU budget's contract, on a CPU: a probe that raises torch.OutOfMemoryError is caught, recorded as not
    fitting (no bytes), and the search still ends at the exact boundary."""
    probed = []

    class RunsOutAbove12(SavedBytesBudget):
        def measure(self, learner, batch):
            size = len(batch["labels"])
            probed.append(size)
            if size > 12:
                raise torch.OutOfMemoryError("injected: CUDA out of memory")
            return True, size

    monkeypatch.setitem(BUDGETS, "saved_bytes", RunsOutAbove12)
    result = search("pmdrop")
    assert result["maxfit"]["largest"] == 12
    assert [probe for probe in result["maxfit"]["probes"] if not probe[1]] == [
        [size, False, None] for size in probed if size > 12]
    assert sorted(size for size in probed if size > 12)[0] == 13  # the boundary was probed from above
