"""Statistics across seeds: per-group summaries and each variant against the baseline, paired by seed.

Degenerate inputs are named, never turned into NaN: an exact dropout variant makes the task metric
equal to the baseline's seed by seed, which is the strongest possible finding ("identical in all n
pairs") and one where a t statistic is 0/0. ``Comparison.case`` says which situation applies:

* ``none``      no seed finished in both groups;
* ``identical`` every pair equal (also when there is only one);
* ``single``    one pair that differs: a difference, no spread, no test;
* ``constant``  every pair differs by the same amount (zero variance of the differences);
* ``varied``    the ordinary case, where the t-based tests apply.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.weightstats import ttost_paired

MARGIN_KINDS = ("absolute", "relative")


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation and t-based confidence interval of one metric over runs."""

    n: int
    mean: float | None = None
    std: float | None = None  # ddof=1; None when n < 2
    ci_low: float | None = None
    ci_high: float | None = None


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if x.size == 0:
        return Summary(0)
    mean = float(x.mean())
    if x.size == 1:
        return Summary(1, mean)
    std = float(x.std(ddof=1))
    if std == 0.0:
        return Summary(int(x.size), mean, 0.0, mean, mean)
    low, high = stats.t.interval(confidence, x.size - 1, loc=mean, scale=std / math.sqrt(x.size))
    return Summary(int(x.size), mean, std, float(low), float(high))


@dataclass(frozen=True)
class Margin:
    """Equivalence margin for TOST: ``absolute`` in the metric's units, ``relative`` to the baseline mean."""

    kind: str
    value: float

    def __post_init__(self) -> None:
        if self.kind not in MARGIN_KINDS:
            raise ValueError(f"margin kind {self.kind!r} is not valid; valid: {', '.join(MARGIN_KINDS)}")
        if not self.value > 0:
            raise ValueError(f"margin value must be positive, got {self.value!r}")

    def half_width(self, baseline_mean: float) -> float:
        return self.value if self.kind == "absolute" else self.value * abs(baseline_mean)

    def describe(self) -> str:
        return f"±{self.value:g}" if self.kind == "absolute" else f"±{100 * self.value:g} %"


@dataclass(frozen=True)
class Comparison:
    """A variant against the baseline on one metric; differences are variant − baseline."""

    case: str
    n_pairs: int
    unpaired_seeds: tuple[int, ...] = ()
    baseline_mean: float | None = None  # over the paired seeds
    variant_mean: float | None = None
    mean_diff: float | None = None
    diff_ci: tuple[float, float] | None = None  # paired t
    bootstrap_ci: tuple[float, float] | None = None  # percentile bootstrap of the mean difference
    p_paired: float | None = None  # scipy.stats.ttest_rel
    p_welch: float | None = None  # scipy.stats.ttest_ind(equal_var=False), all finished runs of both groups
    margin: Margin | None = None
    p_tost: float | None = None  # statsmodels ttost_paired against ±margin
    baseline_sigma: float | None = None  # run-to-run σ of the baseline (all its finished runs)
    p_paired_holm: float | None = None  # filled by ``with_holm`` across a whole report
    p_tost_holm: float | None = None

    @property
    def pct_change(self) -> float | None:
        return _percent(self.mean_diff, self.baseline_mean)

    @property
    def pct_ci(self) -> tuple[float, float] | None:
        if self.diff_ci is None or not self.baseline_mean:
            return None
        return _percent(self.diff_ci[0], self.baseline_mean), _percent(self.diff_ci[1], self.baseline_mean)

    @property
    def effect_sigma(self) -> float | None:
        """Mean difference in units of the baseline's run-to-run σ (the paper's "within 0.2 σ")."""
        if self.mean_diff is None or not self.baseline_sigma:
            return None
        return self.mean_diff / self.baseline_sigma

    @property
    def within_margin(self) -> bool | None:
        """For the zero-variance cases: whether the (constant) difference lies inside the margin."""
        if self.margin is None or self.mean_diff is None:
            return None
        return abs(self.mean_diff) < self.margin.half_width(self.baseline_mean)


def _percent(diff: float | None, base: float | None) -> float | None:
    if diff is None or not base:
        return None
    return 100.0 * diff / abs(base)


def _finite(values: Mapping[int, float]) -> dict[int, float]:
    return {seed: float(v) for seed, v in values.items() if v is not None and math.isfinite(v)}


def _welch(baseline: np.ndarray, variant: np.ndarray) -> float | None:
    if baseline.size < 2 or variant.size < 2 or (baseline.std() == 0 and variant.std() == 0):
        return None
    with warnings.catch_warnings():  # one constant group is fine for Welch; scipy still warns about it
        warnings.filterwarnings("ignore", "Precision loss occurred", RuntimeWarning)
        return float(stats.ttest_ind(variant, baseline, equal_var=False).pvalue)


