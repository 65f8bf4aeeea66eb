"""ZeRO through the harness: the composability experiment's ``zero1`` (ZeroRedundancyOptimizer under DDP) and ``fsdp2``
(fully_shard) settings, run for real under torchrun on two CPU ranks (gloo), end bit-identical to the baseline for the
exact variants; a run that trained differently is flagged; a single process refuses them before any work."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import torch.multiprocessing as mp
from omegaconf import OmegaConf

from experiments.step import check_sharding
from scripts.composability import composability_table
from scripts.load import load_runs
from scripts.report import main as report

from .cfg import compose_run
from .conftest import REPO_ROOT, TINY_RUN, harness_env
from .test_ddp import _free_port

# TINY_RUN with two layers, so that fsdp2 shards two layers besides the root
TWO_LAYERS = [*(arg for arg in TINY_RUN if not arg.startswith("model.num_hidden_layers=")),
              "model.num_hidden_layers=2", "trainer.threads=1"]
VARIANTS = ("baseline", "pmdrop", "seeded")


def _torchrun(runs_root, *overrides: str) -> None:
    """A composability sweep under torchrun, as a user launches it."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "run.py", "-m",
               "experiment=composability", *TWO_LAYERS, "logger=disabled", f"runs_root={runs_root}", *overrides]
    done = subprocess.run(command, cwd=REPO_ROOT, env=harness_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_zero1_and_fsdp2_keep_exact_variants_bit_identical_and_flag_a_run_that_differs(tmp_path):
    runs_root = tmp_path / "runs"
    _torchrun(runs_root, "composability=zero1,fsdp2", f"variant={','.join(VARIANTS)}")
    rows = composability_table(load_runs([runs_root])).to_dict("records")
    assert {(row["setting"], row["variant"]) for row in rows} == {
        (setting, variant) for setting in ("zero1", "fsdp2") for variant in VARIANTS}
    by_key = {(row["setting"], row["variant"]): row for row in rows}
    for row in rows:
        assert row["status"] == "ok" and row["ranks"] == 2 and row["identical_to_baseline"] is True
        assert row["final_loss"] == by_key[row["setting"], "baseline"]["final_loss"]
        if row["variant"] != "baseline":  # packed or regenerated masks: fewer bytes saved for backward
            assert row["saved_bytes_change"] < 0
            assert row["saved_mask_bytes"] < by_key[row["setting"], "baseline"]["saved_mask_bytes"]

    # a pmdrop run trained with bit flips in its packed masks ends elsewhere: filed as each setting's pmdrop run, the
    # table must say so (and so the flips reached the backward under both shardings)
    _torchrun(runs_root, "composability=zero1,fsdp2", "variant=pmdrop", "trainer.bitflip_fraction=0.05",
              "force=true")
    rows = composability_table(load_runs([runs_root])).set_index(["setting", "variant"])
    for setting in ("zero1", "fsdp2"):
        assert rows.loc[(setting, "pmdrop"), "identical_to_baseline"] is False
        assert rows.loc[(setting, "seeded"), "identical_to_baseline"] is True
    # and the report's claims row on the paper's "compatible with ... ZeRO" says so, naming each sharding
    assert report([str(runs_root), "--out", str(tmp_path / "report")]) == 0
    claims = pd.read_csv(tmp_path / "report" / "claims.csv", comment="#").set_index("id")
    assert claims.loc["portability", "status"] == "contradicted"
    assert claims.loc["portability", "ours"] == (
        "runs ending bit-identical to the baseline: fsdp2 (ZeRO-2: FSDP2 fully_shard, 2 ranks): 1/2, "
        "zero1 (ZeRO-1: ZeroRedundancyOptimizer under DDP, 2 ranks): 1/2")
    assert (tmp_path / "report" / "composability.md").read_text().count("**no**") == 2


def _fsdp2_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    from experiments import train

    build_model, built = train.build_model, []

    def build_and_keep(model_cfg, data):
        model = build_model(model_cfg, data)  # as built, before sharding: its shapes and initial weights
        built.extend([model, {name: list(p.shape) for name, p in model.named_parameters()},
                      train.parameter_digest(model)])
        return model

    train.build_model = build_and_keep
    cfg = compose_run("experiment=composability", "composability=fsdp2", *TWO_LAYERS, "variant=pmdrop",
                      "trainer.steps=2")
    measurement = train.run_training(cfg, lambda step, values: None)
    model, shapes, initial = built
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as file:
        json.dump({"recorded": measurement.param_sha256, "digest": train.parameter_digest(model), "shapes": shapes,
                   "initial": initial,
                   "after": {name: list(p.shape) for name, p in model.named_parameters()},
                   "kinds": sorted({type(p.data).__name__ for p in model.parameters()})}, file)


@pytest.mark.slow
def test_fsdp2_digest_is_of_the_full_parameters_gathered_on_every_rank(tmp_path):
    mp.spawn(_fsdp2_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in range(2)]
    for rank in ranks:
        assert rank["kinds"] == ["Tensor"]  # whole tensors, not DTensor shards
        assert rank["after"] == rank["shapes"]  # every parameter at its unsharded shape
        assert rank["recorded"] == rank["digest"] != rank["initial"]  # and training moved them
    assert ranks[0]["digest"] == ranks[1]["digest"]


@pytest.mark.parametrize("setting", ["zero1", "fsdp2"])
def test_a_single_process_refuses_a_sharded_setting_before_any_work(launch, training, runs_root, capsys, setting):
    assert launch("-m", "experiment=composability", f"composability=eager,{setting}", *TWO_LAYERS) == 1
    err = capsys.readouterr().err
    assert (f"trainer.sharding={setting} shards across DDP ranks and this job has 1: launch it with torchrun "
            "--nproc_per_node=2 (or more), or use trainer.sharding=none") in err
    assert training.calls == [] and not list(runs_root.rglob("results.json"))


@pytest.mark.parametrize(("values", "message"), [
    ({"sharding": "zero3"}, "trainer.sharding='zero3' is not valid; valid: none, zero1, fsdp2"),
    ({"sharding": "fsdp2", "paired": True}, "trainer.sharding=fsdp2 runs without trainer.compile, trainer.paired"),
    ({"sharding": "fsdp2", "compile": True}, "trainer.sharding=fsdp2 runs without trainer.compile, trainer.paired"),
    ({"sharding": "fsdp2", "fgsm_epsilon": 0.1}, "trainer.sharding=fsdp2 runs without trainer.compile, trainer.paired"),
])
def test_sharding_values_a_job_cannot_run_are_refused_in_one_line(values, message):
    trainer = OmegaConf.merge({"sharding": "none", "compile": False, "paired": False, "fgsm_epsilon": None}, values)
    with pytest.raises(ValueError, match=f"^{message}") as raised:
        check_sharding(trainer, world_size=2)
    assert "\n" not in str(raised.value)
    check_sharding(OmegaConf.merge(trainer, {"sharding": "zero1"}), world_size=2)  # zero1 runs with any of them
