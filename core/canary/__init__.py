"""Canaries: fixed prompts run on a schedule, checked, and compared with the last run.

A model update that silently changes outputs (a transposed date, a dropped field)
moves no latency, cost or error metric; a canary sees it on the next run. See
``docs/canaries.md`` and ``vigil canary run --help``.
"""

from __future__ import annotations

from .expectations import Evaluation, Expect, Failure, NumberExpect, evaluate
from .history import Baseline, History, HistoryError, StoredResult
from .runner import CaseResult, Change, RunReport, Targets, compare, run_once, run_suite
from .spec import CanaryCase, CanarySuite, TargetSpec, load_suite

__all__ = [
    "Baseline",
    "CanaryCase",
    "CanarySuite",
    "CaseResult",
    "Change",
    "Evaluation",
    "Expect",
    "Failure",
    "History",
    "HistoryError",
    "NumberExpect",
    "RunReport",
    "StoredResult",
    "TargetSpec",
    "Targets",
    "compare",
    "evaluate",
    "load_suite",
    "run_once",
    "run_suite",
]
