"""Alert rules on metrics, and the routing of every Alert record to alert sinks.

:class:`AlertsMonitor` is a pipeline monitor. Each Metric it observes is checked
against the YAML ``alerts.rules``; a rule fires an :class:`~llmvigil.core.model.Alert`
when its condition has held for ``for_s`` seconds, at most once per ``cooldown_s``
for the same (rule, labels) series, and only once per breach unless ``repeat_s`` is
set. Alerts are records: the ones a rule fires are returned to the pipeline (so they
reach every backend) and sent to the rule's sinks; Alert records produced by other
monitors are sent to the sinks picked by ``alerts.routes`` (``default_route`` when no
route matches). Each alert id is routed once.

Sinks are plugins (the ``llmvigil_alert_sinks`` hook). This module is itself the
built-in sink plugin: ``log`` (a log line at the alert's severity), ``webhook``
(JSON POST), ``slack`` (Slack incoming-webhook payload) and ``file`` (JSON lines,
mode 0600). The network and file sinks deliver from a small daemon thread with a
bounded queue and retries, so a slow or failing sink never blocks the worker.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from ..plugins.hookspecs import hookimpl
from ..plugins.types import AlertSinkInfo
from .errors import ConfigError, PluginError
from .model import Alert, Metric, encode, to_builtins
from .monitors.windows import Settings, parse_settings

__all__ = [
    "BUILTIN_SINKS",
    "AlertRule",
    "AlertsMonitor",
    "AlertsSettings",
    "BackgroundSink",
    "FileSink",
    "LogSink",
    "Route",
    "SlackSink",
    "WebhookSink",
    "alert_sink_infos",
    "llmvigil_alert_sinks",
]

_log = logging.getLogger("llmvigil.alerts")

Severity = Literal["info", "warning", "error", "critical"]
_LEVELS = {"info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR,
           "critical": logging.CRITICAL}
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": lambda v, t: v > t, "<": lambda v, t: v < t,
    ">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t,
}
Sink = Callable[[Alert], None]


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


class AlertRule(Settings):
    """One ``alerts.rules`` entry: fire when ``metric op threshold`` holds for ``for_s``.

    ``labels`` scopes the rule: every key must be on the metric, with a value matching
    the (glob) pattern. Each distinct label set of a matching metric is its own series
    with its own ``for_s`` timer and cooldown. ``min_samples`` requires the sample
    count the monitor publishes as ``<metric>.n`` (same labels) to be at least that;
    ``window_s`` restricts the rule to metrics computed over that window.
    """

    name: str = Field(min_length=1)
    metric: str = Field(min_length=1)
    op: Literal[">", "<", ">=", "<="]
    threshold: float
    labels: dict[str, str] = {}
    for_s: float = Field(default=0.0, ge=0)
    min_samples: int = Field(default=0, ge=0)
    window_s: float | None = Field(default=None, gt=0)
    severity: Severity = "warning"
    cooldown_s: float = Field(default=300.0, ge=0)
    repeat_s: float | None = Field(default=None, gt=0)
    route: list[str] | None = None

    @field_validator("labels", mode="before")
    @classmethod
    def _stringify(cls, value: Any) -> Any:
        """Label values are strings; let YAML numbers and booleans through as text."""
        if isinstance(value, Mapping):
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in value.items()}
        return value


class Route(Settings):
    """One ``alerts.routes`` entry: alerts matching ``rule`` (glob), ``severity`` and
    ``labels`` (globs) go to ``sinks``."""

    sinks: list[str] = Field(min_length=1)
    rule: str = "*"
    severity: list[Severity] | None = None
    labels: dict[str, str] = {}


class AlertsSettings(Settings):
    """The ``alerts:`` section."""

    rules: list[AlertRule] = []
    routes: list[Route] = []
    default_route: list[str] = ["log"]
    sinks: dict[str, dict[str, Any]] = {}
    max_series: int = Field(default=10_000, ge=1)

    @model_validator(mode="after")
    def _unique(self) -> AlertsSettings:
        """Reject two rules with the same name."""
        seen: set[str] = set()
        for rule in self.rules:
            if rule.name in seen:
                raise ValueError(f"two rules are named {rule.name!r}")
            seen.add(rule.name)
        return self


# ---------------------------------------------------------------------------
# Rule evaluation and routing
# ---------------------------------------------------------------------------


def _matches(patterns: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    for key, pattern in patterns.items():
        value = labels.get(key)
        if value is None or not fnmatchcase(value, pattern):
            return False
    return True


class _Series:
    """The state of one (rule, labels) series."""

    __slots__ = ("active", "last_fired_ns", "since_ns")

    def __init__(self) -> None:
        self.since_ns: int | None = None
        self.active = False
        self.last_fired_ns: int | None = None


class AlertsMonitor:
    """Evaluates alert rules on Metric records and routes Alert records to sinks.

    Args:
        config: the ``alerts`` mapping (see :class:`AlertsSettings`), a settings
            instance, or ``None`` (no rules, alerts from other monitors to ``log``).
        plugin_manager: where sink types come from (``llmvigil_alert_sinks``); the
            built-in sinks are always available.
        sinks: ready sink callables by name, used before any sink type (embedding
            apps, tests).
        where: the config path named in error messages.

    Raises:
        ConfigError: invalid settings, a route naming an unknown sink, or a sink
            whose settings its factory rejects.
    """

    def __init__(self, config: Mapping[str, Any] | AlertsSettings | None = None, *,
                 plugin_manager: Any = None, sinks: Mapping[str, Sink] | None = None,
                 where: str = "alerts") -> None:
        s = self.settings = parse_settings(AlertsSettings, config, where)
        self._where = where
        self._by_metric: dict[str, list[AlertRule]] = {}
        for rule in s.rules:
            self._by_metric.setdefault(rule.metric, []).append(rule)
        self._count_names = {f"{r.metric}.n" for r in s.rules if r.min_samples}
        self._series: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], _Series] = (
            OrderedDict()
        )
        self._samples: OrderedDict[tuple[str, tuple[tuple[str, str], ...]], float] = (
            OrderedDict()
        )
        self._routed_ids: OrderedDict[str, None] = OrderedDict()
        self.sinks = self._build_sinks(alert_sink_infos(plugin_manager), dict(sinks or {}))
        self.fired = 0
        self.suppressed = 0
        self.duplicates = 0
        self.routed: dict[str, int] = dict.fromkeys(self.sinks, 0)
        self.sink_errors: dict[str, int] = dict.fromkeys(self.sinks, 0)

    def _build_sinks(self, infos: Mapping[str, AlertSinkInfo],
                     ready: dict[str, Sink]) -> dict[str, Sink]:
        s = self.settings
        wanted: dict[str, str] = {}  # sink name -> where it is named
        for name in s.sinks:
            wanted[name] = f"{self._where}.sinks.{name}"
        for i, rule in enumerate(s.rules):
            for name in rule.route or ():
                wanted.setdefault(name, f"{self._where}.rules[{i}].route")
        for i, route in enumerate(s.routes):
            for name in route.sinks:
                wanted.setdefault(name, f"{self._where}.routes[{i}].sinks")
        for name in s.default_route:
            wanted.setdefault(name, f"{self._where}.default_route")
        built: dict[str, Sink] = {}
        for name, where in wanted.items():
            if name in ready:
                built[name] = ready[name]
                continue
            settings = dict(s.sinks.get(name, {}))
            kind = str(settings.pop("type", name))
            info = infos.get(kind)
            if info is None:
                known = sorted(set(infos) | set(s.sinks) | set(ready))
                raise ConfigError(
                    f"{where}: unknown alert sink {kind!r}; known sinks: {', '.join(known)} "
                    f"(define one under {self._where}.sinks with a 'type', or install a "
                    "plugin offering it)"
                )
            try:
                built[name] = info.factory(settings)
            except ConfigError as exc:
                raise ConfigError(f"{self._where}.sinks.{name}: {exc}") from None
            except Exception as exc:
                raise ConfigError(f"{self._where}.sinks.{name}: {exc}") from exc
        return built

    # -- monitor protocol ---------------------------------------------------------------

    observes = (Metric, Alert)

    def observe(self, record: Any) -> Iterable[Any]:
        """Evaluate the rules on a Metric (returning the alerts fired); route an Alert."""
        if isinstance(record, Metric):
            return self._on_metric(record)
        if isinstance(record, Alert):
            self.route(record, None)
        return ()

    def tick(self, now_ns: int) -> Iterable[Any]:
        """Nothing periodic: rules are evaluated as metrics arrive."""
        return ()

    # -- rules --------------------------------------------------------------------------

    def _on_metric(self, metric: Metric) -> list[Alert]:
        name = metric.name
        if name in self._count_names:
            self._remember(self._samples, (name, tuple(sorted(metric.labels.items()))),
                           metric.value)
        rules = self._by_metric.get(name)
        if not rules:
            return []
        labels_key = tuple(sorted(metric.labels.items()))
        fired: list[Alert] = []
        for rule in rules:
            if rule.window_s is not None and metric.window_s != rule.window_s:
                continue
            if not _matches(rule.labels, metric.labels):
                continue
            alert = self._evaluate(rule, metric, labels_key)
            if alert is not None:
                fired.append(alert)
                self.route(alert, rule)
        return fired

    def _remember(self, store: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        store[key] = value
        store.move_to_end(key)
        if len(store) > self.settings.max_series:
            store.popitem(last=False)

    def _evaluate(self, rule: AlertRule, metric: Metric,
                  labels_key: tuple[tuple[str, str], ...]) -> Alert | None:
        key = (rule.name, labels_key)
        series = self._series.get(key)
        if series is None:
            series = _Series()
            self._remember(self._series, key, series)
        t = metric.time_ns
        breach = _OPS[rule.op](metric.value, rule.threshold)
        if breach and rule.min_samples:
            n = self._samples.get((f"{rule.metric}.n", labels_key))
            breach = n is not None and n >= rule.min_samples
        if not breach:
            series.since_ns, series.active = None, False
            return None
        if series.since_ns is None:
            series.since_ns = t
        if t - series.since_ns < rule.for_s * 1e9:
            return None
        last = series.last_fired_ns
        if series.active:
            if rule.repeat_s is None or last is None or t - last < rule.repeat_s * 1e9:
                return None
        elif last is not None and t - last < rule.cooldown_s * 1e9:
            self.suppressed += 1
            return None
        series.active, series.last_fired_ns = True, t
        self.fired += 1
        shown = ", ".join(f"{k}={v}" for k, v in labels_key)
        held = f" for {(t - series.since_ns) / 1e9:g}s" if rule.for_s else ""
        return Alert(
            rule=rule.name, severity=rule.severity, time_ns=t, value=metric.value,
            threshold=rule.threshold, labels={**metric.labels, "metric": metric.name},
            message=(f"{metric.name}{{{shown}}} = {metric.value:.6g} {rule.op} "
                     f"{rule.threshold:g}{held}"),
        )

    # -- routing ------------------------------------------------------------------------

    def sinks_for(self, alert: Alert, rule: AlertRule | None = None) -> list[str]:
        """The sink names ``alert`` goes to: the rule's route, matching routes, or default."""
        if rule is not None and rule.route is not None:
            return list(rule.route)
        names: list[str] = []
        for route in self.settings.routes:
            if (fnmatchcase(alert.rule, route.rule)
                    and (route.severity is None or alert.severity in route.severity)
                    and _matches(route.labels, alert.labels)):
                names.extend(n for n in route.sinks if n not in names)
        return names or list(self.settings.default_route)

    def route(self, alert: Alert, rule: AlertRule | None = None) -> None:
        """Send ``alert`` to its sinks, once per alert id; a failing sink is counted."""
        if alert.id in self._routed_ids:
            self.duplicates += 1
            return
        self._remember(self._routed_ids, alert.id, None)
        for name in self.sinks_for(alert, rule):
            try:
                self.sinks[name](alert)
                self.routed[name] += 1
            except Exception as exc:
                self.sink_errors[name] += 1
                if self.sink_errors[name] == 1:
                    _log.warning("llmvigil alert sink %r failed: %r", name, exc)

    # -- lifecycle ----------------------------------------------------------------------

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until the background sinks delivered (or gave up on) what they hold."""
        deadline = time.monotonic() + timeout_s
        ok = True
        for sink in self.sinks.values():
            flush = getattr(sink, "flush", None)
            if callable(flush):
                ok = bool(flush(max(0.0, deadline - time.monotonic()))) and ok
        return ok

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what the sinks hold within ``timeout_s`` and stop their threads."""
        deadline = time.monotonic() + timeout_s
        for sink in self.sinks.values():
            close = getattr(sink, "close", None)
            if callable(close):
                try:
                    close(max(0.0, deadline - time.monotonic()))
                except Exception as exc:
                    _log.warning("llmvigil alert sink close failed: %r", exc)

    def stats(self) -> dict[str, Any]:
        """Counters: alerts fired, suppressed by cooldown, per-sink deliveries and errors."""
        per_sink: dict[str, Any] = {}
        for name, sink in self.sinks.items():
            stats = getattr(sink, "stats", None)
            per_sink[name] = {"routed": self.routed[name], "errors": self.sink_errors[name],
                              **(stats() if callable(stats) else {})}
        return {"fired": self.fired, "suppressed": self.suppressed,
                "duplicates": self.duplicates, "series": len(self._series),
                "sinks": per_sink}


