"""The robustness tables: bit flips in packed masks during training, and FGSM on the trained vision model.

* Bit flips (``trainer.bitflip_fraction`` > 0, experiments/robustness.py): each such run is paired with the run whose
  config is the same but for the flips (same seed); the task metric with flips minus without, tested across seeds.
* FGSM (results ``metrics.fgsm_drop``): the accuracy lost to the attack, each variant against the baseline paired
  by seed.

Both use the report's paired statistics (scripts/stats.py) with the task metric's equivalence margin; Holm
correction runs within each table.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from experiments.record import run_defining

from .analysis import ci_end
from .settings import Settings
from .stats import compare, summarize, verdict, with_holm
from .tables import markdown_table


def bitflip_fraction(results: dict) -> float:
    return float(results["axes"].get("bitflip_fraction") or 0.0)


def same_run_without_flips(results: dict) -> str:
    """What makes two runs the same apart from bit flips (and where they were filed)."""
    return json.dumps(run_defining(results.get("config") or {}, leave_out=("trainer.bitflip_fraction",)),
                      sort_keys=True, default=str)


def bitflip_pairs(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs trained with flips next to the same run without (columns ``*_clean``); both have a metric."""
    ok = runs[runs["status"] == "ok"]
    ok = ok.assign(flips=ok["results"].map(bitflip_fraction), same=ok["results"].map(same_run_without_flips))
    pairs = ok[ok["flips"] > 0].merge(ok[ok["flips"] == 0], on="same", suffixes=("", "_clean"))
    return pairs[pairs["task_value"].notna() & pairs["task_value_clean"].notna()]


def _comparison_columns(c: object) -> dict:
    return {"n_pairs": c.n_pairs, "mean_diff": c.mean_diff, "diff_ci_low": ci_end(c.diff_ci, 0),
            "diff_ci_high": ci_end(c.diff_ci, 1), "p_paired_t": c.p_paired, "p_paired_t_holm": c.p_paired_holm,
            "margin": c.margin.describe() if c.margin else None, "p_tost": c.p_tost, "p_tost_holm": c.p_tost_holm}


def _tested(groups: list[tuple[dict, dict, dict]], settings: Settings) -> pd.DataFrame:
    """``groups``: (row fields, reference seed → value, tested seed → value); compared, Holm within the table."""
    found = with_holm([compare(reference, tested, settings.margin(fields["task_metric"]), settings.confidence,
                               settings.bootstrap_resamples, settings.bootstrap_seed)
                       for fields, reference, tested in groups])
    return pd.DataFrame([fields | _comparison_columns(c) | {"verdict": verdict(c, settings.alpha)}
                         for (fields, _, _), c in zip(groups, found, strict=True)])


