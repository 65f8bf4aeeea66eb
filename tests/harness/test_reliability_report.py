"""The report over damaged and diverged runs: damaged files are named and counted, never a crash; diverged runs enter
no statistic and no claim."""

import importlib.util
import json
from pathlib import Path

import pytest

from scripts.load import load_runs, read_runs
from scripts.report import build_report
from scripts.settings import load_settings

_spec = importlib.util.spec_from_file_location("report_runs", Path(__file__).parents[1] / "scripts/report_runs.py")
report_runs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(report_runs)
MRPC = {"name": "mrpc", "kind": "glue", "task": "pair_classification", "seq_len": 128, "num_labels": 2}


def write_pairs(root: Path, seeds=range(5), **pmdrop_fields) -> None:
    for seed in seeds:
        report_runs.write_run(root, dataset=MRPC, variant="baseline", seed=seed, metrics={"f1": 0.89 + 0.001 * seed})
        report_runs.write_run(root, dataset=MRPC, variant="pmdrop", seed=seed, **pmdrop_fields)


def results_of(root: Path, variant: str, seed: int) -> Path:
    return root / "demo/tinybert/mrpc" / variant / f"seed{seed}/results.json"


def test_damaged_files_are_named_counted_and_left_out_of_the_report(tmp_path):
    root = tmp_path / "runs"
    write_pairs(root, metrics={"f1": 0.89})
    text = results_of(root, "pmdrop", 0).read_text()
    results_of(root, "pmdrop", 0).write_text(text[:40])
    results_of(root, "pmdrop", 1).write_text("")
    results_of(root, "pmdrop", 2).write_text('["not", "an", "object"]')
    with results_of(root, "pmdrop", 3).with_name("metrics.jsonl").open("a") as metrics:
        metrics.write("{oops\n")
    runs, damaged = read_runs([root])
    assert len(runs) == 6 and len(damaged) == 4
    assert [line.split(": ", 1)[1].split(" (")[0] for line in damaged] == [
        "truncated", "empty file", "holds a JSON list, not an object", "line 6: not valid JSON"]
    with pytest.raises(ValueError, match=r"results\.json: truncated"):
        load_runs([root])

    build_report([root], tmp_path / "report", load_settings(), "python -m scripts.report runs")  # no crash
    readme = (tmp_path / "report/README.md").read_text()
    assert "6 runs read (6 finished, 0 failed: failed runs are excluded" in readme
    assert "4 damaged (not read; listed below)" in readme
    assert "## Damaged runs" in readme and all(f"- {line}" in readme for line in damaged)


def test_runs_recorded_ok_with_a_nan_loss_are_diverged_and_enter_no_claim(tmp_path):
    """The runs of ``trainer.lr=1e4`` before divergence was detected: status ok, bare NaN in results.json. The TinyBERT
    F1 claim was marked reproduced from them; now they are diverged runs, counted and left out."""
    root = tmp_path / "runs"
    write_pairs(root, metrics={"f1": 0.89})
    for seed in range(5):
        for variant in ("baseline", "pmdrop"):
            path = results_of(root, variant, seed)
            path.write_text(path.read_text().replace('"final_loss": 0.5', '"final_loss": NaN'))
    runs, damaged = read_runs([root])
    assert damaged == [] and set(runs["status"]) == {"diverged"}
    assert runs["error"].iloc[0] == "non-finite final_loss=nan"

    frames = build_report([root], tmp_path / "report", load_settings(), "python -m scripts.report runs")
    claims = frames["claims"].set_index("id")
    assert claims.loc["tinybert_f1_delta", "status"] == "not run here"
    assert claims.loc["tinybert_f1", "status"] == "not run here"
    summary = frames["summary"]
    assert set(summary["n_ok"]) == {0} and set(summary["n_diverged"]) == {5}
    readme = (tmp_path / "report/README.md").read_text()
    assert "10 runs read (0 finished, 0 failed, 10 diverged: failed and diverged runs are excluded" in readme
    assert json.loads(results_of(root, "pmdrop", 0).read_text(), parse_constant=float)["status"] == "ok"  # read only
