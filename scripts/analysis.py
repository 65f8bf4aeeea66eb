"""From the runs table to the report's two tidy tables: summaries per group, comparisons with the baseline.

Values stay in the results' raw units (bytes, seconds, samples/s); :class:`Metric` knows the unit a
person reads them in, for the Markdown tables and plots.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from .load import CONFIG_KEY
from .settings import Settings
from .stats import Comparison, compare, summarize, verdict, with_holm

GROUP_KEY = (*CONFIG_KEY, "variant")


_BYTE_UNITS = (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10), ("B", 1))


@dataclass(frozen=True)
class Metric:
    column: str  # column of the runs table
    label: str
    unit: str = ""  # unit of plots and of the numbers in tables ("bytes": B/KiB/MiB/GiB, chosen per value)
    scale: float = 1.0  # plotted value = raw value * scale
    compared: bool = True  # False: already a per-run paired quantity, summarised only

    def _unit(self, reference: float) -> tuple[str, float]:
        if self.unit != "bytes":
            return self.unit, self.scale
        return next((name, 1 / size) for name, size in _BYTE_UNITS if abs(reference) >= size or size == 1)

    def text(self, values: list[float | None], signed: bool = False, reference: float | None = None
             ) -> tuple[list[str], str]:
        """The values in one unit, picked from ``reference`` or else the largest value: (numbers as text, unit)."""
        present = [abs(v) for v in values if v is not None and math.isfinite(v)]
        unit, scale = self._unit(abs(reference) if reference is not None else max(present, default=0.0))
        spec = "+.4g" if signed else ".4g"
        return ["—" if v is None or not math.isfinite(v) else format(v * scale, spec) for v in values], unit

    def with_unit(self, raw: float | None, signed: bool = False) -> str:
        (number,), unit = self.text([raw], signed)
        return number if number == "—" else f"{number} {unit}".rstrip()


MiB = 1 / 2**20
METRICS: dict[str, Metric] = {
    m.column: m
    for m in (
        Metric("task_value", "task metric"),
        Metric("final_loss", "final loss"),
        Metric("peak_memory_bytes", "peak memory", "bytes", MiB),
        Metric("saved_mask_bytes", "saved mask bytes", "bytes", MiB),
        Metric("saved_activation_bytes", "saved activation bytes", "bytes", MiB),
        Metric("throughput_samples_per_s", "throughput", "samples/s"),
        Metric("step_time_s", "step time", "ms", 1e3),
        Metric("grad_cosine_mean", "gradient cosine (mean over steps)", compared=False),
    )
}


def metric_label(column: str, task_metric: str | None) -> str:
    if column == "task_value" and task_metric:
        return f"task metric ({task_metric})"
    return METRICS[column].label


def plot_unit(column: str) -> str:
    return "MiB" if METRICS[column].unit == "bytes" else METRICS[column].unit


def _distinct(values: pd.Series) -> str:
    present = sorted({str(int(v)) if isinstance(v, float) and v.is_integer() else str(v) for v in values.dropna()})
    return ", ".join(present) if present else "—"


def _task_metric(group: pd.DataFrame) -> str | None:
    names = sorted(set(group["task_metric"].dropna()))
    if len(names) > 1:
        raise ValueError(f"runs of one configuration report different task metrics {names}: "
                         f"{sorted(group['run_dir'])[:3]}...")
    return names[0] if names else None


def summaries(runs: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One row per (configuration, variant, metric): run counts, mean, std and CI over finished runs."""
    rows = []
    for key, group in runs.groupby(list(GROUP_KEY), sort=True):
        ok = group[group["status"] == "ok"]
        task_metric = _task_metric(group)
        shared = dict(zip(GROUP_KEY, key, strict=True)) | {
            "n_ok": len(ok),
            "n_failed": int((group["status"] == "failed").sum()),
            "n_diverged": int((group["status"] == "diverged").sum()),
            "n_interrupted": int((group["status"] == "interrupted").sum()),
            "devices": _distinct(ok["device"]),
            "batch_size": _distinct(ok["batch_size"]),
            "seq_len": _distinct(ok["seq_len"]),
            "precision": _distinct(ok["precision"]),
            "task_metric": task_metric,
        }
        for column in METRICS:
            s = summarize(ok[column].tolist(), settings.confidence)
            if s.n == 0 and column not in ("task_value", "final_loss"):
                continue  # never measured for this group (e.g. gradient cosine of the baseline)
            rows.append(shared | {"metric": column, "label": metric_label(column, task_metric), "n": s.n,
                                  "mean": s.mean, "std": s.std, "ci_low": s.ci_low, "ci_high": s.ci_high})
    return pd.DataFrame(rows)


