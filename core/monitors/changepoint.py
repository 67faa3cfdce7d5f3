"""Change detection on monitored series, configured by a false-alarm budget.

Two detectors, both set by ``arl0``, the target mean number of observations between
false alarms on a series that does not change (the in-control average run length),
never by a raw threshold:

* :class:`GaussianCusum` is a two-sided, self-starting CUSUM for continuous series
  (log latency, log cost). Each observation is standardised against the mean and
  standard deviation of the observations before it (Hawkins' self-starting scheme:
  the residual is a Student t variable, mapped to a standard normal score), so no
  "known" baseline is needed and the standardised series is exactly N(0, 1) under
  the null for Gaussian data. The decision threshold ``h`` is derived from ``arl0``
  by Siegmund's approximation of the CUSUM run length,
  ``ARL(h) = (exp(2kb) - 2kb - 1) / (2k^2)`` with ``b = h + 1.166``, solved for the
  one-sided run length ``2 * arl0`` (two sides share the false-alarm budget).
  ``k = shift_sigma / 2`` makes it quickest at a shift of ``shift_sigma`` standard
  deviations.
* :class:`BernoulliCusum` is a one-sided likelihood-ratio CUSUM on 0/1 outcomes
  (errors), tuned to detect the rate rising from its baseline ``p0`` to
  ``ratio * p0``. Its threshold is calibrated for ``arl0`` with the Markov-chain
  method of Brook and Evans, run on the chain embedded at failures (the gaps between
  failures are geometric), which is exact up to the state discretisation.

After an alarm a detector restarts and learns the new level as its baseline. Both
are O(1) per observation and hold a few floats of state.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from pydantic import Field

from .windows import Settings

__all__ = [
    "BernoulliCusum",
    "ChangeDetectionSettings",
    "ChangePoint",
    "GaussianCusum",
    "bernoulli_cusum_arl",
    "bernoulli_cusum_threshold",
    "cusum_threshold",
    "siegmund_arl",
    "student_t_to_z",
]

_SIEGMUND_SHIFT = 1.166  # Siegmund's correction for the overshoot of a normal random walk
_norm = statistics.NormalDist()


class ChangeDetectionSettings(Settings):
    """``monitors.<monitor>.change_detection``: change detection on the monitor's series."""

    enabled: bool = True
    #: Target mean number of observations between false alarms, per series.
    arl0: float = Field(default=1_000_000.0, ge=20)
    #: The shift (in standard deviations) the detector is quickest at.
    shift_sigma: float = Field(default=1.0, gt=0, le=5)
    #: Observations used to learn a series' baseline before it is monitored.
    warmup: int = Field(default=200, ge=10)
    #: Standardised scores are clipped to +-clip, so one outlier cannot alarm alone.
    clip: float = Field(default=4.0, gt=0)
    #: Error-rate detectors look for the error rate multiplied by this factor.
    error_ratio: float = Field(default=2.0, gt=1)
    #: Errors to see (beyond ``warmup`` observations) before an error rate is trusted.
    error_min_events: int = Field(default=20, ge=1)
    #: Seconds before the same series may raise another change alert.
    cooldown_s: float = Field(default=900.0, ge=0)
    severity: str = "warning"


@dataclass(frozen=True)
class ChangePoint:
    """A detected change: direction, baseline level, estimated new level and when."""

    direction: str
    baseline_mean: float
    baseline_std: float
    new_mean: float
    statistic: float
    threshold: float
    observations: int
    run_length: int


# -- thresholds --------------------------------------------------------------------------


def siegmund_arl(h: float, k: float, delta: float = 0.0) -> float:
    """Siegmund's approximation of a one-sided CUSUM's average run length.

    ``h`` is the threshold and ``k`` the reference value, both in standard deviations;
    ``delta`` is the true mean of the standardised data.
    """
    b = h + _SIEGMUND_SHIFT
    d = delta - k
    if abs(d) < 1e-9:
        return b * b
    return (math.exp(-2.0 * d * b) + 2.0 * d * b - 1.0) / (2.0 * d * d)


