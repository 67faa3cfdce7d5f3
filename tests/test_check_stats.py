"""The checks' statistics against scipy, an exact linear solve and simulation."""

from __future__ import annotations

import math

import numpy as np
import pytest
from llmvigil.core.checks.stats import (
    BernoulliCusum,
    bh_adjust,
    bh_reject,
    binom_test,
    cusum_arl,
    cusum_threshold,
    fisher_exact,
    ks_2samp,
    mann_whitney_u,
    wilson_upper,
)

stats = pytest.importorskip("scipy.stats")

ALTERNATIVES = ("two-sided", "less", "greater")


def close(a: float, b: float, rel: float = 1e-9, abs_: float = 1e-14) -> bool:
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


# -- rates --------------------------------------------------------------------------------


def test_fisher_exact_matches_scipy_on_random_and_edge_tables() -> None:
    rng = np.random.default_rng(7)
    tables = [[[int(rng.integers(0, 40)), int(rng.integers(0, 1000))],
               [int(rng.integers(0, 80)), int(rng.integers(0, 3000))]] for _ in range(150)]
    tables += [[[0, 1000], [0, 5000]], [[5, 995], [0, 5000]], [[3, 0], [0, 3]],
               [[0, 0], [4, 9]], [[8, 2], [1, 5]], [[1000, 0], [0, 1000]], [[12, 988], [60, 4940]]]
    for table in tables:
        for alt in ALTERNATIVES:
            ours = fisher_exact(table, alt)
            ref = float(stats.fisher_exact(table, alternative=alt).pvalue)
            assert close(ours, ref, 1e-9, 1e-300), (table, alt, ours, ref)


def test_fisher_greater_with_a_clean_baseline_is_the_hypergeometric_tail() -> None:
    # 0 failures in 5000 baseline outputs, k in a window of 1000: P = C(1000,k)/C(6000,k).
    for k in range(1, 8):
        exact = math.comb(1000, k) / math.comb(6000, k)
        assert close(fisher_exact([[k, 1000 - k], [0, 5000]], "greater"), exact, 1e-10)


def test_binom_test_matches_scipy() -> None:
    rng = np.random.default_rng(8)
    cases = [(int(k), int(n), float(p)) for n, p in
             zip(rng.integers(1, 3000, 120), rng.uniform(0.0005, 0.6, 120), strict=True)
             for k in [int(rng.binomial(n, min(0.99, p * rng.uniform(0.3, 2.5))))]]
    cases += [(0, 10, 0.5), (5, 10, 0.5), (3, 1000, 0.001), (1000, 1000, 0.999), (7, 20, 0.35)]
    for k, n, p in cases:
        for alt in ALTERNATIVES:
            ours = binom_test(k, n, p, alt)
            ref = float(stats.binomtest(k, n, p, alternative=alt).pvalue)
            assert close(ours, ref, 1e-9, 1e-300), (k, n, p, alt, ours, ref)


def test_binom_test_with_a_declared_rate_of_zero() -> None:
    assert binom_test(0, 1000, 0.0, "greater") == 1.0
    assert binom_test(1, 1000, 0.0, "greater") == 0.0
    with pytest.raises(ValueError):
        binom_test(5, 4, 0.1)


def test_wilson_upper_bound_covers_the_rate() -> None:
    # Coverage of the one-sided 90% bound over many binomial samples.
    rng = np.random.default_rng(9)
    for p in (0.002, 0.02, 0.2):
        k = rng.binomial(2000, p, size=4000)
        cover = np.mean([wilson_upper(int(x), 2000) >= p for x in k])
        assert 0.86 <= cover <= 0.95, (p, cover)


# -- numbers ----------------------------------------------------------------------------


