"""The report: ``python -m scripts.report runs/ --out results/``.

Reads every ``results.json`` / ``metrics.jsonl`` under the given runs roots and writes into ``--out``:
per-experiment summary and comparison tables (Markdown + CSV), the analytic memory model against the
measured saved bytes, the paper's claims against what was reproduced, PNG plots, ``runs.csv`` and a
``README.md`` linking them. Prints a compact summary (each variant against the baseline) to stdout.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

from . import analysis, claims, composability, maxfit, memory_check, planned_memory, plots, robustness, tables
from .load import find_incomplete, read_runs
from .provenance import Provenance, report_command
from .settings import DEFAULT_SETTINGS, WANDB_MODES, Settings, load_settings
from .wandb_tables import log_tables

log = logging.getLogger("scripts.report")


@dataclass
class Written:
    """Files of the report, each with the one line of context the README gives it."""

    files: list[tuple[Path, str]]
    skipped_plots: list[tuple[str, str]]

    def add(self, path: Path, description: str) -> None:
        self.files.append((path, description))


def _write_pair(out: Path, stem: str, title: str, frame: pd.DataFrame, markdown: str, provenance: Provenance,
                written: Written, description: str) -> None:
    """``<stem>.csv`` (raw values) and ``<stem>.md`` (for people), both with provenance."""
    written.add(tables.write_csv(frame, out / f"{stem}.csv", provenance), f"{description} (CSV, raw units)")
    written.add(tables.write_markdown(out / f"{stem}.md", title, markdown, provenance), description)


@dataclass(frozen=True)
class ExperimentTable:
    """A table of one of issue 6's experiments, written only when its runs exist."""

    stem: str
    title: str
    build: Callable[[pd.DataFrame, Settings], pd.DataFrame]
    markdown: Callable[[pd.DataFrame, Settings], str]
    description: str


EXPERIMENT_TABLES = (
    ExperimentTable("maxfit", "Largest batch or context that fits, per variant",
                    lambda runs, s: maxfit.maxfit_table(runs, s.baseline), lambda t, s: maxfit.maxfit_markdown(t),
                    "max feasible batch/context: largest size per model and variant, gain over the baseline"),
    ExperimentTable("composability", "Composability: exactness and saved bytes under each technique",
                    lambda runs, s: composability.composability_table(runs, s.baseline),
                    lambda t, s: composability.composability_markdown(t),
                    "composability: bit-identical to the baseline? saved bytes under checkpointing, bf16, compile, "
                    "sdpa, DDP, ZeRO-1, FSDP2"),
    ExperimentTable("robustness_bitflip", "Bit flips in packed masks during training", robustness.bitflip_table,
                    lambda t, s: robustness.bitflip_markdown(t),
                    "bit-flip robustness: task metric with flips vs the same run without, paired by seed"),
    ExperimentTable("robustness_fgsm", "FGSM: accuracy drop per variant", robustness.fgsm_table,
                    lambda t, s: robustness.fgsm_markdown(t, s.baseline),
                    "FGSM robustness: clean accuracy, drop under attack, each variant's drop vs the baseline's"),
)


def is_search(runs: pd.DataFrame) -> pd.Series:
    """Runs that searched for a largest size (experiments/maxfit.py) rather than trained: no training metrics."""
    return runs["results"].map(lambda results: bool(results.get("maxfit")))


