"""The process-wide runtime: configuration, plugins, backends and the pipeline.

This module holds global state: one :class:`Runtime` per process, created by
:func:`init` or, on first use, from ``VIGIL_CONFIG``/``./vigil.yaml``/defaults.
"""

from __future__ import annotations

import atexit
import dataclasses
import inspect
import logging
import os
import random
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pluggy

from . import capture
from .config import BackendConfig, VigilConfig, load_config
from .errors import ConfigError, MissingExtraError, PluginError
from .journal import Journal
from .model import Metric, Score, SessionEvent, Span
from .outbox import Outbox, OutboxSettings
from .pipeline import Monitor, Pipeline
from .processors import Materialize, Processor, backend_view
from .redaction import Redactor
from .serialize import Limits

__all__ = [
    "Runtime",
    "feedback",
    "flush",
    "get_runtime",
    "init",
    "is_initialized",
    "session_event",
    "shutdown",
]

_log = logging.getLogger("llmvigil")
_lock = threading.RLock()
_runtime: Runtime | None = None
_explicitly_shut_down = False


class _SelfMetrics:
    """Publishes the pipeline's own counters as Metric records at an interval."""

    def __init__(self, runtime: Runtime, interval_s: float) -> None:
        self.runtime = runtime
        self.interval_ns = int(interval_s * 1e9)
        self.next_ns = time.time_ns() + self.interval_ns

    observes: tuple[type, ...] = ()

    def observe(self, record: Any) -> Iterable[Any]:
        return ()

    def tick(self, now_ns: int) -> Iterable[Any]:
        if now_ns < self.next_ns:
            return ()
        self.next_ns = now_ns + self.interval_ns
        return self.runtime.pipeline.self_metrics()


