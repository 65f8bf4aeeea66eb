"""Each statistic on hand-made inputs with known answers, including the degenerate cases."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from scripts.stats import Margin, compare, holm, summarize, verdict, with_holm

T_975_DF4 = 2.7764451051977987  # two-sided 95 % t quantile, 4 degrees of freedom (statistical tables)


def test_summary_mean_std_and_t_interval():
    s = summarize([1.0, 2.0, 3.0, 4.0, 5.0])
    half = T_975_DF4 * math.sqrt(2.5) / math.sqrt(5)
    assert (s.n, s.mean, s.std) == (5, 3.0, pytest.approx(math.sqrt(2.5)))
    assert (s.ci_low, s.ci_high) == (pytest.approx(3 - half), pytest.approx(3 + half))


def test_summary_degenerate_inputs():
    assert summarize([]) == summarize([float("nan"), None]) == summarize([]).__class__(0)
    one = summarize([0.7, float("nan")])
    assert (one.n, one.mean, one.std, one.ci_low) == (1, 0.7, None, None)
    flat = summarize([2.0, 2.0, 2.0])
    assert (flat.std, flat.ci_low, flat.ci_high) == (0.0, 2.0, 2.0)


BASE = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0}
VAR = {0: 1.5, 1: 2.1, 2: 3.7, 3: 4.2}


def test_paired_t_matches_hand_computation():
    c = compare(BASE, VAR)
    d = np.array([0.5, 0.1, 0.7, 0.2])
    sd = math.sqrt(((d - 0.375) ** 2).sum() / 3)
    t = 0.375 / (sd / 2)
    assert c.case == "varied" and c.n_pairs == 4
    assert c.mean_diff == pytest.approx(0.375)
    assert c.p_paired == pytest.approx(2 * sps.t.sf(t, 3))
    half = sps.t.ppf(0.975, 3) * sd / 2
    assert c.diff_ci == (pytest.approx(0.375 - half), pytest.approx(0.375 + half))
    assert c.pct_change == pytest.approx(100 * 0.375 / 2.5)
    assert c.effect_sigma == pytest.approx(0.375 / np.std([1, 2, 3, 4], ddof=1))


def test_welch_matches_hand_computation():
    c = compare(BASE, VAR)
    b, v = np.array(list(BASE.values())), np.array(list(VAR.values()))
    se2_b, se2_v = b.var(ddof=1) / 4, v.var(ddof=1) / 4
    t = (v.mean() - b.mean()) / math.sqrt(se2_b + se2_v)
    df = (se2_b + se2_v) ** 2 / (se2_b**2 / 3 + se2_v**2 / 3)
    assert c.p_welch == pytest.approx(2 * sps.t.sf(abs(t), df))


def test_tost_decides_equivalence_by_margin():
    rng = np.random.default_rng(1)
    base = {seed: 0.80 + 0.01 * rng.standard_normal() for seed in range(10)}
    var = {seed: value + 0.0005 + 0.0005 * rng.standard_normal() for seed, value in base.items()}
    wide = compare(base, var, Margin("absolute", 0.005))
    narrow = compare(base, var, Margin("absolute", 0.0002))
    assert wide.p_tost < 0.05 < narrow.p_tost
    assert "equivalent within ±0.005" in verdict(wide)
    assert "equivalence not shown" in verdict(narrow)
    # TOST p is the larger of the two one-sided p-values
    d = np.array([var[s] - base[s] for s in range(10)])
    se = d.std(ddof=1) / math.sqrt(10)
    lower, upper = sps.t.sf((d.mean() + 0.005) / se, 9), sps.t.cdf((d.mean() - 0.005) / se, 9)
    assert wide.p_tost == pytest.approx(max(lower, upper))


def test_relative_margin_scales_with_baseline_mean():
    base = {s: 100.0 + s for s in range(5)}
    var = {s: v * 1.002 + (0.01 if s % 2 else -0.01) for s, v in base.items()}
    assert compare(base, var, Margin("relative", 0.01)).p_tost < 0.05
    assert Margin("relative", 0.01).half_width(-200.0) == 2.0
    with pytest.raises(ValueError, match="valid: absolute, relative"):
        Margin("percent", 1.0)


def test_holm_on_known_p_values():
    assert holm([0.01, 0.04, 0.03, None]) == [pytest.approx(0.03), pytest.approx(0.06), pytest.approx(0.06), None]
    assert holm([None, None]) == [None, None]


def test_with_holm_fills_both_families():
    a, b = compare(BASE, VAR, Margin("absolute", 1.0)), compare(BASE, {s: v + 0.3 for s, v in VAR.items()})
    adjusted = with_holm([a, b])
    assert adjusted[0].p_paired_holm == pytest.approx(min(1, max(2 * min(a.p_paired, b.p_paired), a.p_paired)))
    assert adjusted[0].p_tost_holm == pytest.approx(a.p_tost)  # the only TOST: nothing to correct
    assert adjusted[1].p_tost_holm is None


def test_bootstrap_ci_contains_true_difference_and_is_reproducible():
    rng = np.random.default_rng(7)
    base = {s: rng.normal(10, 1) for s in range(40)}
    var = {s: v + rng.normal(0.3, 0.1) for s, v in base.items()}
    first, again = compare(base, var), compare(base, var)
    low, high = first.bootstrap_ci
    assert low < 0.3 < high and high - low < 0.2
    assert first.bootstrap_ci == again.bootstrap_ci


def test_identical_results_are_the_strongest_finding():
    c = compare(BASE, dict(BASE), Margin("absolute", 0.005))
    assert c.case == "identical" and c.p_paired is None and c.p_tost is None
    assert c.diff_ci == (0.0, 0.0)
    assert verdict(c) == "identical in all 4 pairs"


def test_constant_difference_has_no_t_test_but_checks_the_margin():
    shifted = {s: v + 0.25 for s, v in BASE.items()}
    c = compare(BASE, shifted, Margin("absolute", 0.5))
    assert c.case == "constant" and c.p_paired is None and c.mean_diff == pytest.approx(0.25)
    assert "zero variance" in verdict(c) and "inside the ±0.5 margin" in verdict(c)
    assert "outside" in verdict(compare(BASE, shifted, Margin("absolute", 0.1)))


def test_one_equal_pair_is_identical_without_a_test():
    c = compare({0: 1.0}, {0: 1.0})
    assert c.case == "identical" and verdict(c) == "identical in the one pair (no test)"


def test_single_pair_and_unpaired_seeds():
    single = compare({0: 1.0, 1: 2.0}, {1: 2.5, 5: 9.0})
    assert single.case == "single" and single.n_pairs == 1 and single.unpaired_seeds == (0, 5)
    assert verdict(single).startswith("one pair only") and "seed(s) 0, 5 without a pair excluded" in verdict(single)
    none = compare({0: 1.0}, {1: 1.0})
    assert none.case == "none" and none.mean_diff is None and "nothing to pair" in verdict(none)


def test_unpaired_seeds_are_excluded_from_the_paired_test():
    base = {0: 1.0, 1: 2.0, 2: 3.0, 3: 4.0, 4: 50.0}
    var = {1: 2.1, 2: 3.3, 3: 4.2, 6: -40.0}
    c = compare(base, var)
    assert c.n_pairs == 3 and c.unpaired_seeds == (0, 4, 6)
    assert c.mean_diff == pytest.approx((0.1 + 0.3 + 0.2) / 3)


def test_zero_baseline_sigma_gives_no_effect_size():
    c = compare({s: 1.0 for s in range(3)}, {0: 1.1, 1: 1.2, 2: 1.3})
    assert c.baseline_sigma == 0.0 and c.effect_sigma is None and c.case == "varied"