def write_tables(runs: pd.DataFrame, training: pd.DataFrame, out: Path, settings: Settings, provenance: Provenance,
                 written: Written) -> dict[str, pd.DataFrame]:
    """``runs``: every run read; ``training``: those that trained (not size searches), for summaries and tests."""
    frames = {}
    for table in EXPERIMENT_TABLES:
        frame = table.build(runs, settings)
        if not frame.empty:
            experiments = {e for column in frame.columns if column.startswith("experiment") for e in frame[column]}
            used = runs[runs["experiment"].isin(experiments)]
            _write_pair(out, table.stem, table.title, frame, table.markdown(frame, settings), provenance.subset(used),
                        written, table.description)
            frames[table.stem] = frame
    summary, comparisons = analysis.summaries(training, settings), analysis.comparisons(training, settings)
    for experiment in sorted(training["experiment"].unique()):
        if (training[training["experiment"] == experiment]["peak_memory_kind"] == planned_memory.PLANNED_KIND).all():
            continue  # plans trained nothing: their figures are memory_plan.md's, with their own status
        prov = provenance.subset(training[training["experiment"] == experiment])
        mine = summary[summary["experiment"] == experiment]
        _write_pair(out, f"summary_{experiment}", f"Summary: {experiment}", mine, tables.summary_markdown(mine), prov,
                    written, f"experiment {experiment}: mean ± std and CI across seeds per configuration and variant")
        mine = comparisons[comparisons["experiment"] == experiment] if not comparisons.empty else comparisons
        if not mine.empty:
            _write_pair(out, f"comparisons_{experiment}", f"Variants against the baseline: {experiment}", mine,
                        tables.comparison_markdown(mine, settings.baseline), prov, written,
                        f"experiment {experiment}: each variant vs {settings.baseline} paired by seed: differences, "
                        "CIs, p-values (Holm), TOST and the finding in words")
    memory = memory_check.predictions(training)
    _write_pair(out, "memory_model", "Analytic memory model against measured saved bytes", memory,
                tables.memory_markdown(memory), provenance, written,
                "analytic memory model: predicted vs measured saved bytes, relative error per configuration")
    claim_rows = claims.claims_table(claims.Evidence(runs, comparisons, settings.baseline))
    _write_pair(out, "claims", "Paper claim vs reproduced", claim_rows, tables.claims_markdown(claim_rows),
                provenance, written, "paper claim vs reproduced: one row per numeric claim, our figure, device, status")
    written.add(tables.write_csv(runs.drop(columns=["results"]), out / "runs.csv", provenance),
                "every run read: its identity, status, error and measured fields")
    return {"summary": summary, "comparisons": comparisons, "memory_model": memory, "claims": claim_rows, **frames}


def _readme(runs: pd.DataFrame, incomplete: list[Path], damaged: list[str], out: Path, settings: Settings,
             written: Written, provenance: Provenance) -> Path:
    counts = runs["status"].value_counts()
    others = [status for status in ("diverged", "interrupted") if counts.get(status)]
    lines = [
        f"{len(runs)} runs read ({counts.get('ok', 0)} finished, {counts.get('failed', 0)} failed"
        + "".join(f", {counts[status]} {status}" for status in others)
        + f": {' and '.join(['failed', *others])} runs are excluded from every statistic and counted in the summaries)"
        + (f", {len(damaged)} damaged (not read; listed below)" if damaged else "") + ". Tests: paired by seed against "
        f"`{settings.baseline}`, level α = {settings.alpha} after Holm correction, {100 * settings.confidence:g} % "
        f"intervals, bootstrap with {settings.bootstrap_resamples} resamples (seed {settings.bootstrap_seed}).",
        "Equivalence margins (declared in `conf/report.yaml` before the runs): "
        + (", ".join(f"{m} {margin.describe()}" for m, margin in settings.margins.items()) or "none") + ".",
        "",
        "## Files",
        "",
        *(f"- [{p.relative_to(out)}]({p.relative_to(out)}): {description}" for p, description in written.files),
    ]
    if incomplete:
        lines += ["", "## Runs without results.json (killed or still running; not counted)", "",
                  *(f"- `{path}`" for path in incomplete)]
    if damaged:
        lines += ["", "## Damaged runs (files not readable as a run; not counted; a sweep runs them again)", "",
                  *(f"- {line}" for line in damaged)]
    if written.skipped_plots:
        lines += ["", "## Plots not drawn", "", *(f"- {name}: {reason}" for name, reason in written.skipped_plots)]
    return tables.write_markdown(out / "README.md", "pmdrop report", "\n".join(lines) + "\n", provenance)


def _change(rows: pd.DataFrame, metric: str) -> str:
    row = rows[rows["metric"] == metric]
    if row.empty:
        return "—"
    r = row.iloc[0]
    if r["case"] == "identical":
        return "identical"
    if pd.isna(r["pct_change"]):
        return r["case"]
    ci = "" if pd.isna(r["pct_ci_low"]) else f" [{r['pct_ci_low']:+.2g}, {r['pct_ci_high']:+.2g}]"
    return f"{r['pct_change']:+.3g} %{ci}"