def test_mann_whitney_asymptotic_matches_scipy_with_ties() -> None:
    rng = np.random.default_rng(10)
    for _ in range(60):
        x = np.round(rng.normal(size=int(rng.integers(9, 400))), 1)
        y = np.round(rng.normal(rng.uniform(-0.3, 0.3), size=int(rng.integers(9, 900))), 1)
        for alt in ALTERNATIVES:
            u, p = mann_whitney_u(x, y, alt)
            ref = stats.mannwhitneyu(x, y, alternative=alt)
            assert u == float(ref.statistic)
            assert close(p, float(ref.pvalue), 1e-9), (alt, p, ref.pvalue)


def test_mann_whitney_exact_matches_scipy_for_small_samples() -> None:
    rng = np.random.default_rng(11)
    for _ in range(40):
        x = rng.normal(size=int(rng.integers(1, 9)))
        y = rng.normal(0.7, size=int(rng.integers(1, 9)))
        for alt in ALTERNATIVES:
            u, p = mann_whitney_u(x, y, alt)  # auto: exact here, like scipy
            ref = stats.mannwhitneyu(x, y, alternative=alt)
            assert u == float(ref.statistic) and close(p, float(ref.pvalue), 1e-12)


@pytest.mark.parametrize(("n1", "n2"), [(5, 7), (30, 30), (100, 250), (37, 1500),
                                        (1000, 2000), (1000, 5000)])
def test_ks_2samp_exact_matches_scipy(n1: int, n2: int) -> None:
    rng = np.random.default_rng(n1 + n2)
    for shift in (0.0, 0.15):
        x, y = rng.normal(size=n1), rng.normal(shift, size=n2)
        d, p = ks_2samp(x, y)
        ref = stats.ks_2samp(x, y, method="exact")
        assert close(d, float(ref.statistic), 1e-12)
        # p = 1 - P(inside): both computations carry ~1e-12 absolute rounding
        assert close(p, float(ref.pvalue), 1e-7, 1e-10), (n1, n2, shift, p, ref.pvalue)


def test_ks_2samp_limiting_distribution_for_huge_samples() -> None:
    # Past the exact limit the Kolmogorov limit is used; it agrees with scipy's
    # asymptotic p-value to within the finite-sample difference.
    rng = np.random.default_rng(12)
    x, y = rng.normal(size=12_000), rng.normal(0.03, size=11_000)
    d, p = ks_2samp(x, y)
    ref = stats.ks_2samp(x, y, method="asymp")
    assert close(d, float(ref.statistic), 1e-12)
    assert abs(p - float(ref.pvalue)) < 0.02 * max(p, 1e-3) + 1e-4


# -- multiple testing ---------------------------------------------------------------------


