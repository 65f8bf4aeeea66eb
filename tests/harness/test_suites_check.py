"""``make suites-check`` and the sweep's pre-run check: every suite job composed as its sweep composes it passes the
checks for a GPU, each workload is planned at its real shape on the meta device, and what cannot run (a variant the
device lacks, positions the checkpoint lacks, a key nothing reads, an output path that cannot be written) is refused
by both in the same words, before any work."""

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.types import RunMode

import pmdrop
from experiments import jobs, suites_check
from experiments.suites_check import Row, check_row, plan, suite_rows, unswept_rows
from experiments.sweep import RunOutcomes

from .cfg import CONF

EXACT = [name for name in pmdrop.variant_names() if pmdrop.get_variant(name).bit_exact]
CUDA = torch.device("cuda")


@pytest.fixture
def hydra():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def suite_jobs():
    """Every row of both suites and the workloads no suite sweeps, composed once for the module."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        rows = [row for suite in suites_check.SUITES for row in suite_rows(suite, [])]
        rows += unswept_rows({row.workload for row in rows}, [])
    GlobalHydra.instance().clear()
    return rows


def test_the_suites_are_every_workload_x_exact_variant_x_five_seeds_and_the_table_names_every_workload(suite_jobs):
    workloads = {path.stem for path in (Path(CONF) / "workload").glob("*.yaml")}
    assert {row.workload for row in suite_jobs} == workloads
    swept = [row for row in suite_jobs if row.suite != "(none)"]
    assert len(swept) == 8 * len(EXACT) and {row.variant for row in swept} == set(EXACT)
    assert all(sorted(cfg.seed for cfg in row.configs) == [0, 1, 2, 3, 4] for row in swept)
    assert sum(len(row.configs) for row in swept) == 8 * len(EXACT) * 5


def test_every_suite_job_passes_the_sweeps_checks_for_a_gpu(suite_jobs, tmp_path):
    for row in suite_jobs:
        for cfg in row.configs:
            jobs.check_job_config(cfg, CUDA)
            jobs.check_output_path(cfg)


def _bert(kept: str, positions: int, mlm: bool) -> int:
    """Parameters of the transformers model a pretrained BERT job builds, from the kept config.json, on meta."""
    from transformers import BertConfig, BertForMaskedLM, BertForSequenceClassification

    config = BertConfig.from_pretrained(Path(CONF) / "checkpoints" / kept, max_position_embeddings=positions)
    with torch.device("meta"):
        net = BertForMaskedLM(config) if mlm else BertForSequenceClassification(config)
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    ("workload", "parameters"),
    [
        ("tinybert_mrpc", lambda: _bert("huawei-noah/TinyBERT_General_4L_312D", 512, False)),
        ("bert_base_sst2", lambda: _bert("google-bert/bert-base-uncased", 512, False)),
        ("bert_large_wikitext103", lambda: _bert("google-bert/bert-large-uncased", 1024, True)),  # extended
        ("longformer_listops_4k", lambda: None),
        ("vit_b16_imagenet", lambda: 86_567_656),  # timm's vit_base_patch16_224, 1000 classes
    ],
)
def test_each_workload_is_planned_at_its_checkpoints_real_shape_and_pmdrop_plans_less(suite_jobs, workload,
                                                                                       parameters):
    rows = {row.variant: row for row in suite_jobs if row.workload == workload}
    planned = {variant: plan(rows[variant].configs[0]) for variant in ("baseline", "pmdrop")}
    assert planned["baseline"][1] == planned["pmdrop"][1]
    if parameters() is not None:
        assert planned["baseline"][1] == parameters()
    assert 0 < planned["pmdrop"][0] < planned["baseline"][0]


def refused(row_config, device=CUDA) -> str:
    """What suites-check says of a job, which must be what the sweep's checks raise for it."""
    row = Row("suite", "workload", row_config.variant.name, [row_config])
    check_row(row, device, require_data=False)
    with pytest.raises((jobs.InvalidConfig, ValueError)) as error:
        jobs.check_job_config(row_config, device)
        jobs.check_output_path(row_config)
    assert row.problem == f"seed {row_config.seed}: {error.value}"
    assert "\n" not in row.problem
    return row.problem


def test_a_variant_the_device_cannot_run_is_refused(hydra, monkeypatch):
    # Triton's interpreter (on where a core test turned it on in this process) would let the Triton variants run on CPU
    monkeypatch.setattr(pmdrop.fused, "interpreting", lambda: False)
    cfg = compose(config_name="config", overrides=["logger=disabled", "variant=pmdrop_fused"])
    assert "dropout variant 'pmdrop_fused' runs on cuda only, not on cpu" in refused(cfg, torch.device("cpu"))


