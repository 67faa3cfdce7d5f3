"""Safety: the synchronous check before a response is served, and what runs behind it.

>>> verdict = llmvigil.safety.check(prompt, response, feature="support")
>>> if verdict.action == "block":
...     response = "Sorry, I can't help with that."

:func:`check` runs the fast rules (:mod:`.rules`: weapons and poison instructions,
self-harm encouragement, child sexual content, PII and secrets with validation, and
your own phrases and regexes) and returns a :class:`~llmvigil.core.model.SafetyVerdict`
(``serve``, ``block`` or ``review``) in tens of microseconds for a typical response. The
verdict is also published as a record, linked to the current span. Everything slower
(the sampled LLM judge, the review queue writes, the rates) happens in the background,
owned by the safety monitor (:class:`llmvigil.core.monitors.safety.SafetyMonitor`).

:func:`check` never raises. When the check itself fails, the failure is logged (once),
counted, and the response is *served* (fail-open: monitoring must not take the
application down) with reason ``"safety check failed"`` and ``decided_by="error"``;
set ``monitors.safety.fail_closed: true`` to *block* instead.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from .. import capture
from .. import runtime as _rt
from ..model import SafetyVerdict, Span
from .rules import ACTIONS, Evaluation, Hit, RuleEngine, RuleSetSettings

__all__ = [
    "ACTIONS",
    "Evaluation",
    "Hit",
    "RuleEngine",
    "RuleSetSettings",
    "SafetyVerdict",
    "check",
    "engine",
]

FAILED_REASON = "safety check failed"
_MAX_DEPTH = 6


class _State:
    """What :func:`check` uses for one runtime: its rules, policy and safety monitor."""

    __slots__ = ("enabled", "engine", "fail_closed", "monitor", "runtime")

    def __init__(self, runtime: Any, engine: RuleEngine | None, monitor: Any,
                 enabled: bool, fail_closed: bool) -> None:
        self.runtime = runtime
        self.engine = engine
        self.monitor = monitor
        self.enabled = enabled
        self.fail_closed = fail_closed


_cache: _State | None = None


def _build_state(runtime: Any) -> _State:
    from ..monitors.safety import SafetyMonitor, SafetySettings
    from ..monitors.windows import parse_settings

    monitor = None
    if runtime is not None:
        monitor = next((m for m in runtime.monitors if isinstance(m, SafetyMonitor)), None)
    if monitor is not None:
        settings = monitor.settings
    elif runtime is not None:
        where = f"{runtime.config.source or 'config'}: monitors.safety"
        settings = parse_settings(SafetySettings, runtime.config.monitors.get("safety"), where)
    else:
        settings = SafetySettings()
    engine = settings.engine() if settings.enabled else None
    return _State(runtime, engine, monitor, settings.enabled, settings.fail_closed)


def _state() -> _State:
    global _cache
    rt = _rt._runtime
    if rt is None and not _rt._explicitly_shut_down:
        rt = _rt.get_runtime()  # auto-initialise, as the first record would
    cached = _cache
    if cached is not None and cached.runtime is rt:
        return cached
    state = _cache = _build_state(rt)
    return state


def engine() -> RuleEngine:
    """The rules :func:`check` applies in this process (from ``monitors.safety``).

    Raises:
        ConfigError: ``monitors.safety`` is invalid.
    """
    state = _state()
    return state.engine if state.engine is not None else RuleEngine()


def _text(value: Any, depth: int = 0) -> str:
    """The text to check in a prompt or response: a string, or the strings inside
    chat messages and content blocks."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if depth < _MAX_DEPTH:
        if isinstance(value, Mapping):
            return "\n".join(t for t in (_text(v, depth + 1) for v in value.values()) if t)
        if isinstance(value, (list, tuple)):
            return "\n".join(t for t in (_text(v, depth + 1) for v in value) if t)
    if isinstance(value, (int, float, bool)):
        return ""
    return str(value)


