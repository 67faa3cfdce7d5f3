"""The calibrated tests behind the output checks, in pure Python and numpy.

* :func:`fisher_exact` and :func:`binom_test`: exact tests for a failure rate
  (a window against a learnt baseline, or against a declared rate).
* :func:`mann_whitney_u` and :func:`ks_2samp`: two-sample tests for numeric values.
* :func:`bh_adjust` / :func:`bh_reject`: Benjamini-Hochberg across the checks tested
  at one evaluation.
* :class:`BernoulliCusum` and :func:`cusum_arl`: a CUSUM chart on pass/fail outcomes
  whose threshold is chosen for a target mean number of outputs between false alarms
  (the exact in-control average run length of the integer chart).

Each function returns what :mod:`scipy.stats` returns for the same call (same
alternatives, same conventions; the one exception is said on :func:`ks_2samp`), so
results can be checked against it; scipy itself is not needed at run time.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import numpy as np

__all__ = [
    "Alternative",
    "BernoulliCusum",
    "bh_adjust",
    "bh_reject",
    "binom_test",
    "cusum_arl",
    "cusum_threshold",
    "fisher_exact",
    "ks_2samp",
    "mann_whitney_u",
    "wilson_upper",
]

Alternative = Literal["two-sided", "less", "greater"]
_ALTERNATIVES = ("two-sided", "less", "greater")
# Relative tolerance under which two probabilities count as equal in two-sided tests
# (R and scipy use the same idea, so tables of equal probability are all counted).
_REL_EQ = 1e-7


def _check_alternative(alternative: str) -> None:
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}, got {alternative!r}")


def _log_comb_row(n: int) -> np.ndarray:
    """``log C(n, k)`` for ``k = 0..n``."""
    if n == 0:
        return np.zeros(1)
    k = np.arange(1, n + 1, dtype=np.float64)
    steps = np.log(n - k + 1) - np.log(k)
    return np.concatenate(([0.0], np.cumsum(steps)))


def _log_comb_range(n: int, lo: int, hi: int) -> np.ndarray:
    """``log C(n, k)`` for ``k = lo..hi`` (work in the range's length, not ``n``'s)."""
    first = math.lgamma(n + 1) - math.lgamma(lo + 1) - math.lgamma(n - lo + 1)
    k = np.arange(lo + 1, hi + 1, dtype=np.float64)
    return np.concatenate(([first], first + np.cumsum(np.log(n - k + 1) - np.log(k))))


def _two_sided(pmf: np.ndarray, observed: int) -> float:
    """Sum of the probabilities no larger than the observed one's."""
    ref = pmf[observed] * (1 + _REL_EQ)
    return float(min(1.0, pmf[pmf <= ref].sum()))


# -- rates ---------------------------------------------------------------------------


def fisher_exact(table: Sequence[Sequence[int]], alternative: str = "two-sided") -> float:
    """Fisher's exact test on a 2x2 table ``[[a, b], [c, d]]``; returns the p-value.

    ``greater`` tests whether the odds ratio ``(a d) / (b c)`` exceeds 1, i.e. the
    first row's share in the first column is higher: with rows (window, baseline) and
    columns (failed, passed), whether the window fails more often.
    """
    _check_alternative(alternative)
    (a, b), (c, d) = table
    if min(a, b, c, d) < 0:
        raise ValueError("table entries must be non-negative")
    row1, row2, col1 = a + b, c + d, a + c
    total = row1 + row2
    if row1 == 0 or row2 == 0 or col1 == 0 or col1 == total:
        return 1.0
    lo, hi = max(0, col1 - row2), min(col1, row1)
    log_total = math.lgamma(total + 1) - math.lgamma(col1 + 1) - math.lgamma(total - col1 + 1)
    log_row1 = _log_comb_range(row1, lo, hi)  # log C(row1, x), x = lo..hi
    log_row2 = _log_comb_range(row2, col1 - hi, col1 - lo)[::-1]  # log C(row2, col1 - x)
    pmf = np.exp(log_row1 + log_row2 - log_total)
    i = a - lo
    if alternative == "greater":
        return float(min(1.0, pmf[i:].sum()))
    if alternative == "less":
        return float(min(1.0, pmf[: i + 1].sum()))
    return _two_sided(pmf, i)


