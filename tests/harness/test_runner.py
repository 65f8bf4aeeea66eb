"""The runner's mechanics, in process, with a stand-in for ``train.run_training`` (no model is trained here)."""

import json
import subprocess

import pytest
import torch

from experiments import jsonfiles, record, runner

from .conftest import B_FIELDS, all_results

A_FIELDS = {
    "experiment", "model", "dataset", "variant", "seed", "status", "error", "started_at", "finished_at", "wall_time_s",
    "git_commit", "torch_version", "transformers_version", "timm_version", "hostname", "command", "config", "run_dir",
}  # fmt: skip


def test_multirun_writes_one_run_dir_per_job(launch, training, runs_root, capsys):
    code = launch("-m", "variant=baseline,pmdrop", "seed=0-1", "experiment_name=t")
    out = capsys.readouterr().out

    assert code == 0
    assert sorted(training.calls) == [("baseline", 0), ("baseline", 1), ("pmdrop", 0), ("pmdrop", 1)]
    results = all_results(runs_root)
    assert sorted(results) == [
        f"t/tinybert/synthetic_pairs/{variant}/seed{seed}" for variant in ("baseline", "pmdrop") for seed in (0, 1)
    ]
    for rel, result in results.items():
        run_dir = runs_root / rel
        assert A_FIELDS | B_FIELDS.keys() <= result.keys()
        assert result["status"] == "ok" and result["error"] is None and "traceback" not in result
        assert isinstance(result["seed"], int) and rel.endswith(f"{result['variant']}/seed{result['seed']}")
        assert result["config"]["variant"]["name"] == result["variant"] and result["config"]["seed"] == result["seed"]
        assert result["run_dir"] == str(run_dir.resolve())
        assert result["torch_version"] == torch.__version__
        assert result["started_at"] <= result["finished_at"] and result["wall_time_s"] >= 0
        assert (run_dir / "config.yaml").read_text().count("experiment_name: t") == 1
        lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert lines == [{"step": s, "loss": 1.0 / s + result["seed"], "lr": 1e-3} for s in (1, 2, 3)]
        assert not list(run_dir.glob(".*.tmp"))  # the atomic write left no temp file behind
    summaries = [line for line in out.splitlines() if line.startswith("[t] tinybert/synthetic_pairs")]
    assert len(summaries) == 4
    assert "pmdrop seed=1: ok  f1=0.7500  123.4 samples/s  saved masks 1.00 MiB" in out
    assert "4 runs: 4 ok, 0 skipped (finished), 0 failed" in out


def test_failed_run_is_recorded_and_the_sweep_goes_on_then_exits_nonzero(launch, training, runs_root, capsys):
    training.failing[("pmdrop", 0)] = RuntimeError("boom")
    code = launch("-m", "variant=baseline,pmdrop", "seed=0,1")
    out = capsys.readouterr().out

    assert code == 1
    assert len(training.calls) == 4  # the jobs after the failed one still ran
    results = all_results(runs_root)
    failed = results["default/tinybert/synthetic_pairs/pmdrop/seed0"]
    assert failed["status"] == "failed" and failed["error"] == "RuntimeError: boom"
    assert "raise error" in failed["traceback"] and failed["finished_at"] is not None
    assert [r["status"] for r in results.values()].count("ok") == 3
    assert "4 runs: 3 ok, 0 skipped (finished), 1 failed" in out
    assert f"FAILED {runs_root}/default/tinybert/synthetic_pairs/pmdrop/seed0: RuntimeError: boom" in out


def test_rerun_skips_finished_runs_and_retries_failed_ones(launch, training, runs_root, capsys):
    training.failing[("pmdrop", 1)] = ValueError("flaky")
    assert launch("-m", "variant=baseline,pmdrop", "seed=0-1") == 1
    finished = all_results(runs_root)
    training.calls.clear()
    training.failing.clear()
    capsys.readouterr()

    assert launch("-m", "variant=baseline,pmdrop", "seed=0-1") == 0
    out = capsys.readouterr().out
    assert training.calls == [("pmdrop", 1)]
    assert out.count("skipped (finished)") == 3 + 1  # three run lines and the tally
    assert "4 runs: 1 ok, 3 skipped (finished), 0 failed" in out
    rerun = all_results(runs_root)
    assert rerun["default/tinybert/synthetic_pairs/pmdrop/seed1"]["status"] == "ok"
    assert "traceback" not in rerun["default/tinybert/synthetic_pairs/pmdrop/seed1"]
    for key in finished.keys() - {"default/tinybert/synthetic_pairs/pmdrop/seed1"}:
        assert rerun[key] == finished[key]


def test_force_reruns_finished_runs(launch, training, runs_root):
    assert launch("-m", "seed=0,1") == 0
    first = all_results(runs_root)
    assert launch("-m", "seed=0,1", "force=true") == 0
    assert training.calls == [("baseline", 0), ("baseline", 1)] * 2
    assert all(all_results(runs_root)[key]["started_at"] >= first[key]["started_at"] for key in first)


def test_finished_run_with_a_different_config_is_not_overwritten(launch, training, runs_root, capsys):
    assert launch("seed=0") == 0
    before = all_results(runs_root)
    capsys.readouterr()

    assert launch("seed=0", "trainer.lr=0.5") == 1
    out = capsys.readouterr().out
    assert "holds a finished run with a different config" in out and "trainer.lr" in out and "force=true" in out
    assert len(training.calls) == 1
    assert all_results(runs_root) == before


