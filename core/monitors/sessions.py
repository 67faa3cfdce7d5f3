"""The sessions monitor: multi-turn sessions, task completion and abandonment.

It reads :class:`~llmvigil.core.model.SessionEvent` records (``start``,
``follow_up``, ``task_complete``, ``abandon``, and ``turn`` for applications that do
not trace their requests) and the spans carrying a ``session_id``. A *turn* is one
request span of the session (a root span by default) or one ``turn`` event. A
session ends when:

* ``abandon`` arrives (abandoned, reason ``explicit``, unless already completed);
* nothing happened for ``idle_timeout_s``, checked at tick time (abandoned, reason
  ``timeout``, unless a ``task_complete`` arrived);
* more than ``max_open_sessions`` are open: the least recently active one is
  evicted (abandoned, reason ``evicted``, unless completed) and counted.

A completion is counted when ``task_complete`` arrives; an abandonment when the
session ends. Every ``emit_interval_s`` the monitor publishes, per feature and over
``window_s`` (``feature="_all"`` is the total, ``"_none"`` sessions without one):
``sessions.started``, ``sessions.task_completion_rate`` and ``sessions.abandon_rate``
(over sessions resolved in the window: completed + abandoned), ``sessions.abandoned``
(per ``reason``), ``sessions.turns_mean``, ``sessions.follow_up_rate`` (follow-ups per
turn), ``sessions.duration_mean_s`` and ``sessions.time_to_completion_mean_s`` (over
sessions ended in the window), each rate with its sample count as ``<name>.n``, and the
gauge ``sessions.open``.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any, Literal

from pydantic import Field, model_validator

from ..model import Metric, SessionEvent, Span
from .windows import RollingCounters, Settings, parse_settings

__all__ = ["SESSION_EVENTS", "SessionsMonitor", "SessionsSettings"]

_log = logging.getLogger("llmvigil.monitors.sessions")

#: The session events this monitor understands.
SESSION_EVENTS: frozenset[str] = frozenset(
    ("start", "turn", "follow_up", "task_complete", "abandon")
)
ALL = "_all"
NONE = "_none"
_REASONS = ("timeout", "explicit", "evicted")
_FIELDS = (
    "started", "completed", "timeout", "explicit", "evicted", "ended", "turns",
    "follow_ups", "duration_s", "completion_s",
)


class SessionsSettings(Settings):
    """``monitors.sessions``: inactivity timeout, windows and memory bounds."""

    enabled: bool = True
    idle_timeout_s: float = Field(default=1800.0, gt=0)
    window_s: float = Field(default=3600.0, gt=0)
    bucket_s: float = Field(default=60.0, gt=0)
    emit_interval_s: float = Field(default=60.0, gt=0)
    turns_from: Literal["root", "llm", "all"] = "root"
    max_open_sessions: int = Field(default=100_000, ge=1)
    max_features: int = Field(default=1000, ge=1)
    totals: bool = True

    @model_validator(mode="after")
    def _check(self) -> SessionsSettings:
        """Reject windows too fine to hold in memory."""
        if self.window_s / self.bucket_s > 1440:
            raise ValueError("window_s / bucket_s must be at most 1440 buckets")
        return self


class _Session:
    """What is known about one open session."""

    __slots__ = ("completed_ns", "feature", "follow_ups", "last_ns", "start_ns", "turns")

    def __init__(self, t_ns: int, feature: str | None) -> None:
        self.start_ns = t_ns
        self.last_ns = t_ns
        self.feature = feature
        self.turns = 0
        self.follow_ups = 0
        self.completed_ns: int | None = None


class SessionsMonitor:
    """Tracks open sessions and publishes completion, abandonment and turn metrics.

    Args:
        config: the ``monitors.sessions`` mapping (see :class:`SessionsSettings`),
            a settings instance, or ``None`` for the defaults.
        where: the config path named in error messages.

    Raises:
        ConfigError: the settings are invalid.
    """

    def __init__(self, config: Mapping[str, Any] | SessionsSettings | None = None, *,
                 where: str = "monitors.sessions") -> None:
        s = self.settings = parse_settings(SessionsSettings, config, where)
        self._counters = RollingCounters.spanning(
            _FIELDS, window_s=s.window_s, bucket_s=s.bucket_s, max_keys=s.max_features + 1
        )
        self._open: OrderedDict[str, _Session] = OrderedDict()
        self._idle_ns = int(s.idle_timeout_s * 1e9)
        # settings the per-span path reads, looked up once (the settings are immutable)
        self._turns_from = s.turns_from
        self._totals = s.totals
        self._next_emit_ns = 0
        self.evicted = 0
        self.unknown_events = 0
        self.late_events = 0

    # -- observe --------------------------------------------------------------------

    #: The record classes the pipeline offers to :meth:`observe`.
    observes = (Span, SessionEvent)

    def observe(self, record: Any) -> Iterable[Any]:
        """Update the session a SessionEvent or a Span with ``session_id`` belongs to."""
        if isinstance(record, Span):
            if record.session_id:
                self._on_span(record)
        elif isinstance(record, SessionEvent):
            self._on_event(record)
        return ()

    def _touch(self, session_id: str, t_ns: int, feature: str | None) -> _Session:
        """The open session ``session_id``, opened at ``t_ns`` if needed, marked active."""
        sess = self._open.get(session_id)
        if sess is None:
            if len(self._open) >= self.settings.max_open_sessions:
                self._evict(t_ns)
            sess = self._open[session_id] = _Session(t_ns, feature)
            self._add(sess, t_ns, started=1.0)
        else:
            self._open.move_to_end(session_id)
            if t_ns > sess.last_ns:
                sess.last_ns = t_ns
            elif t_ns < sess.start_ns:
                sess.start_ns = t_ns
            if sess.feature is None:
                sess.feature = feature
        return sess

    def _on_span(self, span: Span) -> None:
        mode = self._turns_from
        t = span.end_ns or span.start_ns
        sess = self._touch(str(span.session_id), t, span.feature)
        if not ((mode == "root" and span.parent_id is not None)
                or (mode == "llm" and span.kind != "llm")):
            sess.turns += 1

    def _on_event(self, ev: SessionEvent) -> None:
        kind, t = ev.event, ev.time_ns
        if kind not in SESSION_EVENTS:
            self.unknown_events += 1
            return
        current = self._open.get(ev.session_id)
        if kind == "abandon" and current is None:
            self.late_events += 1  # the session already ended (e.g. by timeout)
            return
        if kind == "start" and current is not None and current.completed_ns is not None:
            self._close(ev.session_id, "explicit", t)  # a new task in a reused session id
        sess = self._touch(ev.session_id, t, ev.feature)
        if kind == "turn":
            sess.turns += 1
        elif kind == "follow_up":
            sess.follow_ups += 1
        elif kind == "task_complete" and sess.completed_ns is None:
            sess.completed_ns = t
            self._add(sess, t, completed=1.0, completion_s=max(0, t - sess.start_ns) / 1e9)
        elif kind == "abandon":
            self._close(ev.session_id, "explicit", t)

    # -- ending sessions ------------------------------------------------------------

    def _evict(self, t_ns: int) -> None:
        session_id = next(iter(self._open))
        self.evicted += 1
        if self.evicted == 1:
            _log.warning("llmvigil: more than %d open sessions; evicting the least recently "
                         "active ones (counted as abandoned, reason 'evicted'); raise "
                         "monitors.sessions.max_open_sessions", self.settings.max_open_sessions)
        self._close(session_id, "evicted", t_ns)

    def _close(self, session_id: str, reason: str, t_ns: int) -> None:
        sess = self._open.pop(session_id)
        amounts = {
            "ended": 1.0, "turns": float(sess.turns), "follow_ups": float(sess.follow_ups),
            "duration_s": max(0, sess.last_ns - sess.start_ns) / 1e9,
        }
        if sess.completed_ns is None:
            amounts[reason] = 1.0
        self._add(sess, t_ns, **amounts)

    def _add(self, sess: _Session, t_ns: int, **amounts: float) -> None:
        feature = sess.feature or NONE
        self._counters.add(feature, t_ns, **amounts)
        if self._totals:
            self._counters.add(ALL, t_ns, **amounts)

    def _expire(self, now_ns: int) -> None:
        deadline = now_ns - self._idle_ns
        expired = []
        for session_id, sess in self._open.items():
            if sess.last_ns > deadline:
                break  # ordered by activity: the rest are more recent
            expired.append(session_id)
        for session_id in expired:
            self._close(session_id, "timeout", now_ns)

    # -- tick -----------------------------------------------------------------------

    def tick(self, now_ns: int) -> Iterable[Any]:
        """End idle sessions; every ``emit_interval_s``, publish the window metrics."""
        self._expire(now_ns)
        if now_ns < self._next_emit_ns:
            return ()
        self._next_emit_ns = now_ns + int(self.settings.emit_interval_s * 1e9)
        return self._emit(now_ns)

    def _emit(self, now_ns: int) -> list[Metric]:
        window = self.settings.window_s

        def metric(name: str, value: float, unit: str | None, **labels: str) -> Metric:
            return Metric(name=name, value=value, time_ns=now_ns, window_s=window,
                          labels=labels, unit=unit)

        out = [Metric(name="sessions.open", value=float(len(self._open)), time_ns=now_ns,
                      labels={"feature": ALL}, unit="1")]
        for key in self._counters.live_keys():
            feature = str(key)
            t = dict(zip(_FIELDS, self._counters.totals(key, now_ns), strict=True))
            abandoned = t["timeout"] + t["explicit"] + t["evicted"]
            resolved = t["completed"] + abandoned
            out.append(metric("sessions.started", t["started"], "1", feature=feature))
            for reason in _REASONS:
                out.append(metric("sessions.abandoned", t[reason], "1", feature=feature,
                                  reason=reason))
            rates = [
                ("sessions.task_completion_rate", t["completed"], resolved, "ratio"),
                ("sessions.abandon_rate", abandoned, resolved, "ratio"),
                ("sessions.turns_mean", t["turns"], t["ended"], "1"),
                ("sessions.follow_up_rate", t["follow_ups"], t["turns"], "1/turn"),
                ("sessions.duration_mean_s", t["duration_s"], t["ended"], "s"),
                ("sessions.time_to_completion_mean_s", t["completion_s"], t["completed"], "s"),
            ]
            for name, num, den, unit in rates:
                if den > 0:
                    out.append(metric(f"{name}.n", den, "1", feature=feature))
                    out.append(metric(name, num / den, unit, feature=feature))
            if not any(t.values()):
                self._counters.discard(key)  # published its zeros once; forget it
        return out

    # -- introspection --------------------------------------------------------------

    def open_sessions(self) -> int:
        """How many sessions are open now."""
        return len(self._open)

    def stats(self) -> dict[str, Any]:
        """Memory and loss counters, for status pages."""
        return {
            "open": len(self._open), "evicted": self.evicted,
            "features": len(self._counters), "features_evicted": self._counters.evicted,
            "unknown_events": self.unknown_events,
            "late_events": self.late_events, "ignored_late": self._counters.too_old,
        }