def binom_test(k: int, n: int, p: float, alternative: str = "two-sided") -> float:
    """Exact binomial test of ``k`` successes in ``n`` trials against rate ``p``."""
    _check_alternative(alternative)
    if not 0 <= k <= n or n < 1:
        raise ValueError("need 0 <= k <= n and n >= 1")
    if not 0.0 <= p <= 1.0:
        raise ValueError("p must be in [0, 1]")
    if p in (0.0, 1.0):
        expected = 0 if p == 0.0 else n
        if alternative == "greater":
            return 1.0 if k <= expected else 0.0
        if alternative == "less":
            return 1.0 if k >= expected else 0.0
        return 1.0 if k == expected else 0.0
    if alternative != "two-sided":
        # Only the tail's terms that count: past 40 standard deviations (plus 100) from
        # the mean or from k, each is below e^-800 of the largest one summed.
        spread = math.ceil(40.0 * math.sqrt(n * p * (1.0 - p))) + 100
        if alternative == "greater":
            lo, hi = k, min(n, max(k, math.ceil(n * p)) + spread)
        else:
            lo, hi = max(0, min(k, math.floor(n * p)) - spread), k
        ks = np.arange(lo, hi + 1, dtype=np.float64)
        log_pmf = _log_comb_range(n, lo, hi) + ks * math.log(p) + (n - ks) * math.log1p(-p)
        return float(min(1.0, np.exp(log_pmf).sum()))
    ks = np.arange(n + 1, dtype=np.float64)
    pmf = np.exp(_log_comb_row(n) + ks * math.log(p) + (n - ks) * math.log1p(-p))
    if k == p * n:
        return 1.0
    return _two_sided(pmf, k)


def wilson_upper(failures: int, n: int, z: float = 1.2816) -> float:
    """The upper end of the Wilson score interval for a rate (``z`` 1.2816: 90% one-sided)."""
    if n <= 0:
        return 1.0
    phat = failures / n
    denom = 1 + z * z / n
    centre = phat + z * z / (2 * n)
    margin = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n))
    return min(1.0, (centre + margin) / denom)


# -- numeric values --------------------------------------------------------------------


def _normal_sf(z: float) -> float:
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def _rank_with_ties(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) and the size of every tie group."""
    order = np.argsort(values, kind="mergesort")
    sorted_vals = values[order]
    starts = np.concatenate(([True], sorted_vals[1:] != sorted_vals[:-1]))
    group = np.cumsum(starts) - 1
    first = np.flatnonzero(starts)
    counts = np.diff(np.concatenate((first, [len(values)])))
    avg = first + (counts + 1) / 2.0  # average of ranks first+1 .. first+count
    ranks = np.empty(len(values))
    ranks[order] = avg[group]
    return ranks, counts


def _mwu_exact_sf(u: int, n1: int, n2: int) -> float:
    """P(U >= u) under H0 for sample sizes without ties (counts of the q-binomial)."""
    # The number of arrangements with each U, by the recurrence over sample sizes
    # f(m, n, u) = f(m-1, n, u-n) + f(m, n-1, u), in exact integers.
    prev = [[1] for _ in range(n2 + 1)]  # m = 0: one arrangement, U = 0
    for m in range(1, n1 + 1):
        cur = [[1]]  # n = 0
        for n in range(1, n2 + 1):
            size = m * n + 1
            row = [0] * size
            a = prev[n]
            for i, v in enumerate(a):
                row[i + n] += v
            b = cur[n - 1]
            for i, v in enumerate(b):
                row[i] += v
            cur.append(row)
        prev = cur
    dist = prev[n2]
    total = sum(dist)
    tail = sum(dist[max(0, u):])
    return float(tail / total) if u > 0 else 1.0


def mann_whitney_u(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                   alternative: str = "two-sided", *, method: str = "auto",
                   use_continuity: bool = True) -> tuple[float, float]:
    """Mann-Whitney U test; returns ``(U1, p)`` like ``scipy.stats.mannwhitneyu``.

    ``U1`` counts the pairs where ``x`` beats ``y`` (ties count one half);
    ``greater`` tests whether ``x`` is stochastically greater than ``y``. ``method``
    ``auto`` is exact for samples of at most 8 without ties, else the normal
    approximation with tie and continuity corrections.
    """
    _check_alternative(alternative)
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    n1, n2 = len(xa), len(ya)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples must be non-empty")
    ranks, ties = _rank_with_ties(np.concatenate((xa, ya)))
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2)
    u2 = n1 * n2 - u1
    if alternative == "greater":
        u, factor = u1, 1.0
    elif alternative == "less":
        u, factor = u2, 1.0
    else:
        u, factor = max(u1, u2), 2.0
    has_ties = bool((ties > 1).any())
    if method == "auto":
        method = "asymptotic" if (n1 > 8 and n2 > 8) or has_ties else "exact"
    if method == "exact":
        if has_ties:
            raise ValueError("the exact method needs samples without ties")
        p = _mwu_exact_sf(round(u), n1, n2)
    elif method == "asymptotic":
        n = n1 + n2
        tie_term = float((ties.astype(np.float64) ** 3 - ties).sum())
        s = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1))))
        numerator = u - n1 * n2 / 2 - (0.5 if use_continuity else 0.0)
        if s == 0:
            z = math.inf if numerator > 0 else (-math.inf if numerator < 0 else math.nan)
        else:
            z = numerator / s
        p = 1.0 if math.isnan(z) else _normal_sf(z)
    else:
        raise ValueError("method must be 'auto', 'exact' or 'asymptotic'")
    return u1, float(min(1.0, max(0.0, p * factor)))


def _kolmogorov_sf(z: float) -> float:
    """The limiting Kolmogorov distribution's survival function ``P(K > z)``."""
    if z <= 0:
        return 1.0
    if z < 1.18:  # the theta-function form converges fast for small z
        w = math.sqrt(2 * math.pi) / z
        s = sum(math.exp(-((2 * k - 1) ** 2) * math.pi ** 2 / (8 * z * z)) for k in (1, 2, 3, 4))
        return max(0.0, 1.0 - w * s)
    return min(1.0, 2 * sum((-1) ** (k - 1) * math.exp(-2 * k * k * z * z)
                            for k in range(1, 101)))


