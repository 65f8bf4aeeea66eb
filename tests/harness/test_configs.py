"""Every config group option composes into a valid run config; every experiment's sweep expands into distinct runs."""

from collections import Counter

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.types import RunMode
from omegaconf import OmegaConf

import pmdrop
from experiments import jobs, runner
from experiments.sweep import sweep_job_configs

from .conftest import CONF_DIR

EXACT_VARIANTS = ["baseline", "pmdrop", "pmdrop_nocache", "pmdrop_4bit", "seeded"]
FUSED_VARIANTS = ["pmdrop_fused", "seeded_fused"]  # CUDA only
CONTRACT_KEYS = {
    "model": {"name", "family", "attn_implementation", "pretrained", "checkpoint"},
    "dataset": {"name", "kind", "task", "seq_len"},
    "trainer": {
        "batch_size", "steps", "lr", "warmup_steps", "weight_decay", "precision", "grad_checkpointing", "compile",
        "device", "log_every", "throughput_window", "measure_step", "eval_batches", "paired", "grad_cosine_every",
    },
}  # fmt: skip


PLAIN_GROUPS = ("model", "dataset", "trainer", "variant", "logger")


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONF_DIR / group).glob("*.yaml"))


@pytest.fixture(autouse=True)
def hydra_conf():
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def runnable(cfg) -> bool:
    """Whether this machine can run the config: the fused variants and ``trainer.device=cuda`` need CUDA."""
    if cfg.trainer.device == "cuda" and not torch.cuda.is_available():
        return False
    try:
        pmdrop.check_runs_on(cfg.variant.name, jobs.job_device(cfg))
    except ValueError:
        return False
    return True


def check_composed(cfg) -> None:
    for group, keys in CONTRACT_KEYS.items():
        assert keys <= set(cfg[group]), f"{group} lacks {keys - set(cfg[group])}"
    assert cfg.model.family in ("bert", "longformer", "vit") and cfg.model.attn_implementation in ("eager", "sdpa")
    assert isinstance(cfg.seed, int) and isinstance(cfg.force, bool)
    OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    if runnable(cfg):
        jobs.check_job_config(cfg)


GROUP_OVERRIDES = [
    *[
        [f"{group}={option}"]
        for group in ("model", "dataset", "trainer", "variant", "logger")
        for option in options(group)
    ],
    *[[f"experiment={option}"] for option in options("experiment")],
    *[[f"+workload={option}"] for option in options("workload")],
    *[["experiment=gpu_campaign", f"campaign/shape={option}"] for option in options("campaign/shape")],
    *[["experiment=gpu_campaign", f"campaign/scale={option}"] for option in options("campaign/scale")],
    *[["experiment=composability", f"composability={option}"] for option in options("composability")],
]


@pytest.mark.parametrize("overrides", GROUP_OVERRIDES, ids=" ".join)
def test_every_group_option_composes(overrides, monkeypatch):
    cfg = compose(config_name="config", overrides=overrides)
    images = cfg.dataset.task == "image_classification"
    if (cfg.model.family == "vit") != images:  # pair the option with a partner that has a head for its task
        cfg = compose(config_name="config", overrides=[*overrides, "model=vit_tiny" if images else "dataset=digits"])
    if cfg.trainer.sharding != "none":  # checked as rank 0 of the 2-rank torchrun it needs (one process refuses it)
        monkeypatch.setenv("WORLD_SIZE", "2")
        monkeypatch.setenv("RANK", "0")
    check_composed(cfg)


def test_variant_configs_are_the_registry():
    assert options("variant") == sorted({*pmdrop.variant_names(), *FUSED_VARIANTS})
    for option in options("variant"):
        assert compose(config_name="config", overrides=[f"variant={option}"]).variant.name == option


def test_default_config():
    cfg = compose(config_name="config")
    assert (cfg.seed, cfg.experiment_name, cfg.runs_root, cfg.force) == (0, "default", "runs", False)
    assert cfg.variant.name == "baseline" and cfg.logger.backend == "wandb" and cfg.logger.mode == "offline"


