"""The drift test's speed and error rates, measured (not timed tests).

1. **Speed.** :func:`llmvigil.core.drift.mmd_test` on two windows of 384-dimensional
   unit vectors with 500 permutations, by window size and method (``kernel``: the
   pooled kernel matrix with all permutations in one matrix product; ``rff``: random
   Fourier features), side by side with a straightforward implementation (scipy
   ``cdist`` kernel matrix, then one loop iteration per permutation indexing the
   three sub-matrices), with the ratio. The straightforward version runs
   ``--baseline-perms`` permutations and its time is scaled to 500 (its cost is
   linear in the count); it runs up to ``--baseline-max-n`` outputs per window.
2. **What the monitor costs the worker.** ``DriftMonitor.observe`` per span, and the
   longest ``tick`` while a test runs in the background thread.
3. **Error rates on text.** Synthetic document-extraction outputs (JSON, prose and
   key-value styles, dates DD/MM/YYYY) embedded with the ``hashed`` embedder; pairs of
   disjoint windows of ``--window`` outputs; the share of pairs with p < 0.05 when
   nothing changed (false alarms), when a share of recent outputs has its dates
   transposed (MM/DD/YYYY), and when a share gains a disclaimer sentence. For
   contrast, the same windows under a stand-in for a property check: a one-sided
   Fisher exact test on the share of outputs holding an impossible date (month > 12).
   Last, the power of point-level against block permutations, and of RFF, on the same
   windows.

    python benchmarks/drift.py [--quick] [--pairs 100] [--window 1000] [--seed 0]
                               [--sections speed,worker,rates]

Other processes on the machine slow every figure down: the load average is printed
with the results, and each timing is the minimum (and median) over repeats.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import statistics
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import numpy as np
from _bench import machine
from llmvigil.core.drift import mmd_test
from llmvigil.core.model import Span, new_trace_id
from llmvigil.core.monitors.drift import DriftMonitor
from llmvigil.plugins.embedders import HashedEmbedder

DIM = 384
PERMUTATIONS = 500


def unit_vectors(n: int, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    v = rng.standard_normal((n, DIM)).astype(np.float32)
    v[:, 0] += shift
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def timed(fn: Callable[[], Any], repeats: int) -> tuple[float, float, Any]:
    """(min, median) seconds over ``repeats`` calls, and the last result."""
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def straightforward(x: np.ndarray, y: np.ndarray, permutations: int,
                    rng: np.random.Generator) -> tuple[float, float]:
    """MMD²_u and its permutation p-value, written the obvious way with scipy."""
    from scipy.spatial.distance import cdist

    z = np.vstack([x, y]).astype(np.float64)
    n, m = len(x), len(y)
    sub = z[rng.choice(len(z), size=min(len(z), 256), replace=False)]
    sigma2 = float(np.median(cdist(sub, sub, "sqeuclidean")[np.triu_indices(len(sub), 1)]))
    k = np.exp(-cdist(z, z, "sqeuclidean") / (2 * sigma2))

    def stat(ix: np.ndarray, iy: np.ndarray) -> float:
        kxx, kyy, kxy = k[np.ix_(ix, ix)], k[np.ix_(iy, iy)], k[np.ix_(ix, iy)]
        return float((kxx.sum() - n) / (n * (n - 1)) + (kyy.sum() - m) / (m * (m - 1))
                     - 2 * kxy.mean())

    idx = np.arange(n + m)
    observed = stat(idx[:n], idx[n:])
    exceed = 0
    for _ in range(permutations):
        p = rng.permutation(n + m)
        exceed += stat(p[:n], p[n:]) >= observed
    return observed, (1 + exceed) / (1 + permutations)


def speed(args: argparse.Namespace) -> None:
    rng = np.random.default_rng(args.seed)
    sizes = [1000, 2000, 5000, 10000] if not args.quick else [1000, 10000]
    print(f"\n## Speed: two windows of n x {DIM} unit vectors, {PERMUTATIONS} permutations"
          f" (min / median of {args.repeats} runs)")
    print(f"{'n per window':>12} {'kernel s':>16} {'rff s':>16} {'straightforward s':>18} "
          f"{'ratio kernel / rff':>19}  p-values (kernel, rff, straightforward)")
    for n in sizes:
        x, y = unit_vectors(n, rng), unit_vectors(n, rng, shift=0.02)
        cells, ps, fast = [], [], []
        for method in ("kernel", "rff"):
            if method == "kernel" and n > 5000:
                cells.append(f"{'(1.6 GB matrix)':>16}")
                ps.append("-")
                continue
            lo, med, res = timed(partial(mmd_test, x, y, method=method, rng=rng),
                                 args.repeats)
            fast.append(lo)
            cells.append(f"{lo:7.3f} / {med:6.3f}")
            ps.append(f"{res.p_value:.3f}")
        if n <= args.baseline_max_n and args.baseline_perms > 0:
            t0 = time.perf_counter()
            _, p_base = straightforward(x, y, args.baseline_perms, rng)
            elapsed = time.perf_counter() - t0
            t_setup = timed(partial(straightforward, x, y, 0, rng), 1)[0]
            scaled = t_setup + (elapsed - t_setup) * PERMUTATIONS / args.baseline_perms
            base_cell = f"{scaled:10.2f} (scaled)"
            ratio = " / ".join(f"{scaled / t:,.0f}x" for t in fast)
            ps.append(f"{p_base:.3f} ({args.baseline_perms} perms)")
        else:
            base_cell, ratio = f"{'(not run)':>18}", "-"
            ps.append("-")
        print(f"{n:12d} {cells[0]:>16} {cells[1]:>16} {base_cell:>18} {ratio:>19}  "
              f"{', '.join(ps)}")


def worker_cost(args: argparse.Namespace) -> None:
    print("\n## Cost to the worker thread (hashed embedder, windows of 1,000)")
    mon = DriftMonitor({"baseline_size": 1000, "window_size": 1000, "min_window": 200,
                        "interval_s": 0.0001, "seed": args.seed})
    rnd = random.Random(args.seed)
    spans = [Span(trace_id=new_trace_id(), kind="llm", feature="extract",
                  output=extraction(rnd)) for _ in range(20_000)]
    t0 = time.perf_counter()
    for s in spans:
        mon.observe(s)
    per_span_us = (time.perf_counter() - t0) / len(spans) * 1e6
    print(f"observe(): {per_span_us:.2f} us per sampled span")
    longest, tests_seen = 0.0, 0
    deadline = time.monotonic() + 30
    now = 1_700_000_000 * 10**9
    while tests_seen < 5 and time.monotonic() < deadline:
        for s in spans[:300]:
            mon.observe(Span(trace_id=new_trace_id(), kind="llm", feature="extract",
                             output=s.output))
        now += 10**9
        t0 = time.perf_counter()
        out = list(mon.tick(now))
        longest = max(longest, time.perf_counter() - t0)
        tests_seen += sum(1 for r in out if getattr(r, "name", "") == "drift.p_value")
        time.sleep(0.02)
    mon.close()
    st = mon.stats()
    print(f"tick(): longest {longest * 1e3:.2f} ms over the run; background job (embed + "
          f"test) last {st['last_job_s']:.3f} s, longest {st['max_job_s']:.3f} s; "
          f"{st['tests']} tests")


# -- synthetic outputs ------------------------------------------------------------------------

VENDORS = ["Müller GmbH", "Dupont SARL", "Rossi S.p.A.", "García y Hijos", "Jansen B.V.",
           "Nowak Sp. z o.o.", "Svensson AB", "O'Brien Ltd", "Costa Lda", "Novák s.r.o."]
DOCS = ["invoice", "purchase order", "delivery note", "contract", "credit note"]
DATE_RE = re.compile(r"\b(\d{2})/(\d{2})/(\d{4})\b")
DISCLAIMER = " Please note that all amounts are estimates."


def extraction(rnd: random.Random, transposed: bool = False) -> str:
    """One document-extraction output; dates DD/MM/YYYY, or MM/DD/YYYY when transposed."""
    def date() -> str:
        day, month, year = rnd.randint(1, 31), rnd.randint(1, 12), rnd.randint(2019, 2025)
        first, second = (month, day) if transposed else (day, month)
        return f"{first:02d}/{second:02d}/{year}"

    doc, vendor = rnd.choice(DOCS), rnd.choice(VENDORS)
    issued, due = date(), date()
    amount = f"{rnd.randint(10, 99999)},{rnd.randint(0, 99):02d} EUR"
    ref = f"{doc[:3].upper()}-{rnd.randint(1000, 99999)}"
    style = rnd.randrange(3)
    if style == 0:
        return (f'{{"document_type": "{doc}", "reference": "{ref}", "issuer": "{vendor}", '
                f'"issue_date": "{issued}", "due_date": "{due}", "total": "{amount}"}}')
    if style == 1:
        return (f"The {doc} {ref} from {vendor} is dated {issued} and is due on {due}. "
                f"The total amount is {amount}.")
    return f"{doc.title()} {ref}\nIssuer: {vendor}\nDate: {issued}\nDue: {due}\nAmount: {amount}"


def impossible_date(text: str) -> bool:
    """Whether a DD/MM/YYYY date in ``text`` has a month above 12 (or a day above 31)."""
    return any(int(m) > 12 or int(d) > 31 for d, m, _ in DATE_RE.findall(text))


def error_rates(args: argparse.Namespace) -> None:
    from scipy.stats import fisher_exact

    n, pairs = args.window, args.pairs
    size = max(4 * n, 8000)
    clean = [extraction(random.Random(args.seed * 1_000_003 + i)) for i in range(size)]
    swapped = [extraction(random.Random(args.seed * 1_000_003 + i), True) for i in range(size)]
    emb = HashedEmbedder()
    t0 = time.perf_counter()
    vectors = {"clean": emb(clean), "transposed": emb(swapped),
               "disclaimer": emb([c + DISCLAIMER for c in clean])}
    texts = {"clean": clean, "transposed": swapped,
             "disclaimer": [c + DISCLAIMER for c in clean]}
    embed_s = time.perf_counter() - t0
    invalid = {k: np.array([impossible_date(t) for t in v]) for k, v in texts.items()}
    print(f"\n## Detection rates at alpha = 0.05: {pairs} pairs of windows of {n} outputs "
          f"(hashed embedder: {3 * size:,} outputs embedded in {embed_s:.1f} s)")
    print(f"share of transposed outputs holding an impossible date: "
          f"{invalid['transposed'].mean():.1%} (the rest read as valid dates)")
    print(f"{'scenario':34} {'MMD drift':>10} {'impossible-date check':>22}")
    scenarios: list[tuple[str, str | None, float]] = [("no change (false alarms)", None, 0.0)]
    scenarios += [(f"dates transposed in {s:.0%}", "transposed", s)
                  for s in (0.01, 0.03, 0.10, 0.30, 0.50, 1.0)]
    scenarios += [(f"disclaimer added to {s:.0%}", "disclaimer", s) for s in (0.01, 0.03, 0.10)]
    rng = np.random.default_rng(args.seed)
    for label, changed, share in scenarios:
        hits_mmd = hits_check = 0
        for _ in range(pairs):
            idx = rng.choice(size, 2 * n, replace=False)
            bx, ry = idx[:n], idx[n:]
            k = round(share * n)
            y = vectors["clean"][ry].copy()
            bad_y = invalid["clean"][ry].copy()
            if changed and k:
                y[:k] = vectors[changed][ry[:k]]
                bad_y[:k] = invalid[changed][ry[:k]]
            hits_mmd += mmd_test(vectors["clean"][bx], y, rng=rng).p_value < 0.05
            a, b = int(bad_y.sum()), int(invalid["clean"][bx].sum())
            p = fisher_exact([[a, n - a], [b, n - b]], alternative="greater")[1]
            hits_check += p < 0.05
        print(f"{label:34} {hits_mmd / pairs:10.0%} {hits_check / pairs:22.0%}")
    print(f"\npower by permutation scheme, disclaimer added to 5% ({pairs} pairs, the same "
          "windows for each):")
    variants = {"kernel, single points (b=1)": {"method": "kernel", "max_blocks": 4 * n},
                "kernel, blocks (default)": {"method": "kernel"},
                "rff, blocks (default)": {"method": "rff"}}
    hits = dict.fromkeys(variants, 0)
    for _ in range(pairs):
        idx = rng.choice(size, 2 * n, replace=False)
        y = vectors["clean"][idx[n:]].copy()
        k = round(0.05 * n)
        y[:k] = vectors["disclaimer"][idx[n:n + k]]
        for name, options in variants.items():
            hits[name] += mmd_test(vectors["clean"][idx[:n]], y, rng=rng,
                                   **options).p_value < 0.05
    for name in variants:
        print(f"  {name:30} {hits[name] / pairs:6.0%}")


def main() -> None:
    parser = argparse.ArgumentParser(description="llmvigil drift test: speed and error rates")
    parser.add_argument("--quick", action="store_true", help="fewer sizes and pairs")
    parser.add_argument("--pairs", type=int, default=100, help="window pairs per scenario")
    parser.add_argument("--window", type=int, default=1000, help="outputs per window")
    parser.add_argument("--repeats", type=int, default=7, help="timing repeats")
    parser.add_argument("--baseline-perms", type=int, default=50,
                        help="permutations run by the straightforward version (0: skip)")
    parser.add_argument("--baseline-max-n", type=int, default=2000,
                        help="largest window the straightforward version runs on")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sections", default="speed,worker,rates",
                        help="comma-separated subset of speed, worker, rates")
    args = parser.parse_args()
    if args.quick:
        args.pairs, args.repeats = min(args.pairs, 30), min(args.repeats, 3)
    print(machine())
    print(f"numpy {np.__version__}; threads {threading.active_count()}; "
          f"OPENBLAS_NUM_THREADS={os.environ.get('OPENBLAS_NUM_THREADS', 'unset')}")
    for section in args.sections.split(","):
        {"speed": speed, "worker": worker_cost, "rates": error_rates}[section.strip()](args)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
