"""DDP through the harness: two CPU ranks (gloo) call ``run_training`` with torchrun's environment variables."""

import dataclasses
import json
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.multiprocessing as mp

from experiments import distributed

from .cfg import TINY_BERT, compose_run
from .conftest import REPO_ROOT, TINY_RUN, all_results, harness_env

VARIANTS = ("baseline", "pmdrop", "seeded")
SHORT = ["trainer.steps=3", "trainer.batch_size=4", "trainer.warmup_steps=1", "trainer.log_every=1",
         "trainer.measure_step=1", "trainer.eval_batches=1", "trainer.threads=1", "trainer.device=cpu"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from experiments import train

    build_model, first_masks, results = train.build_model, {}, {}

    def build_and_watch(model_cfg, data):
        model, variant = build_model(model_cfg, data), VARIANTS[len(results)]

        def keep_first_mask(module, args, output) -> None:
            # BERT's embeddings end in dropout: the zeros of their first training output are that call's mask.
            first_masks.setdefault(variant, (output == 0).tolist())

        model.bert.embeddings.register_forward_hook(keep_first_mask)
        return model

    train.build_model = build_and_watch
    for variant in VARIANTS:  # one process group for the whole sequence, as in a torchrun sweep
        cfg = compose_run(*TINY_BERT, *SHORT, f"variant={variant}")
        results[variant] = dataclasses.asdict(train.run_training(cfg, lambda step, values: None))
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as file:
        json.dump({"results": results, "masks": first_masks}, file)


@pytest.fixture(scope="module")
def ranks(tmp_path_factory) -> list[dict]:
    out_dir = tmp_path_factory.mktemp("ddp")
    mp.spawn(_worker, args=(2, _free_port(), str(out_dir)), nprocs=2, join=True)
    return [json.loads((out_dir / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_packed_variants_end_bit_identical_to_the_baseline_under_ddp(ranks):
    for rank in ranks:
        digests = {variant: rank["results"][variant]["param_sha256"] for variant in VARIANTS}
        assert digests["pmdrop"] == digests["baseline"] and digests["seeded"] == digests["baseline"]
        assert rank["results"]["pmdrop"]["final_loss"] == rank["results"]["baseline"]["final_loss"]
    # DDP keeps the replicas equal
    assert ranks[0]["results"]["pmdrop"]["param_sha256"] == ranks[1]["results"]["pmdrop"]["param_sha256"]


def test_each_rank_draws_its_own_masks_reproducibly(ranks):
    masks = [torch.tensor(rank["masks"]["baseline"]) for rank in ranks]
    assert 0.05 < masks[0].float().mean() < 0.2  # hidden dropout p = 0.1
    assert not torch.equal(masks[0], masks[1])
    for rank in ranks:  # the same seed gives the same masks, whatever the variant
        assert rank["masks"]["pmdrop"] == rank["masks"]["baseline"] == rank["masks"]["seeded"]


def test_results_sum_throughput_and_list_peak_memory_per_rank(ranks):
    for rank in ranks:
        result = rank["results"]["pmdrop"]
        assert result["world_size"] == 2 and result["global_batch_size"] == 8
        peaks = result["peak_memory_bytes_per_rank"]
        assert len(peaks) == 2 and result["peak_memory_bytes"] == max(peaks)
        assert result["throughput_samples_per_s"] > 4 / result["step_time_s"]  # a sum over ranks, not one rank's
        assert set(result["metrics"]) >= {"f1", "accuracy"}
    # rank 0 evaluates and shares its metrics: every rank returns the same results
    assert ranks[0]["results"]["pmdrop"]["metrics"] == ranks[1]["results"]["pmdrop"]["metrics"]
    assert ranks[0]["results"]["pmdrop"]["peak_memory_bytes_per_rank"] == \
        ranks[1]["results"]["pmdrop"]["peak_memory_bytes_per_rank"]


def test_ranks_come_from_torchrun_variables(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert distributed.current() == distributed.Ranks(0, 0, 1)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.current() == distributed.Ranks(3, 1, 4) and not distributed.is_main_process()


def test_a_torchrun_sweep_writes_one_results_file_and_one_wandb_run_per_job_and_resumes(runs_root):
    # --standalone: torchrun's store on a free port, not 29500, which another torchrun on this machine may hold
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "run.py", "-m",
               "variant=baseline,pmdrop", *TINY_RUN, "logger=wandb_offline", f"runs_root={runs_root}"]

    def torchrun() -> subprocess.CompletedProcess:
        done = subprocess.run(command, cwd=REPO_ROOT, env=harness_env(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return done

    first = torchrun()
    results = all_results(runs_root)
    assert sorted(results) == [f"default/tinybert/synthetic_pairs/{v}/seed0" for v in ("baseline", "pmdrop")]
    for run in results.values():
        assert run["status"] == "ok" and run["world_size"] == 2 and len(run["peak_memory_bytes_per_rank"]) == 2
    assert len({run["param_sha256"] for run in results.values()}) == 1
    assert len(list(runs_root.glob("default/*/*/*/seed0/wandb/offline-run-*"))) == 2  # rank 0's only
    assert "2 runs: 2 ok" in first.stdout
    again = torchrun()  # every rank learns from rank 0 that the runs are finished: no rank waits for the others
    assert all_results(runs_root) == results and "2 runs: 0 ok, 2 skipped" in again.stdout
