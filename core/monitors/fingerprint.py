"""The fingerprint monitor: which model the provider says answered, per feature.

A provider can change the model behind a name without notice; what it reports back
is the only trace of it. For every selected span (LLM calls by default) this monitor
records the provider-reported model id (``span.response_model``,
``gen_ai.response.model``) and any backend fingerprint the provider returns
(``system_fingerprint``, ``gen_ai.response.system_fingerprint``... read from
``span.attributes`` then ``span.metadata``), per feature. Per-request identifiers
(``request-id``, ``gen_ai.response.id``) are not fingerprints: they change on every
call, and the settings refuse them.

After a feature's warm-up (``warmup_spans`` spans and ``warmup_s`` seconds), an id
never seen before for that feature (which already had one) raises a
``fingerprint.changed`` Alert naming the new id and the ones known before, at most
once per ``cooldown_s`` per feature (ids first seen during the cooldown are reported
together when it ends). Every
``emit_interval_s`` it publishes ``fingerprint.distinct`` per feature and kind
(``model`` or ``fingerprint``): the number of distinct ids seen over ``window_s``.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import Field, field_validator

from ..checks.builtins import span_selector
from ..model import Alert, Metric, Span
from .windows import Settings, parse_settings

__all__ = ["DEFAULT_FINGERPRINT_KEYS", "FingerprintMonitor", "FingerprintSettings"]

NONE = "_none"
#: Attribute keys read as provider fingerprints by default.
DEFAULT_FINGERPRINT_KEYS: tuple[str, ...] = (
    "system_fingerprint",
    "gen_ai.response.system_fingerprint",
    "gen_ai.openai.response.system_fingerprint",
    "openai.response.system_fingerprint",
    "llm.system_fingerprint",
)
_PER_REQUEST = re.compile(
    r"(?:^|[._\-])(?:request|response|trace|span|message|completion|call)[._\-]?id$|^id$",
    re.I,
)


class FingerprintSettings(Settings):
    """``monitors.fingerprint``: what identifies a model, warm-up, cooldown, windows."""

    enabled: bool = True
    on: str = "llm"
    model: bool = True
    attributes: list[str] = list(DEFAULT_FINGERPRINT_KEYS)
    warmup_spans: int = Field(default=20, ge=0)
    warmup_s: float = Field(default=0.0, ge=0)
    cooldown_s: float = Field(default=3600.0, ge=0)
    window_s: float = Field(default=3600.0, gt=0)
    emit_interval_s: float = Field(default=60.0, gt=0)
    max_features: int = Field(default=1000, ge=1)
    max_ids: int = Field(default=50, ge=1)
    severity: str = Field(default="warning", min_length=1)

    @field_validator("on")
    @classmethod
    def _on(cls, v: str) -> str:
        span_selector(v)
        return v

    @field_validator("attributes")
    @classmethod
    def _not_request_ids(cls, v: list[str]) -> list[str]:
        bad = [key for key in v if _PER_REQUEST.search(key)]
        if bad:
            raise ValueError(f"{', '.join(map(repr, bad))} identify one request, not the "
                             "model: they would alert on every call")
        return v


class _Feature:
    """The ids seen for one feature: last-seen time per (kind, id), and news to report."""

    __slots__ = ("evicted", "first_ns", "known", "last_alert_ns", "news", "spans")

    def __init__(self, t_ns: int) -> None:
        self.first_ns = t_ns
        self.spans = 0
        self.known: OrderedDict[tuple[str, str], int] = OrderedDict()
        self.news: list[tuple[str, str, int]] = []
        self.last_alert_ns: int | None = None
        self.evicted = 0


class FingerprintMonitor:
    """Tracks provider-reported model ids and fingerprints per feature; alerts on new ones.

    Args:
        config: the ``monitors.fingerprint`` mapping (see :class:`FingerprintSettings`),
            a settings instance, or ``None`` for the defaults.
        where: the config path named in error messages.

    Raises:
        ConfigError: the settings are invalid.
    """

    def __init__(self, config: Mapping[str, Any] | FingerprintSettings | None = None, *,
                 where: str = "monitors.fingerprint") -> None:
        s = self.settings = parse_settings(FingerprintSettings, config, where)
        self._select = span_selector(s.on)
        self._features: OrderedDict[str, _Feature] = OrderedDict()
        self._next_emit_ns = 0
        self.counts = {"spans": 0, "without_id": 0, "alerts": 0, "features_evicted": 0,
                       "ids_evicted": 0}

    def ids_of(self, span: Span) -> list[tuple[str, str]]:
        """The (kind, id) pairs a span reports: ``("model", ...)``, ``("fingerprint", ...)``."""
        out: list[tuple[str, str]] = []
        if self.settings.model and span.response_model:
            out.append(("model", str(span.response_model)))
        for key in self.settings.attributes:
            value = span.attributes.get(key) if span.attributes else None
            if value is None and span.metadata:
                value = span.metadata.get(key)
            if isinstance(value, (str, int)) and not isinstance(value, bool) and value != "":
                out.append(("fingerprint", str(value)))
        return out

    #: The record classes the pipeline offers to :meth:`observe`.
    observes = (Span,)

    def observe(self, record: Any) -> Iterable[Any]:
        """Record the ids of a selected span; an alert comes back when one is new."""
        if not isinstance(record, Span) or not self._select(record):
            return ()
        self.counts["spans"] += 1
        ids = self.ids_of(record)
        if not ids:
            self.counts["without_id"] += 1
            return ()
        t = record.end_ns or record.start_ns
        key = record.feature or NONE
        st = self._features.get(key)
        if st is None:
            st = self._features[key] = _Feature(t)
            if len(self._features) > self.settings.max_features:
                self._features.popitem(last=False)
                self.counts["features_evicted"] += 1
        else:
            self._features.move_to_end(key)
        st.spans += 1
        warm = (st.spans <= self.settings.warmup_spans
                or t - st.first_ns < self.settings.warmup_s * 1e9)
        had_ids = bool(st.known)
        for ident in ids:
            if ident not in st.known and had_ids and not warm:
                st.news.append((ident[0], ident[1], t))
            st.known[ident] = max(t, st.known.get(ident, t))
            st.known.move_to_end(ident)
            if len(st.known) > self.settings.max_ids:
                st.known.popitem(last=False)
                self.counts["ids_evicted"] += 1
        if st.news:
            alert = self._report(key, st, t)
            if alert is not None:
                return (alert,)
        return ()

    def _report(self, feature: str, st: _Feature, now_ns: int) -> Alert | None:
        last = st.last_alert_ns
        if last is not None and now_ns - last < self.settings.cooldown_s * 1e9:
            return None
        news, st.news = st.news, []
        st.last_alert_ns = now_ns
        self.counts["alerts"] += 1
        new_ids = {(kind, value) for kind, value, _t in news}
        before = [f"{kind}={value}" for (kind, value) in st.known if (kind, value) not in new_ids]
        shown = ", ".join(f"{kind} {value!r}" for kind, value, _t in news)
        kinds = sorted({kind for kind, _v, _t in news})
        message = (f"feature {feature!r}: new provider-reported {shown} after "
                   f"{st.spans} spans; known before: {', '.join(before) or 'none'}")
        known_label = ",".join(before)
        return Alert(
            rule="fingerprint.changed", severity=self.settings.severity, time_ns=now_ns,
            message=message, value=float(len(st.known)), threshold=float(len(before)),
            labels={"feature": feature, "kind": ",".join(kinds),
                    "new": ",".join(value for _k, value, _t in news),
                    "known": known_label if len(known_label) <= 500
                    else known_label[:497] + "..."},
        )

    def tick(self, now_ns: int) -> Iterable[Any]:
        """Report ids a cooldown held back; every ``emit_interval_s``, ``fingerprint.distinct``."""
        out: list[Any] = []
        for feature, st in list(self._features.items()):
            if st.news:
                alert = self._report(feature, st, now_ns)
                if alert is not None:
                    out.append(alert)
        if now_ns < self._next_emit_ns:
            return out
        s = self.settings
        self._next_emit_ns = now_ns + int(s.emit_interval_s * 1e9)
        since = now_ns - int(s.window_s * 1e9)
        for feature, st in self._features.items():
            for kind in ("model", "fingerprint"):
                n = sum(1 for (k, _v), seen in st.known.items() if k == kind and seen >= since)
                if n or any(k == kind for k, _v in st.known):
                    out.append(Metric(name="fingerprint.distinct", value=float(n),
                                      time_ns=now_ns, window_s=s.window_s, unit="1",
                                      labels={"feature": feature, "kind": kind}))
        return out

    def known(self, feature: str) -> dict[str, list[str]]:
        """The ids known for ``feature`` by kind (for status pages and tests)."""
        st = self._features.get(feature)
        out: dict[str, list[str]] = {"model": [], "fingerprint": []}
        if st is not None:
            for kind, value in st.known:
                out[kind].append(value)
        return out

    def stats(self) -> dict[str, Any]:
        """Counters: spans read, spans without any id, alerts, evictions."""
        return {**self.counts, "features": len(self._features)}
