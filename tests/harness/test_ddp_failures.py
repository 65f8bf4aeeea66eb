"""DDP runs that fail on one rank only (gloo, 2 CPU ranks): the run ends ``failed`` with that rank's error, no rank
hangs, and the sweep goes on with a fresh process group."""

import json
import os
import subprocess
import sys
import textwrap
import time

import torch.distributed as dist
import torch.multiprocessing as mp

from experiments import distributed

from .conftest import REPO_ROOT, TINY_RUN, all_results, harness_env
from .test_ddp import _free_port

COLLECTIVE_TIMEOUT_S = 180  # far above what the sweep below needs: finishing sooner shows no rank waited it out

# Run by torchrun instead of run.py: on rank 1, seed 1's third forward pass raises (an out-of-memory error in a
# training step; rank 0 goes on into DDP's gradient all-reduce); on rank 0, seed 2's evaluation raises (rank 1 waits
# in the broadcast of the metrics). PMDROP_INJECT=0 runs the sweep as it is.
WRAPPER = textwrap.dedent("""
    import os, runpy, sys
    import torch
    sys.path.insert(0, {repo!r})
    from experiments import train

    rank, inject = int(os.environ["RANK"]), os.environ["PMDROP_INJECT"] == "1"
    run_training, build_model, evaluate = train.run_training, train.build_model, train.evaluate
    now = {{"seed": None, "forwards": 0}}

    def run_training_watched(cfg, log_step):
        now.update(seed=cfg.seed, forwards=0)
        return run_training(cfg, log_step)

    def build_model_failing(model_cfg, data):
        model = build_model(model_cfg, data)

        def count(module, args):
            now["forwards"] += 1
            if inject and (now["seed"], rank, now["forwards"]) == (1, 1, 3):
                raise torch.OutOfMemoryError("injected: out of memory in a training step")

        model.register_forward_pre_hook(count)
        return model

    def evaluate_failing(*args, **kwargs):
        if inject and now["seed"] == 2:
            raise ValueError("injected: evaluation failed")
        return evaluate(*args, **kwargs)

    train.run_training, train.build_model, train.evaluate = run_training_watched, build_model_failing, evaluate_failing
    sys.argv[0] = os.path.join({repo!r}, "run.py")
    runpy.run_path(sys.argv[0], run_name="__main__")
""")


def test_a_run_failing_on_one_rank_fails_on_all_and_the_sweep_goes_on_and_resumes(tmp_path):
    wrapper, runs_root = tmp_path / "run_failing.py", tmp_path / "runs"
    wrapper.write_text(WRAPPER.format(repo=str(REPO_ROOT)))
    # --standalone: torchrun's store on a free port, not 29500, which another torchrun on this machine may hold
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(wrapper), "-m",
               "seed=0-3", *TINY_RUN, "logger=disabled", f"runs_root={runs_root}"]

    def torchrun(inject: bool) -> tuple[subprocess.CompletedProcess, float]:
        env = {**harness_env(), "PMDROP_INJECT": str(int(inject)), "PMDROP_DDP_TIMEOUT_S": str(COLLECTIVE_TIMEOUT_S)}
        started = time.perf_counter()
        done = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
        return done, time.perf_counter() - started

    first, seconds = torchrun(inject=True)
    assert first.returncode == 1, first.stderr[-3000:]
    assert seconds < COLLECTIVE_TIMEOUT_S  # the failing rank's leaving unblocked its peer: nobody waited for a timeout
    results = {int(name[-1]): run for name, run in all_results(runs_root).items()}
    assert [results[seed]["status"] for seed in range(4)] == ["ok", "failed", "failed", "ok"]
    # the rank whose error it was comes first; its peer's error (the collective it was in broke off) after it
    assert results[1]["error"].startswith("rank 1: OutOfMemoryError: injected: out of memory in a training step; ")
    assert "rank 0: " in results[1]["error"]
    assert results[2]["error"].startswith("rank 0: ValueError: injected: evaluation failed; rank 1: ")
    assert results[3]["world_size"] == 2  # seed 3 trained with two ranks again, in a new process group
    assert "4 runs: 2 ok, 0 skipped (finished), 2 failed" in first.stdout

    again, _ = torchrun(inject=False)  # skips the finished runs, retries the failed ones
    assert again.returncode == 0, again.stderr[-3000:]
    assert "4 runs: 2 ok, 2 skipped (finished), 0 failed" in again.stdout
    retried = {int(name[-1]): run for name, run in all_results(runs_root).items()}
    assert retried[0] == results[0] and retried[3] == results[3]
    assert retried[1]["status"] == retried[2]["status"] == "ok"


def _hung_peer_worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port), PMDROP_DDP_TIMEOUT_S="3")
    distributed.broadcast_from_main(None)  # both ranks in the first process group
    outcome, error = {}, None
    if rank == 0:
        started = time.perf_counter()
        try:
            distributed.gather(rank)  # rank 1 never joins and never leaves the group: only the timeout ends this
        except RuntimeError as caught:
            error = f"{type(caught).__name__}: {caught}"
        outcome["waited_s"] = time.perf_counter() - started
    else:
        time.sleep(5)
    outcome["errors"] = distributed.settle(error)
    outcome["after"] = distributed.gather(rank)  # in a new process group
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as file:
        json.dump(outcome, file)
    dist.destroy_process_group()


def test_a_collective_with_a_hung_peer_times_out_and_the_next_group_works(tmp_path):
    mp.spawn(_hung_peer_worker, args=(_free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    assert 3 <= ranks[0]["waited_s"] < 30
    for rank in ranks:
        assert len(rank["errors"]) == 1 and rank["errors"][0].startswith("rank 0: ")
        assert rank["after"] == [0, 1]