def cusum_threshold(arl0: float, k: float = 0.5, *, two_sided: bool = True) -> float:
    """The CUSUM threshold ``h`` giving an in-control run length of ``arl0`` (Siegmund)."""
    if arl0 <= 1 or k <= 0:
        raise ValueError("arl0 must be > 1 and k > 0")
    target = 2.0 * arl0 if two_sided else float(arl0)
    return _bisect(lambda h: siegmund_arl(h, k), target, 0.0, 200.0)


def _bisect(f: Callable[[float], float], target: float, lo: float, hi: float,
            iterations: int = 60) -> float:
    """The ``x`` in ``[lo, hi]`` where the increasing function ``f`` reaches ``target``."""
    if f(lo) >= target:
        return lo
    for _ in range(iterations):
        mid = (lo + hi) / 2.0
        if f(mid) < target:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


def _llr_steps(p0: float, ratio: float) -> tuple[float, float, float]:
    """``(p1, up, down)``: the alternative rate and the CUSUM steps on a failure/success."""
    p1 = min(ratio * p0, (1.0 + p0) / 2.0)
    up = math.log(p1 / p0)
    down = math.log((1.0 - p0) / (1.0 - p1))
    return p1, up, down


def bernoulli_cusum_arl(h: float, p0: float, ratio: float, *, p: float | None = None,
                        cells: int = 120) -> float:
    """Average run length of the Bernoulli CUSUM (threshold ``h``) when the rate is ``p``.

    Brook-Evans Markov chain on the CUSUM value just after each failure: between
    failures the statistic falls by ``down`` per success, the number of successes is
    geometric, so one transition covers a whole gap. ``p`` defaults to ``p0``.
    """
    p = p0 if p is None else p
    _, up, down = _llr_steps(p0, ratio)
    if up >= h:
        return 1.0 / p
    w = h / cells
    s = (np.arange(cells) + 0.5) * w  # cell mid-points
    log_q = math.log1p(-p)

    def cdf(m: np.ndarray) -> np.ndarray:  # P(G <= m) for G ~ Geometric(p) on {0, 1, ...}
        m = np.floor(m)
        return np.where(m < 0, 0.0, -np.expm1((m + 1.0) * log_q))

    lo = np.arange(cells) * w - up  # the pre-failure value u lands in cell j when
    hi = lo + w  # u in [lo_j, hi_j), u = max(0, s_i - G * down)
    si = s[:, None]
    g_lo = (si - hi[None, :]) / down  # u in [lo, hi)  <=>  G in (g_lo, g_hi]
    g_hi = (si - lo[None, :]) / down
    g_max = np.ceil(si / down) - 1.0  # u > 0 only while G <= g_max
    mass = cdf(np.minimum(g_hi, g_max)) - cdf(np.minimum(g_lo, g_max))
    mass[mass < 1e-15] = 0.0  # also keeps subnormal numbers (very slow) out of the solve
    zero_cell = int(up // w)
    if zero_cell < cells:  # the statistic hit zero, then the failure adds ``up``
        mass[:, zero_cell] += 1.0 - cdf(g_max[:, 0])
    failures = _solve_m_matrix(np.eye(cells) - mass, np.ones(cells))
    first = min(int(up // w), cells - 1)
    return float((1.0 + failures[first]) / p)


def _solve_m_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Solve ``a x = b`` for a diagonally dominant M-matrix (``I - P``, ``P`` substochastic).

    Gaussian elimination needs no pivoting here; done with element-wise numpy so no
    multi-threaded BLAS call can stall the worker thread on a busy machine.
    """
    a = a.copy()
    b = b.copy()
    n = len(b)
    for i in range(n - 1):
        f = a[i + 1:, i] / a[i, i]
        a[i + 1:, i:] -= np.multiply.outer(f, a[i, i:])
        b[i + 1:] -= f * b[i]
    x = np.empty(n)
    for i in range(n - 1, -1, -1):
        x[i] = (b[i] - float((a[i, i + 1:] * x[i + 1:]).sum())) / a[i, i]
    return x


@lru_cache(maxsize=256)
def bernoulli_cusum_threshold(p0: float, ratio: float, arl0: float) -> float:
    """The Bernoulli CUSUM threshold giving an in-control run length of ``arl0``.

    Calibrated with :func:`bernoulli_cusum_arl` (cached per ``(p0, ratio, arl0)``).
    """
    _, up, _ = _llr_steps(p0, ratio)
    lo = up * 1.0001
    hi = max(2.0 * up, 1.0)
    while bernoulli_cusum_arl(hi, p0, ratio) < arl0 and hi < 500:
        hi *= 2.0
    for _ in range(40):
        mid = (lo + hi) / 2.0
        arl = bernoulli_cusum_arl(mid, p0, ratio)
        if abs(math.log(arl / arl0)) < 0.01:
            return mid
        lo, hi = (mid, hi) if arl < arl0 else (lo, mid)
    return (lo + hi) / 2.0


def _quantize_rate(p: float) -> float:
    """Round a rate to 24 steps per decade so thresholds can be cached."""
    p = min(max(p, 1e-6), 0.45)
    return float(10 ** (round(math.log10(p) * 24) / 24))


# -- Student t -> standard normal ----------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-12:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function ``I_x(a, b)``."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                     + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def student_t_to_z(t: float, df: float) -> float:
    """The standard normal score with the same tail probability as ``t`` (``df`` d.o.f.).

    Exact below 100 degrees of freedom; from 100 on, Wallace's (1959) closed form,
    within 7e-4 of the exact score there and closer as ``df`` grows.
    """
    if df >= 100:
        return math.copysign(
            (8.0 * df + 1.0) / (8.0 * df + 3.0) * math.sqrt(df * math.log1p(t * t / df)), t)
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    if tail <= 1e-300:
        return math.copysign(38.0, t)
    return math.copysign(-_norm.inv_cdf(tail), t) if tail < 0.5 else 0.0


# -- detectors ----------------------------------------------------------------------------


class GaussianCusum:
    """Two-sided self-starting CUSUM on a continuous series (see the module docstring).

    Args:
        arl0: target mean number of observations between false alarms.
        shift_sigma: the shift, in standard deviations, detected fastest.
        warmup: observations learned before monitoring starts (and after each alarm).
        clip: standardised scores are clipped to ``[-clip, clip]``.
        max_baseline: the baseline estimates stop updating after this many observations.
    """

    __slots__ = ("_m2", "_mean", "_n", "_neg", "_neg_n", "_neg_sum", "_pos", "_pos_n",
                 "_pos_sum", "_run", "clip", "h", "k", "max_baseline", "warmup")

    def __init__(self, arl0: float = 10_000.0, *, shift_sigma: float = 1.0, warmup: int = 200,
                 clip: float = 4.0, max_baseline: int = 10_000) -> None:
        if warmup < 3:
            raise ValueError("warmup must be at least 3 observations")
        self.k = shift_sigma / 2.0
        self.h = cusum_threshold(arl0, self.k)
        self.warmup = warmup
        self.clip = clip
        self.max_baseline = max(max_baseline, warmup)
        self.reset()

    def reset(self) -> None:
        """Forget the baseline and the statistics; learn again from the next observation."""
        self._n = 0
        self._mean = 0.0
        self._m2 = 0.0
        self._pos = self._neg = 0.0
        self._pos_sum = self._neg_sum = 0.0
        self._pos_n = self._neg_n = 0
        self._run = 0

    @property
    def ready(self) -> bool:
        """Whether the warm-up is over and observations are being monitored."""
        return self._n >= self.warmup

    @property
    def baseline(self) -> tuple[float, float]:
        """The current baseline mean and standard deviation."""
        n = self._n
        return self._mean, math.sqrt(self._m2 / (n - 1)) if n > 1 else 0.0

    def update(self, x: float) -> ChangePoint | None:
        """Add one observation; return the change when this observation raises an alarm."""
        n = self._n
        if n >= self.warmup:
            std = math.sqrt(self._m2 / (n - 1))
            if std > 0.0:
                t = (x - self._mean) / (std * math.sqrt(1.0 + 1.0 / n))
                z = student_t_to_z(t, n - 1)
                clip = self.clip
                if z > clip:
                    z = clip
                elif z < -clip:
                    z = -clip
                # the CUSUM step
                self._run += 1
                k = self.k
                pos = self._pos + z - k
                if pos > 0.0:
                    self._pos = pos
                    self._pos_sum += x
                    self._pos_n += 1
                else:
                    self._pos = self._pos_sum = 0.0
                    self._pos_n = 0
                neg = self._neg - z - k
                if neg > 0.0:
                    self._neg = neg
                    self._neg_sum += x
                    self._neg_n += 1
                else:
                    self._neg = self._neg_sum = 0.0
                    self._neg_n = 0
                h = self.h
                if pos > h or neg > h:
                    alarm = self._alarm(pos, neg, std)
                    self.reset()
                    return alarm
        if n < self.max_baseline:
            n += 1
            mean = self._mean
            delta = x - mean
            mean += delta / n
            self._mean = mean
            self._m2 += delta * (x - mean)
            self._n = n
        return None

    def _alarm(self, pos: float, neg: float, std: float) -> ChangePoint:
        up = pos >= neg
        total, count = (self._pos_sum, self._pos_n) if up else (self._neg_sum, self._neg_n)
        return ChangePoint(
            direction="up" if up else "down", baseline_mean=self._mean, baseline_std=std,
            new_mean=total / count, statistic=max(pos, neg), threshold=self.h,
            observations=self._n, run_length=self._run,
        )


class BernoulliCusum:
    """One-sided CUSUM on 0/1 outcomes, detecting a rise of the rate by ``ratio``.

    The baseline rate is learned from at least ``warmup`` outcomes and ``min_events``
    failures (at most ``max_warmup`` outcomes), then frozen until the next alarm.

    Args:
        arl0: target mean number of outcomes between false alarms.
        ratio: the rate increase (``p1 = ratio * p0``) detected fastest.
        p0: a known baseline rate; skips the warm-up.
    """

    __slots__ = ("_failures", "_n", "_run", "_s", "_s_fail", "_s_n", "_up_down", "arl0",
                 "h", "max_warmup", "min_events", "p0", "ratio", "warmup")

    def __init__(self, arl0: float = 10_000.0, *, ratio: float = 2.0, warmup: int = 200,
                 min_events: int = 20, max_warmup: int = 100_000,
                 p0: float | None = None) -> None:
        self.arl0 = arl0
        self.ratio = ratio
        self.warmup = warmup
        self.min_events = min_events
        self.max_warmup = max(max_warmup, warmup)
        self.p0: float | None = None
        self.h = math.inf
        self._up_down = (0.0, 0.0)
        self.reset()
        if p0 is not None:
            self._set_baseline(p0)

    def reset(self) -> None:
        """Forget the baseline; learn it again from the next outcomes."""
        self.p0 = None
        self.h = math.inf
        self._n = self._failures = 0
        self._s = 0.0
        self._s_fail = self._s_n = 0
        self._run = 0

    @property
    def ready(self) -> bool:
        """Whether the baseline rate is known and outcomes are being monitored."""
        return self.p0 is not None

    def _set_baseline(self, p0: float) -> None:
        p0 = _quantize_rate(p0)
        self.p0 = p0
        _, up, down = _llr_steps(p0, self.ratio)
        self._up_down = (up, down)
        self.h = bernoulli_cusum_threshold(p0, self.ratio, self.arl0)

    def update(self, failed: bool) -> ChangePoint | None:
        """Add one outcome; return the change when this outcome raises an alarm."""
        if self.p0 is None:
            self._n += 1
            self._failures += bool(failed)
            if self._n >= self.max_warmup or (
                self._n >= self.warmup and self._failures >= self.min_events
            ):
                self._set_baseline((self._failures + 0.5) / (self._n + 1.0))
            return None
        self._run += 1
        up, down = self._up_down
        s = self._s + up if failed else self._s - down
        if s <= 0.0:
            self._s, self._s_fail, self._s_n = 0.0, 0, 0
            return None
        self._s, self._s_fail, self._s_n = s, self._s_fail + bool(failed), self._s_n + 1
        if s > self.h:
            p0 = self.p0
            change = ChangePoint(
                direction="up", baseline_mean=p0, baseline_std=math.sqrt(p0 * (1 - p0)),
                new_mean=self._s_fail / self._s_n, statistic=s, threshold=self.h,
                observations=self._n, run_length=self._run,
            )
            self.reset()
            return change
        return None
