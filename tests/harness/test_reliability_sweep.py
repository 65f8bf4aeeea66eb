"""What a sweep survives: diverged runs, a run being done elsewhere, damaged files, a full or read-only disk, bad
values, an unreachable hub, Ctrl-C and SIGTERM. Each fault is made for real (a NaN loss, a second process, a cut
file, a full tmpfs, a signal) wherever this machine allows, else with a patched writer."""

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from experiments import locking

from .conftest import REPO_ROOT, TINY_RUN, all_results, harness_env
from .test_reliability_files import start_holder

RUN = "default/tinybert/synthetic_pairs/baseline"


def strict(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda token: pytest.fail(f"{path} holds {token}"))


def leftovers(root: Path) -> list[str]:
    """Partial or temporary files a sweep must not leave: temp results, empty metrics files, locks."""
    found = [*root.rglob(".*.tmp"), *root.rglob("*.lock"), *root.rglob("*.takeover")]
    found += [path for path in root.rglob("metrics.jsonl") if path.stat().st_size == 0]
    return sorted(map(str, found))


# ----------------------------------------------------------------------------- divergence


def test_a_diverging_run_stops_is_recorded_diverged_with_its_step_in_strict_json(launch, runs_root, capsys):
    code = launch("-m", *TINY_RUN, "trainer.steps=6", "trainer.lr=1e4", "seed=0")
    out = capsys.readouterr().out
    results = strict(runs_root / RUN / "seed0/results.json")
    assert code == 1
    assert results["status"] == "diverged" and 1 <= results["diverged_step"] < 6
    assert results["error"] == f"loss=nan at step {results['diverged_step']}"
    history = [json.loads(line) for line in (runs_root / RUN / "seed0/metrics.jsonl").read_text().splitlines()]
    assert all(entry["step"] < results["diverged_step"] for entry in history)  # it stopped there
    assert "1 runs: 0 ok, 0 skipped (finished), 0 failed, 1 diverged" in out
    assert f"DIVERGED {runs_root}/{RUN}/seed0: loss=nan at step" in out


def test_non_finite_logged_values_are_strict_json_and_named(launch, training, runs_root, monkeypatch):
    def logs_infinity(cfg, log_step):
        log_step(1, {"samples_per_s": float("inf")})
        return training(cfg, log_step)

    monkeypatch.setattr("experiments.train.run_training", logs_infinity)
    assert launch("seed=0") == 0
    (first, *_) = (runs_root / RUN / "seed0/metrics.jsonl").read_text().splitlines()
    assert json.loads(first) == {"step": 1, "samples_per_s": None, "nonfinite": {"samples_per_s": "inf"}}


# ----------------------------------------------------------------------------- a run being done elsewhere


def test_a_run_held_by_another_process_is_skipped_named_and_left_untouched(launch, training, runs_root, capsys):
    holder = start_holder(runs_root / RUN / "seed1")
    assert holder.stdout.readline().startswith("claimed")
    try:
        code = launch("-m", "seed=0,1,2")
        out = capsys.readouterr().out
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    here = f"{socket.gethostname()}:{holder.pid}"
    assert code == 0 and sorted(training.calls) == [("baseline", 0), ("baseline", 2)]
    assert f"{runs_root}/{RUN}/seed1: running elsewhere: {here}" in out
    assert "3 runs: 2 ok, 0 skipped (finished), 0 failed, 1 running elsewhere" in out
    assert f"RUNNING ELSEWHERE {runs_root}/{RUN}/seed1: {here}" in out
    assert list((runs_root / RUN / "seed1").iterdir()) == []  # never written into

    training.calls.clear()
    assert launch("-m", "seed=0,1,2") == 0  # the holder was killed -9: its lock is stale and taken over
    out = capsys.readouterr().out
    assert training.calls == [("baseline", 1)]
    assert f"{runs_root}/{RUN}/seed1: taking over from {here}, which is gone" in out
    assert "3 runs: 1 ok, 2 skipped (finished), 0 failed" in out
    assert leftovers(runs_root) == []


