"""A kernel two-sample test: MMD² with a Gaussian kernel and a permutation p-value.

:func:`mmd_test` answers "were these two sets of embeddings drawn from the same
distribution?" with a p-value that is valid at any sample size (it is an exact
permutation test, not an asymptotic one):

* **Statistic.** The unbiased estimate of the squared maximum mean discrepancy,
  MMD²_u = mean k(x, x') + mean k(y, y') - 2 mean k(x, y) over distinct pairs
  (Gretton et al., 2012). It is zero in expectation when both samples come from one
  distribution and may then be slightly negative; it is reported as ``mmd2``.
* **Kernel.** Gaussian, k(a, b) = exp(-||a - b||² / (2 sigma^2)), with sigma set by the
  median heuristic: sigma^2 = median ||z_i - z_j||² over pairs of the pooled sample
  (estimated from all pairs of ``bandwidth_points`` random points). The bandwidth depends on
  the pooled sample only, so it does not break the permutation test.
* **p-value.** ``(1 + #{permuted statistic >= observed}) / (1 + permutations)``: under
  the null hypothesis P(p <= alpha) <= alpha exactly, whatever the sample size.

Two computations, picked by ``method``:

* ``kernel`` (small windows): the pooled kernel matrix is computed once; every
  permuted statistic is a quadratic form of it, and all permutations are evaluated
  in one matrix product.
* ``rff`` (large windows): random Fourier features approximate the Gaussian kernel
  (Rahimi & Recht, 2007) with ``2 * rff_frequencies`` features; the statistic is the
  unbiased MMD² in that feature space, and each permutation only needs the sums of
  the features over the permuted groups. The test is exact for the approximate
  kernel, so its calibration does not depend on the number of features (its power
  does, slightly).

To keep the permutations cheap the pooled points are shuffled within each sample and
grouped into about ``max_blocks`` blocks of ``b`` points each (``b = 1`` up to
``max_blocks`` points; smaller blocks when a sample would get fewer than two), and
whole blocks are permuted between the two samples. Under the null hypothesis the
blocks are exchangeable, so this is still an exact permutation test; up to ``b - 1``
randomly chosen points of each sample that do not fill a block are left out (under
0.8% of each sample when both have the same size).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

__all__ = ["DEFAULT_KERNEL_MAX_N", "MMDResult", "median_bandwidth", "mmd_test"]

Method = Literal["auto", "kernel", "rff"]

#: ``method="auto"`` uses the exact kernel up to this many pooled points, RFF above.
DEFAULT_KERNEL_MAX_N = 2048


@dataclass(frozen=True)
class MMDResult:
    """The outcome of one two-sample test."""

    #: Unbiased MMD² estimate (may be slightly negative when there is no difference).
    mmd2: float
    #: Permutation p-value, in ``[1 / (permutations + 1), 1]``.
    p_value: float
    #: Points of each sample used (after leaving out those that do not fill a block).
    n_x: int
    n_y: int
    #: The Gaussian kernel width sigma.
    bandwidth: float
    #: ``kernel`` or ``rff``.
    method: str
    permutations: int
    #: Points per permuted block.
    block_size: int


def _as_matrix(data: Any, name: str) -> np.ndarray:
    arr = np.asarray(data, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] < 2 or arr.shape[1] < 1:
        raise ValueError(f"{name} must be a 2-D array with at least 2 rows, got shape "
                         f"{arr.shape}")
    return arr


def median_bandwidth(z: np.ndarray, rng: np.random.Generator, *,
                     points: int = 256) -> float:
    """The median heuristic: √(median ||z_i - z_j||²) over distinct pairs of rows of ``z``.

    The pairs are those among ``points`` rows drawn at random (all rows when there are
    fewer). When more than half the pairs are identical points the median is 0; the
    root mean of the non-zero squared distances is returned instead, and 0.0 when
    every point is the same.
    """
    n = z.shape[0]
    sub = z if n <= points else z[rng.choice(n, size=points, replace=False)]
    m = sub.shape[0]
    sub = sub.astype(np.float64)
    sq = np.einsum("ij,ij->i", sub, sub)
    full = sq[:, None] + sq[None, :] - 2.0 * (sub @ sub.T)
    # every pair twice, diagonal dropped: the median of a doubled multiset is the same
    d2 = np.maximum(full.ravel()[1:].reshape(m - 1, m + 1)[:, :-1], 0.0).ravel()
    med = float(np.median(d2))
    if med > 0:
        return math.sqrt(med)
    positive = d2[d2 > 0]
    return math.sqrt(float(positive.mean())) if positive.size else 0.0


def _blocks(n_x: int, n_y: int, max_blocks: int) -> tuple[int, int, int]:
    """Block size and the number of whole blocks of each sample (at least 2 each)."""
    b = max(1, min(math.ceil((n_x + n_y) / max_blocks), min(n_x, n_y) // 2))
    return b, n_x // b, n_y // b


def _assignments(nb_x: int, nb_y: int, permutations: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Rows of 0/1 block labels (1 = first sample); row 0 is the observed labelling."""
    base = np.zeros(nb_x + nb_y, dtype=np.int8)
    base[:nb_x] = 1
    rows = np.empty((permutations + 1, base.size), dtype=np.int8)
    rows[:] = base
    rng.permuted(rows[1:], axis=1, out=rows[1:])
    return rows.astype(np.float64)


