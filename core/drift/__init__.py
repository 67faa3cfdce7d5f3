"""Drift detection: two-sample tests on output embeddings."""

from __future__ import annotations

from .mmd import DEFAULT_KERNEL_MAX_N, MMDResult, median_bandwidth, mmd_test

__all__ = ["DEFAULT_KERNEL_MAX_N", "MMDResult", "median_bandwidth", "mmd_test"]