def test_bh_matches_scipy_false_discovery_control() -> None:
    rng = np.random.default_rng(13)
    for m in (1, 2, 5, 17, 100):
        p = np.concatenate((rng.uniform(size=m - m // 3), rng.uniform(0, 0.01, size=m // 3)))
        ours = bh_adjust(list(p))
        ref = stats.false_discovery_control(p, method="bh")
        assert np.allclose(ours, ref, rtol=1e-12, atol=0)
        assert bh_reject(list(p), 0.05) == [bool(v) for v in ref <= 0.05]
    assert bh_adjust([]) == []


# -- CUSUM -----------------------------------------------------------------------------------


def _dense_arl(p: float, up: int, h: int) -> float:
    transition = np.zeros((h, h))
    for i in range(h):
        transition[i, max(i - 1, 0)] += 1 - p
        if i + up < h:
            transition[i, i + up] += p
    return float(np.linalg.solve(np.eye(h) - transition, np.ones(h))[0])


@pytest.mark.parametrize(("p", "up", "h"), [(0.2, 3, 9), (0.05, 10, 40), (0.01, 60, 150),
                                             (0.001, 700, 2500), (0.3, 1, 12)])
def test_cusum_arl_matches_the_markov_chain_solved_densely(p: float, up: int, h: int) -> None:
    assert close(cusum_arl(p, up, h), _dense_arl(p, up, h), 1e-8)


def _simulate_run_lengths(p: float, up: int, h: int, runs: int,
                          rng: np.random.Generator) -> np.ndarray:
    """Run ``runs`` independent charts in lockstep until each signals."""
    s = np.zeros(runs, dtype=np.int64)
    length = np.zeros(runs, dtype=np.int64)
    alive = np.ones(runs, dtype=bool)
    step = 0
    while alive.any():
        step += 1
        fail = rng.random(runs) < p
        s = np.where(fail, s + up, np.maximum(s - 1, 0))
        hit = alive & (s >= h)
        length[hit] = step
        alive &= ~hit
    return length


def test_cusum_threshold_gives_the_target_mean_time_between_false_alarms() -> None:
    rng = np.random.default_rng(14)
    chart = BernoulliCusum(p0=0.01, p1=0.03, mtbfa=2000)
    assert chart.arl0 >= 2000 > cusum_arl(0.01, chart.up, chart.h - 1)
    lengths = _simulate_run_lengths(0.01, chart.up, chart.h, 2000, rng)
    se = lengths.std() / math.sqrt(len(lengths))
    assert abs(lengths.mean() - chart.arl0) < 4 * se, (lengths.mean(), chart.arl0, se)
    # and it reacts: at the rate it is tuned for, signals come an order of magnitude sooner
    assert cusum_arl(0.03, chart.up, chart.h) < chart.arl0 / 10


def test_cusum_update_follows_the_integer_chart() -> None:
    chart = BernoulliCusum(p0=0.01, p1=0.05, mtbfa=500)
    assert chart.up == round(math.log(5) / -math.log(0.95 / 0.99))
    assert cusum_threshold(0.01, chart.up, 500) == chart.h
    signals, s = [], 0
    rng = np.random.default_rng(15)
    for failed in rng.random(20_000) < 0.02:
        s = s + chart.up if failed else max(0, s - 1)
        expect = s >= chart.h
        if expect:
            s = 0
        signals.append(chart.update(bool(failed)) == expect)
    assert all(signals)


# -- calibration of the window test at the count level -------------------------------------


def test_fisher_window_test_false_alarm_rate_is_at_most_alpha() -> None:
    # A nonzero in-control failure rate (0.5%), baseline 5000, windows 1000: over 3000
    # independent null windows the rejection rate at alpha stays at or below alpha.
    rng = np.random.default_rng(16)
    alpha, p0 = 0.01, 0.005
    base = rng.binomial(5000, p0, size=3000)
    win = rng.binomial(1000, p0, size=3000)
    cache: dict[tuple[int, int], float] = {}
    rejected = 0
    for b, w in zip(base.tolist(), win.tolist(), strict=True):
        key = (b, w)
        if key not in cache:
            cache[key] = fisher_exact([[w, 1000 - w], [b, 5000 - b]], "greater")
        rejected += cache[key] <= alpha
    rate = rejected / 3000
    assert rate <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / 3000), rate


@pytest.mark.parametrize("n", [1_000, 10_000, 100_000, 1_000_000])
def test_one_sided_binom_test_on_large_windows_matches_scipy(n: int) -> None:
    """The one-sided tails sum only the terms that count; p-values stay scipy's (to 1e-8:
    log-binomials of a million carry ~1e-9 of rounding whatever the method)."""
    stats = pytest.importorskip("scipy.stats")
    for p in (0.001, 0.02, 0.3):
        mean = n * p
        for k in sorted({0, int(mean * 0.5), int(mean), int(mean * 1.1) + 1, int(mean * 2) + 3,
                         min(n, int(mean * 5) + 10)}):
            for alt in ("greater", "less"):
                expected = stats.binomtest(k, n, p, alternative=alt).pvalue
                assert binom_test(k, n, p, alt) == pytest.approx(expected, rel=1e-8, abs=1e-300)