def _task(rows: pd.DataFrame) -> str:
    row = rows[rows["metric"] == "task_value"]
    if row.empty:
        return "—"
    r = row.iloc[0]
    if r["case"] == "identical":
        return f"identical ({r['n_pairs']} pair{'' if r['n_pairs'] == 1 else 's'})"
    return "—" if pd.isna(r["mean_diff"]) else f"{r['mean_diff']:+.3g} ({r['case']}, n={r['n_pairs']})"


def stdout_summary(summary: pd.DataFrame, comparisons: pd.DataFrame, baseline: str) -> str:
    """Each variant against the baseline: masks, activations, throughput, task metric, gradient cosine."""
    if comparisons.empty:
        return "no variant could be compared with the baseline (no baseline runs, or no other variant)\n"
    means = summary.set_index([*analysis.GROUP_KEY, "metric"])["mean"]
    header = ["configuration", "variant", "saved masks", "Δ masks", "Δ activations", "Δ throughput [CI]",
              "Δ task metric", "grad cosine"]
    rows = []
    many = comparisons["experiment"].nunique() > 1
    for key, group in comparisons.groupby(list(analysis.GROUP_KEY), sort=True):
        mask = means.get((*key, "saved_mask_bytes"))
        cosine = means.get((*key, "grad_cosine_mean"))
        rows.append([f"{key[0]}: " * many + f"{key[1]}/{key[2]}", key[3],
                     analysis.METRICS["saved_mask_bytes"].with_unit(mask),
                     _change(group, "saved_mask_bytes"), _change(group, "saved_activation_bytes"),
                     _change(group, "throughput_samples_per_s"), _task(group),
                     "—" if cosine is None or pd.isna(cosine) else f"{cosine:.6f}"])
    widths = [max(len(str(x)) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    return "\n".join([f"each variant vs {baseline} (paired by seed)", line(header), *map(line, rows)]) + "\n"


def build_report(roots: list[Path], out: Path, settings: Settings, command: str) -> dict[str, pd.DataFrame]:
    runs, damaged = read_runs(roots)
    for line in damaged:
        log.warning("damaged run, not counted: %s", line)
    if runs.empty:
        raise SystemExit(f"no results.json found under {', '.join(map(str, roots))}: nothing to report")
    out.mkdir(parents=True, exist_ok=True)
    provenance = Provenance.of(runs, command)
    written = Written([], [])
    training = runs[~is_search(runs)]
    frames = write_tables(runs, training, out, settings, provenance, written)
    measured = (training["status"] == "ok") & (training["peak_memory_kind"] != planned_memory.PLANNED_KIND)
    data = plots.PlotInput(training[measured], settings.baseline, settings.confidence, maxfit.searches(runs))
    pngs, written.skipped_plots = plots.draw_all(data, out / "plots", provenance, settings.dpi)
    planned = planned_memory.planned_runs(runs)
    for path, description in [*pngs, *planned_memory.write_tables(runs, out, provenance.subset(planned))]:
        written.add(path, description)
    incomplete = find_incomplete(roots)
    if incomplete:
        log.warning("%d run directories have no results.json (killed or still running): not counted", len(incomplete))
    _readme(runs, incomplete, damaged, out, settings, written, provenance)
    log_tables(frames, settings, provenance)
    log.info("report of %d runs written to %s (%d files, %d plots skipped)", len(runs), out,
             len(written.files) + 1, len(written.skipped_plots))
    return frames


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("roots", nargs="+", type=Path, help="runs roots (directories holding run directories)")
    parser.add_argument("--out", type=Path, default=Path("results"), help="output directory (default: results)")
    parser.add_argument("--settings", type=Path, default=DEFAULT_SETTINGS, help="report options (conf/report.yaml)")
    parser.add_argument("--wandb", choices=WANDB_MODES, default=None,
                        help="W&B mode for logging the tables (default: the settings, then WANDB_MODE)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    settings = load_settings(args.settings)
    if args.wandb:
        settings = replace(settings, wandb_mode=args.wandb)
    frames = build_report(args.roots, args.out, settings, report_command(argv))
    print(stdout_summary(frames["summary"], frames["comparisons"], settings.baseline), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
