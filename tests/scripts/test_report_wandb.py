"""W&B: the report's tables go to W&B only in online mode; offline or disabled makes no wandb call."""

from dataclasses import replace

import pandas as pd
import pytest
import wandb

from scripts.provenance import Provenance
from scripts.settings import Settings
from scripts.wandb_tables import log_tables, wandb_mode

PROVENANCE = Provenance("python -m scripts.report runs", "2025-01-01 00:00 UTC", "abc", ("cpu",), ("abc",), ())
TABLE = pd.DataFrame({"variant": ["pmdrop"], "mean_diff": [float("nan")], "n_pairs": [5]})


def test_offline_or_disabled_makes_no_wandb_call(monkeypatch):
    monkeypatch.setattr(wandb, "init", lambda *a, **k: pytest.fail("wandb.init was called"))
    for mode in ("offline", "disabled"):
        assert not log_tables({"comparisons": TABLE}, Settings(wandb_mode=mode), PROVENANCE)
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert not log_tables({"comparisons": TABLE}, Settings(), PROVENANCE)
    monkeypatch.delenv("WANDB_MODE")
    assert wandb_mode(Settings()) == "disabled"


def test_online_logs_each_non_empty_table(monkeypatch):
    logged, init_kwargs = {}, {}

    class Run:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def log(self, data):
            logged.update(data)

    def init(**kwargs):
        init_kwargs.update(kwargs)
        return Run()

    monkeypatch.setattr(wandb, "init", init)
    monkeypatch.setenv("WANDB_MODE", "online")
    assert log_tables({"comparisons": TABLE, "claims": pd.DataFrame()}, Settings(), PROVENANCE)
    assert set(logged) == {"comparisons"} and isinstance(logged["comparisons"], wandb.Table)
    assert logged["comparisons"].data == [["pmdrop", None, 5]]
    assert init_kwargs["job_type"] == "report" and init_kwargs["config"]["provenance"] == PROVENANCE.lines()


def test_setting_overrides_environment_and_is_checked(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "online")
    assert wandb_mode(replace(Settings(), wandb_mode="disabled")) == "disabled"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="valid: online, offline, disabled"):
        wandb_mode(Settings())
    with pytest.raises(ValueError, match=r"wandb\.mode='on'"):
        Settings(wandb_mode="on")
