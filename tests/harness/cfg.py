"""Composed run configs for B's tests, through Hydra's compose API (the same files run.py reads)."""

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

CONF = str(Path(__file__).resolve().parents[2] / "conf")
TINY_BERT = ["model.hidden_size=32", "model.num_hidden_layers=1", "model.num_attention_heads=2",
             "model.intermediate_size=64"]


def compose_run(*overrides: str) -> DictConfig:
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        return compose(config_name="config", overrides=["logger=disabled", *overrides])