@pytest.mark.slow
def test_two_identical_sweeps_at_once_train_each_run_once(runs_root):
    args = [sys.executable, "run.py", "-m", *TINY_RUN, "trainer.steps=40", "seed=0,1", f"runs_root={runs_root}",
            "logger=disabled"]
    sweeps = [subprocess.Popen(args, cwd=REPO_ROOT, env=harness_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [sweep.communicate(timeout=600) for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], [err[-2000:] for _, err in outs]
    lines = [line for out, _ in outs for line in out.splitlines()]
    for seed in (0, 1):
        trained = [line for line in lines if line.startswith(f"[default] tinybert/synthetic_pairs baseline seed={seed}:"
                                                             " ok") and not line.endswith("skipped (finished)")]
        assert len(trained) == 1, lines  # trained by one sweep; the other skipped it or left it to the first
        steps = [json.loads(line)["step"] for line in (runs_root / RUN / f"seed{seed}/metrics.jsonl").read_text()
                 .splitlines() if "loss" in line]
        assert steps == list(range(2, 41, 2))  # one writer: no interleaved lines
    assert all(result["status"] == "ok" for result in all_results(runs_root).values())
    assert leftovers(runs_root) == []


# ----------------------------------------------------------------------------- damaged files


def test_damaged_run_files_are_named_counted_and_run_again(launch, training, runs_root, capsys):
    assert launch("-m", "seed=0,1,2,3,4") == 0
    seed = {k: runs_root / RUN / f"seed{k}" for k in range(5)}
    text = (seed[0] / "results.json").read_text()
    (seed[0] / "results.json").write_text(text[: len(text) // 2])  # truncated
    (seed[1] / "results.json").write_text("")
    (seed[2] / "results.json").write_text("[1, 2]")  # valid JSON, not an object
    with (seed[3] / "metrics.jsonl").open("a") as metrics:
        metrics.write('{"step": 4, "lo\n')
    training.calls.clear()
    capsys.readouterr()

    assert launch("-m", "seed=0,1,2,3,4") == 0
    out = capsys.readouterr().out
    assert sorted(training.calls) == [("baseline", k) for k in range(4)]
    for k, fault in [(0, "results.json: truncated"), (1, "results.json: empty file"),
                     (2, "results.json: holds a JSON list, not an object"), (3, "metrics.jsonl: line 4: truncated")]:
        assert f"{seed[k]}: damaged: {seed[k]}/{fault}" in out
    assert "5 runs: 4 ok, 1 skipped (finished), 0 failed; 4 with damaged files, run again" in out
    assert all(result["status"] == "ok" for result in all_results(runs_root).values())


# ----------------------------------------------------------------------------- full disk, read-only disk


def mount_tmpfs(where: Path) -> None:
    """A 1 MiB tmpfs at ``where`` when this machine lets the tests mount one (root in a container that may); else the
    test is skipped (the patched-writer test covers the same paths everywhere)."""
    where.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")


@pytest.fixture
def small_disk(runs_root):
    """``runs_root`` on its own 1 MiB tmpfs."""
    mount_tmpfs(runs_root)
    yield runs_root
    subprocess.run(["umount", "-l", str(runs_root)], check=True)


@pytest.fixture
def read_only_runs(runs_root):
    """A function making the run directories' disk (``runs_root/default``, a tmpfs) read-only; Hydra's sweep directory
    (``runs_root/_hydra``) stays writable."""
    mount_tmpfs(runs_root / "default")

    def make_read_only() -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(runs_root / "default")], check=True)

    yield make_read_only
    subprocess.run(["umount", "-l", str(runs_root / "default")], check=True)


def fill(disk: Path) -> None:
    """Write to ``disk`` until it is full."""
    with (disk / "filler").open("wb", buffering=0) as filler:
        try:
            while True:
                filler.write(b"\0" * 65536)
        except OSError as error:
            assert error.errno == errno.ENOSPC


def test_a_disk_that_fills_during_a_run_fails_it_in_one_line_and_the_tally_is_printed(launch, training, small_disk,
                                                                                       monkeypatch, capsys):
    def fills_the_disk_at_seed1(cfg, log_step):
        if cfg.seed == 1 and not (small_disk / "filler").exists():
            fill(small_disk)
        return training(cfg, log_step)

    monkeypatch.setattr("experiments.train.run_training", fills_the_disk_at_seed1)
    code = launch("-m", "seed=0,1,2")
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "3 runs: 1 ok, 0 skipped (finished), 2 failed" in out, err
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 2 and all("No space left on device" in line for line in failed)
    assert "Traceback" not in out
    assert strict(small_disk / RUN / "seed0/results.json")["status"] == "ok"
    assert leftovers(small_disk) == []
    training.calls.clear()
    (small_disk / "filler").write_bytes(b"")  # space again: the failed runs run, the finished one is skipped
    assert launch("-m", "seed=0,1,2") == 0
    assert sorted(training.calls) == [("baseline", 1), ("baseline", 2)]


def test_a_read_only_disk_fails_each_run_in_one_line_and_keeps_the_finished_ones(launch, training, runs_root,
                                                                                read_only_runs, capsys):
    assert launch("-m", "seed=0,1") == 0
    before = all_results(runs_root)
    read_only_runs()
    capsys.readouterr()
    code = launch("-m", "seed=0,1,2", "force=true")
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "3 runs: 0 ok, 0 skipped (finished), 3 failed" in out
    failed = [line for line in out.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 3 and all("Read-only file system" in line for line in failed), failed
    assert "Traceback" not in out + err and "FileExistsError" not in out
    assert all_results(runs_root) == before  # nothing finished was touched
    assert leftovers(runs_root) == []


def test_a_sweep_whose_own_directory_is_read_only_stops_in_one_line_before_any_run(launch, training, small_disk,
                                                                                    capsys):
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    try:
        code = launch("-m", "seed=0,1")
    finally:
        subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    err = capsys.readouterr().err
    assert code == 1 and training.calls == []
    (line,) = err.strip().splitlines()
    assert re.fullmatch(rf"OSError: cannot write in {small_disk}/_hydra\S*: Read-only file system; "
                        "no run was started", line), line


def test_a_writer_out_of_space_leaves_no_temp_file_and_the_run_is_failed(launch, training, runs_root, monkeypatch,
                                                                        capsys):
    """The same fault with a patched writer, for machines where no tmpfs can be mounted."""
    import experiments.jsonfiles as jsonfiles

    real_fsync = os.fsync

    def no_space_for_results(fd):
        if os.readlink(f"/proc/self/fd/{fd}").endswith(f".results.json.{os.getpid()}.tmp"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)

    monkeypatch.setattr(jsonfiles.os, "fsync", no_space_for_results)
    code = launch("-m", "seed=0,1")
    out = capsys.readouterr().out
    assert code == 1 and len(training.calls) == 2  # the sweep went on after the first
    assert "2 runs: 0 ok, 0 skipped (finished), 2 failed" in out
    assert (f"FAILED {runs_root}/{RUN}/seed0: OSError: cannot write {runs_root}/{RUN}/seed0/results.json: "
            "No space left on device") in out
    assert "No space left on device" in out and "Traceback" not in out
    assert leftovers(runs_root) == [] and not list(runs_root.rglob("results.json"))


# ----------------------------------------------------------------------------- values and resources, before any work


@pytest.mark.parametrize(("value", "message"), [
    ("trainer.eval_batch_size=0", "trainer.eval_batch_size=0 must be >= 1"),
    ("trainer.eval_batches=0", "trainer.eval_batches=0 must be >= 1, or null"),
    ("trainer.warmup_steps=-1", "trainer.warmup_steps=-1 must be >= 0"),
    ("trainer.lr=0", "trainer.lr=0.0 must be a finite number > 0"),
    ("trainer.lr=nan", "trainer.lr=nan must be a finite number > 0"),
    ("trainer.threads=0", "trainer.threads=0 must be >= 1, or null"),
    ("dataset.train_size=6", "trainer.batch_size=16 is larger than the training set (dataset.train_size=6)"),
])
def test_values_that_failed_only_after_training_fail_the_sweep_first(launch, training, runs_root, capsys, value,
                                                                    message):
    assert launch("-m", "seed=0,1", value) == 1
    assert message in capsys.readouterr().err
    assert training.calls == [] and not list(runs_root.rglob("results.json"))


def test_a_bad_data_file_fails_the_sweep_once_before_any_run(launch, training, runs_root, tmp_path, capsys):
    (tmp_path / "train.tsv").write_text("Source\tTarget\n( [MAX 2 this ] )\t9\n")
    files = f"dataset.data_files={{train: {tmp_path}/train.tsv, validation: {tmp_path}/train.tsv}}"
    assert launch("-m", "seed=0,1", "model=longformer_base", "dataset=listops", files) == 1
    err = capsys.readouterr().err
    assert err.count("train.tsv:2: token 'this' is not a ListOps symbol") == 1 and training.calls == []


def test_an_unreachable_hub_fails_a_pretrained_sweep_once_and_fast(launch, training, runs_root, tmp_path, monkeypatch,
                                                                  capsys):
    from experiments import models

    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    models._checkpoint_problem.cache_clear()
    started = time.perf_counter()
    try:
        assert launch("-m", "seed=0,1,2", "model.pretrained=true") == 1
    finally:
        models._checkpoint_problem.cache_clear()
    assert time.perf_counter() - started < 20  # loading would retry for ~27 s per run
    err = capsys.readouterr().err
    assert err.count("127.0.0.1:9 cannot be reached") == 1 and training.calls == []


# ----------------------------------------------------------------------------- Ctrl-C and SIGTERM


@pytest.mark.slow
@pytest.mark.parametrize(("sent", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_ends_the_sweep_with_one_line_and_the_running_job_interrupted(runs_root, sent, code):
    args = [sys.executable, "run.py", "-m", *TINY_RUN, "trainer.steps=100000", "trainer.log_every=1", "seed=0,1,2",
            f"runs_root={runs_root}", "logger=disabled"]
    sweep = subprocess.Popen(args, cwd=REPO_ROOT, env=harness_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    metrics = runs_root / RUN / "seed0/metrics.jsonl"
    deadline = time.monotonic() + 300
    while not (metrics.exists() and metrics.stat().st_size > 0) and time.monotonic() < deadline:
        time.sleep(0.2)
    sweep.send_signal(sent)
    out, err = sweep.communicate(timeout=120)
    name = signal.Signals(sent).name
    assert sweep.returncode == code, err[-3000:]
    assert "Traceback" not in err + out
    assert err.strip().splitlines()[-1] == (f"interrupted by {name}: 0 runs ended (none), 1 interrupted "
                                            f"({runs_root}/{RUN}/seed0), 2 not started; the same command runs what "
                                            "is not finished")
    results = strict(runs_root / RUN / "seed0/results.json")
    assert results["status"] == "interrupted" and results["error"] == f"interrupted by {name}"
    assert leftovers(runs_root) == []
    assert not locking.lock_path_for(runs_root / RUN / "seed0").exists()
