"""The report's tables of issue 6's experiments (max feasible size, composability, bit flips, FGSM) on constructed
runs: each computes what it says, and a report over all of them, with searches and compiled runs that save no
masks, renders every table and plot."""

import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer
from report_runs import TINYBERT, write_run

from scripts.composability import composability_table
from scripts.load import load_runs
from scripts.maxfit import maxfit_table
from scripts.plots import PlotInput, throughput
from scripts.report import main as report
from scripts.robustness import bitflip_table, fgsm_table
from scripts.settings import load_settings

VIT = {**TINYBERT, "name": "vit_tiny", "family": "vit"}
DIGITS = {"name": "digits", "kind": "digits", "task": "image_classification", "seq_len": None}


def _search(root, variant, largest, budget="saved_bytes", probes=None):
    probes = probes or [[1, True, 1000], [2, True, 2000], [4, largest >= 4, 4000]]
    write_run(root, experiment="maxfit_cpu", variant=variant, batch_size=largest, task_metric=None, metrics={},
              saved_mask_bytes=None, saved_activation_bytes=None, throughput_samples_per_s=None, step_time_s=None,
              peak_memory_bytes=None, final_loss=None, grad_cosine=None,
              maxfit={"axis": "batch_size", "largest": largest, "budget": budget, "budget_bytes": 3500,
                      "multiple_of": 1, "probes": probes})


def _composability(root, setting, variant, digest, saved_mask_bytes, **fields):
    write_run(root, experiment=f"composability-{setting}-ws1", composability=setting, variant=variant,
              param_sha256=digest, saved_mask_bytes=saved_mask_bytes, saved_activation_bytes=1_000_000, **fields)


def _bitflips(root, variant, seed, clean, flipped):
    write_run(root, experiment="robustness_bitflip0.0", variant=variant, seed=seed, metrics={"f1": clean})
    write_run(root, experiment="robustness_bitflip0.05", variant=variant, seed=seed, metrics={"f1": flipped},
              trainer={"bitflip_fraction": 0.05}, bitflips={"fraction": 0.05, "bits": 1000, "masks": 10})


def _fgsm(root, variant, seed, drop):
    write_run(root, experiment="robustness_fgsm", model=VIT, dataset=DIGITS, variant=variant, seed=seed,
              task_metric="accuracy", metrics={"accuracy": 0.9, "fgsm_accuracy": 0.9 - drop, "fgsm_drop": drop},
              trainer={"fgsm_epsilon": 0.01})


def test_maxfit_gain_is_over_the_baseline_of_the_same_search(tmp_path):
    for variant, largest in (("baseline", 16), ("pmdrop", 19), ("seeded", 20)):
        _search(tmp_path, variant, largest)
    table = maxfit_table(load_runs([tmp_path])).set_index("variant")
    assert table["largest"].to_dict() == {"baseline": 16, "pmdrop": 19, "seeded": 20}
    assert table["gain_over_baseline"].to_dict() == pytest.approx({"baseline": 1.0, "pmdrop": 19 / 16,
                                                                   "seeded": 20 / 16})
    assert set(table["probes"]) == {3}
    _search(tmp_path / "alone", "pmdrop", 19)  # no baseline search: no gain, no division by zero
    assert maxfit_table(load_runs([tmp_path / "alone"]))["gain_over_baseline"].isna().all()


def test_composability_compares_digests_and_saved_bytes_with_the_baseline_of_the_setting(tmp_path):
    _composability(tmp_path, "eager", "baseline", "aaa", 4_000_000)
    _composability(tmp_path, "eager", "pmdrop", "aaa", 125_000)
    _composability(tmp_path, "compile", "baseline", "bbb", 0)
    _composability(tmp_path, "compile", "pmdrop", "ccc", 125_000)
    write_run(tmp_path, experiment="composability-bf16-ws1", composability="bf16", variant="pmdrop", status="failed")
    table = composability_table(load_runs([tmp_path])).set_index(["setting", "variant"])
    assert table.loc[("eager", "pmdrop"), "identical_to_baseline"] is True
    assert table.loc[("eager", "pmdrop"), "saved_bytes_change"] == 125_000 - 4_000_000
    assert table.loc[("compile", "pmdrop"), "identical_to_baseline"] is False
    failed = table.loc[("bf16", "pmdrop")]
    assert failed["status"] == "failed: RuntimeError: boom" and failed["identical_to_baseline"] is None
    assert pd.isna(failed["saved_bytes_change"])


