"""PNG figures of the report (matplotlib's Agg renderer).

Each plot is a function in ``PLOTS`` that draws from the finished runs, or raises :class:`SkipPlot` saying
which inputs are missing; the report logs and lists the skipped ones.
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure  # figures without pyplot: no global state, rendered by Agg on save
from matplotlib.patches import Patch
from matplotlib.ticker import NullFormatter, ScalarFormatter

from .analysis import METRICS, MiB, plot_unit
from .load import CONFIG_KEY, read_history
from .memory_check import predictions
from .provenance import Provenance
from .stats import summarize

log = logging.getLogger(__name__)


class SkipPlot(Exception):
    """The plot's inputs do not exist in these runs; the message says which."""


@dataclass(frozen=True)
class PlotInput:
    runs: pd.DataFrame  # finished training runs only
    baseline: str
    confidence: float
    searches: pd.DataFrame | None = None  # scripts.maxfit.searches: the max-feasible-size searches


def _config_label(key: tuple, with_experiment: bool) -> str:
    experiment, model, dataset = key
    return f"{experiment}: {model}/{dataset}" if with_experiment else f"{model}/{dataset}"


def _configs(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    many = runs["experiment"].nunique() > 1
    return [(_config_label(key, many), group) for key, group in runs.groupby(list(CONFIG_KEY), sort=True)]


def _variants(runs: pd.DataFrame, baseline: str) -> list[str]:
    others = sorted(set(runs["variant"]) - {baseline})
    return ([baseline] if baseline in set(runs["variant"]) else []) + others


def _grid(count: int, width: float = 5.0, height: float = 3.6, cols: int = 3) -> tuple[Figure, list[Axes]]:
    cols = min(count, cols)
    rows = -(-count // cols)
    fig = Figure(figsize=(max(width * cols, 8.0), height * rows + 0.8))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat[:count])


def _colors(data: PlotInput) -> dict[str, str]:
    """One color per variant across every panel of a figure (the legend is drawn once)."""
    return {variant: f"C{i}" for i, variant in enumerate(_variants(data.runs, data.baseline))}


def _legend(colors: dict[str, str]) -> tuple[list, list[str]]:
    return [Patch(color=color) for color in colors.values()], list(colors)


def _grouped_bars(ax: Axes, runs: pd.DataFrame, column: str, colors: dict[str, str], confidence: float,
                  interval: str) -> None:
    """Bars per configuration, one per variant present: mean over seeds with std or CI whiskers."""
    configs = _configs(runs)
    variants = [variant for variant in colors if variant in set(runs["variant"])]
    width = 0.8 / len(variants)
    scale = METRICS[column].scale
    for i, variant in enumerate(variants):
        means, errors = [], []
        for _, group in configs:
            s = summarize(group.loc[group["variant"] == variant, column].tolist(), confidence)
            means.append(np.nan if s.mean is None else s.mean * scale)
            if interval == "ci" and s.ci_low is not None:
                errors.append((s.mean - s.ci_low) * scale)
            else:
                errors.append((s.std or 0.0) * scale)
        ax.bar(np.arange(len(configs)) + (i - (len(variants) - 1) / 2) * width, means, width, yerr=errors, capsize=3,
               label=variant, color=colors[variant])
    ax.set_xticks(np.arange(len(configs)), [label for label, _ in configs], rotation=15, ha="right", fontsize=8)


def memory_by_variant(data: PlotInput) -> Figure:
    panels = [c for c in ("peak_memory_bytes", "saved_activation_bytes", "saved_mask_bytes")
              if data.runs[c].notna().any()]
    if not panels:
        raise SkipPlot("no run reports peak memory or saved bytes")
    configs = len(_configs(data.runs))
    # Many configurations: one metric per row, wide enough for a labelled group of bars each.
    fig, axes = _grid(len(panels)) if configs <= 4 else _grid(len(panels), max(8.0, 1.2 * configs), 4.2, cols=1)
    kinds = sorted(set(data.runs["peak_memory_kind"].dropna()))
    for ax, column in zip(axes, panels, strict=True):
        _grouped_bars(ax, data.runs, column, _colors(data), data.confidence, "std")
        metric = METRICS[column]
        title = metric.label + (f" ({', '.join(kinds)})" if column == "peak_memory_bytes" and kinds else "")
        ax.set(title=title, ylabel=f"{metric.label} [{plot_unit(column)}]")
        if column == "saved_mask_bytes" and (data.runs[column] > 0).any():  # torch.compile runs see no mask
            ax.set_yscale("log")
    axes[0].legend(title="variant", fontsize=8)
    fig.suptitle("Memory per configuration and dropout variant (mean ± std over seeds)", fontsize=11)
    return fig


def throughput(data: PlotInput) -> Figure:
    if data.runs["throughput_samples_per_s"].isna().all():
        raise SkipPlot("no run reports throughput_samples_per_s")
    configs = _configs(data.runs)
    fig, axes = _grid(len(configs), 4.5)
    colors = _colors(data)
    for ax, (label, group) in zip(axes, configs, strict=True):
        _grouped_bars(ax, group, "throughput_samples_per_s", colors, data.confidence, "ci")
        ax.set_ylabel("throughput [samples/s]")
        ax.set_title(label, fontsize=9)
        ax.set_xticks([])
    axes[0].legend(*_legend(colors), title="variant", fontsize=8)  # every variant's color, also those not in panel 1
    fig.suptitle(f"Training throughput: mean over seeds with {100 * data.confidence:g} % t-interval", fontsize=11)
    return fig


def _histories(runs: pd.DataFrame, column: str) -> list[tuple[pd.Series, pd.DataFrame]]:
    found = []
    for _, run in runs.iterrows():
        history = read_history(run["run_dir"])
        if column in history.columns:
            found.append((run, history.dropna(subset=[column])))
    return found


def _curves(data: PlotInput, column: str, ylabel: str, title: str, variants_only: bool = False) -> Figure:
    runs = data.runs[data.runs["variant"] != data.baseline] if variants_only else data.runs
    configs = [(label, _histories(group, column)) for label, group in _configs(runs)]
    configs = [(label, found) for label, found in configs if found]
    if not configs:
        raise SkipPlot(f"no metrics.jsonl logs {column!r}")
    fig, axes = _grid(len(configs))
    colors = _colors(data)
    for ax, (label, found) in zip(axes, configs, strict=True):
        labelled = set()
        for run, history in found:
            baseline = run["variant"] == data.baseline
            ax.plot(history["step"], history[column], color=colors[run["variant"]], lw=2.2 if baseline else 1.0,
                    ls="-" if baseline else "--", alpha=0.8,
                    label=None if run["variant"] in labelled else run["variant"])
            labelled.add(run["variant"])
        ax.set(xlabel="step", ylabel=ylabel)
        ax.set_title(label, fontsize=9)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=11)
    return fig