def _unbiased(sxx: np.ndarray, syy: np.ndarray, sxy: np.ndarray,
              n_x: int, n_y: int) -> np.ndarray:
    """MMD²_u from the within and between kernel sums (diagonal k(z, z) = 1 included)."""
    return ((sxx - n_x) / (n_x * (n_x - 1)) + (syy - n_y) / (n_y * (n_y - 1))
            - 2.0 * sxy / (n_x * n_y))


def _block_sums(m: np.ndarray, b: int, *, columns: bool = False) -> np.ndarray:
    """Sums of ``m`` over consecutive groups of ``b`` rows (and of ``b`` columns too)."""
    if b == 1:
        return m.astype(np.float64)
    rows = m.shape[0] // b
    if columns:  # a matmul is far faster than a strided sum(axis=...)
        m = m.reshape(m.shape[0], m.shape[1] // b, b) @ np.ones(b, dtype=m.dtype)
    return m.reshape(rows, b, m.shape[1]).sum(axis=1, dtype=np.float64)


def _gaussian_kernel(z: np.ndarray, gamma: float) -> np.ndarray:
    """The Gaussian kernel matrix of the rows of ``z`` (float32, diagonal exactly 1)."""
    sq = np.einsum("ij,ij->i", z, z)
    if gamma * float(sq.max()) < 20.0:
        # exp(-g|a-b|²) = exp(-g|a|²) exp(2g a·b) exp(-g|b|²): one exp pass, no overflow
        zs = z * np.float32(math.sqrt(2.0 * gamma))
        k = zs @ zs.T
        np.exp(k, out=k)
        e = np.exp(-gamma * sq).astype(np.float32)
        k *= e[:, None]
        k *= e[None, :]
    else:
        k = z @ z.T
        k *= -2.0
        k += sq[:, None]
        k += sq[None, :]
        np.maximum(k, 0.0, out=k)
        k *= -gamma
        np.exp(k, out=k)
    np.fill_diagonal(k, 1.0)  # exactly: k(z, z) = 1 is assumed by _unbiased
    return k


def _kernel_sums(z: np.ndarray, gamma: float, b: int, a: np.ndarray,
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per labelling row of ``a``: the kernel sums within X, within Y and between them."""
    kb = _block_sums(_gaussian_kernel(z, gamma), b, columns=True)
    row = kb.sum(axis=1)
    total = float(row.sum())
    sxx = np.einsum("pi,pi->p", a @ kb, a)
    ar = a @ row
    sxy = ar - sxx
    syy = total - 2.0 * ar + sxx
    return sxx, syy, sxy


def _rff_sums(z: np.ndarray, gamma: float, b: int, a: np.ndarray, frequencies: int,
              rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Like :func:`_kernel_sums` for the random-Fourier-feature approximation of the kernel."""
    w = rng.standard_normal((z.shape[1], frequencies), dtype=np.float32)
    w *= np.float32(math.sqrt(2.0 * gamma))
    proj = z @ w
    # [cos, sin] / sqrt(D): phi(x).phi(y) = mean cos(w.(x - y)) ≈ k(x, y) and |phi(x)|^2 = 1.
    feats = np.empty((z.shape[0] // b, 2 * frequencies), dtype=np.float64)
    feats[:, :frequencies] = _block_sums(np.cos(proj), b)
    feats[:, frequencies:] = _block_sums(np.sin(proj), b)
    feats /= math.sqrt(frequencies)
    sx = a @ feats
    sy = feats.sum(axis=0) - sx
    return (np.einsum("pi,pi->p", sx, sx), np.einsum("pi,pi->p", sy, sy),
            np.einsum("pi,pi->p", sx, sy))


def mmd_test(x: Any, y: Any, *, permutations: int = 500, method: Method = "auto",
             rng: np.random.Generator | int | None = None, bandwidth: float | None = None,
             kernel_max_n: int = DEFAULT_KERNEL_MAX_N, rff_frequencies: int = 128,
             max_blocks: int = 256, bandwidth_points: int = 256) -> MMDResult:
    """Test whether the rows of ``x`` and ``y`` (embeddings) share one distribution.

    Args:
        x, y: arrays of shape ``(n, dim)`` and ``(m, dim)``, at least 2 rows each.
        permutations: random relabellings used for the p-value.
        method: ``kernel``, ``rff``, or ``auto`` (``kernel`` up to ``kernel_max_n``
            pooled points).
        rng: a generator or seed (permutations, subsampling, Fourier features).
        bandwidth: the kernel width sigma; the median heuristic when ``None``.
        rff_frequencies: random frequencies of the ``rff`` method (2x as many features).
        max_blocks: at most this many blocks are permuted (see the module docs).
        bandwidth_points: rows drawn for the median heuristic (all their pairs).

    Raises:
        ValueError: malformed input (not 2-D, too few rows, NaN, differing widths).
    """
    xs, ys = _as_matrix(x, "x"), _as_matrix(y, "y")
    if xs.shape[1] != ys.shape[1]:
        raise ValueError(f"x and y have different widths: {xs.shape[1]} != {ys.shape[1]}")
    if permutations < 1:
        raise ValueError("permutations must be at least 1")
    gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
    b, nb_x, nb_y = _blocks(xs.shape[0], ys.shape[0], max(4, max_blocks))
    n_x, n_y = nb_x * b, nb_y * b
    z = np.empty((n_x + n_y, xs.shape[1]), dtype=np.float32)
    if b > 1:  # shuffle so that random points are left out and blocks are random
        np.take(xs, gen.permutation(xs.shape[0])[:n_x], axis=0, out=z[:n_x])
        np.take(ys, gen.permutation(ys.shape[0])[:n_y], axis=0, out=z[n_x:])
    else:
        z[:n_x] = xs
        z[n_x:] = ys
    center = z.mean(axis=0)
    if not np.isfinite(center).all():
        raise ValueError("x or y contains NaN or infinite values")
    z -= center  # distances are unchanged; keeps exp() and cos() arguments small
    chosen = method if method != "auto" else ("kernel" if z.shape[0] <= kernel_max_n
                                              else "rff")
    sigma = median_bandwidth(z, gen, points=bandwidth_points) if bandwidth is None \
        else float(bandwidth)
    if not sigma > 0:  # every point identical: no difference can be measured
        return MMDResult(0.0, 1.0, n_x, n_y, 0.0, chosen, permutations, b)
    gamma = 1.0 / (2.0 * sigma * sigma)
    a = _assignments(nb_x, nb_y, permutations, gen)
    if chosen == "kernel":
        sums = _kernel_sums(z, gamma, b, a)
    elif chosen == "rff":
        sums = _rff_sums(z, gamma, b, a, rff_frequencies, gen)
    else:
        raise ValueError(f"unknown method {method!r}; expected auto, kernel or rff")
    stats = _unbiased(*sums, n_x, n_y)
    observed = float(stats[0])
    # Ties count as exceedances (conservative); the tolerance absorbs rounding only.
    tol = 1e-9 * float(np.abs(stats).max())
    exceed = int(np.count_nonzero(stats[1:] >= observed - tol))
    return MMDResult(observed, (1 + exceed) / (1 + permutations), n_x, n_y, sigma, chosen,
                     permutations, b)