# ---------------------------------------------------------------------------
# Built-in sinks
# ---------------------------------------------------------------------------


class LogSink:
    """Logs each alert on logger ``logger`` at the level named by its severity."""

    class Options(Settings):
        """``type: log`` settings."""

        logger: str = "llmvigil.alerts"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.config = parse_settings(LogSink.Options, settings, "log")
        self._logger = logging.getLogger(self.config.logger)

    def __call__(self, alert: Alert) -> None:
        self._logger.log(_LEVELS.get(alert.severity, logging.WARNING), "[%s] %s: %s",
                         alert.severity, alert.rule, alert.message)


class _Permanent(Exception):
    """A delivery failure that retrying cannot fix (e.g. HTTP 400)."""


class BackgroundSink:
    """Base of sinks that deliver from their own daemon thread.

    Calling the sink only enqueues (never blocks; a full queue drops and counts);
    the thread calls :meth:`deliver`, retrying failures with exponential backoff.
    Counters: ``sent``, ``retried``, ``failed`` (gave up), ``dropped`` (queue full
    or closed).
    """

    name = "background"

    def __init__(self, *, max_queue: int, max_retries: int, backoff_s: float) -> None:
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.sent = self.retried = self.failed = self.dropped = 0
        self._queue: queue.Queue[Alert | None] = queue.Queue(max_queue)
        self._pending = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def deliver(self, alert: Alert) -> None:
        """Deliver one alert; raise on failure (:class:`_Permanent` stops retries)."""
        raise NotImplementedError

    def __call__(self, alert: Alert) -> None:
        with self._lock:
            if self._stop.is_set():
                self.dropped += 1
                return
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, daemon=True,
                                                name=f"llmvigil-alert-{self.name}")
                self._thread.start()
            try:
                self._queue.put_nowait(alert)
                self._pending += 1
            except queue.Full:
                self.dropped += 1
                if self.dropped == 1:
                    _log.warning("llmvigil alert sink %r is backed up; dropping alerts "
                                 "(counted)", self.name)

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            try:
                self._attempt(alert)
            finally:
                with self._lock:
                    self._pending -= 1

    def _attempt(self, alert: Alert) -> None:
        for attempt in range(self.max_retries + 1):
            try:
                self.deliver(alert)
                self.sent += 1
                return
            except Exception as exc:
                last = attempt == self.max_retries or isinstance(exc, _Permanent)
                if not last and not self._stop.is_set():
                    self.retried += 1
                    if not self._stop.wait(self.backoff_s * 2 ** attempt):
                        continue
                self.failed += 1
                if self.failed == 1 or self.failed % 100 == 0:
                    _log.warning("llmvigil alert sink %r failed (%d so far): %s",
                                 self.name, self.failed, exc)
                return

    def flush(self, timeout_s: float = 5.0) -> bool:
        """Wait until every queued alert was delivered or given up; ``True`` if in time."""
        deadline = time.monotonic() + timeout_s
        while self._pending:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.005)
        return True

    def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what is queued within ``timeout_s``, then stop the thread."""
        self.flush(timeout_s)
        with self._lock:
            self._stop.set()
            thread = self._thread
            self.dropped += self._pending
        if thread is not None:
            with contextlib.suppress(queue.Full):  # else the daemon thread ends with us
                self._queue.put_nowait(None)
            thread.join(0.1)

    def stats(self) -> dict[str, int]:
        """Delivery counters."""
        return {"sent": self.sent, "retried": self.retried, "failed": self.failed,
                "dropped": self.dropped, "queued": self._pending}


class _DeliverySettings(Settings):
    max_queue: int = Field(default=1000, ge=1)
    max_retries: int = Field(default=3, ge=0)
    backoff_s: float = Field(default=1.0, ge=0)


class WebhookSink(BackgroundSink):
    """POSTs each alert as JSON to ``url`` (``format: slack`` for Slack's payload)."""

    name = "webhook"

    class Options(_DeliverySettings):
        """``type: webhook`` / ``type: slack`` settings."""

        url: str
        timeout_s: float = Field(default=5.0, gt=0)
        headers: dict[str, str] = {}
        format: Literal["json", "slack"] = "json"

        @field_validator("url")
        @classmethod
        def _http(cls, value: str) -> str:
            """Only http(s) URLs with a host."""
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("expected an http:// or https:// URL")
            return value

    def __init__(self, settings: Mapping[str, Any] | None = None, *,
                 default_format: Literal["json", "slack"] = "json") -> None:
        data = {"format": default_format, **dict(settings or {})}
        self.config = parse_settings(WebhookSink.Options, data, self.name)
        c = self.config
        super().__init__(max_queue=c.max_queue, max_retries=c.max_retries,
                         backoff_s=c.backoff_s)
        self.host = urlsplit(c.url).hostname or "?"  # never log the URL: it may be a secret
        self._opener = urllib.request.build_opener()

    def payload(self, alert: Alert) -> dict[str, Any]:
        """The JSON body sent for ``alert``."""
        if self.config.format == "slack":
            labels = ", ".join(f"{k}={v}" for k, v in sorted(alert.labels.items()))
            text = f"*[{alert.severity.upper()}] {alert.rule}*: {alert.message}"
            return {"text": text + (f"\n{labels}" if labels else "")}
        return to_builtins(alert)

    def deliver(self, alert: Alert) -> None:
        body = json.dumps(self.payload(alert)).encode()
        headers = {"Content-Type": "application/json", "User-Agent": "llmvigil",
                   **self.config.headers}
        request = urllib.request.Request(self.config.url, data=body, headers=headers,
                                         method="POST")
        try:
            with self._opener.open(request, timeout=self.config.timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (408, 429) or exc.code >= 500:
                raise ConnectionError(f"{self.host}: HTTP {exc.code}") from None
            raise _Permanent(f"{self.host}: HTTP {exc.code}") from None
        except OSError as exc:  # refused, timeout, DNS
            raise ConnectionError(f"{self.host}: {exc}") from None


class SlackSink(WebhookSink):
    """A webhook sink whose body is a Slack incoming-webhook message."""

    name = "slack"

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        super().__init__(settings, default_format="slack")


class FileSink(BackgroundSink):
    """Appends each alert as one JSON line to ``path`` (created with mode 0600)."""

    name = "file"

    class Options(_DeliverySettings):
        """``type: file`` settings."""

        path: str = Field(min_length=1)
        max_retries: int = Field(default=1, ge=0)
        backoff_s: float = Field(default=0.5, ge=0)

    def __init__(self, settings: Mapping[str, Any] | None = None) -> None:
        self.config = parse_settings(FileSink.Options, settings, self.name)
        c = self.config
        super().__init__(max_queue=c.max_queue, max_retries=c.max_retries,
                         backoff_s=c.backoff_s)
        self.path = Path(c.path).expanduser()

    def deliver(self, alert: Alert) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, encode(alert) + b"\n")
        finally:
            os.close(fd)


#: The sinks this module offers through ``llmvigil_alert_sinks``.
BUILTIN_SINKS: tuple[AlertSinkInfo, ...] = (
    AlertSinkInfo("log", LogSink, "a log line on 'llmvigil.alerts' at the alert's severity"),
    AlertSinkInfo("webhook", WebhookSink, "JSON POST of the alert to 'url'"),
    AlertSinkInfo("slack", SlackSink, "Slack incoming-webhook message to 'url'"),
    AlertSinkInfo("file", FileSink, "one JSON line per alert appended to 'path' (0600)"),
)


@hookimpl
def llmvigil_alert_sinks() -> list[AlertSinkInfo]:
    """The built-in alert sinks."""
    return list(BUILTIN_SINKS)


def alert_sink_infos(plugin_manager: Any = None) -> dict[str, AlertSinkInfo]:
    """Every alert sink type by name: the built-ins plus those offered by plugins.

    Raises:
        PluginError: a plugin offers a name already taken, or returns something else
            than :class:`AlertSinkInfo`.
    """
    found = {info.name: info for info in BUILTIN_SINKS}
    if plugin_manager is None:
        return found
    for impl in plugin_manager.hook.llmvigil_alert_sinks.get_hookimpls():
        try:
            offered: Sequence[Any] = impl.function() or ()
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r}: llmvigil_alert_sinks() raised {exc!r}"
            ) from exc
        for info in offered:
            if not isinstance(info, AlertSinkInfo):
                raise PluginError(f"plugin {impl.plugin_name!r}: llmvigil_alert_sinks() "
                                  f"returned {info!r}, expected AlertSinkInfo")
            if found.get(info.name, info) is not info:
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: alert sink name {info.name!r} is taken"
                )
            found[info.name] = info
    return found
