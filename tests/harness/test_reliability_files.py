"""The run lock (with real processes) and strict-JSON run files: what a sweep's files survive."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from experiments import jsonfiles, locking

REPO_ROOT = Path(__file__).resolve().parents[2]

# A process that claims a run's lock, says so on stdout, then holds it until killed or its stdin closes.
HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from experiments.locking import HeldElsewhere, RunLock
    try:
        lock = RunLock(Path(sys.argv[1]), heartbeat_s=0.2).claim()
    except HeldElsewhere as error:
        print("held", error.holder, flush=True)
        sys.exit(3)
    print("claimed", lock.took_over, flush=True)
    sys.stdin.read()
    lock.release()
""")


def start_holder(run_dir: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir)], cwd=REPO_ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    return proc


def test_a_live_holder_keeps_the_run_and_is_named_then_its_death_frees_it(tmp_path):
    run_dir = tmp_path / "exp/m/d/v/seed0"
    holder = start_holder(run_dir)
    assert holder.stdout.readline().startswith("claimed")
    try:
        with pytest.raises(locking.HeldElsewhere) as held:
            locking.RunLock(run_dir).claim()
        assert str(held.value.holder) == f"{socket.gethostname()}:{holder.pid}"
        assert f"is being run by {socket.gethostname()}:{holder.pid}" in str(held.value)
        mtime = locking.lock_path_for(run_dir).stat().st_mtime
        time.sleep(0.6)
        assert locking.lock_path_for(run_dir).stat().st_mtime > mtime  # the holder's heartbeat
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with locking.RunLock(run_dir) as lock:  # killed -9: same host, pid gone, so stale and taken over
        assert lock.took_over is not None and lock.took_over.pid == holder.pid
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not locking.lock_path_for(run_dir).exists()  # released


def test_released_lock_is_gone_and_claimable_again(tmp_path):
    run_dir = tmp_path / "seed1"
    holder = start_holder(run_dir)
    assert holder.stdout.readline().startswith("claimed")
    holder.communicate("")  # closes stdin: the holder releases and exits
    assert holder.returncode == 0 and not locking.lock_path_for(run_dir).exists()
    with locking.RunLock(run_dir) as lock:
        assert lock.took_over is None


def test_of_many_processes_racing_for_one_stale_lock_exactly_one_wins(tmp_path):
    run_dir = tmp_path / "seed0"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    locking.lock_path_for(run_dir).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": int(dead.stdout), "process_start": None, "started_at": "then",
         "token": "old"}))
    racers = [start_holder(run_dir) for _ in range(6)]
    try:
        lines = [proc.stdout.readline().split()[0] for proc in racers]
    finally:
        for proc in racers:
            proc.communicate("")
    assert sorted(lines) == ["claimed"] + ["held"] * 5


def test_another_hosts_lock_is_stale_only_when_its_heartbeat_is_old(tmp_path):
    run_dir = tmp_path / "seed0"
    lock = locking.lock_path_for(run_dir)
    lock.write_text(json.dumps({"host": "node-17", "pid": 4242, "process_start": None,
                                "started_at": "2026-12-02T05:00:00+00:00", "token": "theirs"}))
    with pytest.raises(locking.HeldElsewhere, match="being run by node-17:4242"):
        locking.RunLock(run_dir, stale_after_s=60).claim()
    old = time.time() - 120
    os.utime(lock, (old, old))
    with locking.RunLock(run_dir, stale_after_s=60) as claimed:
        assert str(claimed.took_over) == "node-17:4242"


def test_a_recycled_pid_does_not_hold_the_lock(tmp_path):
    """Same host, the pid alive but another process (started at another time): the holder is gone."""
    run_dir = tmp_path / "seed0"
    locking.lock_path_for(run_dir).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "process_start": "1", "started_at": "then",
         "token": "old"}))
    with locking.RunLock(run_dir) as lock:
        assert lock.took_over.pid == os.getpid()


def test_release_never_removes_a_lock_that_was_taken_over(tmp_path):
    run_dir = tmp_path / "seed0"
    lock = locking.RunLock(run_dir).claim()
    lock.path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started_at": "now", "token": "new"}))
    lock.release()
    assert json.loads(lock.path.read_text())["token"] == "new"


# ----------------------------------------------------------------------------- strict JSON


def test_non_finite_numbers_are_written_as_null_and_named():
    record = {"final_loss": float("nan"), "metrics": {"f1": float("inf"), "accuracy": 0.5},
              "grad_cosine": [[1, float("-inf")]], "status": "diverged"}
    text = jsonfiles.dumps_strict(record)
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text, parse_constant=lambda token: pytest.fail(f"non-strict token {token}"))
    assert back["final_loss"] is None and back["metrics"] == {"f1": None, "accuracy": 0.5}
    assert back["nonfinite"] == {"final_loss": "nan", "metrics.f1": "inf", "grad_cosine[0][1]": "-inf"}


def test_a_results_file_of_an_older_writer_with_bare_nan_reads_as_strict(tmp_path):
    path = tmp_path / "results.json"
    path.write_text('{"status": "ok", "final_loss": NaN, "metrics": {"f1": 0.5}}')
    assert jsonfiles.read_json_object(path) == {"status": "ok", "final_loss": None, "metrics": {"f1": 0.5},
                                                "nonfinite": {"final_loss": "nan"}}


@pytest.mark.parametrize(("content", "reason"), [
    (b"", "empty file"),
    (b"  \n", "empty file"),
    (b'{"status": "ok", "seed"', "truncated"),
    (b"[1, 2]", "holds a JSON list, not an object"),
    (b'"ok"', "holds a JSON str, not an object"),
    (b"status: ok", "not valid JSON"),
    (b'{"status": "\xff"}', "not valid UTF-8 (byte 12)"),
])
def test_damaged_results_files_are_named_with_their_fault(tmp_path, content, reason):
    path = tmp_path / "results.json"
    path.write_bytes(content)
    with pytest.raises(jsonfiles.DamagedFile) as damaged:
        jsonfiles.read_json_object(path)
    assert str(damaged.value).startswith(f"{path}: {reason}")
    assert "\n" not in str(damaged.value)


def test_a_corrupt_metrics_line_is_named_by_its_number(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo\n{"step": 3}\n')
    with pytest.raises(jsonfiles.DamagedFile, match=r"metrics.jsonl: line 2: truncated"):
        jsonfiles.read_jsonl(path)
    path.write_text('{"step": 1, "loss": NaN}\n\n{"step": 2}\n')
    assert jsonfiles.read_jsonl(path) == [{"step": 1, "loss": None, "nonfinite": {"loss": "nan"}}, {"step": 2}]


def test_a_failed_atomic_write_leaves_neither_temp_file_nor_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "results.json"
    path.write_text('{"status": "old"}')
    real_fsync = os.fsync

    def no_space(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError) as error:
        jsonfiles.write_json_atomic(path, {"status": "ok"})
    assert error.value.errno == errno.ENOSPC
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
    assert json.loads(path.read_text()) == {"status": "old"}
    monkeypatch.setattr(os, "fsync", real_fsync)
    jsonfiles.write_json_atomic(path, {"status": "ok", "loss": float("nan")})
    assert json.loads(path.read_text()) == {"status": "ok", "loss": None, "nonfinite": {"loss": "nan"}}