def _shapes(group: pd.DataFrame) -> set[tuple]:
    return {(b, s) for b, s in zip(group["batch_size"], group["seq_len"], strict=True) if not pd.isna(b)}


def _shape_note(baseline: pd.DataFrame, variant: pd.DataFrame) -> str:
    base, var = _shapes(baseline), _shapes(variant)
    if not base or not var or base == var:
        return ""
    return f"; shapes differ (batch, seq): baseline {sorted(base)} vs variant {sorted(var)}"


def comparisons(runs: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """One row per (configuration, variant ≠ baseline, compared metric): paired-by-seed statistics, Holm-corrected
    across the whole table. Configurations without baseline runs are left out (they have nothing to compare)."""
    records: list[dict] = []
    found: list[Comparison] = []
    for key, config in runs.groupby(list(CONFIG_KEY), sort=True):
        ok = config[config["status"] == "ok"]
        baseline = ok[ok["variant"] == settings.baseline]
        if (config["variant"] == settings.baseline).sum() == 0:
            continue
        task_metric = _task_metric(config)
        for variant, group in ok[ok["variant"] != settings.baseline].groupby("variant", sort=True):
            for column, metric in METRICS.items():
                if not metric.compared or (baseline[column].isna().all() and group[column].isna().all()):
                    continue
                margin_key = task_metric if column == "task_value" else column
                found.append(compare(
                    dict(zip(baseline["seed"], baseline[column], strict=True)),
                    dict(zip(group["seed"], group[column], strict=True)),
                    settings.margin(margin_key), settings.confidence, settings.bootstrap_resamples,
                    settings.bootstrap_seed,
                ))
                records.append(dict(zip(CONFIG_KEY, key, strict=True)) | {
                    "variant": variant, "metric": column, "label": metric_label(column, task_metric),
                    "note": _shape_note(baseline, group),
                })
    rows = []
    for record, c in zip(records, with_holm(found), strict=True):
        note = record.pop("note")
        rows.append(record | {
            "case": c.case, "n_pairs": c.n_pairs, "unpaired_seeds": " ".join(map(str, c.unpaired_seeds)),
            "baseline_mean": c.baseline_mean, "variant_mean": c.variant_mean, "mean_diff": c.mean_diff,
            "diff_ci_low": ci_end(c.diff_ci, 0), "diff_ci_high": ci_end(c.diff_ci, 1), "pct_change": c.pct_change,
            "pct_ci_low": ci_end(c.pct_ci, 0), "pct_ci_high": ci_end(c.pct_ci, 1),
            "boot_ci_low": ci_end(c.bootstrap_ci, 0), "boot_ci_high": ci_end(c.bootstrap_ci, 1),
            "p_paired_t": c.p_paired, "p_paired_t_holm": c.p_paired_holm, "p_welch": c.p_welch,
            "margin": c.margin.describe() if c.margin else None, "p_tost": c.p_tost, "p_tost_holm": c.p_tost_holm,
            "baseline_sigma": c.baseline_sigma, "effect_sigma": c.effect_sigma,
            "verdict": verdict(c, settings.alpha, lambda x, m=METRICS[record["metric"]]: m.with_unit(x, True)) + note,
        })
    return pd.DataFrame(rows)


def ci_end(pair: tuple[float, float] | None, index: int) -> float | None:
    return None if pair is None else pair[index]