class Runtime:
    """Everything one ``init()`` builds: plugin manager, backends, outboxes, pipeline."""

    def __init__(self, config: VigilConfig, pm: pluggy.PluginManager | None = None,
                 monitors: Sequence[Monitor] = ()) -> None:
        from ..plugins.manager import backend_hooks, get_adapter, new_plugin_manager

        self.config = config
        self.pm = pm if pm is not None else new_plugin_manager()
        pipe = config.pipeline
        journal_root = Path(pipe.journal_dir)
        outbox_settings = OutboxSettings(
            max_retries=pipe.max_retries, backoff_initial_s=pipe.backoff_initial_s,
            backoff_max_s=pipe.backoff_max_s, max_records=pipe.outbox_max_records,
            breaker_failures=pipe.breaker_failures, breaker_reset_s=pipe.breaker_reset_s,
        )
        from .alerts import AlertsMonitor
        from .monitors import build_monitors

        where = f"{config.source or 'config'}: "
        built = build_monitors(config, self.pm, skip=tuple(type(m) for m in monitors))
        self.alerts = AlertsMonitor(config.alerts, plugin_manager=self.pm,
                                    where=f"{where}alerts")
        self.backends: dict[str, pluggy.HookRelay] = {}
        outboxes = []
        try:
            for bc in config.backends:
                if not bc.enabled:
                    continue
                where = f"{config.source or 'config'}: backends"
                info = get_adapter(self.pm, bc.name, where=where)
                instance = self._build(info.name, info.factory, info.extra, bc)
                hooks = backend_hooks(instance, bc.key)
                self.backends[bc.key] = hooks
                outboxes.append(Outbox(
                    bc.key, _exporter(hooks),
                    Journal(journal_root / bc.key.replace(":", "_"), pipe.journal_max_bytes),
                    dataclasses.replace(outbox_settings, merge_records=info.merge_records),
                    info.capabilities.can_hold, backend_view(bc.redaction or info.redaction),
                ))
        except BaseException:
            for box in outboxes:
                box.close(0.1)
            raise
        cap = config.capture
        redactor = Redactor(cap.redact, [(p.name, p.pattern, p.replacement)
                                         for p in cap.redact_patterns], cap.redact_keys)
        processors: list[Processor] = [
            Materialize(Limits(cap.max_field_chars, cap.max_depth, cap.max_items),
                        inputs=cap.inputs, outputs=cap.outputs, redactor=redactor),
            self._enrich,
        ]
        self.monitors: list[Monitor] = [*monitors, *built]
        all_monitors: list[Monitor] = [
            *self.monitors, self.alerts, _SelfMetrics(self, pipe.self_metrics_interval_s),
        ]
        self.pipeline = Pipeline(
            outboxes, processors, queue_size=pipe.queue_size, batch_size=pipe.batch_size,
            flush_interval_s=pipe.flush_interval_s, on_full=pipe.on_full,
            spill_journal=Journal(journal_root / "_spill", pipe.journal_max_bytes),
            monitors=all_monitors, status_dir=journal_root.parent / "status",
            extra_status=self._extra_status,
        )

    def _build(self, name: str, factory: Any, extra: str | None, bc: BackendConfig) -> object:
        settings = dict(bc.settings)
        if name == "local":
            settings.setdefault("path", self.config.store.path)
        settings.setdefault("timeout_s", bc.timeout_s)
        settings.setdefault("service", self.config.service.name)
        try:
            return factory(settings)
        except ModuleNotFoundError as exc:
            raise MissingExtraError(name, extra or name, exc.name or "?") from exc
        except (ConfigError, MissingExtraError):
            raise
        except Exception as exc:
            raise ConfigError(
                f"{self.config.source or 'config'}: backends.{name}: {exc}"
            ) from exc

    def _enrich(self, record: Any) -> Any:
        svc = self.config.service
        if isinstance(record, Span):
            if record.environment is None:
                record.environment = svc.environment
            if record.release is None:
                record.release = svc.release
        return record

    def _extra_status(self) -> dict[str, Any]:
        monitors = {type(m).__name__: m.stats() for m in self.monitors if hasattr(m, "stats")}
        monitors["alerts"] = self.alerts.stats()
        return {
            "service": self.config.service.name,
            "config": self.config.source,
            "internal_errors": dict(capture.internal_errors),
            "monitors": monitors,
        }

    def submit(self, record: Any) -> None:
        """Hand one record to the pipeline (what the capture path calls)."""
        self.pipeline.submit(record)

    def close(self, timeout_s: float) -> None:
        """Flush and stop the pipeline, then shut every backend down."""
        self.pipeline.close(timeout_s)
        try:
            self.alerts.close(min(2.0, timeout_s / 4))
        except Exception as exc:
            _log.warning("llmvigil alert sinks did not close cleanly: %r", exc)
        for monitor in self.monitors:
            close = getattr(monitor, "close", None)
            if callable(close):
                try:
                    if "timeout_s" in inspect.signature(close).parameters:
                        close(timeout_s=min(2.0, timeout_s / 4))
                    else:
                        close()
                except Exception as exc:
                    _log.warning("llmvigil monitor %s did not close cleanly: %r",
                                 type(monitor).__name__, exc)
        for name, hooks in self.backends.items():
            try:
                hooks.llmvigil_shutdown(timeout_s=max(0.5, timeout_s / 4))
            except Exception as exc:
                _log.warning("llmvigil backend %r shutdown failed: %r", name, exc)


_HOOK_ARG = {"spans": "spans", "scores": "scores", "session_events": "events",
             "metrics": "metrics", "alerts": "alerts", "safety_verdicts": "verdicts"}


def _exporter(hooks: pluggy.HookRelay) -> Any:
    """The outbox's export function over one backend's isolated hooks."""
    callers = {kind: getattr(hooks, f"llmvigil_export_{kind}") for kind in _HOOK_ARG}

    def export(kind: str, records: Sequence[Any]) -> str | None:
        result = callers[kind](**{_HOOK_ARG[kind]: records})
        return None if result is None else str(result.value)

    return export


def _install(runtime: Runtime) -> None:
    global _runtime
    _runtime = runtime
    cap = runtime.config.capture
    capture._stall_threshold_s = cap.stall_threshold_s
    if cap.sample_rate >= 1.0:
        capture._sample = None
    else:
        rate = cap.sample_rate
        rng = random.Random()
        counters = runtime.pipeline.counters

        def sample() -> bool:
            keep = rng.random() < rate
            if not keep:
                with counters.lock:
                    counters.sampled_out += 1
            return keep

        capture._sample = sample
    capture._sink = runtime.pipeline.submit