def _link(span: Any) -> tuple[Any, bool]:
    """The Span record to link to, and whether it is a live handle still recording."""
    if span is None:
        span = capture.current_span()
        if span is None:
            return None, False
    if isinstance(span, capture.SpanHandle):
        return span.record, span.is_recording
    if isinstance(span, Span):
        return span, False
    raise TypeError(f"span must be a SpanHandle or a Span, got {type(span).__name__}")


def check(prompt: Any, response: Any, *, feature: str | None = None,
          user_id: str | None = None, span: Any = None) -> SafetyVerdict:
    """Decide whether ``response`` (to ``prompt``) may be served: ``serve``, ``block``
    or ``review``.

    The verdict names the deciding ``category`` and rule (``decided_by``), and is
    published as a SafetyVerdict record linked to ``span`` (the current span by
    default), whose ``feature`` and ``user_id`` are used when not given. Responses whose
    action is in ``monitors.safety.review.actions`` are queued for human review, and a
    sample goes to the LLM judge, both in the background.

    Args:
        prompt: the prompt, as a string or chat messages (their strings are checked).
        response: the response, likewise.
        feature: the feature the metrics are labelled with.
        user_id: the end user, recorded with the verdict.
        span: a live span handle or a Span to link the verdict to.

    Never raises: on an internal failure the verdict is ``serve`` (``block`` with
    ``fail_closed``) with reason ``"safety check failed"``.
    """
    state: _State | None = None
    try:
        state = _state()
        t0 = time.perf_counter_ns()
        if state.engine is None:
            return SafetyVerdict(action="serve", reason="safety checks are disabled",
                                 decided_by="disabled")
        prompt_text, response_text = _text(prompt), _text(response)
        ev = state.engine.evaluate(prompt_text, response_text)
        record, live = _link(span)
        trace_id = span_id = None
        if record is not None:
            trace_id, span_id = record.trace_id, record.id
            feature = feature or record.feature
            user_id = user_id or record.user_id
        meta: dict[str, Any] = {}
        if feature:
            meta["feature"] = feature
        if user_id:
            meta["user_id"] = user_id
        if ev.hits:
            actions = state.engine.actions
            meta["matches"] = [
                {"category": h.category, "rule": h.rule, "where": h.where,
                 "action": actions[h.category], "start": h.start, "end": h.end,
                 **({"overflow": True} if h.overflow else {})}
                for h in ev.hits
            ]
        if ev.truncated:
            meta["truncated"] = True
        meta["check_us"] = round((time.perf_counter_ns() - t0) / 1000, 1)
        verdict = SafetyVerdict(
            action=ev.action, reason=ev.reason, category=ev.category,
            decided_by=f"rule:{ev.rule}" if ev.rule else "rules",
            trace_id=trace_id, span_id=span_id, metadata=meta,
        )
    except Exception as exc:
        return _failed(exc, state, feature, user_id)
    capture.emit(verdict)
    try:  # the decision stands whatever happens to the background hand-off
        if state.monitor is not None:
            state.monitor.offer(verdict, prompt_text, response_text)
        if live:
            record.attributes["llmvigil.safety.action"] = ev.action
    except Exception as exc:
        capture.internal_error("safety.offer", exc)
    return verdict


def _failed(exc: Exception, state: _State | None, feature: str | None,
            user_id: str | None) -> SafetyVerdict:
    capture.internal_error("safety.check", exc)
    fail_closed = state is not None and state.fail_closed
    meta: dict[str, Any] = {"error": type(exc).__name__}
    if feature:
        meta["feature"] = str(feature)
    if user_id:
        meta["user_id"] = str(user_id)
    verdict = SafetyVerdict(action="block" if fail_closed else "serve", reason=FAILED_REASON,
                            decided_by="error", metadata=meta)
    try:
        capture.emit(verdict)
    except Exception as emit_exc:  # the sink failing too must not reach the caller
        capture.internal_error("safety.check.emit", emit_exc)
    return verdict


def failures() -> int:
    """How many safety checks failed (and were served or blocked by policy) so far."""
    return capture.internal_errors.get("safety.check", 0)


def __getattr__(name: str) -> Any:
    if name in ("SafetyMonitor", "SafetySettings"):
        from ..monitors import safety as monitor_module

        return getattr(monitor_module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