def test_bitflip_table_pairs_each_run_with_the_same_run_without_flips(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(5):
        clean = 0.85 + 0.01 * seed
        _bitflips(tmp_path, "pmdrop", seed, clean, clean)
        _bitflips(tmp_path, "pmdrop_4bit", seed, clean, clean - 0.05 + 0.001 * rng.standard_normal())
    table = bitflip_table(load_runs([tmp_path]), load_settings()).set_index("variant")
    assert table.loc["pmdrop", "verdict"] == "identical in all 5 pairs"
    hurt = table.loc["pmdrop_4bit"]
    assert hurt["n_pairs"] == 5 and hurt["flipped_bits"] == 5000 and hurt["bitflip_fraction"] == 0.05
    assert hurt["mean_diff"] == pytest.approx(-0.05, abs=0.002) and hurt["diff_ci_high"] < 0
    assert hurt["verdict"].startswith("significant difference") and "equivalence not shown" in hurt["verdict"]


def test_fgsm_table_compares_each_variants_drop_with_the_baselines(tmp_path):
    for seed in range(4):
        _fgsm(tmp_path, "baseline", seed, 0.10 + 0.01 * seed)
        _fgsm(tmp_path, "pmdrop", seed, 0.10 + 0.01 * seed + (0.002 if seed % 2 else -0.002))
    table = fgsm_table(load_runs([tmp_path]), load_settings()).set_index("variant")
    assert table.loc["baseline", "n_pairs"] == 0  # the reference itself: no test
    assert table.loc["pmdrop", "mean_drop"] == pytest.approx(0.115)
    assert table.loc["pmdrop", "mean_diff"] == pytest.approx(0.0) and table.loc["pmdrop", "epsilon"] == 0.01
    assert table.loc["pmdrop", "verdict"].startswith("no significant difference")


def test_report_renders_every_experiment_with_searches_and_maskless_compiled_runs(tmp_path, capsys):
    runs = tmp_path / "runs"
    for variant, largest in (("baseline", 2), ("pmdrop", 4)):
        _search(runs, variant, largest)
    _composability(runs, "compile", "baseline", "bbb", 0)  # Inductor's dropout: no mask seen, on a log axis
    _composability(runs, "compile", "pmdrop", "ccc", 0)
    for seed in range(3):
        _bitflips(runs, "pmdrop", seed, 0.8, 0.8)
        _fgsm(runs, "baseline", seed, 0.1)
        _fgsm(runs, "pmdrop", seed, 0.1)
    assert report([str(runs), "--out", str(tmp_path / "out")]) == 0
    out = tmp_path / "out"
    for stem in ("maxfit", "composability", "robustness_bitflip", "robustness_fgsm"):
        assert (out / f"{stem}.md").read_text().startswith("# ") and (out / f"{stem}.csv").exists()
        assert f"({stem}.md)" in (out / "README.md").read_text()
    assert "| pmdrop | 0 | 4 | 2× |" in (out / "maxfit.md").read_text()
    assert not (out / "summary_maxfit_cpu.md").exists()  # a search has no training metrics to summarise
    assert {p.name for p in (out / "plots").iterdir()} >= {"maxfit_probes.png", "memory_by_variant.png"}
    claims = pd.read_csv(out / "claims.csv", comment="#").set_index("id")
    assert claims.loc["portability", "status"] == "contradicted" and "compile: 0/1" in claims.loc["portability", "ours"]
    assert claims.loc["bitflip", "status"] == "reproduced" and claims.loc["fgsm", "status"] == "reproduced"
    assert "composability-compile-ws1: tinybert/synthetic_pairs" in capsys.readouterr().out


def test_memory_plot_of_runs_that_saved_no_mask_is_drawn_on_a_linear_axis(tmp_path):
    for variant in ("baseline", "pmdrop"):  # torch.compile: Inductor's dropout is not seen as a dropout call
        _composability(tmp_path / "runs", "compile", variant, "bbb", 0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a log axis of no positive value only warns here; elsewhere it raised
        assert report([str(tmp_path / "runs"), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "plots" / "memory_by_variant.png").stat().st_size > 0


def test_a_variant_has_one_color_in_every_panel_of_a_figure(tmp_path):
    for seed in range(2):  # the bit-flip panels hold pmdrop and pmdrop_4bit only, the FGSM panel baseline and pmdrop
        _bitflips(tmp_path, "pmdrop_4bit", seed, 0.8, 0.8)
        _fgsm(tmp_path, "baseline", seed, 0.1)
        _fgsm(tmp_path, "pmdrop", seed, 0.1)
    runs = load_runs([tmp_path])
    fig = throughput(PlotInput(runs, "baseline", 0.95))
    colors = {}
    for ax in fig.axes:
        for bars in (c for c in ax.containers if isinstance(c, BarContainer)):
            colors.setdefault(bars.get_label(), set()).add(bars.patches[0].get_facecolor())
    assert set(colors) == {"baseline", "pmdrop", "pmdrop_4bit"}
    assert all(len(found) == 1 for found in colors.values()) and len(set.union(*colors.values())) == 3