def _bootstrap_ci(diffs: np.ndarray, confidence: float, resamples: int, seed: int) -> tuple[float, float]:
    result = stats.bootstrap(
        (diffs,), np.mean, n_resamples=resamples, confidence_level=confidence, method="percentile",
        rng=np.random.default_rng(seed),
    )
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def compare(
    baseline: Mapping[int, float],
    variant: Mapping[int, float],
    margin: Margin | None = None,
    confidence: float = 0.95,
    resamples: int = 10_000,
    bootstrap_seed: int = 0,
) -> Comparison:
    """Compare ``variant`` with ``baseline``; both map seed -> value of finished runs (NaN/None dropped)."""
    baseline, variant = _finite(baseline), _finite(variant)
    seeds = sorted(baseline.keys() & variant.keys())
    unpaired = tuple(sorted(baseline.keys() ^ variant.keys()))
    all_base, all_var = np.array(list(baseline.values())), np.array(list(variant.values()))
    sigma = float(all_base.std(ddof=1)) if all_base.size >= 2 else None
    common = {"n_pairs": len(seeds), "unpaired_seeds": unpaired, "margin": margin, "baseline_sigma": sigma,
              "p_welch": _welch(all_base, all_var)}
    if not seeds:
        return Comparison("none", **common)
    b = np.array([baseline[s] for s in seeds])
    v = np.array([variant[s] for s in seeds])
    diffs = v - b
    mean_diff = float(diffs.mean())
    common |= {"baseline_mean": float(b.mean()), "variant_mean": float(v.mean()), "mean_diff": mean_diff}
    if np.all(diffs == 0):
        return Comparison("identical", **common, diff_ci=(0.0, 0.0), bootstrap_ci=(0.0, 0.0))
    if len(seeds) == 1:
        return Comparison("single", **common)
    if np.all(diffs == diffs[0]):
        return Comparison("constant", **common, diff_ci=(mean_diff, mean_diff), bootstrap_ci=(mean_diff, mean_diff))
    t_ci = stats.t.interval(confidence, diffs.size - 1, loc=mean_diff, scale=diffs.std(ddof=1) / math.sqrt(diffs.size))
    p_tost = None
    if margin is not None:
        half = margin.half_width(float(b.mean()))
        p_tost = float(ttost_paired(v, b, -half, half)[0])
    return Comparison(
        "varied",
        **common,
        diff_ci=(float(t_ci[0]), float(t_ci[1])),
        bootstrap_ci=_bootstrap_ci(diffs, confidence, resamples, bootstrap_seed),
        p_paired=float(stats.ttest_rel(v, b).pvalue),
        p_tost=p_tost,
    )


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm-adjusted p-values; entries without a p-value stay None and are not counted as tests."""
    tested = [i for i, p in enumerate(pvalues) if p is not None]
    adjusted: list[float | None] = [None] * len(pvalues)
    if tested:
        corrected = multipletests([pvalues[i] for i in tested], method="holm")[1]
        for i, p in zip(tested, corrected, strict=True):
            adjusted[i] = float(p)
    return adjusted


def with_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """Holm across all comparisons given (one family for the paired t-tests, one for the TOSTs)."""
    paired = holm([c.p_paired for c in comparisons])
    tost = holm([c.p_tost for c in comparisons])
    return [replace(c, p_paired_holm=p, p_tost_holm=q) for c, p, q in zip(comparisons, paired, tost, strict=True)]


def _margin_words(c: Comparison) -> str:
    if c.margin is None:
        return ""
    inside = "inside" if c.within_margin else "outside"
    return f"; {inside} the {c.margin.describe()} margin"


def verdict(c: Comparison, alpha: float = 0.05, fmt=lambda x: f"{x:.4g}") -> str:
    """The finding in words (uses the Holm-adjusted p-values when present)."""
    unpaired = (f"; seed(s) {', '.join(map(str, c.unpaired_seeds))} without a pair excluded"
                if c.unpaired_seeds else "")
    if c.case == "none":
        return "no seed finished in both groups: nothing to pair" + unpaired
    if c.case == "identical":
        pairs = "the one pair (no test)" if c.n_pairs == 1 else f"all {c.n_pairs} pairs"
        return f"identical in {pairs}" + unpaired
    if c.case == "single":
        return f"one pair only (difference {fmt(c.mean_diff)}): no test" + unpaired
    if c.case == "constant":
        return (f"same difference {fmt(c.mean_diff)} in all {c.n_pairs} pairs (zero variance): no t-test"
                + _margin_words(c) + unpaired)
    p_diff = c.p_paired_holm if c.p_paired_holm is not None else c.p_paired
    words = [f"significant difference (Holm p={p_diff:.2g})" if p_diff < alpha else f"no significant difference "
             f"(Holm p={p_diff:.2g})"]
    if c.margin is not None:
        p_eq = c.p_tost_holm if c.p_tost_holm is not None else c.p_tost
        shown = "equivalent" if p_eq < alpha else "equivalence not shown"
        words.append(f"{shown} within {c.margin.describe()} (TOST Holm p={p_eq:.2g})")
    return "; ".join(words) + unpaired
