"""The W&B dashboard for comparing runs: a saved workspace (view) of a project, defined in code.

    python -m scripts.dashboard --entity E --project pmdrop                      # every run of the project
    python -m scripts.dashboard --entity E --project pmdrop --experiment demo    # one experiment's runs

Runs are grouped by variant (each run's ``variant.name``), so a bar is a variant's mean over its seeds with its
min-max range. Panels, with the names the harness logs (experiments/tracking.py: the results fields go to the run's
summary, the ``log_step`` metrics to its history, against ``step``):

* Memory: peak memory and saved-mask bytes by variant, and the other saved-for-backward bytes.
* Speed: throughput (samples/s, tokens/s) and step time by variant.
* Training: the loss against the step, one line per seed with its min-max band over the variants (zero width where
  they are bit-identical), and the gradient cosine to the paired baseline copy by variant.
* Task: the task metric and the final loss by variant.

The workspace is built without a network (``build_workspace``; the tests check its panels); ``main`` saves it to
W&B, which needs a login (``wandb login`` or ``WANDB_API_KEY``), and prints its URL. Offline runs are uploaded first
with ``wandb sync``.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import wandb_workspaces.reports.v2 as wr
import wandb_workspaces.workspaces as ws

# Every run's variant, seed and experiment, from its config (the resolved Hydra config of the run).
VARIANT = "variant.name"
SEED = "seed"
EXPERIMENT = "experiment_name"
# The history's x-axis: the harness logs its own step (W&B's must grow strictly, a cosine point may share a step).
STEP = "step"


@dataclass(frozen=True)
class Bars:
    """Summary fields by variant."""

    title: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class Curves:
    """History metrics against the step, grouped by a config key (a line per group, a min-max band over its runs)."""

    title: str
    metrics: tuple[str, ...]
    group: str


SECTIONS: dict[str, tuple[Bars | Curves, ...]] = {
    "Memory": (
        Bars("Peak memory (bytes)", ("peak_memory_bytes",)),
        Bars("Saved dropout masks (bytes, one measured step)", ("saved_mask_bytes",)),
        Bars("Other saved-for-backward bytes", ("saved_activation_bytes", "saved_parameter_bytes")),
    ),
    "Speed": (
        Bars("Throughput (samples/s)", ("throughput_samples_per_s",)),
        Bars("Throughput (tokens/s)", ("tokens_per_s",)),
        Bars("Step time (s)", ("step_time_s",)),
    ),
    "Training": (
        Curves("Loss per seed (band: min-max over the variants)", ("loss",), SEED),
        Curves("Gradient cosine to the paired baseline", ("grad_cosine",), VARIANT),
    ),
    "Task": (
        Bars("Task metric", ("metrics.f1", "metrics.accuracy", "metrics.perplexity")),
        Bars("Final training loss", ("final_loss",)),
    ),
}


def _panel(spec: Bars | Curves) -> wr.BarPlot | wr.LinePlot:
    if isinstance(spec, Bars):
        return wr.BarPlot(title=spec.title, metrics=[wr.SummaryMetric(field) for field in spec.fields],
                          groupby=wr.Config(VARIANT), groupby_aggfunc="mean", groupby_rangefunc="minmax")
    return wr.LinePlot(title=spec.title, x=STEP, y=list(spec.metrics), groupby=wr.Config(spec.group),
                       groupby_aggfunc="mean", groupby_rangefunc="minmax")


def build_workspace(entity: str, project: str, experiment: str | None = None,
                    name: str = "pmdrop: variants compared") -> ws.Workspace:
    """The workspace, built offline: sections of ``SECTIONS``, runs grouped by variant, optionally one experiment's."""
    filters = f"Config('{EXPERIMENT}') = '{experiment}'" if experiment else ""
    return ws.Workspace(
        entity=entity,
        project=project,
        name=name if experiment is None else f"{name} ({experiment})",
        sections=[ws.Section(name=title, panels=[_panel(spec) for spec in specs], is_open=True)
                  for title, specs in SECTIONS.items()],
        settings=ws.WorkspaceSettings(x_axis=STEP, max_runs=100),
        runset_settings=ws.RunsetSettings(filters=filters, groupby=[ws.Config(VARIANT)]),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.dashboard", description=__doc__.split("\n\n")[0])
    parser.add_argument("--entity", required=True, help="W&B entity (user or team) owning the project")
    parser.add_argument("--project", required=True, help="W&B project of the runs (logger.project, default pmdrop)")
    parser.add_argument("--experiment", default=None, help="only the runs of this experiment_name (e.g. demo)")
    args = parser.parse_args(argv)
    workspace = build_workspace(args.entity, args.project, args.experiment).save()
    print(workspace.url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