def loss_curves(data: PlotInput) -> Figure:
    return _curves(data, "loss", "training loss", "Training loss, one line per seed (baseline solid, variants dashed)")


def grad_cosine(data: PlotInput) -> Figure:
    return _curves(data, "grad_cosine", "cosine(grad variant, grad baseline)",
                   "Gradient cosine similarity with the paired baseline, one line per seed", variants_only=True)


def _sweeps(runs: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Models measured at two or more sequence lengths with one batch size (e.g. the Longformer sweep)."""
    sweeps = []
    for (model, batch), group in runs.dropna(subset=["seq_len"]).groupby(["model", "batch_size"], sort=True):
        if group["seq_len"].nunique() >= 2:
            sweeps.append((f"{model}, batch {batch:g}", group))
    if not sweeps:
        raise SkipPlot("no model was run at two or more sequence lengths with the same batch size")
    return sweeps


def _seq_len_axis(ax: Axes) -> None:
    """Sequence lengths and batch sizes are mostly powers of two: a base-2 log axis with plain numbers."""
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())


def _by_seq_len(group: pd.DataFrame, column: str) -> pd.DataFrame:
    return group.groupby("seq_len", sort=True)[column].agg(["mean", "std"]).reset_index()


def memory_vs_seq_len(data: PlotInput) -> Figure:
    sweeps = _sweeps(data.runs)
    fig, axes = _grid(len(sweeps))
    for ax, (model, group) in zip(axes, sweeps, strict=True):
        for variant, runs in group.groupby("variant", sort=True):
            points = _by_seq_len(runs, "peak_memory_bytes")
            ax.errorbar(points["seq_len"], points["mean"] * MiB, yerr=points["std"].fillna(0) * MiB, marker="o",
                        capsize=3, label=variant)
        ax.set(title=model, xlabel="sequence length [tokens]", ylabel="peak memory [MiB]")
        _seq_len_axis(ax)
        ax.legend(fontsize=8)
    fig.suptitle("Peak memory against sequence length (mean ± std over seeds)", fontsize=11)
    return fig


def mask_bytes_vs_seq_len(data: PlotInput) -> Figure:
    sweeps = _sweeps(data.runs)
    fig, axes = _grid(len(sweeps))
    for ax, (model, group) in zip(axes, sweeps, strict=True):
        predicted = predictions(group)
        for i, (variant, runs) in enumerate(group.groupby("variant", sort=True)):
            points = _by_seq_len(runs, "saved_mask_bytes")
            ax.plot(points["seq_len"], points["mean"] * MiB, "o", color=f"C{i}", label=f"{variant} measured")
            model_line = predicted[(predicted["variant"] == variant) & predicted["predicted_mask_bytes"].notna()]
            if not model_line.empty:
                line = model_line.groupby("seq_len")["predicted_mask_bytes"].first()
                ax.plot(line.index, line.to_numpy() * MiB, "-", color=f"C{i}", alpha=0.6, label=f"{variant} predicted")
        ax.set(title=model, xlabel="sequence length [tokens]", ylabel="saved dropout-mask bytes [MiB]", yscale="log")
        _seq_len_axis(ax)
        ax.legend(fontsize=7)
    fig.suptitle("Dropout-mask bytes saved for backward: measured (points) and the analytic model (lines)", fontsize=11)
    return fig


def maxfit_probes(data: PlotInput) -> Figure:
    if data.searches is None or data.searches.empty:
        raise SkipPlot("no max-feasible-size search (experiment=maxfit) in these runs")
    panels = list(data.searches.groupby(["model", "dataset", "axis", "budget", "budget_bytes"], sort=True))
    fig, axes = _grid(len(panels))
    for ax, ((model, dataset, axis, budget, limit), group) in zip(axes, panels, strict=True):
        baseline = group.loc[group["variant"] == data.baseline, "largest"]
        for i, (variant, search) in enumerate(group.groupby("variant", sort=True)):
            probes = sorted((size, used) for size, _, used in search["probes"].iloc[0] if used is not None)
            largest = search["largest"].iloc[0]
            gain = f", {largest / baseline.iloc[0]:.3g}×" if not baseline.empty and baseline.iloc[0] > 0 else ""
            ax.plot([p[0] for p in probes], [p[1] * MiB for p in probes], "o-", color=f"C{i}", ms=3, lw=1,
                    label=f"{variant}: {largest}{gain}")
            ax.axvline(largest, color=f"C{i}", ls=":", lw=1)
        ax.axhline(limit * MiB, color="0.3", ls="--", lw=1, label="budget")
        what = "CUDA memory" if budget == "cuda_memory" else "saved for backward"
        ax.set(title=f"{model}/{dataset}", xlabel=axis.replace("_", " "), ylabel=f"{what} [MiB]", yscale="log")
        _seq_len_axis(ax)
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.legend(title="largest that fits", fontsize=7, title_fontsize=7)
    fig.suptitle("Max feasible size: memory at each probe of the search, budget dashed, largest fit dotted",
                 fontsize=11)
    return fig


PLOTS: dict[str, tuple[Callable[[PlotInput], Figure], str]] = {
    "memory_by_variant": (memory_by_variant, "peak memory, saved activation and saved mask bytes per variant"),
    "throughput": (throughput, "training throughput per variant with confidence intervals"),
    "loss_curves": (loss_curves, "training loss curves, baseline and variants overlaid, one line per seed"),
    "grad_cosine": (grad_cosine, "gradient cosine similarity with the paired baseline over steps"),
    "memory_vs_seq_len": (memory_vs_seq_len, "peak memory against sequence length (sequence-length sweeps)"),
    "mask_bytes_vs_seq_len": (mask_bytes_vs_seq_len, "measured mask bytes against the analytic prediction"),
    "maxfit_probes": (maxfit_probes, "max feasible size: memory against size at each probe, with the budget"),
}


def draw_all(data: PlotInput, out_dir: Path, provenance: Provenance, dpi: int = 120
             ) -> tuple[list[tuple[Path, str]], list[tuple[str, str]]]:
    """Writes ``<out_dir>/<name>.png`` for every plot whose inputs exist; returns (written, skipped with reason)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written, skipped = [], []
    for name, (draw, description) in PLOTS.items():
        try:
            fig = draw(data)
        except SkipPlot as reason:
            log.info("plot %s skipped: %s", name, reason)
            skipped.append((name, str(reason)))
            continue
        footer = textwrap.fill(provenance.footer(), int(fig.get_figwidth() * 20))
        fig.text(0.005, 0.003, footer, fontsize=6, color="0.35", va="bottom")
        fig.tight_layout(rect=(0, 0.02 + 0.12 * footer.count("\n") / fig.get_figheight(), 1, 1))
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=dpi, metadata={"Description": "\n".join(provenance.lines()),
                                             "Software": "scripts.report"})
        written.append((path, description))
    return written, skipped