def bitflip_table(runs: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per model, data, variant and flip fraction: the task metric without and with flips, and the paired test."""
    pairs = bitflip_pairs(runs)
    groups = []
    for (experiment, experiment_clean, model, dataset, variant, fraction, metric), group in pairs.groupby(
            ["experiment", "experiment_clean", "model", "dataset", "variant", "flips", "task_metric"], sort=True):
        clean = dict(zip(group["seed"], group["task_value_clean"], strict=True))
        flipped = dict(zip(group["seed"], group["task_value"], strict=True))
        fields = {"experiment": experiment, "experiment_clean": experiment_clean, "model": model, "dataset": dataset,
                  "variant": variant, "bitflip_fraction": fraction,
                  "task_metric": metric, "mean_clean": np.mean(list(clean.values())),
                  "mean_with_flips": np.mean(list(flipped.values())),
                  "flipped_bits": int(group["results"].map(lambda r: (r.get("bitflips") or {}).get("bits", 0)).sum())}
        groups.append((fields, clean, flipped))
    return _tested(groups, settings)


def fgsm_drop(results: dict) -> float:
    """Accuracy lost to FGSM (results ``metrics.fgsm_drop``); NaN for a run not attacked."""
    value = (results.get("metrics") or {}).get("fgsm_drop")
    return float(value) if value is not None else np.nan


def fgsm_table(runs: pd.DataFrame, settings: Settings) -> pd.DataFrame:
    """Per configuration and variant: clean accuracy, FGSM accuracy and drop over seeds; the drop against the
    baseline's, paired by seed (the baseline's own row has no test)."""
    ok = runs[runs["status"] == "ok"]
    ok = ok.assign(drop=ok["results"].map(fgsm_drop),
                   epsilon=ok["results"].map(lambda r: r["config"]["trainer"].get("fgsm_epsilon"))).dropna(
        subset=["drop"])
    groups = []
    for (experiment, model, dataset, epsilon), config in ok.groupby(["experiment", "model", "dataset", "epsilon"]):
        reference = config[config["variant"] == settings.baseline]
        for variant, group in config.groupby("variant", sort=True):
            clean = summarize(group["task_value"].tolist(), settings.confidence)
            drop = summarize(group["drop"].tolist(), settings.confidence)
            fields = {"experiment": experiment, "model": model, "dataset": dataset, "epsilon": epsilon,
                      "variant": variant, "task_metric": group["task_metric"].iloc[0], "n": len(group),
                      "mean_clean": clean.mean, "std_clean": clean.std, "mean_drop": drop.mean, "std_drop": drop.std}
            base = {} if variant == settings.baseline else dict(zip(reference["seed"], reference["drop"], strict=True))
            groups.append((fields, base, dict(zip(group["seed"], group["drop"], strict=True))))
    return _tested(groups, settings)


def _points(value: object, metric: str, signed: bool = False) -> str:
    """A fraction (F1, accuracy) in points; perplexity as it is."""
    if value is None or pd.isna(value):
        return "—"
    return format(value * (1 if metric == "perplexity" else 100), "+.3g" if signed else ".3g")


def _spread(mean: object, std: object, metric: str) -> str:
    return _points(mean, metric) + ("" if std is None or pd.isna(std) else f" ± {_points(std, metric)}")


def _difference(r: object) -> str:
    low, high = _points(r.diff_ci_low, r.task_metric, True), _points(r.diff_ci_high, r.task_metric, True)
    return _points(r.mean_diff, r.task_metric, True) + ("" if low == "—" else f" [{low}, {high}]")


def bitflip_markdown(table: pd.DataFrame) -> str:
    intro = ("Each run trained with a fraction of the bits of every saved packed mask flipped between forward and "
             "backward, against the same run (config and seed) without flips. F1 and accuracy in points (× 100); "
             "difference = with flips − without, paired by seed, 95 % t-interval; TOST against the metric's margin in "
             "`conf/report.yaml`; Holm within this table.\n\n")
    header = ["model/dataset", "variant", "flip fraction", "bits flipped", "metric", "pairs", "without flips",
              "with flips", "difference [95 % CI]", "finding"]
    rows = [[f"{r.model}/{r.dataset}", r.variant, f"{r.bitflip_fraction:g}", f"{r.flipped_bits:,}", r.task_metric,
             str(r.n_pairs), _points(r.mean_clean, r.task_metric), _points(r.mean_with_flips, r.task_metric),
             _difference(r), r.verdict]
            for r in table.itertuples()]
    return intro + markdown_table(header, rows)


def fgsm_markdown(table: pd.DataFrame, baseline: str) -> str:
    intro = (f"Accuracy on the eval set, clean and under FGSM (x + ε·sign(∇x loss), eval mode), in points; drop = "
             f"clean − attacked, mean ± std over seeds. Each variant's drop minus `{baseline}`'s, paired by seed, "
             "95 % t-interval; TOST against the accuracy margin in `conf/report.yaml`; Holm within this table.\n\n")
    header = ["model/dataset", "ε", "variant", "runs", "clean accuracy", "drop under FGSM", f"drop − {baseline}'s",
              "finding"]
    rows = [[f"{r.model}/{r.dataset}", f"{r.epsilon:g}", r.variant, str(r.n),
             _spread(r.mean_clean, r.std_clean, r.task_metric), _spread(r.mean_drop, r.std_drop, r.task_metric),
             "—" if r.variant == baseline else _difference(r), "—" if r.variant == baseline else r.verdict]
            for r in table.itertuples()]
    return intro + markdown_table(header, rows)
