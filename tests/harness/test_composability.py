"""Composability through the harness: exact variants stay bit-identical to the baseline under checkpointing and
bf16, and the report's table (scripts/composability.py) says so."""

import pytest
import torch
from torch.torch_version import TorchVersion

import pmdrop
from experiments.sweep import sweep_variants
from scripts.composability import composability_table
from scripts.load import load_runs
from scripts.report import main as report

from .conftest import TINY_RUN

# The composability experiment on a 1-layer, 32-wide BERT for 4 steps: checkpointing and bf16, three variants.
VARIANTS = ("baseline", "pmdrop", "pmdrop_4bit")
SWEEP = ["-m", "experiment=composability", "composability=checkpointing,bf16", "variant=baseline,pmdrop,pmdrop_4bit",
         *TINY_RUN, "trainer.threads=1"]

# Compiled with fallback_random, the packed variants end bit-identical to compiled torch on torch 2.14 (the lock's). On
# torch 2.11 (the GPU machine's) every call still matches (tests/core/test_compile.py), but Inductor may sum one
# gradient in another order when pmdrop's dropout feeds it, depending on the CPU's vector code: on an AMD EPYC, after
# one step of a 2-layer BERT, the token-type embedding's gradient differs by 3.7e-9 (every other gradient and the
# loss are equal), while on CI's machine a packed run ended identical. So on 2.11 the packed runs' digests are not
# asserted either way, only their losses. 2.12 and 2.13 are not tested.
COMPILED_PACKED_BIT_IDENTICAL = TorchVersion(torch.__version__) >= "2.14"


def test_checkpointing_and_bf16_keep_every_exact_variant_bit_identical(launch, runs_root, tmp_path):
    assert launch(*SWEEP) == 0
    rows = composability_table(load_runs([runs_root])).to_dict("records")
    assert {(row["setting"], row["variant"]) for row in rows} == {
        (setting, variant) for setting in ("checkpointing", "bf16") for variant in VARIANTS}
    for row in rows:
        assert row["status"] == "ok" and row["ranks"] == 1
        assert row["identical_to_baseline"] is True
        if row["variant"] == "baseline":
            assert row["saved_bytes_change"] == 0
        else:  # packed masks: fewer bytes saved for backward than torch's
            assert row["saved_bytes_change"] < 0 and row["saved_mask_bytes"] > 0
    by_key = {(row["setting"], row["variant"]): row for row in rows}
    # torch keeps at least 2 bytes per element on a CPU (bf16), pmdrop 1 bit, pmdrop_4bit 4 bits
    for setting in ("checkpointing", "bf16"):
        masks = {variant: by_key[setting, variant]["saved_mask_bytes"] for variant in VARIANTS}
        assert masks["baseline"] > 8 * masks["pmdrop"] and masks["pmdrop"] < masks["pmdrop_4bit"]

    assert report([str(runs_root), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "composability.md").read_text()
    assert table.count("| yes |") == len(rows) and "**no**" not in table


def test_a_run_that_differs_from_its_baseline_is_flagged(launch, runs_root):
    assert launch(*SWEEP[:2], "composability=eager", "variant=baseline,pmdrop", *SWEEP[4:]) == 0
    # a pmdrop run trained with bit flips ends elsewhere; filed as the eager setting's run, the table must say so
    assert launch("experiment=composability", "composability=eager", "variant=pmdrop", *SWEEP[4:],
                  "trainer.bitflip_fraction=0.05", "force=true") == 0
    rows = composability_table(load_runs([runs_root])).set_index("variant")
    assert rows.loc["pmdrop", "identical_to_baseline"] is False and rows.loc["baseline", "identical_to_baseline"]


def test_compile_keeps_every_exact_variant_bit_identical(launch, runs_root):
    """torch.compile with fallback_random (the setting's default): packed and seeded train as compiled torch does,
    every run of the sweep compiled (five runs in one process pass dynamo's recompile limit without a reset)."""
    variants = sweep_variants("exact").split(",")
    assert launch("-m", "experiment=composability", "composability=compile", f"variant={','.join(variants)}",
                  *TINY_RUN, "trainer.threads=1") == 0
    rows = composability_table(load_runs([runs_root])).to_dict("records")
    assert {(row["setting"], row["variant"]) for row in rows} == {("compile", variant) for variant in variants}
    for row in rows:
        packed = pmdrop.get_variant(row["variant"]).masks_per_byte is not None
        assert row["status"] == "ok"
        if COMPILED_PACKED_BIT_IDENTICAL or not packed:
            assert row["identical_to_baseline"] is True
    losses = {row["variant"]: row["final_loss"] for row in rows}
    assert all(loss == pytest.approx(losses["baseline"], rel=1e-6) for loss in losses.values())  # 2.11: nearly equal
    by_variant = {row["variant"]: row for row in rows}
    # the packed mask where compiled torch keeps a bool one (seeded's CPU generator state, 5056 B a call, outweighs
    # this tiny model's masks)
    for variant in variants:
        if pmdrop.get_variant(variant).masks_per_byte:
            assert by_variant[variant]["saved_bytes_change"] < 0
