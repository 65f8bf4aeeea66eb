"""The report on hand-made runs trees: every output file, its provenance, the stdout summary, bad inputs."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch
from report_runs import TINYBERT, make_results, write_run
from transformers import BertConfig, BertForSequenceClassification

import pmdrop
from scripts import report
from scripts.load import load_runs

PROVENANCE = re.compile(r"command|device|commit|generated")


def _measure_tinybert(variant: str) -> dict:
    """Saved bytes of the TINYBERT fake config's model at the fake runs' shape (batch 4, seq 16), measured."""
    keys = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "max_position_embeddings")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=100, attn_implementation="eager",
                                                     **{k: TINYBERT[k] for k in keys}))
    pmdrop.convert(model.train(), variant)
    ids = torch.randint(0, 100, (4, 16))
    with pmdrop.track_saved_tensors(model.parameters()) as saved:
        model(input_ids=ids, token_type_ids=torch.zeros_like(ids), labels=torch.randint(0, 2, (4,)))
    return {"saved_activation_bytes": saved.activation_bytes, "saved_mask_bytes": saved.mask_bytes}


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """5 seeds of baseline and pmdrop (identical task metrics, noisy throughput), seeded with a failed seed."""
    root = tmp_path_factory.mktemp("runs")
    bytes_of = {v: _measure_tinybert(v) for v in ("baseline", "pmdrop", "seeded")}
    rng = np.random.default_rng(0)
    for seed in range(5):
        f1, loss, speed = 0.8 + 0.02 * rng.standard_normal(), 0.5 + 0.05 * rng.standard_normal(), 100 + rng.random()
        shared = {"seed": seed, "metrics": {"f1": f1}, "final_loss": loss}
        write_run(root, variant="baseline", throughput_samples_per_s=speed, **shared, **bytes_of["baseline"])
        write_run(root, variant="pmdrop", throughput_samples_per_s=speed * 0.99 + 0.1 * rng.random(), **shared,
                  **bytes_of["pmdrop"])
        if seed < 4:
            write_run(root, variant="seeded", throughput_samples_per_s=speed * 0.9, **shared, **bytes_of["seeded"])
    write_run(root, variant="seeded", seed=4, status="failed")
    killed = root / "demo" / "tinybert" / "synthetic_pairs" / "pmdrop_4bit" / "seed0"
    killed.mkdir(parents=True)
    (killed / "config.yaml").write_text("seed: 0\n")
    return root


@pytest.fixture(scope="module")
def report_out(tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    assert report.main([str(tree), "--out", str(out), "--wandb", "disabled"]) == 0
    return out


def test_every_output_exists_and_states_its_provenance(report_out):
    names = {p.relative_to(report_out).as_posix() for p in report_out.rglob("*") if p.is_file()}
    expected = {"README.md", "summary_demo.md", "summary_demo.csv", "comparisons_demo.md", "comparisons_demo.csv",
                "memory_model.md", "memory_model.csv", "claims.md", "claims.csv", "runs.csv",
                "plots/memory_by_variant.png", "plots/throughput.png", "plots/loss_curves.png",
                "plots/grad_cosine.png"}
    assert names == expected
    for name in names:
        text = (report_out / name).read_bytes().decode("latin-1")
        assert len(set(PROVENANCE.findall(text))) == 4, name  # PNGs carry it in their metadata
    readme = (report_out / "README.md").read_text()
    assert all(f"]({name})" in readme for name in expected - {"README.md"})
    assert "pmdrop_4bit/seed0`" in readme.split("## Runs without results.json")[1]
    assert "memory_vs_seq_len: no model was run at two or more sequence lengths with the same batch size" in readme


def test_summary_counts_failed_runs_and_excludes_them(report_out):
    md = (report_out / "summary_demo.md").read_text()
    assert "seeded: 4 ok / 1 failed" in md and "baseline: 5 ok / 0 failed" in md
    summary = pd.read_csv(report_out / "summary_demo.csv", comment="#")
    task = summary[(summary["variant"] == "seeded") & (summary["metric"] == "task_value")].iloc[0]
    assert task["n"] == 4 and task["n_failed"] == 1
    assert "nan" not in md.lower()


def test_comparisons_say_identical_and_count_unpaired(report_out):
    comparisons = pd.read_csv(report_out / "comparisons_demo.csv", comment="#")
    rows = comparisons.set_index(["variant", "metric"])
    assert rows.loc[("pmdrop", "task_value"), "verdict"] == "identical in all 5 pairs"
    seeded = "identical in all 4 pairs; seed(s) 4 without a pair excluded"  # seed 4 failed
    assert rows.loc[("seeded", "task_value"), "verdict"] == seeded
    assert rows.loc[("pmdrop", "saved_mask_bytes"), "case"] == "constant"
    throughput = rows.loc[("pmdrop", "throughput_samples_per_s")]
    assert throughput["case"] == "varied" and throughput["p_paired_t_holm"] >= throughput["p_paired_t"]
    md = (report_out / "comparisons_demo.md").read_text()
    assert "nan" not in md.lower() and "identical in all 5 pairs" in md


def test_memory_model_matches_the_measured_runs_exactly(report_out):
    memory = pd.read_csv(report_out / "memory_model.csv", comment="#")
    assert set(memory["variant"]) == {"baseline", "pmdrop", "seeded"}
    assert (memory["activation_rel_error"] == 0).all() and (memory["mask_rel_error"] == 0).all()


def test_claims_use_only_measured_numbers(report_out):
    claims = pd.read_csv(report_out / "claims.csv", comment="#").set_index("id")
    assert claims.loc["compression", "status"] == "reproduced"
    assert claims.loc["compression", "ours"].startswith("8.000×")
    assert claims.loc["tinybert_f1_delta", "status"] == "reproduced"
    assert claims.loc["overhead", "status"] == "not run here"  # CPU runs only: GPU claims are not checked
    not_run = claims[claims["device"] == "—"]
    assert (not_run["ours"] == "—").all() and (not_run["status"] == "not run here").all()


def test_stdout_summary(tree, tmp_path, capsys):
    report.main([str(tree), "--out", str(tmp_path / "out"), "--wandb", "disabled"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "each variant vs baseline (paired by seed)"
    pmdrop_row = next(line for line in lines if " pmdrop " in line)
    assert "identical (5 pairs)" in pmdrop_row and "-96.9 %" in pmdrop_row


def test_sequence_length_sweep_draws_memory_plots_with_predictions(tmp_path):
    model = dict(TINYBERT, name="tinybert_sweep")
    for seq_len in (16, 32):
        dataset = {"name": f"pairs_{seq_len}", "kind": "synthetic_pairs", "task": "pair_classification",
                   "seq_len": seq_len, "num_labels": 2}
        for variant in ("baseline", "pmdrop"):
            write_run(tmp_path / "runs", model=model, dataset=dataset, variant=variant,
                      saved_mask_bytes=seq_len * 100, peak_memory_bytes=seq_len * 1e6)
    out = tmp_path / "out"
    report.main([str(tmp_path / "runs"), "--out", str(out), "--wandb", "disabled"])
    assert (out / "plots" / "memory_vs_seq_len.png").exists()
    assert (out / "plots" / "mask_bytes_vs_seq_len.png").exists()


def test_bad_inputs_give_one_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_runs([tmp_path / "missing"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit, match=r"no results\.json found"):
        report.main([str(tmp_path / "empty"), "--out", str(tmp_path / "out")])
    run_dir = write_run(tmp_path / "a")
    (run_dir / "results.json").write_text("{broken")
    with pytest.raises(ValueError, match=r"results.json: not valid JSON"):
        load_runs([tmp_path / "a"])
    (run_dir / "results.json").write_text(json.dumps({"experiment": "x"}))
    with pytest.raises(ValueError, match="lack required field"):
        load_runs([tmp_path / "a"])
    write_run(tmp_path / "b")
    write_run(tmp_path / "c")
    with pytest.raises(ValueError, match="found more than once"):
        load_runs([tmp_path / "b", tmp_path / "c"])


def test_unknown_settings_key_is_refused(tmp_path):
    bad = tmp_path / "report.yaml"
    bad.write_text("margins: {}\nalpah: 0.05\n")
    with pytest.raises(ValueError, match=r"unknown report setting\(s\) \['alpah'\]"):
        report.main([str(tmp_path), "--settings", str(bad)])


def test_task_metric_must_agree_within_a_configuration(tmp_path):
    write_run(tmp_path, variant="baseline", task_metric="f1")
    write_run(tmp_path, variant="pmdrop", task_metric="accuracy", metrics={"accuracy": 0.7})
    with pytest.raises(ValueError, match="different task metrics"):
        report.main([str(tmp_path), "--out", str(tmp_path / "out"), "--wandb", "disabled"])


def test_make_results_follows_the_contract():
    fields = set(make_results())
    runner = {"experiment", "model", "dataset", "variant", "seed", "status", "error", "started_at", "finished_at",
              "wall_time_s", "git_commit", "torch_version", "transformers_version", "timm_version", "hostname",
              "command", "config", "run_dir"}
    trainer = {"device", "steps", "batch_size", "seq_len", "num_params", "precision", "peak_memory_bytes",
               "peak_memory_kind", "saved_mask_bytes", "saved_activation_bytes", "saved_parameter_bytes",
               "dropout_calls", "throughput_samples_per_s", "tokens_per_s", "step_time_s", "task_metric", "metrics",
               "final_loss", "grad_cosine"}
    assert fields == runner | trainer
    assert set(make_results(status="failed")) == runner | {"traceback"}