def test_finished_run_from_an_older_config_schema_is_still_skipped(launch, training, runs_root, capsys):
    """A key the old run's config lacks (a trainer option added since, at its default) does not make it another run."""
    assert launch("seed=0") == 0
    (path,) = runs_root.rglob("results.json")
    results = json.loads(path.read_text())
    del results["config"]["trainer"]["grad_cosine_every"]
    path.write_text(json.dumps(results))
    capsys.readouterr()

    assert launch("seed=0") == 0
    assert "skipped (finished); keys new or gone since it ran: trainer.grad_cosine_every" in capsys.readouterr().out
    assert len(training.calls) == 1


def test_single_run_failure_exits_nonzero(launch, training, runs_root):
    training.failing[("seeded", 3)] = KeyError("x")
    assert launch("variant=seeded", "seed=3") == 1
    (result,) = all_results(runs_root).values()
    assert result["status"] == "failed" and result["error"] == "KeyError: 'x'"


def test_out_of_memory_is_recorded_and_the_accelerator_cache_freed(launch, training, runs_root, monkeypatch):
    emptied = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: emptied.append(True))
    training.failing[("baseline", 0)] = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert launch("-m", "seed=0,1") == 1
    results = all_results(runs_root)
    assert results["default/tinybert/synthetic_pairs/baseline/seed0"]["error"].startswith("OutOfMemoryError: CUDA out")
    assert results["default/tinybert/synthetic_pairs/baseline/seed1"]["status"] == "ok"
    assert emptied == [True]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "variant=baseline,pmdorp"], "Could not find 'variant/pmdorp'"),
        (["-m", "trainer.stepz=3"], "Could not override 'trainer.stepz'"),
        (["-m", "seed=0,oops"], "seed must be int, got 'oops'"),
        (["-m", "force=maybe"], "force must be bool, got 'maybe'"),
        (["-m", "experiment_name=a/b"], "experiment_name='a/b' names a directory"),
        (["-m", "logger=wandb_offline", "logger.backend=tensorboard"], "unknown logger.backend 'tensorboard'"),
        (["variant.name=pmdorp"], "unknown variant.name 'pmdorp'; valid: baseline, pmdrop"),
    ],
)
def test_bad_config_fails_before_any_work(launch, training, runs_root, capsys, args, message):
    assert launch(*args) == 1
    assert message in capsys.readouterr().err
    assert training.calls == []
    assert not runs_root.exists() or not list(runs_root.rglob("results.json"))


def test_json_of_numpy_and_torch_scalars(tmp_path):
    import numpy as np

    path = tmp_path / "results.json"
    jsonfiles.write_json_atomic(path, {"a": np.float32(0.5), "b": torch.tensor([1, 2]), "c": tmp_path})
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [1, 2], "c": str(tmp_path)}
    with pytest.raises(TypeError, match="object is not JSON serialisable"):
        jsonfiles.write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text())["a"] == 0.5  # a failed write leaves the old file intact


def test_a_search_says_what_it_found_in_its_summary_line():
    search = record.MaxfitSearch(axis="batch_size", largest=19, budget="saved_bytes", budget_bytes=2**20,
                                  memory_fraction=None, multiple_of=1, probes=[[1, True, 7]] * 10)
    results = record.RunRecord(experiment="maxfit_cpu", model="tinybert", dataset="synthetic_lm-s64", variant="pmdrop",
                               seed=0, status=record.Status.OK, wall_time_s=6.5,
                               measurement=record.Measurement(task_metric=None, metrics={}, maxfit=search))
    assert runner.summary_line(results) == ("[maxfit_cpu] tinybert/synthetic_lm-s64 pmdrop seed=0: ok  "
                                            "largest batch_size 19 (saved_bytes budget, 10 probes)  6.5 s")


def test_the_commit_is_dirty_for_code_changes_but_not_for_the_reports_own_results(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True,
                       capture_output=True)

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "claims.md").write_text("old\n")
    (tmp_path / "run.py").write_text("old\n")
    git("init", "-q")
    git("add", ".")
    git("commit", "-q", "-m", "first")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()
    (tmp_path / "results" / "claims.md").write_text("a new report\n")  # e.g. make demo
    (tmp_path / "notes.txt").write_text("untracked\n")
    assert record.git_commit.__wrapped__(tmp_path) == head
    (tmp_path / "run.py").write_text("changed code\n")
    assert record.git_commit.__wrapped__(tmp_path) == f"{head}-dirty"


def test_a_run_directory_that_cannot_be_made_fails_that_run_and_the_sweep_goes_on(launch, training, runs_root,
                                                                                   capsys):
    (runs_root / "default" / "tinybert" / "synthetic_pairs").mkdir(parents=True)
    (runs_root / "default" / "tinybert" / "synthetic_pairs" / "pmdrop").write_text("a file where a directory goes")
    code = launch("-m", "variant=baseline,pmdrop,seeded")
    out = capsys.readouterr().out
    assert code == 1 and sorted(training.calls) == [("baseline", 0), ("seeded", 0)]
    assert "3 runs: 2 ok, 0 skipped (finished), 1 failed" in out
    assert f"FAILED {runs_root}/default/tinybert/synthetic_pairs/pmdrop/seed0: NotADirectoryError" in out