def _ks_inside_probability(n1: int, n2: int, h: int) -> float:
    """P(every lattice path point keeps ``|i n2 - j n1| < h``) for a uniform random path.

    Paths go from (0, 0) to (n1, n2); the count of paths staying inside is a running
    sum along each row because the allowed ``j`` for a row form one interval. Rows are
    rescaled as they go (the log of the scale is kept) so nothing overflows.
    """
    log_scale = 0.0
    row = np.zeros(n2 + 1)
    # row i = 0: j from 0 while |0 - j n1| < h
    jmax = min(n2, (h - 1) // n1) if n1 > 0 else n2
    row[: jmax + 1] = 1.0
    for i in range(1, n1 + 1):
        centre = i * n2
        # allowed j: i n2 - j n1 < h and j n1 - i n2 < h
        lo = max(0, (centre - h) // n1 + 1)
        hi = min(n2, (centre + h - 1) // n1)
        new = np.zeros(n2 + 1)
        if lo <= hi:
            new[lo: hi + 1] = np.cumsum(row[lo: hi + 1])
        top = new.max()
        if top == 0.0:
            return 0.0
        if top > 1e250 or top < 1e-250:
            new /= top
            log_scale += math.log(top)
        row = new
    log_total = math.lgamma(n1 + n2 + 1) - math.lgamma(n1 + 1) - math.lgamma(n2 + 1)
    inside = row[n2]
    if inside <= 0.0:
        return 0.0
    return math.exp(math.log(inside) + log_scale - log_total)


def ks_2samp(x: Sequence[float] | np.ndarray,
             y: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Two-sided two-sample Kolmogorov-Smirnov test; returns ``(D, p)``.

    The p-value is the exact one (the ``method="exact"`` of ``scipy.stats.ks_2samp``)
    when ``len(x) * len(y) <= 10**8``, otherwise the limiting Kolmogorov
    distribution at ``sqrt(m n / (m + n)) D``. Like scipy, the exact p-value assumes
    no ties. The limiting branch is the one place that differs from scipy, whose
    ``method="asymp"`` takes the finite-n Kolmogorov distribution at
    ``n = round(m n / (m + n))``: about 1% apart in p at 10,000 against 50,000.
    """
    xa = np.sort(np.asarray(x, dtype=np.float64))
    ya = np.sort(np.asarray(y, dtype=np.float64))
    n1, n2 = len(xa), len(ya)
    if n1 == 0 or n2 == 0:
        raise ValueError("both samples must be non-empty")
    points = np.concatenate((xa, ya))
    i = np.searchsorted(xa, points, side="right").astype(np.int64)
    j = np.searchsorted(ya, points, side="right").astype(np.int64)
    h = int(np.abs(i * n2 - j * n1).max())  # D * n1 * n2, exactly
    d = h / (n1 * n2)
    if h == 0:
        return 0.0, 1.0
    if n1 * n2 <= 10 ** 8:
        p = 1.0 - _ks_inside_probability(n1, n2, h)
    else:
        en = n1 * n2 / (n1 + n2)
        p = _kolmogorov_sf(math.sqrt(en) * d)
    return d, float(min(1.0, max(0.0, p)))


# -- multiple testing ------------------------------------------------------------------


def bh_adjust(p_values: Sequence[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (``scipy.stats.false_discovery_control``)."""
    m = len(p_values)
    if m == 0:
        return []
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p)
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted = np.minimum.accumulate(scaled[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(adjusted, 1.0)
    return [float(v) for v in out]


def bh_reject(p_values: Sequence[float], alpha: float) -> list[bool]:
    """Which hypotheses Benjamini-Hochberg rejects at false discovery rate ``alpha``."""
    return [q <= alpha for q in bh_adjust(p_values)]


# -- CUSUM -----------------------------------------------------------------------------


def cusum_arl(p: float, up: int, h: int) -> float:
    """Average run length of the integer Bernoulli CUSUM at failure rate ``p``.

    The chart starts at 0; a pass moves it to ``max(0, s - 1)``, a failure to
    ``s + up``; it signals when ``s >= h``. The expected number of outputs until the
    signal solves ``L(i) = 1 + (1-p) L(max(i-1, 0)) + p L(i + up)`` (``L = 0`` at or
    above ``h``). Solved from the top state down, where each step only divides by
    ``1 - p``, so the recursion is numerically stable: O(h).
    """
    if h <= 0:
        return 1.0
    if p <= 0.0:
        return math.inf
    if p >= 1.0:
        return float(math.ceil(h / up))
    q = 1.0 - p
    # L(i) = alpha[i] + beta[i] * c with c = L(h - 1) unknown.
    alpha = [0.0] * (h + up + 1)
    beta = [0.0] * (h + up + 1)
    beta[h - 1] = 1.0
    for i in range(h - 1, 0, -1):
        alpha[i - 1] = (alpha[i] - 1.0 - p * alpha[i + up]) / q
        beta[i - 1] = (beta[i] - p * beta[i + up]) / q
    # Boundary at 0: p L(0) = 1 + p L(up), with L(up) = 0 when up >= h.
    au = alpha[up] if up < h else 0.0
    bu = beta[up] if up < h else 0.0
    denom = p * (beta[0] - bu)
    if denom == 0.0:
        return math.inf
    c = (1.0 + p * au - p * alpha[0]) / denom
    return alpha[0] + beta[0] * c


def cusum_threshold(p0: float, up: int, target_arl: float) -> int:
    """The smallest integer threshold whose in-control run length is at least ``target_arl``."""
    if target_arl <= 1:
        return 1
    lo, hi = 1, max(2, up)
    while cusum_arl(p0, up, hi) < target_arl:
        lo, hi = hi, hi * 2
        if hi > 50_000_000:
            raise ValueError("target run length out of reach for this design")
    while lo < hi:  # the run length grows with the threshold
        mid = (lo + hi) // 2
        if cusum_arl(p0, up, mid) >= target_arl:
            hi = mid
        else:
            lo = mid + 1
    return lo


class BernoulliCusum:
    """A one-sided CUSUM on failures, tuned to detect a rise from ``p0`` to ``p1``.

    The log-likelihood-ratio increments of a failure (``log(p1/p0)``) and of a pass
    (``log((1-p1)/(1-p0))``) are scaled so a pass is one unit down and a failure
    ``up`` units up (rounded); the threshold is the smallest one whose exact
    in-control average run length at ``p0`` is at least ``mtbfa`` outputs. After a
    signal the chart restarts from 0.
    """

    __slots__ = ("arl0", "failures", "h", "n", "p0", "p1", "s", "up")

    def __init__(self, p0: float, p1: float, mtbfa: float) -> None:
        if not 0.0 < p0 < p1 < 1.0:
            raise ValueError("need 0 < p0 < p1 < 1")
        up_llr = math.log(p1 / p0)
        down_llr = -math.log((1 - p1) / (1 - p0))
        self.p0 = p0
        self.p1 = p1
        self.up = max(1, round(up_llr / down_llr))
        self.h = cusum_threshold(p0, self.up, mtbfa)
        self.arl0 = cusum_arl(p0, self.up, self.h)
        self.s = 0
        self.n = 0  # outputs since the chart last stood at 0
        self.failures = 0  # failures among them

    def update(self, failed: bool) -> bool:
        """Add one outcome; return True when the chart signals (then it restarts)."""
        if failed:
            self.s += self.up
            self.n += 1
            self.failures += 1
        elif self.s > 0:
            self.s -= 1
            self.n += 1
        if self.s == 0:
            self.n = 0
            self.failures = 0
            return False
        if self.s >= self.h:
            self.reset()
            return True
        return False

    def reset(self) -> None:
        """Restart the chart from 0."""
        self.s = 0
        self.n = 0
        self.failures = 0