def test_launchers():
    for launcher, target in (("basic", "BasicLauncher"), ("joblib", "JoblibLauncher")):
        cfg = compose(config_name="config", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
        assert cfg.hydra.launcher._target_.endswith(target)


def sweep(*overrides: str) -> tuple[dict, list]:
    """The sweep's parameters (hydra.sweeper.params) and every job config it launches."""
    loader = GlobalHydra.instance().config_loader()
    master = loader.load_configuration("config", list(overrides), run_mode=RunMode.MULTIRUN)
    return dict(master.hydra.sweeper.params or {}), sweep_job_configs(master)


def assert_distinct_valid_runs(jobs: list) -> None:
    run_dirs = Counter(runner.run_dir_for(job) for job in jobs)
    assert max(run_dirs.values()) == 1, f"jobs share a run directory: {run_dirs.most_common(1)}"
    for job in jobs:
        check_composed(job)


def test_demo_is_tinybert_synthetic_pairs_x_five_exact_variants_x_five_seeds():
    _, jobs = sweep("experiment=demo")
    expected = [(variant, seed) for variant in sorted(EXACT_VARIANTS) for seed in range(5)]
    assert sorted((job.variant.name, job.seed) for job in jobs) == expected
    assert {(job.experiment_name, job.model.name, job.dataset.name) for job in jobs} == {
        ("demo", "tinybert", "synthetic_pairs")
    }
    assert all(job.trainer.paired for job in jobs)
    assert_distinct_valid_runs(jobs)


def test_command_line_narrows_an_experiment_sweep():
    _, jobs = sweep("experiment=demo", "variant=pmdrop", "seed=0,1")
    assert [(job.variant.name, job.seed) for job in jobs] == [("pmdrop", 0), ("pmdrop", 1)]


# The suites and the campaign are checked on one variant and seed (narrowed on the command line, as a user may):
# composing all their jobs takes a minute, and variant and seed are part of every run directory anyway.
@pytest.mark.parametrize(
    ("experiment", "pairs"),
    [
        ("suite1", {("tinybert", "mrpc"), ("bert_base", "sst2"), ("bert_large", "wikitext103")}),
        (
            "suite2",
            {("longformer_base", f"listops-s{n}") for n in (4096, 8192, 16384, 32768)} | {("vit_b16", "imagenet1k")},
        ),
    ],
)
def test_suites_are_their_model_dataset_pairs_x_variants_x_seeds(experiment, pairs):
    params, jobs = sweep(f"experiment={experiment}", "variant=seeded", "seed=3")
    assert params["variant"].split(",") == EXACT_VARIANTS and params["seed"] == "range(0,5)"
    assert {(job.model.name, job.dataset.name) for job in jobs} == pairs and len(jobs) == len(pairs)
    assert {(job.experiment_name, job.variant.name, job.seed) for job in jobs} == {(experiment, "seeded", 3)}
    assert_distinct_valid_runs(jobs)


@pytest.mark.parametrize(
    ("scale", "variants"), [("full", EXACT_VARIANTS + FUSED_VARIANTS), ("smoke", ["baseline", "pmdrop"])]
)
def test_gpu_campaign_covers_every_shape_attention_and_variant(scale, variants):
    params, jobs = sweep("experiment=gpu_campaign", f"campaign/scale={scale}", "variant=pmdrop")
    assert params["variant"].split(",") == variants and str(params["seed"]) == "0"
    assert len(jobs) == len(options("campaign/shape"))
    assert {job.experiment_name for job in jobs} == {f"gpu_campaign_{scale}"}
    attention = {(job.model.family, job.model.attn_implementation) for job in jobs}
    assert attention == {(family, attn) for family in ("bert", "vit") for attn in ("eager", "sdpa")} | {
        ("longformer", "eager")  # Longformer has no sdpa attention
    }
    assert_distinct_valid_runs(jobs)
    shapes = {(job.model.name, job.dataset.seq_len, job.trainer.batch_size) for job in jobs}
    if scale == "full":
        assert {
            ("bert_large-eager", 1024, 8),
            ("bert_base-sdpa", 512, 32),
            ("longformer_base-eager", 16384, 2),
        } <= shapes
        assert {(job.trainer.precision, job.trainer.device) for job in jobs} == {("bf16", "cuda")}
        for job in jobs:  # full scale keeps each model's own depth
            own = compose(config_name="config", overrides=[f"model={job.model.name.split('-')[0]}"]).model
            assert job.model.get("num_hidden_layers") == own.get("num_hidden_layers")
            assert job.model.get("arch_overrides") == own.get("arch_overrides")
    else:
        assert {job.model.get("num_hidden_layers", 2) for job in jobs} == {2}
        assert {job.model.arch_overrides.depth for job in jobs if job.model.family == "vit"} == {2}
        assert max(seq_len or 0 for _, seq_len, _ in shapes) <= 2048 and max(batch for *_, batch in shapes) <= 2
        assert {job.trainer.device for job in jobs} == {"cpu"}


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["variant=pmdorp"], MissingConfigException, "Could not find 'variant/pmdorp'"),
        (["model=bert_huge"], MissingConfigException, "Available options in 'model'"),
        (["trainer.stepz=3"], ConfigCompositionException, "Could not override 'trainer.stepz'"),
        (["experiment=demo", "campaign/scale=smoke"], ConfigCompositionException, "campaign/scale"),
        (["experiment=composability", "composability=flash"], MissingConfigException,
         r"Could not find 'composability/flash'\n\nAvailable options in 'composability':\n\tbf16\n\tcheckpointing"),
    ],
)
def test_unknown_choices_and_misspelt_keys_fail_naming_them(overrides, error, message):
    with pytest.raises(error, match=message):
        compose(config_name="config", overrides=overrides)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["seed=zero"], "seed must be int, got 'zero'"),
        (["seed=true"], "seed must be int, got True"),
        (["force=1"], "force must be bool, got 1"),
        (["dataset.name=../x"], "dataset.name='../x' names a directory"),
        (["logger.mode=onlin"], "unknown W&B mode 'onlin'"),
    ],
)
def test_wrong_values_fail_validation_naming_them(monkeypatch, overrides, message):
    monkeypatch.delenv("WANDB_MODE", raising=False)  # or it would win over logger.mode
    cfg = compose(config_name="config", overrides=overrides)
    with pytest.raises(jobs.InvalidConfig, match=message):
        jobs.check_job_config(cfg)


@pytest.mark.parametrize(
    ("setting", "changed"),
    [
        ("eager", {}),
        ("checkpointing", {"trainer.grad_checkpointing": True}),
        ("bf16", {"trainer.precision": "bf16"}),
        ("compile", {"trainer.compile": True}),
        ("sdpa", {"model.attn_implementation": "sdpa"}),
    ],
)
def test_each_composability_setting_changes_one_thing_from_eager(setting, changed):
    reference = {"trainer.grad_checkpointing": False, "trainer.precision": "fp32", "trainer.compile": False,
                 "model.attn_implementation": "eager"}
    cfg = compose(config_name="config", overrides=["experiment=composability", f"composability={setting}"])
    assert {key: OmegaConf.select(cfg, key) for key in reference} == {**reference, **changed}
    assert cfg.experiment_name == f"composability-{setting}-ws1" and cfg.trainer.steps == 20
