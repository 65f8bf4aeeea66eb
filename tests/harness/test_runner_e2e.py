"""``run.py -m`` end to end in a subprocess, with the real training loop on a 1-layer, 32-wide BERT."""

import json

from .conftest import TINY_RUN, all_results, run_py

# A run that really fails inside run_training: BERT refuses a hidden size that the heads do not divide. The model's
# name carries the size, so the failing and the working run get their own run directories.
SIZES_ONE_FAILING = [
    "model.hidden_size=32,33",
    "model.name=tiny${model.hidden_size}",
    *(arg for arg in TINY_RUN if not arg.startswith("model.hidden_size=")),
]


def summaries(out: str) -> list[str]:
    return [line for line in out.splitlines() if line.startswith("[e2e] ")]


def test_tiny_multirun_writes_results_then_rerun_skips_them(runs_root):
    args = ["-m", "variant=baseline,pmdrop", "seed=0-1", f"runs_root={runs_root}", "experiment_name=e2e", *TINY_RUN]
    first = run_py(*args)
    assert first.returncode == 0, first.stderr[-3000:]

    results = all_results(runs_root)
    assert sorted(results) == [
        f"e2e/tinybert/synthetic_pairs/{v}/seed{s}" for v in ("baseline", "pmdrop") for s in (0, 1)
    ]
    for rel, result in results.items():
        assert result["status"] == "ok", result.get("traceback")
        assert (result["steps"], result["batch_size"], result["seq_len"]) == (4, 4, 19)
        assert result["task_metric"] == "f1" and 0 <= result["metrics"]["f1"] <= 1
        metrics = [json.loads(line) for line in (runs_root / rel / "metrics.jsonl").read_text().splitlines()]
        assert [m["step"] for m in metrics if "loss" in m][:2] == [2, 4]
        assert list((runs_root / rel / "wandb").glob("offline-run-*"))
    for seed in (0, 1):  # the packed run is the baseline's run, bit for bit, with smaller masks
        base, packed = (results[f"e2e/tinybert/synthetic_pairs/{v}/seed{seed}"] for v in ("baseline", "pmdrop"))
        assert packed["final_loss"] == base["final_loss"] and packed["metrics"] == base["metrics"]
        assert packed["saved_mask_bytes"] < base["saved_mask_bytes"]
    assert len(summaries(first.stdout)) == 4 and "4 runs: 4 ok, 0 skipped (finished), 0 failed" in first.stdout

    again = run_py(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all(line.endswith("skipped (finished)") for line in summaries(again.stdout))
    assert "4 runs: 0 ok, 4 skipped (finished), 0 failed" in again.stdout
    assert all_results(runs_root) == results


def test_joblib_sweep_records_a_real_failure_goes_on_exits_nonzero_and_resumes(runs_root):
    """The jobs run in joblib worker processes: the failure reaches the exit code through the sweep's runs.jsonl, and a
    resubmitted sweep skips the finished run and retries the failed one.

    (The basic launcher's failure handling is tested in process, in test_runner.py.)
    """
    proc = run_py("-m", *SIZES_ONE_FAILING, "hydra/launcher=joblib", f"runs_root={runs_root}", "logger=disabled")
    assert proc.returncode == 1, proc.stderr[-3000:]
    results = all_results(runs_root)
    ok, failed = (
        results["default/tiny32/synthetic_pairs/baseline/seed0"],
        results["default/tiny33/synthetic_pairs/baseline/seed0"],
    )
    assert ok["status"] == "ok"
    assert failed["status"] == "failed" and "33" in failed["error"] and "Traceback" in failed["traceback"]
    assert "2 runs: 1 ok, 0 skipped (finished), 1 failed" in proc.stdout
    assert f"FAILED {runs_root}/default/tiny33/synthetic_pairs/baseline/seed0" in proc.stdout

    stale = runs_root / "default/tiny33/synthetic_pairs/baseline/seed0/left_by_the_failed_attempt"
    stale.touch()
    again = run_py("-m", *SIZES_ONE_FAILING, "hydra/launcher=joblib", f"runs_root={runs_root}", "logger=disabled")
    assert again.returncode == 1 and "2 runs: 0 ok, 1 skipped (finished), 1 failed" in again.stdout
    assert all_results(runs_root)["default/tiny32/synthetic_pairs/baseline/seed0"] == ok
    assert not stale.exists()  # the failed run was retried, from an empty directory
