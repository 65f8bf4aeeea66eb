"""The W&B dashboard, built offline: its panels, their grouping, and that every field it plots is one a harness run
logs (a real tiny paired run, read back from its offline W&B files)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import wandb_workspaces.reports.v2 as wr

from scripts import dashboard

REPO = Path(__file__).resolve().parents[2]
WANDB_CLI = Path(sys.executable).with_name("wandb")


def panels_of(workspace) -> dict[str, list]:
    return {section.name: section.panels for section in workspace.sections}


def test_the_papers_panels_grouped_by_variant():
    workspace = dashboard.build_workspace("team", "pmdrop")
    assert (workspace.entity, workspace.project) == ("team", "pmdrop")
    assert [group.name for group in workspace.runset_settings.groupby] == ["variant.name"]
    assert workspace.runset_settings.filters == ""  # every run of the project
    panels = panels_of(workspace)
    assert list(panels) == ["Memory", "Speed", "Training", "Task"]

    def bars(section: str) -> dict[str, list[str]]:
        return {p.title: [m.name for m in p.metrics] for p in panels[section] if isinstance(p, wr.BarPlot)}

    assert bars("Memory")["Peak memory (bytes)"] == ["peak_memory_bytes"]
    assert bars("Memory")["Saved dropout masks (bytes, one measured step)"] == ["saved_mask_bytes"]
    assert bars("Speed")["Throughput (samples/s)"] == ["throughput_samples_per_s"]
    for section in ("Memory", "Speed", "Task"):
        for panel in panels[section]:  # a bar per variant: its mean over the seeds, with the min-max range
            assert isinstance(panel, wr.BarPlot)
            assert panel.groupby.name == "variant.name" and panel.groupby_rangefunc == "minmax"
            assert all(isinstance(metric, wr.SummaryMetric) for metric in panel.metrics)
    loss, cosine = panels["Training"]
    assert (loss.x, loss.y, loss.groupby.name) == ("step", ["loss"], "seed")  # overlaid per seed
    assert (cosine.x, cosine.y, cosine.groupby.name) == ("step", ["grad_cosine"], "variant.name")


def test_one_experiment_and_the_spec_w_and_b_receives():
    workspace = dashboard.build_workspace("team", "pmdrop", experiment="demo")
    assert workspace.runset_settings.filters == "Config('experiment_name') = 'demo'"
    assert workspace.name.endswith("(demo)")
    view = workspace._to_model().model_dump(by_alias=True)  # what save() sends, built without a network
    sent = json.dumps(view)
    for field in ("peak_memory_bytes", "saved_mask_bytes", "throughput_samples_per_s"):
        assert f'"summary_metrics.{field}"' in sent
    assert sent.count('"groupBy": "variant.value.name"') == sum(
        isinstance(spec, dashboard.Bars) for specs in dashboard.SECTIONS.values() for spec in specs) + 1


def _inspect(offline_run: Path, *flags: str) -> str:
    return subprocess.run([str(WANDB_CLI), "leet", "inspect", "--json", *flags, str(offline_run)],
                          capture_output=True, text=True, timeout=60, check=True).stdout


def _lookup(tree: dict, dotted: str) -> object:
    for key in dotted.split("."):
        if not isinstance(tree, dict) or key not in tree:
            return None
        tree = tree[key]
    return tree


@pytest.mark.skipif(not WANDB_CLI.exists(), reason="the wandb CLI is not installed")
def test_every_plotted_field_is_one_a_run_logs(tmp_path):
    overrides = ["model=tinybert", "dataset=synthetic_pairs", "model.hidden_size=32", "model.num_attention_heads=2",
                 "model.intermediate_size=64", "model.num_hidden_layers=1", "trainer.steps=3",
                 "trainer.measure_step=1", "trainer.eval_batches=1", "trainer.log_every=1", "trainer.batch_size=4",
                 "trainer.paired=true", "trainer.grad_cosine_every=1", "trainer.device=cpu",
                 "logger=wandb_offline", "experiment_name=dash", f"runs_root={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "run.py", *overrides], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (offline_run,) = tmp_path.glob("dash/*/*/*/seed0/wandb/offline-run-*")
    record = json.loads(_inspect(offline_run, "--summary"))
    summary, config = record["summary"], record["config"]
    history_keys = {key for line in _inspect(offline_run).splitlines() if json.loads(line)["type"] == "history"
                    for key in json.loads(line)["history"]["item"]}
    assert _lookup(config, "variant.name") == "baseline" and _lookup(config, "seed") == 0
    assert _lookup(config, "experiment_name") == "dash"
    for specs in dashboard.SECTIONS.values():
        for spec in specs:
            if isinstance(spec, dashboard.Curves):
                assert set(spec.metrics) | {dashboard.STEP} <= history_keys, spec.title
                assert _lookup(config, spec.group) is not None
            elif spec.title == "Task metric":  # the task's own metrics: f1 and accuracy here, perplexity for MLM
                assert [field for field in spec.fields if _lookup(summary, field) is not None] == [
                    "metrics.f1", "metrics.accuracy"]
            else:
                assert all(_lookup(summary, field) is not None for field in spec.fields), spec.title
