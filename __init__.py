"""llmvigil: vendor-neutral production monitoring for LLM applications.

Signals are computed locally, in the application's process, and published through
pluggy-registered adapters to the backends named in the YAML config.

>>> import llmvigil
>>> @llmvigil.trace(kind="llm", feature="extract")
... def extract(document: str) -> str: ...
"""

from __future__ import annotations

# Absolute imports on purpose: pytest imports this file as a plain module when it
# collects the repository root (a package of any folder name), and relative imports
# would fail there.
from llmvigil.core import safety
from llmvigil.core.capture import SpanHandle, current_span, span, trace
from llmvigil.core.context import ContextExecutor, run_in_context
from llmvigil.core.errors import (
    BudgetExceeded,
    ConfigError,
    MissingExtraError,
    UnknownBackendError,
    VigilError,
)
from llmvigil.core.instrument import instrument
from llmvigil.core.model import Alert, Metric, SafetyVerdict, Score, SessionEvent, Span, Usage
from llmvigil.core.monitors import budget
from llmvigil.core.report import report
from llmvigil.core.runtime import feedback, flush, init, session_event, shutdown

__version__ = "0.1.0"

__all__ = [
    "Alert",
    "BudgetExceeded",
    "ConfigError",
    "ContextExecutor",
    "Metric",
    "MissingExtraError",
    "SafetyVerdict",
    "Score",
    "SessionEvent",
    "Span",
    "SpanHandle",
    "UnknownBackendError",
    "Usage",
    "VigilError",
    "budget",
    "current_span",
    "feedback",
    "flush",
    "init",
    "instrument",
    "report",
    "run_in_context",
    "safety",
    "session_event",
    "shutdown",
    "span",
    "trace",
]
