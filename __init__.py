"""llmvigil: vendor-neutral production monitoring for LLM applications.

Signals are computed locally, in the application's process, and published through
pluggy-registered adapters to the backends named in the YAML config.

>>> import llmvigil
>>> @llmvigil.trace(kind="llm", feature="extract")
... def extract(document: str) -> str: ...
"""

from __future__ import annotations

from .core import safety
from .core.capture import SpanHandle, current_span, span, trace
from .core.context import ContextExecutor, run_in_context
from .core.errors import (
    BudgetExceeded,
    ConfigError,
    MissingExtraError,
    UnknownBackendError,
    VigilError,
)
from .core.instrument import instrument
from .core.model import Alert, Metric, SafetyVerdict, Score, SessionEvent, Span, Usage
from .core.monitors import budget
from .core.report import report
from .core.runtime import feedback, flush, init, session_event, shutdown

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
