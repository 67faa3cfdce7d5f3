"""The Weights & Biases backend: one long-lived W&B run per backend instance.

Where records land in the run:

* **Metrics** become history rows. A metric named ``ttft_p95_s`` with labels
  ``{"model": "m", "feature": "f"}`` is the key ``monitor/ttft_p95_s{feature=f,model=m}``
  (labels sorted by name, Prometheus style; no labels: ``monitor/ttft_p95_s``). Every
  row also carries ``llmvigil/time``, the metric's window time in epoch seconds, which
  ``define_metric`` makes the x-axis of every ``monitor/*`` chart. W&B's own ``_step``
  is just a row counter: it only ever increases, so a window replayed late from the
  journal is still accepted and lands at its true time on the x-axis.
* **Spans, scores, session events, safety verdicts and alerts** become one
  ``wandb.Table`` per export batch under ``llmvigil/spans``, ``llmvigil/scores``,
  ``llmvigil/session_events``, ``llmvigil/safety_verdicts``, ``llmvigil/alerts``
  (W&B shows the latest one; every one is kept as a run artifact).
* **Alerts** also go to ``run.alert(title, text, level)`` when the run is online
  (``alerts: auto``, the default), so W&B's Slack/e-mail notifications fire. An
  offline run does not call it: the alert would only be sent when someone runs
  ``wandb sync``, possibly hours later. Offline, alerts are kept in the alerts table
  and in the summary (``llmvigil/alerts_total``, ``llmvigil/last_alert``);
  ``alerts: always`` records them with ``run.alert`` anyway.

Delivery. ``run.log`` only hands data to W&B's own service process (``wandb-core``),
which writes it to the run's ``.wandb`` transaction log and uploads it in the
background with its own retries. Export therefore logs, then makes a round trip to
that service (a run-status request, bounded by ``timeout_s``): when it answers, every
record logged before it has been processed by the service, so ``SUCCESS`` means
"persisted in the local transaction log"; a service that is gone or stuck gives
``RETRY`` and llmvigil journals the batch. What happens after that (the upload to
W&B's servers) is ``wandb-core``'s job: an outage of W&B's servers is not seen here,
but nothing is lost, the ``.wandb`` file can be re-uploaded with ``wandb sync``.
:meth:`WandbBackend.llmvigil_flush` waits (bounded) until the service reports no
pending uploads. Re-delivery of a batch appends rows again: table rows carry the
llmvigil ids so duplicates can be told apart.

The run is created lazily, by the first export on the outbox thread, with
``reinit="create_new"`` so it never finishes or replaces an application's own run,
and with console capture and system metrics off so the application's stdout and
resources are left alone. A W&B outage at start-up therefore delays only this
backend. W&B's ``wandb.init()`` with the default ``reinit`` returns the most recent
active run: an application that also uses W&B and calls ``wandb.init()`` after
llmvigil's run started should pass ``reinit="create_new"`` to get its own run.

W&B Weave traces are not implemented: Weave needs a live W&B server (it has no
offline mode) and owns its own tracing context, which does not fit llmvigil's
record-based export; ``mode: weave`` is rejected with a message saying so.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ..core.errors import ConfigError
from ..core.model import Alert, Metric, SafetyVerdict, Score, SessionEvent, Span
from ..plugins.hookspecs import hookimpl
from ..plugins.types import AdapterInfo, Capabilities, ExportResult

__all__ = ["CAPABILITIES", "WandbBackend", "metric_key"]

_log = logging.getLogger("llmvigil.adapters.wandb")

CAPABILITIES = Capabilities(
    holds={
        "metrics": "run history: monitor/<name>{label=value,...}, x-axis llmvigil/time",
        "spans": "a wandb.Table per batch: llmvigil/spans",
        "scores": "a wandb.Table per batch: llmvigil/scores",
        "session_events": "a wandb.Table per batch: llmvigil/session_events",
        "safety_verdicts": "a wandb.Table per batch: llmvigil/safety_verdicts",
        "alerts": "run.alert() when online; a wandb.Table llmvigil/alerts and the summary",
    },
    notes=(
        "spans are table rows, not a trace tree: parent_id is a column",
        "span stream statistics (TBT), price source/version and free attributes are "
        "not kept",
        "metric unit and window length are not kept; labels are folded into the key",
        "re-delivered batches append rows again (no upsert): dedupe on the id columns",
        "offline runs do not send alerts to W&B (alerts: always to record them anyway)",
        "W&B Weave traces are not implemented",
    ),
)

TIME_KEY = "llmvigil/time"
METRIC_PREFIX = "monitor/"
_MODES = ("online", "offline")
_ALERT_MODES = ("auto", "always", "never")
_TITLE_MAX = 63  # W&B: "must be less than 64 characters"

SPAN_COLUMNS = [
    "trace_id", "span_id", "parent_id", "name", "kind", "model", "provider", "start",
    "duration_s", "ttft_s", "input_tokens", "output_tokens", "cache_read_tokens",
    "cache_write_tokens", "cost_usd", "user_id", "session_id", "feature", "environment",
    "release", "status", "error", "tags", "metadata", "input", "output",
]
SCORE_COLUMNS = [
    "id", "trace_id", "span_id", "name", "kind", "value", "label", "category", "comment",
    "correction", "source", "user_id", "session_id", "feature", "time", "metadata",
]
ALERT_COLUMNS = [
    "id", "time", "rule", "severity", "message", "value", "threshold", "labels",
]
SESSION_EVENT_COLUMNS = [
    "id", "time", "session_id", "event", "user_id", "trace_id", "feature", "metadata",
]
SAFETY_COLUMNS = [
    "id", "time", "action", "reason", "category", "decided_by", "trace_id", "span_id",
    "metadata",
]


def metric_key(metric: Metric) -> str:
    """The history key of ``metric``: ``monitor/<name>`` plus its sorted labels."""
    if not metric.labels:
        return METRIC_PREFIX + metric.name
    labels = ",".join(f"{k}={v}" for k, v in sorted(metric.labels.items()))
    return f"{METRIC_PREFIX}{metric.name}{{{labels}}}"


def _iso(ns: int) -> str:
    return _dt.datetime.fromtimestamp(ns / 1e9, tz=_dt.timezone.utc).isoformat(
        timespec="milliseconds")


def _text(value: Any) -> str | None:
    """Content as table text: strings as they are, anything else as JSON."""
    if value is None or isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False, default=str, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _span_row(s: Span) -> list[Any]:
    u = s.usage
    return [
        s.trace_id, s.id, s.parent_id, s.name, s.kind, s.model, s.provider,
        _iso(s.start_ns), s.duration_s, s.ttft_s,
        u.input_tokens if u else None, u.output_tokens if u else None,
        u.cache_read_tokens if u else None, u.cache_write_tokens if u else None,
        s.cost_usd, s.user_id, s.session_id, s.feature, s.environment, s.release,
        s.status, s.error, ",".join(s.tags), _text(s.metadata or None),
        _text(s.input), _text(s.output),
    ]


def _score_row(s: Score) -> list[Any]:
    return [
        s.id, s.trace_id, s.span_id, s.name, s.kind, s.value, s.label, s.category,
        s.comment, s.correction, s.source, s.user_id, s.session_id, s.feature,
        _iso(s.time_ns), _text(s.metadata or None),
    ]


def _alert_row(a: Alert) -> list[Any]:
    return [a.id, _iso(a.time_ns), a.rule, a.severity, a.message, a.value, a.threshold,
            _text(a.labels or None)]


def _session_event_row(e: SessionEvent) -> list[Any]:
    return [e.id, _iso(e.time_ns), e.session_id, e.event, e.user_id, e.trace_id,
            e.feature, _text(e.metadata or None)]


def _safety_row(v: SafetyVerdict) -> list[Any]:
    return [v.id, _iso(v.time_ns), v.action, v.reason, v.category, v.decided_by,
            v.trace_id, v.span_id, _text(v.metadata or None)]


def history_rows(metrics: Iterable[Metric]) -> list[dict[str, float]]:
    """Group metrics into history rows: one per window time, never two values per key.

    Metrics within the same second share a row, so the metrics of one monitor tick
    land together; a key seen twice starts a new row instead of overwriting.
    """
    rows: list[dict[str, float]] = []
    row: dict[str, float] = {}
    row_second = -1
    for m in sorted(metrics, key=lambda m: m.time_ns):
        key = metric_key(m)
        second = m.time_ns // 1_000_000_000
        if not row or second != row_second or key in row:
            row = {TIME_KEY: m.time_ns / 1e9}
            row_second = second
            rows.append(row)
        row[key] = float(m.value)
    return rows


def _level(severity: str) -> str:
    s = severity.lower()
    if s in ("critical", "error", "page", "fatal", "high"):
        return "ERROR"
    if s in ("warning", "warn", "medium"):
        return "WARN"
    return "INFO"


def _setting(settings: Mapping[str, Any], key: str, env: str | None,
             default: Any = None) -> Any:
    value = settings.get(key)
    if value is None and env is not None:
        value = os.environ.get(env) or None
    return default if value is None else value


class WandbBackend:
    """Publishes llmvigil records into one W&B run (see the module docstring)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        import wandb  # noqa: F401  (a missing SDK must fail at init, naming the extra)

        service = str(settings.get("service") or "llmvigil")
        self.mode = str(_setting(settings, "mode", "WANDB_MODE", "online")).lower()
        if self.mode == "weave":
            raise ConfigError(
                "backends.wandb: mode 'weave' (W&B Weave traces) is not implemented; "
                "use mode 'online' or 'offline'")
        if self.mode == "dryrun":  # wandb's older name for offline
            self.mode = "offline"
        if self.mode == "disabled":
            raise ConfigError("backends.wandb: mode 'disabled' (from WANDB_MODE?): to turn "
                              "the backend off, set `enabled: false` on it instead")
        if self.mode not in _MODES:
            raise ConfigError(
                f"backends.wandb: mode must be one of {', '.join(_MODES)}, got {self.mode!r}")
        self.alerts = str(settings.get("alerts", "auto")).lower()
        if self.alerts not in _ALERT_MODES:
            raise ConfigError(f"backends.wandb: alerts must be one of "
                              f"{', '.join(_ALERT_MODES)}, got {self.alerts!r}")
        self.project = str(_setting(settings, "project", "WANDB_PROJECT", "llmvigil"))
        self.entity: str | None = _setting(settings, "entity", "WANDB_ENTITY")
        self.dir: str | None = _setting(settings, "dir", "WANDB_DIR")
        self._api_key: str | None = _setting(settings, "api_key", "WANDB_API_KEY")
        self.base_url: str | None = _setting(settings, "base_url", "WANDB_BASE_URL")
        self.run_id: str | None = settings.get("run_id")
        self.run_name = str(settings.get("run_name")
                            or f"{service}-{socket.gethostname()}-{os.getpid()}")
        self.group = str(settings.get("group") or service)
        tags = settings.get("tags") or []
        self.tags = [tags] if isinstance(tags, str) else [str(t) for t in tags]
        self.system_metrics = bool(settings.get("system_metrics", False))
        self.timeout_s = float(settings.get("timeout_s", 10.0))
        self._run: Any = None
        self._lock = threading.Lock()
        self._alerts_total = 0
        #: The last delivery failure (``None`` after a success).
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return (f"<WandbBackend project={self.project!r} entity={self.entity!r} "
                f"mode={self.mode!r}>")

    # -- the run -----------------------------------------------------------------------

    def _ensure_run(self) -> Any:
        if self._run is not None:
            return self._run
        import wandb

        options: dict[str, Any] = {
            "silent": True, "console": "off", "x_disable_stats": not self.system_metrics,
            "init_timeout": max(self.timeout_s, 1.0), "save_code": False,
            "disable_git": True, "x_save_requirements": False,
            "finish_timeout": max(self.timeout_s, 1.0),
        }
        if self._api_key:
            options["api_key"] = self._api_key
        if self.base_url:
            options["base_url"] = self.base_url
        init: dict[str, Any] = {
            "project": self.project, "entity": self.entity, "mode": self.mode,
            "dir": self.dir, "id": self.run_id, "name": self.run_name, "group": self.group,
            "resume": "allow" if self.run_id else None, "job_type": "monitoring",
            "tags": self.tags or None, "reinit": "create_new",
        }
        run = wandb.init(**init, settings=wandb.Settings(**options))
        run.define_metric(TIME_KEY)
        run.define_metric(METRIC_PREFIX + "*", step_metric=TIME_KEY)
        self._run = run
        return run

    def _confirm(self, run: Any) -> None:
        """Round trip to wandb-core: returns once everything logged so far was processed.

        Raises ``TimeoutError`` (or the SDK's error) when the service does not answer.
        """
        interface = getattr(run, "_interface", None)
        if interface is None:  # an SDK without this internal: trust log()
            return
        interface.deliver_request_run_status().wait_or(timeout=self.timeout_s)

    def _deliver(self, what: str, fn: Any) -> ExportResult:
        with self._lock:
            try:
                run = self._ensure_run()
                fn(run)
                self._confirm(run)
            except Exception as exc:
                self._warn(f"{what} not delivered: {type(exc).__name__}: {exc}")
                return ExportResult.RETRY
        self.last_error = None
        return ExportResult.SUCCESS

    def _warn(self, message: str) -> None:
        """Log a failure once, not at every retry of the same outage."""
        if message != self.last_error:
            _log.warning("llmvigil wandb backend: %s", message)
        self.last_error = message

    def _log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> ExportResult:
        def log(run: Any) -> None:
            run.log({key: _table(columns, rows), TIME_KEY: time.time()})

        return self._deliver(key, log)

    # -- export hooks --------------------------------------------------------------------

    @hookimpl
    def llmvigil_export_metrics(self, metrics: Sequence[Metric]) -> ExportResult:
        rows = history_rows(metrics)

        def log(run: Any) -> None:
            for row in rows:
                run.log(row)

        return self._deliver("metrics", log)

    @hookimpl
    def llmvigil_export_spans(self, spans: Sequence[Span]) -> ExportResult:
        return self._log_table("llmvigil/spans", SPAN_COLUMNS, [_span_row(s) for s in spans])

    @hookimpl
    def llmvigil_export_scores(self, scores: Sequence[Score]) -> ExportResult:
        return self._log_table("llmvigil/scores", SCORE_COLUMNS,
                               [_score_row(s) for s in scores])

    @hookimpl
    def llmvigil_export_session_events(self, events: Sequence[SessionEvent]) -> ExportResult:
        return self._log_table("llmvigil/session_events", SESSION_EVENT_COLUMNS,
                               [_session_event_row(e) for e in events])

    @hookimpl
    def llmvigil_export_safety_verdicts(
        self, verdicts: Sequence[SafetyVerdict]
    ) -> ExportResult:
        return self._log_table("llmvigil/safety_verdicts", SAFETY_COLUMNS,
                               [_safety_row(v) for v in verdicts])

    @hookimpl
    def llmvigil_export_alerts(self, alerts: Sequence[Alert]) -> ExportResult:
        send = self.alerts == "always" or (self.alerts == "auto" and self.mode == "online")
        rows = [_alert_row(a) for a in alerts]

        def log(run: Any) -> None:
            run.log({"llmvigil/alerts": _table(ALERT_COLUMNS, rows), TIME_KEY: time.time()})
            last = max(alerts, key=lambda a: a.time_ns)
            run.summary["llmvigil/alerts_total"] = self._alerts_total + len(alerts)
            run.summary["llmvigil/last_alert"] = {
                "rule": last.rule, "severity": last.severity, "message": last.message,
                "value": last.value, "threshold": last.threshold, "time": _iso(last.time_ns),
            }
            if send:
                for a in alerts:
                    run.alert(title=a.rule[:_TITLE_MAX], text=_alert_text(a),
                              level=_level(a.severity),
                              wait_duration=1)  # llmvigil's rules apply their own cooldown

        result = self._deliver("alerts", log)
        if result is ExportResult.SUCCESS:
            self._alerts_total += len(alerts)
        return result

    # -- lifecycle -------------------------------------------------------------------------

    @hookimpl
    def llmvigil_flush(self, timeout_s: float) -> bool:
        """Wait until wandb-core reports no pending uploads (online), bounded."""
        deadline = time.monotonic() + timeout_s
        if not self._lock.acquire(timeout=timeout_s):
            return False
        try:
            run = self._run
            interface = getattr(run, "_interface", None)
            if run is None or interface is None:
                return True
            try:
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    result = interface.deliver_request_run_status().wait_or(timeout=left)
                    status = result.response.run_status_response
                    if not status.sync_items_pending:
                        return True
                    time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
            except Exception as exc:
                _log.warning("llmvigil wandb backend: flush failed: %r", exc)
                return False
        finally:
            self._lock.release()

    @hookimpl
    def llmvigil_check(self, timeout_s: float) -> str:
        """Offline: where runs are written. Online: who the API key belongs to.

        Creates no run and sends no data.
        """
        where = f"{self.entity}/{self.project}" if self.entity else self.project
        if self.mode == "offline":
            return (f"W&B offline runs for {where} under {self.dir or '.'}/wandb "
                    "(upload with `wandb sync`)")
        import wandb

        overrides = {"base_url": self.base_url} if self.base_url else None
        try:
            api = wandb.Api(overrides=overrides, timeout=max(1, round(timeout_s)),
                            api_key=self._api_key)
            user = api.viewer.username
        except Exception as exc:
            raise ConnectionError(f"W&B at {self.base_url or 'the default server'}: "
                                  f"{type(exc).__name__}: {exc}") from None
        return f"W&B project {where} as {user} ({self.base_url or 'default server'})"

    @hookimpl
    def llmvigil_shutdown(self, timeout_s: float) -> None:
        # An export stuck in the SDK holds the lock: do not wait for it past timeout_s.
        if not self._lock.acquire(timeout=timeout_s):
            _log.warning("llmvigil wandb backend: an export is still running; the run is "
                         "left to wandb's own exit handler")
            return
        try:
            run, self._run = self._run, None
        finally:
            self._lock.release()
        if run is None:
            return
        # finish() waits for uploads; run it aside so shutdown stays within timeout_s.
        done = threading.Thread(target=_finish, args=(run,), name="llmvigil-wandb-finish",
                                daemon=True)
        done.start()
        done.join(timeout_s)
        if done.is_alive():
            _log.warning("llmvigil wandb backend: run %s still finishing after %.1fs; "
                         "its .wandb file can be uploaded with `wandb sync`",
                         run.id, timeout_s)


def _table(columns: list[str], rows: list[list[Any]]) -> Any:
    import wandb

    # Mixed types: a column may hold None, int and float (or str and None) across rows.
    cols: list[Any] = list(columns)
    return wandb.Table(columns=cols, data=rows, allow_mixed_types=True)


def _finish(run: Any) -> None:
    try:
        run.finish()
    except Exception as exc:
        _log.warning("llmvigil wandb backend: finishing the run failed: %r", exc)


def _alert_text(a: Alert) -> str:
    parts = [a.message]
    if a.value is not None:
        parts.append(f"observed: {a.value:g}")
    if a.threshold is not None:
        parts.append(f"threshold: {a.threshold:g}")
    if a.labels:
        parts.append(", ".join(f"{k}={v}" for k, v in sorted(a.labels.items())))
    parts.append(f"severity: {a.severity}")
    return "\n".join(parts)


@hookimpl
def llmvigil_adapters() -> list[AdapterInfo]:
    return [AdapterInfo(name="wandb", factory=WandbBackend, capabilities=CAPABILITIES,
                        description="Weights & Biases: metrics as run history, records as "
                                    "tables, alerts as W&B alerts",
                        extra="wandb")]