def _check_monitor_objects(monitors: Any) -> None:
    """Raise ``ConfigError`` unless ``monitors`` is a sequence of monitor objects."""
    expected = ("init(monitors=...): expected a mapping of monitor settings (the "
                "`monitors:` config section) or a list of objects with observe() and tick()")
    if isinstance(monitors, (str, bytes)) or not isinstance(monitors, Sequence):
        raise ConfigError(f"{expected}, got {monitors!r:.100}")
    for i, monitor in enumerate(monitors):
        if not (callable(getattr(monitor, "observe", None))
                and callable(getattr(monitor, "tick", None))):
            raise ConfigError(f"{expected}; item {i} is {monitor!r:.100}")


def init(config_path: str | os.PathLike[str] | None = None, /, *,
         plugin_manager: pluggy.PluginManager | None = None,
         monitors: Sequence[Monitor] = (), **overrides: Any) -> Runtime:
    """Configure llmvigil for this process and start its background worker.

    Args:
        config_path: a YAML file; when omitted, ``VIGIL_CONFIG``, then
            ``./vigil.yaml``, then the defaults (the local store) are used.
        plugin_manager: a prepared plugin manager (tests, embedding apps).
        monitors: extra monitor objects fed by the worker; a mapping instead is taken
            as the ``monitors:`` config section.
        **overrides: top-level config sections, e.g. ``backends=["console"]`` or
            ``capture={"inputs": False}``; they win over the file and environment.

    Calling ``init`` again shuts the previous runtime down (flushing it) first.

    Raises:
        ConfigError: the configuration is invalid (the message names file, line, key).
        MissingExtraError: a backend's vendor SDK is not installed.
    """
    global _explicitly_shut_down
    if isinstance(monitors, Mapping):  # the `monitors:` config section, not instances
        overrides["monitors"] = dict(monitors)
        monitors = ()
    _check_monitor_objects(monitors)
    config = load_config(config_path, **overrides)
    with _lock:
        if _runtime is not None:
            shutdown()
        try:
            runtime = Runtime(config, plugin_manager, monitors)
        except PluginError as exc:
            raise ConfigError(str(exc)) from exc
        _install(runtime)
        _explicitly_shut_down = False
    return runtime


def _autoinit() -> Any:
    """Create the runtime on first use; ``None`` after an explicit shutdown."""
    with _lock:
        if _runtime is not None:
            return _runtime.pipeline.submit
        if _explicitly_shut_down:
            return None
        try:
            init()
        except Exception as exc:
            # Auto-init must never break the application: say why once, then stay off.
            _log.error("llmvigil is disabled: %s", exc)
            _disable()
            return None
        return _runtime.pipeline.submit if _runtime is not None else None


def _disable() -> None:
    global _explicitly_shut_down
    _explicitly_shut_down = True


capture._autoinit = _autoinit


def get_runtime() -> Runtime | None:
    """The active runtime, initialising it from the environment if needed."""
    if _runtime is None:
        _autoinit()
    return _runtime


def is_initialized() -> bool:
    """Whether a runtime is active in this process."""
    return _runtime is not None


def flush(timeout: float = 10.0) -> bool:
    """Block until every record so far reached each backend or its journal.

    Returns ``True`` when that happened within ``timeout`` seconds.
    """
    rt = _runtime
    if rt is None:
        return True
    try:
        return rt.pipeline.flush(timeout)
    except Exception as exc:
        capture.internal_error("flush", exc)
        return False


def shutdown(timeout: float = 10.0) -> None:
    """Flush, stop the worker and outboxes, and release the backends.

    Records emitted afterwards are ignored until :func:`init` is called again.
    Registered with :mod:`atexit` by :func:`init`.
    """
    global _runtime, _explicitly_shut_down
    with _lock:
        rt = _runtime
        _runtime = None
        capture._sink = None
        capture._sample = None
        _explicitly_shut_down = True
    if rt is not None:
        try:
            rt.close(timeout)
        except Exception as exc:
            capture.internal_error("shutdown", exc)


atexit.register(shutdown)

_FEEDBACK_KINDS = {
    "thumbs_up": 1.0, "thumbs_down": 0.0, "rating": None, "correction": 0.0,
    "report": 0.0,
}


def _text(value: Any) -> Any:
    """``value`` as text: ``None`` stays ``None``, anything else is its ``str()``."""
    return value if value is None or type(value) is str else str(value)