def test_positions_the_checkpoint_lacks_are_refused(hydra):
    cfg = compose(config_name="config", overrides=["logger=disabled", "+workload=bert_large_wikitext103",
                                                   "model.extend_positions=false"])
    assert "'google-bert/bert-large-uncased' has 512 positions but dataset.seq_len needs 1024" in refused(cfg)


@pytest.mark.parametrize(("override", "message"), [
    ("+trainr.steps=5", "trainr: no part of the harness reads it; valid root keys: campaign, composability"),
    ("+variant.cache=true", "variant.cache: no part of the harness reads it; a variant is its name only"),
])
def test_a_key_no_part_of_the_harness_reads_is_refused(hydra, override, message):
    cfg = compose(config_name="config", overrides=["logger=disabled", override])
    assert message in refused(cfg)


def test_an_output_path_that_cannot_be_written_is_refused(hydra, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    cfg = compose(config_name="config", overrides=["logger=disabled", f"runs_root={tmp_path}/a-file/runs"])
    assert f"cannot be written (NotADirectoryError: cannot write in {tmp_path}/a-file" in refused(cfg)


def test_the_sweep_refuses_the_same_before_any_run(hydra, tmp_path, capsys):
    """The sweep's own callback, on a multirun of the suite with the workload that lacks positions."""
    loader = GlobalHydra.instance().config_loader()
    master = loader.load_configuration("config", ["experiment=suite1", "workload=bert_large_wikitext103",
                                                  "variant=pmdrop", "seed=0", "model.extend_positions=false",
                                                  f"runs_root={tmp_path}"], run_mode=RunMode.MULTIRUN)
    with pytest.raises(SystemExit) as exited:
        RunOutcomes().on_multirun_start(master)
    assert exited.value.code == 1
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "'google-bert/bert-large-uncased' has 512 positions but dataset.seq_len needs 1024" in line
    assert not (tmp_path / "_hydra").exists() and not (tmp_path / "suite1").exists()


def test_the_report_names_every_row_and_exits_1_when_a_job_cannot_run(suite_jobs, hydra):
    tiny = next(row for row in suite_jobs if row.workload == "tinybert_mrpc" and row.variant == "baseline")
    bad = compose(config_name="config", overrides=["logger=disabled", "+workload=tinybert_mrpc", "+trainr.steps=5"])
    rows = [Row("suite1", "tinybert_mrpc", "baseline", tiny.configs[:2]), Row("suite1", "typo", "baseline", [bad])]
    text, code = suites_check.check(rows, CUDA, 80 * 10**9, False, ["+trainr.steps=5"])
    assert code == 1
    lines = text.splitlines()
    assert "| suite1 | tinybert_mrpc | baseline | 0-1 | 4L H312 A12 I1200, huawei-noah/TinyBERT_General_4L_312D" in text
    assert "| 128 of 512 | glue: hub nyu-mll/glue at run time" in text
    assert next(line for line in lines if "| tinybert_mrpc |" in line).endswith("| not known | ok |")
    assert "| typo | baseline | 0 |" in text and "CANNOT RUN: seed 0: trainr: no part of the harness reads it" in text
    assert lines[-1].startswith("3 jobs in 2 rows") and lines[-1].endswith(": 1 cannot run, 0 planned over 80.00 GB")
    assert "- command: `python -m experiments.suites_check +trainr.steps=5`" in text


def test_a_plan_over_the_device_memory_is_listed_and_a_data_set_not_given_is_required_on_demand(suite_jobs):
    vit = next(row for row in suite_jobs if row.workload == "vit_b16_imagenet" and row.variant == "baseline")
    row = Row("suite2", vit.workload, vit.variant, vit.configs[:1])
    text, code = suites_check.check([row], CUDA, 10**9, True, [])
    assert code == 1 and "CANNOT RUN: imagefolder: not given; set dataset.path=" in text
    row.problem = None
    assert "over the device memory (planned)" in suites_check.table([row], 10**9)[-1]


@pytest.mark.parametrize("model", ["tinybert", "bert_base", "bert_large", "longformer_base", "vit_b16"])
def test_each_model_config_has_its_kept_checkpoints_architecture(model):
    """conf/model/ and conf/checkpoints/ say the same of each checkpoint (a pretrained run builds the latter)."""
    from experiments.models import checkpoint_config

    from .cfg import compose_run

    cfg = compose_run(f"model={model}").model
    config, path = checkpoint_config(cfg.checkpoint)
    assert path == Path(CONF) / "checkpoints" / cfg.checkpoint / "config.json"
    if model == "vit_b16":
        assert config["architecture"] == cfg.arch and config["pretrained_cfg"]["mean"] == [0.5, 0.5, 0.5]
        return
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "type_vocab_size"):
        assert cfg[key] == config[key], key
    if model == "longformer_base":
        assert cfg.vocab_size == config["vocab_size"]
        assert cfg.max_position_embeddings == config["max_position_embeddings"]
        assert set(config["attention_window"]) == {cfg.attention_window}
