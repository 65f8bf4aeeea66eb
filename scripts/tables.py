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
        return "— (not measured)" if row["n_ok"] else "— (no finished run)"
    (mean, std, low, high), unit = metric.text([row["mean"], row["std"], row["ci_low"], row["ci_high"]])
    unit = f" {unit}" if unit else ""
    if n == 1:
        return f"{mean}{unit} (n=1, no spread)"
    if row["std"] == 0:
        return f"{mean}{unit} (all {n} equal)"
    return f"{mean} ± {std} [{low}, {high}]{unit} (n={n})"


def _section_title(key: tuple) -> str:
    return " / ".join(str(k) for k in key[1:])  # the experiment is the file's


def summary_markdown(summary: pd.DataFrame) -> str:
    """One section per configuration: a metric per row, a variant per column."""
    parts = ["Mean ± sample std [95 % t-interval] over finished runs; failed runs are excluded and counted.\n"]
    for key, config in summary.groupby(list(CONFIG_KEY), sort=True):
        variants = list(dict.fromkeys(config["variant"]))
        first = config.drop_duplicates("variant").set_index("variant")
        runs = ", ".join(f"{v}: {first.at[v, 'n_ok']} ok / {first.at[v, 'n_failed']} failed"
                         + "".join(f" / {first.at[v, f'n_{status}']} {status}" for status in ("diverged", "interrupted")
                                   if first.at[v, f"n_{status}"])
                         for v in variants)
        shapes = ", ".join(f"{name} {', '.join(sorted(set(first[name])))}"
                           for name in ("devices", "batch_size", "seq_len", "precision"))
        rows = []
        for label, per_metric in config.groupby("label", sort=False):
            cells = per_metric.set_index("variant")
            rows.append([label, *(summary_cell(cells.loc[v]) if v in cells.index else "—" for v in variants)])
        parts.append(f"## {_section_title(key)}\n\nruns: {runs}  \n{shapes.replace('devices', 'device')}\n\n"
                     + markdown_table(["metric", *variants], rows))
    return "\n".join(parts)


def _number(value: object) -> float | None:
    return None if _missing(value) else float(value)


def _with_interval(name: str | None, value: object, low: object, high: object, reference: object = None) -> str:
    """``+1.2 [+1.0, +1.4] MiB``: a signed value and its interval in one unit; absent parts are left out.

    ``name`` is the metric (its unit; None formats percentages); ``reference`` picks the unit."""
    numbers = [_number(value), _number(low), _number(high)]
    if name is None:
        (v, lo, hi), unit = [x if x is None else format(x, "+.3g") for x in numbers], "%"
    else:
        (v, lo, hi), unit = METRICS[name].text(numbers, signed=True, reference=_number(reference))
    parts = [] if v in (None, "—") else [v]
    if lo not in (None, "—") and hi not in (None, "—"):
        parts.append(f"[{lo}, {hi}]")
    return " ".join([*parts, unit]).strip() if parts else "—"


def _p(value: object, adjusted: object) -> str:
    if _missing(value):
        return "—"
    return f"{value:.3g} (Holm {adjusted:.3g})" if not _missing(adjusted) else f"{value:.3g}"


def comparison_row(row: pd.Series) -> list[str]:
    name = row["metric"]
    tost = "no margin" if _missing(row["margin"]) else f"{row['margin']}: {_p(row['p_tost'], row['p_tost_holm'])}"
    effect = "—" if _missing(row["effect_sigma"]) else f"{row['effect_sigma']:+.2f} σ"
    return [
        row["variant"], row["label"], str(row["n_pairs"]),
        _with_interval(name, row["mean_diff"], row["diff_ci_low"], row["diff_ci_high"]),
        _with_interval(None, row["pct_change"], row["pct_ci_low"], row["pct_ci_high"]),
        _with_interval(name, None, row["boot_ci_low"], row["boot_ci_high"], reference=row["diff_ci_low"]),
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


def _bytes(value: object) -> str:
    return "—" if _missing(value) else METRICS["saved_mask_bytes"].with_unit(float(value))


def _relative(value: object) -> str:
    return "—" if _missing(value) else f"{100 * value:+.3g} %"


MEMORY_HEADER = ["configuration", "variant", "device", "shape", "per layer: activations", "per layer: masks",
                 "activations: predicted", "measured", "error", "masks: predicted", "measured", "error", "note"]


def memory_markdown(frame: pd.DataFrame) -> str:
    """The analytic memory model (scripts.memory_check.predictions) against the measured saved bytes."""
    rows = [[f"{r.experiment}: {r.model}/{r.dataset}", r.variant, str(r.device),
             f"b{r.batch_size:g}" + ("" if _missing(r.seq_len) else f" s{r.seq_len:g}"),
             _bytes(r.predicted_layer_activation_bytes), _bytes(r.predicted_layer_mask_bytes),
             _bytes(r.predicted_activation_bytes), _bytes(r.measured_activation_bytes),
             _relative(r.activation_rel_error), _bytes(r.predicted_mask_bytes), _bytes(r.measured_mask_bytes),
             _relative(r.mask_rel_error), r.note or ""]
            for r in frame.itertuples()]
    intro = (
        "Bytes saved for backward by one training forward (parameters excluded), predicted from shapes alone by "
        "`scripts/memory_model.py` and measured by the harness with `pmdrop.track_saved_tensors`. Error = "
        "(predicted − measured) / measured. The model follows transformers' BERT/Longformer and timm's ViT tensor "
        "by tensor; per BERT layer with eager attention it is bsh·e·8 + bsI·e·2 + bas²·e·2 + LayerNorm statistics "
        "for activations and (2bsh + bas²)·m for masks, which for e = 2, m = 1, I = 4h is Korthikanti et al.'s "
        "sbh(34 + 5as/h). The model is exact on CPU (checked by the tests); its CUDA-only terms (bool masks, fused "
        "attention) were not measured on a GPU here.\n\n"
    )
    return intro + markdown_table(MEMORY_HEADER, rows)


def claims_markdown(frame: pd.DataFrame) -> str:
    """Paper claim vs reproduced (scripts.claims.claims_table); the run commands behind the figures at the end."""
    counts = frame["status"].value_counts()
    intro = ("One row per numeric claim of the paper. Our figures are read from the runs' results files only; "
             "\"not run here\" says why a claim could not be checked. Status counts: "
             + ", ".join(f"{status}: {count}" for status, count in counts.items()) + ".\n\n")
    header = ["claim (paper)", "section", "criterion", "ours", "device", "status", "note"]
    rows = [[r.claim, r.section, r.criterion, r.ours, r.device, r.status, r.note] for r in frame.itertuples()]
    commands = sorted({c for value in frame["command"] for c in str(value).split(", ") if c != "—"})
    footer = "\n\nRun commands behind the figures: " + (", ".join(f"`{c}`" for c in commands) or "none") + "\n"
    return intro + markdown_table(header, rows) + footer
