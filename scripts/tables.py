"""Markdown and CSV files of the report; every file opens with its provenance.

CSV files hold the raw values (bytes, seconds, samples/s) after ``#`` provenance lines (read them with
``pandas.read_csv(path, comment="#")``); Markdown shows them in a person's units, with "—" and a finding in
words wherever a number does not exist.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from .analysis import METRICS
from .load import CONFIG_KEY
from .provenance import Provenance


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *map(line, rows)]) + "\n"


def write_csv(frame: pd.DataFrame, path: Path, provenance: Provenance) -> Path:
    path.write_text(provenance.csv_header() + frame.to_csv(index=False, na_rep=""))
    return path


def write_markdown(path: Path, title: str, body: str, provenance: Provenance) -> Path:
    path.write_text(f"# {title}\n\n{provenance.markdown()}\n{body}")
    return path


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and not math.isfinite(value))


def summary_cell(row: pd.Series) -> str:
    metric = METRICS[row["metric"]]
    n = int(row["n"])
    if n == 0:
        return "— (no finished run)"
    if n == 1:
        return f"{metric.display(row['mean'])} (n=1, no spread)"
    if row["std"] == 0:
        return f"{metric.display(row['mean'])} (all {n} equal)"
    return (f"{metric.display(row['mean'])} ± {metric.display(row['std'])} "
            f"[{metric.display(row['ci_low'])}, {metric.display(row['ci_high'])}] (n={n})")


def _section_title(key: tuple) -> str:
    return " / ".join(str(k) for k in key[1:])  # the experiment is the file's


def summary_markdown(summary: pd.DataFrame) -> str:
    """One section per configuration: a metric per row, a variant per column."""
    parts = ["Mean ± sample std [95 % t-interval] over finished runs; failed runs are excluded and counted.\n"]
    for key, config in summary.groupby(list(CONFIG_KEY), sort=True):
        variants = list(dict.fromkeys(config["variant"]))
        first = config.drop_duplicates("variant").set_index("variant")
        runs = ", ".join(f"{v}: {first.at[v, 'n_ok']} ok / {first.at[v, 'n_failed']} failed" for v in variants)
        shapes = ", ".join(f"{name} {', '.join(sorted(set(first[name])))}"
                           for name in ("devices", "batch_size", "seq_len", "precision"))
        rows = []
        for label, per_metric in config.groupby("label", sort=False):
            cells = per_metric.set_index("variant")
            rows.append([label, *(summary_cell(cells.loc[v]) if v in cells.index else "—" for v in variants)])
        parts.append(f"## {_section_title(key)}\n\nruns: {runs}  \n{shapes.replace('devices', 'device')}\n\n"
                     + markdown_table(["metric", *variants], rows))
    return "\n".join(parts)


def _interval(metric_name: str, low: object, high: object, percent: bool = False) -> str:
    if _missing(low) or _missing(high):
        return "—"
    if percent:
        return f"[{low:+.3g} %, {high:+.3g} %]"
    metric = METRICS[metric_name]
    return f"[{metric.display(low, signed=True)}, {metric.display(high, signed=True)}]"


def _p(value: object, adjusted: object) -> str:
    if _missing(value):
        return "—"
    return f"{value:.3g} (Holm {adjusted:.3g})" if not _missing(adjusted) else f"{value:.3g}"


def comparison_row(row: pd.Series) -> list[str]:
    metric, name = METRICS[row["metric"]], row["metric"]
    change = "—" if _missing(row["pct_change"]) else f"{row['pct_change']:+.3g} %"
    tost = "no margin" if _missing(row["margin"]) else f"{row['margin']}: {_p(row['p_tost'], row['p_tost_holm'])}"
    effect = "—" if _missing(row["effect_sigma"]) else f"{row['effect_sigma']:+.2f} σ"
    return [
        row["variant"], row["label"], str(row["n_pairs"]),
        f"{metric.display(row['mean_diff'], signed=True)} {_interval(name, row['diff_ci_low'], row['diff_ci_high'])}",
        f"{change} {_interval(name, row['pct_ci_low'], row['pct_ci_high'], percent=True)}",
        _interval(name, row["boot_ci_low"], row["boot_ci_high"]),
        _p(row["p_paired_t"], row["p_paired_t_holm"]), _p(row["p_welch"], None), tost, effect, row["verdict"],
    ]


COMPARISON_HEADER = ["variant", "metric", "pairs", "mean diff [95 % CI]", "change [95 % CI]", "bootstrap 95 % CI",
                     "p paired t", "p Welch", "TOST margin: p", "effect (baseline σ)", "finding"]


def comparison_markdown(comparisons: pd.DataFrame, baseline: str) -> str:
    parts = [
        f"Each variant minus `{baseline}`, paired by seed (seeds finished in both). CIs: paired t and a percentile "
        "bootstrap (fixed seed). p-values: paired t and Welch's unpaired t; TOST equivalence against the margins of "
        "`conf/report.yaml`; Holm correction across every comparison of this report (one family per test). Effect: "
        "mean difference in units of the baseline's run-to-run σ. An exact two-sided Wilcoxon test is not used: with "
        "5 pairs its smallest possible p-value is 0.0625.\n"
    ]
    for key, config in comparisons.groupby(list(CONFIG_KEY), sort=True):
        rows = [comparison_row(row) for _, row in config.iterrows()]
        parts.append(f"## {_section_title(key)}\n\n" + markdown_table(COMPARISON_HEADER, rows))
    return "\n".join(parts)