def _feedback_value(kind: str, value: Any) -> tuple[float | None, str | None]:
    """``(value, label)`` of a feedback score: the kind's default when ``value`` is
    ``None``, a finite number as it is (numeric strings too); anything else is kept as
    the label, with no value, and a warning (the call never raises)."""
    if value is None:
        return _FEEDBACK_KINDS.get(kind), None
    try:
        return capture.finite_number(float, value, "value"), None
    except (TypeError, ValueError, OverflowError):
        pass
    _log.warning("llmvigil.feedback: value must be a finite number (a rating such as 4, "
                 "or 1/0), got %r; recorded as the score's label, without a value",
                 value)
    return None, str(value)


def _target_ids(target: Any) -> tuple[str | None, str | None]:
    """(trace_id, span_id) of a span handle, a Span, a 16-hex span id or a 32-hex trace id."""
    if target is None:
        handle = capture.current_span()
        return (handle.trace_id, handle.span_id) if handle is not None else (None, None)
    if isinstance(target, capture.SpanHandle):
        return target.trace_id, target.span_id
    if isinstance(target, Span):
        return target.trace_id, target.id
    text = str(target)
    if len(text) == 32:
        return text, None
    return None, text


def feedback(target: Any = None, kind: str = "thumbs_up", value: float | None = None, *,
             category: str | None = None, correction: str | None = None,
             comment: str | None = None, user_id: str | None = None,
             session_id: str | None = None, feature: str | None = None,
             metadata: Mapping[str, Any] | None = None, name: str = "user_feedback",
             source: str = "user") -> Score | None:
    """Record user feedback on a span or trace as a :class:`Score`.

    Args:
        target: a live span (``current_span()``), a ``Span``, a span id (16 hex
            digits) or a trace id (32 hex digits); the current span when omitted.
        kind: ``thumbs_up``, ``thumbs_down``, ``rating``, ``correction``, ``report``
            or your own kind.
        value: the score, a finite number; defaults to 1 for thumbs up and 0 for the
            negative kinds. Anything else is logged and kept as the score's label.

    Text arguments of another type are recorded as their ``str()``; a missing kind
    (``None``) as ``custom``.

    Returns the recorded score (``None`` only if llmvigil itself failed, which is
    logged and counted, never raised).
    """
    try:
        trace_id, span_id = _target_ids(target)
        kind = "custom" if kind is None else _text(kind)
        number, label = _feedback_value(kind, value)
        score = Score(
            name=_text(name) or "user_feedback", kind=kind, value=number, label=label,
            trace_id=trace_id, span_id=span_id, category=_text(category),
            correction=_text(correction), comment=_text(comment), user_id=_text(user_id),
            session_id=_text(session_id), feature=_text(feature),
            metadata=dict(metadata or {}), source=_text(source) or "user",
        )
        capture.emit(score)
        return score
    except Exception as exc:
        capture.internal_error("feedback", exc)
        return None


def session_event(session_id: str, event: str, *, user_id: str | None = None,
                  feature: str | None = None, trace_id: str | None = None,
                  metadata: Mapping[str, Any] | None = None) -> SessionEvent | None:
    """Record a session milestone: ``start``, ``follow_up``, ``task_complete``, ``abandon``
    (or your own event, counted as unknown by the sessions monitor).

    Text arguments of another type are recorded as their ``str()``. Without an event
    (``None``) nothing is recorded, and that is logged once. Returns the recorded
    event, or ``None``; never raises.
    """
    if event is None:
        capture.bad_input("session_event(event)", "session_event() needs an event (start, "
                          "follow_up, task_complete, abandon or your own); got None, "
                          "nothing recorded")
        return None
    try:
        if trace_id is None:
            handle = capture.current_span()
            trace_id = handle.trace_id if handle is not None else None
        ev = SessionEvent(session_id=str(session_id), event=_text(event),
                          user_id=_text(user_id), feature=_text(feature),
                          trace_id=_text(trace_id), metadata=dict(metadata or {}))
        capture.emit(ev)
        return ev
    except Exception as exc:
        capture.internal_error("session_event", exc)
        return None


def emit_metric(name: str, value: float, **labels: str) -> None:
    """Publish one application-defined metric through every backend."""
    capture.emit(Metric(name=name, value=float(value), labels=dict(labels)))
