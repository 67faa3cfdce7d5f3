"""What every benchmark prints about the machine it ran on.

Figures from different machines differ by more than any change measured here (the
same code ran 2.5x slower on one 2-core machine than on another), so each script
prints, beside the platform and load, the time of a fixed pure-Python loop: two
figures taken on machines whose reference differs are compared through it.
"""

from __future__ import annotations

import os
import platform
import timeit

__all__ = ["machine", "reference_us"]


def reference_us() -> float:
    """µs for ``sum(range(10_000))``, the best of 5 rounds of 200 (single-core speed)."""
    return min(timeit.repeat("sum(range(10_000))", number=200, repeat=5)) / 200 * 1e6


def machine() -> str:
    """One line: platform, cores, Python, load average, and :func:`reference_us`."""
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"machine: {platform.platform()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}, load average {load}, "
            f"reference loop {reference_us():.0f} µs (sum(range(10_000)); lower is faster)")
