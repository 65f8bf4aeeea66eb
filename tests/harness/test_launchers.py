"""Launchers: a real sweep through submitit's local executor (and its resume), the SLURM config, submitit's ranks."""

import json
import os

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from experiments import distributed

from .conftest import CONF_DIR, TINY_RUN, all_results, run_py

VARIANTS = ("baseline", "pmdrop")


def test_a_submitit_local_sweep_runs_every_job_and_a_resubmitted_one_skips_them(runs_root):
    sweep = ["-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", f"variant={','.join(VARIANTS)}",
             *TINY_RUN, "trainer.threads=1", "logger=disabled", f"runs_root={runs_root}"]
    first = run_py(*sweep)
    assert first.returncode == 0, first.stderr[-3000:]
    results = all_results(runs_root)
    assert sorted(results) == [f"default/tinybert/synthetic_pairs/{variant}/seed0" for variant in VARIANTS]
    assert all(run["status"] == "ok" for run in results.values())
    assert results["default/tinybert/synthetic_pairs/pmdrop/seed0"]["param_sha256"] == \
        results["default/tinybert/synthetic_pairs/baseline/seed0"]["param_sha256"]
    # each job ran in its own submitit process and logged there
    assert len(list(runs_root.glob("_hydra/multirun/*/.submitit/*/*_log.out"))) == len(VARIANTS)

    again = run_py(*sweep)
    assert again.returncode == 0, again.stderr[-3000:]
    assert all_results(runs_root) == results  # nothing rerun: the same files, started_at included
    journals = sorted(runs_root.glob("_hydra/multirun/*/runs.jsonl"))
    assert [json.loads(line)["status"] for line in journals[-1].read_text().splitlines()] == ["skipped", "skipped"]


@pytest.mark.filterwarnings("ignore:\\s*.hydra/launcher/submitit_slurm. is validated against ConfigStore schema")
def test_the_slurm_launcher_config_becomes_the_sbatch_script_it_says(tmp_path, monkeypatch):
    import submitit
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True, overrides=[
            "hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4",
            f"hydra.sweep.dir={tmp_path}", "hydra.job.name=run"])
    launcher = instantiate(cfg.hydra.launcher)
    # as BaseSubmititLauncher.launch passes them to submitit: its own keys plain, the rest with a "slurm_" prefix
    own = set(OmegaConf.structured(BaseQueueConf).keys())
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", staticmethod(lambda: 1))  # no srun on this machine
    executor = submitit.AutoExecutor(folder=tmp_path, cluster="slurm")
    executor.update_parameters(**{key if key in own else f"slurm_{key}": value for key, value in
                                  launcher.params.items() if key not in ("submitit_folder", "max_num_timeout")})
    script = executor._executor._make_submission_file_text("python run.py", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=4", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --cpus-per-task=8", "#SBATCH --mem=64GB", "#SBATCH --time=720", "#SBATCH --nodes=1"):
        assert line in script
    assert launcher.params["array_parallelism"] == 16


def test_a_submitit_job_of_several_tasks_gets_torchruns_variables(monkeypatch):
    slurm_task = {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "7", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2",
                  "SLURM_NODEID": "1", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_PROCID": "3", "SLURM_LOCALID": "1"}
    monkeypatch.setattr(os, "environ", dict(slurm_task))  # submitit exports into os.environ: keep it out of the rest
    assert distributed.current() == distributed.Ranks(rank=3, local_rank=1, world_size=4)
    assert os.environ["MASTER_ADDR"] == "node1" and int(os.environ["MASTER_PORT"]) > 0

    monkeypatch.setattr(os, "environ", {**slurm_task, "SLURM_NTASKS": "1", "SLURM_JOB_NUM_NODES": "1"})
    assert distributed.current() == distributed.Ranks()  # a single task is no distributed job
    assert "WORLD_SIZE" not in os.environ
