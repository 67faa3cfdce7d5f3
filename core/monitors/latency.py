"""The latency monitor: TTFT, time between tokens, total latency and output speed.

Per key ``(feature, model, endpoint)`` it keeps mergeable DDSketch quantile sketches
(the maintained ``ddsketch`` library, relative accuracy 1% by default) of:

* ``ttft``: time to first token of streamed LLM calls (``span.ttft_s``);
* ``tbt``: time between tokens. A span carries only a summary of its gaps
  (``stream.p50_s/p95_s/max_s``), not every gap, so the sketch holds each streamed
  response's *p95 gap*, once per response. ``tbt_p99_s`` therefore reads "99% of
  responses had 95% of their token gaps below this": a stuttering response counts,
  however long it is;
* ``total``: the span duration (for the request-level key, the root span's);
* ``output_tps``: output tokens per second of generation, ``output_tokens /
  (duration - ttft)`` for streamed calls (decode speed) and ``output_tokens /
  duration`` otherwise. Its low quantiles are the bad ones, so it is published as
  ``p50``, ``p5``, ``p1`` (the mirror images of the configured quantiles);

plus counts of requests, errors and stalls (``stream.stalls``). Errored spans count
as requests and errors only; their latency is not sketched.

``endpoint`` is ``span.attributes["endpoint"]`` when set, otherwise the name (or
``endpoint`` attribute) of the trace's root span. A child span finishing before its
root waits (bounded: ``pending_max_traces`` traces, ``pending_max_s`` seconds) for
the root; one whose root never comes is filed under endpoint ``_unknown``. LLM spans
are keyed by their model; root spans that are not LLM calls are also recorded, under
model ``_all`` (the request as a whole). More than ``max_keys`` live keys are summed
under ``_other``.

Windows are a ring of per-``slot_s`` sketches for the shortest window; older slots
fold into one sketch per shortest-window period, kept for the longest window, and a
window is the merge of its slots on demand. Memory is therefore bounded by
``max_keys x 4 sketches x (slots per short window + periods per long window + 1)``,
each sketch at most ``bin_limit`` bins, whatever the traffic. The shortest window is
exact to a slot; longer ones cover up to one extra period.

Every ``emit_interval_s`` it emits ``latency.*`` Metric records per key and window;
every ``check_interval_s`` it checks the per-endpoint thresholds over
``threshold_window_s`` (Alerts, at most one per rule and key per ``cooldown_s``); and
it runs change detection (:mod:`.changepoint`) on log total latency, log TTFT and the
error rate of each key (Alert ``latency.change``).

:meth:`LatencyMonitor.snapshot` returns the sketch state as plain data and
:meth:`LatencyMonitor.merge` adds another process's snapshot bin by bin, which is
exactly how DDSketch merges.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from ddsketch import LogCollapsingLowestDenseDDSketch
from pydantic import Field, field_validator, model_validator

from ..model import Alert, Metric, Span
from .changepoint import BernoulliCusum, ChangeDetectionSettings, ChangePoint, GaussianCusum
from .windows import Settings, parse_settings

__all__ = ["SKETCHES", "LatencyMonitor", "LatencySettings", "LatencyThresholds",
           "sketch_from_state", "sketch_state"]

SNAPSHOT_FORMAT = "llmvigil.latency.v1"
#: The sketched quantities of every key.
SKETCHES = ("ttft", "tbt", "total", "output_tps")
NONE = "_none"
ALL = "_all"
OTHER = "_other"
UNKNOWN = "_unknown"
Key = tuple[str, str, str]
#: ``math.log(x, 2)`` is ``math.log(x) / math.log(2)``; the divisor computed once.
_LOG_2 = math.log(2)
_log = math.log
_ceil = math.ceil


class Sketch(LogCollapsingLowestDenseDDSketch):
    """DDSketch's log-mapped, lowest-collapsing sketch, with a shorter ``add`` for the
    common case (a positive value of unit weight whose bin is already allocated): the
    same key arithmetic as ``LogarithmicMapping.key``, one bin bumped, no range change.
    Everything else goes through the library's ``add``."""

    def add(self, val: float, weight: float = 1.0) -> None:
        """Add ``val`` with ``weight`` to the sketch."""
        mapping = self._mapping
        if weight == 1.0 and val > mapping.min_possible:
            key = int(_ceil(_log(val) / _LOG_2 * mapping._multiplier) + mapping._offset)
            store = self._store
            if store.min_key <= key <= store.max_key:
                store.bins[key - store.offset] += 1.0
                store.count += 1.0
                self._count += 1.0
                self._sum += val
                if val < self._min:
                    self._min = val
                if val > self._max:
                    self._max = val
                return
        super().add(val, weight)


class LatencyThresholds(Settings):
    """Alert thresholds of one endpoint (``monitors.latency.thresholds.<endpoint>``)."""

    ttft_p95_s: float | None = Field(default=None, gt=0)
    tbt_p99_s: float | None = Field(default=None, gt=0)
    total_p95_s: float | None = Field(default=None, gt=0)
    #: Alert when more stalls than this happen within the threshold window.
    stalls: int | None = Field(default=None, ge=0)


class LatencySettings(Settings):
    """``monitors.latency``: sketches, windows, metrics, thresholds, change detection."""

    enabled: bool = True
    relative_accuracy: float = Field(default=0.01, gt=0, lt=0.5)
    bin_limit: int = Field(default=1024, ge=64)
    slot_s: int = Field(default=60, ge=1)
    windows_s: list[int] = [300, 3600]
    quantiles: list[float] = [0.5, 0.95, 0.99]
    emit_interval_s: float = Field(default=60.0, gt=0)
    #: Endpoint name (or ``"*"`` for every other endpoint) -> thresholds.
    thresholds: dict[str, LatencyThresholds] = {}
    threshold_window_s: int = Field(default=300, gt=0)
    min_samples: int = Field(default=20, ge=1)
    check_interval_s: float = Field(default=10.0, gt=0)
    cooldown_s: float = Field(default=900.0, ge=0)
    severity: str = "warning"
    max_keys: int = Field(default=200, ge=1)
    pending_max_traces: int = Field(default=10_000, ge=0)
    pending_max_s: float = Field(default=600.0, ge=0)
    change_detection: ChangeDetectionSettings = ChangeDetectionSettings()

    @field_validator("quantiles")
    @classmethod
    def _quantiles(cls, value: list[float]) -> list[float]:
        """Quantiles are fractions strictly between 0 and 1."""
        if not value or any(not 0 < q < 1 for q in value):
            raise ValueError("quantiles must be fractions between 0 and 1, e.g. [0.5, 0.95]")
        return sorted(set(value))

    @model_validator(mode="after")
    def _windows(self) -> LatencySettings:
        """Windows: whole slots, longer ones whole multiples of the shortest."""
        windows = sorted(set(self.windows_s))
        if not windows or windows[0] <= 0:
            raise ValueError("windows_s must list positive window lengths in seconds")
        short = windows[0]
        if short % self.slot_s:
            raise ValueError(f"the shortest window ({short} s) must be a multiple of "
                             f"slot_s ({self.slot_s} s)")
        for w in windows[1:]:
            if w % short:
                raise ValueError(f"window {w} s must be a multiple of the shortest "
                                 f"window ({short} s)")
        if short // self.slot_s > 120 or windows[-1] // short > 1000:
            raise ValueError("too many slots: keep shortest window / slot_s <= 120 and "
                             "longest / shortest window <= 1000")
        if self.threshold_window_s not in windows:
            raise ValueError(f"threshold_window_s ({self.threshold_window_s}) must be one "
                             f"of windows_s {windows}")
        object.__setattr__(self, "windows_s", windows)
        return self


# -- sketch state --------------------------------------------------------------------------


def _store_state(store: Any) -> dict[str, Any]:
    if not store.count:
        return {"offset": 0, "counts": []}
    lo, hi = store.min_key, store.max_key
    return {"offset": lo, "counts": store.bins[lo - store.offset:hi - store.offset + 1]}


def sketch_state(sketch: Sketch) -> dict[str, Any]:
    """A sketch's full state as plain data: the contiguous bin counts of its positive
    and negative stores (as in DDSketch's protobuf), the zero count, count, sum, min, max."""
    return {
        "gamma": sketch._mapping.gamma,
        "positive": _store_state(sketch._store),
        "negative": _store_state(sketch._negative_store),
        "zero": sketch._zero_count,
        "count": sketch.count,
        "sum": sketch.sum,
        "min": sketch._min if sketch.count else None,
        "max": sketch._max if sketch.count else None,
    }


def sketch_from_state(state: Mapping[str, Any], relative_accuracy: float,
                      bin_limit: int) -> Sketch:
    """Rebuild a sketch from :func:`sketch_state` (``ValueError`` when the mapping differs)."""
    sketch = Sketch(relative_accuracy, bin_limit)
    if not math.isclose(float(state["gamma"]), sketch._mapping.gamma, rel_tol=1e-12):
        raise ValueError(f"sketch relative accuracy differs (gamma {state['gamma']} != "
                         f"{sketch._mapping.gamma}); sketches cannot be merged")
    for name, store in (("positive", sketch._store), ("negative", sketch._negative_store)):
        key = int(state[name]["offset"])
        for count in state[name]["counts"]:
            if count:
                store.add(key, float(count))
            key += 1
    sketch._zero_count = float(state["zero"])
    sketch._count = float(state["count"])
    sketch._sum = float(state["sum"])
    if state.get("min") is not None:
        sketch._min = float(state["min"])
        sketch._max = float(state["max"])
    return sketch


# -- windows -----------------------------------------------------------------------------


class _Slot:
    """Sketches and counters of one key over one slot (or one folded period)."""

    __slots__ = ("errors", "requests", "sketches", "stalls")

    def __init__(self) -> None:
        self.sketches: dict[str, Sketch] = {}
        self.requests = 0
        self.errors = 0
        self.stalls = 0

    def merge(self, other: _Slot) -> None:
        for name, sk in other.sketches.items():
            mine = self.sketches.get(name)
            if mine is None:
                mine = self.sketches[name] = Sketch(sk._mapping.relative_accuracy,
                                                    sk._store.bin_limit)
            mine.merge(sk)
        self.requests += other.requests
        self.errors += other.errors
        self.stalls += other.stalls

    def state(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "stalls": self.stalls,
                "sketches": {n: sketch_state(sk) for n, sk in self.sketches.items()}}

    @classmethod
    def from_state(cls, state: Mapping[str, Any], accuracy: float, bin_limit: int) -> _Slot:
        slot = cls()
        slot.requests = int(state["requests"])
        slot.errors = int(state["errors"])
        slot.stalls = int(state["stalls"])
        for name, sk in state["sketches"].items():
            if name not in SKETCHES:
                raise ValueError(f"unknown sketch {name!r} in snapshot")
            slot.sketches[name] = sketch_from_state(sk, accuracy, bin_limit)
        return slot


class _KeyState:
    """The slots and change detectors of one (feature, model, endpoint)."""

    __slots__ = ("coarse", "detectors", "errors", "fine")

    def __init__(self) -> None:
        self.fine: dict[int, _Slot] = {}
        self.coarse: dict[int, _Slot] = {}
        self.detectors: dict[str, GaussianCusum] = {}
        self.errors: BernoulliCusum | None = None


class _Obs:
    """What one span contributes, computed once (it may wait for its root span)."""

    __slots__ = ("error", "feature", "model", "otps", "stalls", "t_ns", "tbt", "total", "ttft")

    def __init__(self, span: Span, model: str) -> None:
        self.feature = span.feature or NONE
        self.model = model
        self.t_ns = span.end_ns or span.start_ns
        self.error = span.status == "error"
        self.total = total = span.duration_s
        self.ttft = ttft = span.ttft_s
        stream = span.stream
        if stream is None:
            self.tbt = None
            self.stalls = 0
        else:
            self.tbt = stream.p95_s if stream.n > 0 else None
            self.stalls = stream.stalls
        usage = span.usage
        out_tokens = usage.output_tokens if usage is not None else 0
        gen = total - ttft if ttft is not None else total
        self.otps = out_tokens / gen if out_tokens > 0 and gen > 0.0 else None


class LatencyMonitor:
    """Latency quantiles per (feature, model, endpoint); see the module docstring.

    Args:
        config: the ``monitors.latency`` mapping (or a :class:`LatencySettings`).
    """

    def __init__(self, config: Mapping[str, Any] | LatencySettings | None = None) -> None:
        self.settings = s = parse_settings(LatencySettings, config, "monitors.latency")
        self.slot_ns = s.slot_s * 1_000_000_000
        self.fine_slots = s.windows_s[0] // s.slot_s
        self.max_slots = s.windows_s[-1] // s.slot_s
        self._keys: dict[Key, _KeyState] = {}
        self._roots: OrderedDict[str, str] = OrderedDict()
        self._pending: OrderedDict[str, list[_Obs]] = OrderedDict()
        self._now_ns = 0
        self._rolled_slot = -1
        self._next_emit_ns = 0
        self._next_check_ns = 0
        self._fired: dict[tuple[str, Key], int] = {}
        self.late = 0
        self.overflowed = 0
        # What the per-span path reads, looked up once (the settings are immutable).
        self._enabled = s.enabled
        self._max_roots = max(1000, s.pending_max_traces)
        self._detect_changes = s.change_detection.enabled

    # -- Monitor protocol -----------------------------------------------------------------

    #: The record classes the pipeline offers to :meth:`observe`.
    observes = (Span,)

    def observe(self, record: Any) -> Iterable[Any]:
        """Add a span's timings to its key; return change alerts it triggers."""
        if type(record) is not Span or not self._enabled:
            return ()
        span = record
        is_root = span.parent_id is None
        is_llm = span.kind == "llm"
        if not (is_llm or is_root):
            return ()
        out: list[Any] = []
        if is_root:
            endpoint = str(span.attributes.get("endpoint") or span.name or NONE)
            roots = self._roots
            roots[span.trace_id] = endpoint
            if len(roots) > self._max_roots:
                roots.popitem(last=False)
            waiting = self._pending.pop(span.trace_id, None)
            if is_llm and waiting is None:  # the common case: an LLM call on its own
                return self._record(_Obs(span, span.model or span.response_model or NONE),
                                    endpoint)
            if not is_llm:
                out.extend(self._record(_Obs(span, ALL), endpoint))
            for obs in waiting or ():
                out.extend(self._record(obs, endpoint))
            if is_llm:
                model = span.model or span.response_model or NONE
                out.extend(self._record(_Obs(span, model), endpoint))
            return out
        obs = _Obs(span, span.model or span.response_model or NONE)
        endpoint_attr = span.attributes.get("endpoint")
        known = str(endpoint_attr) if endpoint_attr else self._roots.get(span.trace_id)
        if known is not None:
            return self._record(obs, known)
        if self.settings.pending_max_traces == 0:
            return self._record(obs, UNKNOWN)
        waiting = self._pending.get(span.trace_id)
        if waiting is None:
            self._pending[span.trace_id] = [obs]
            while len(self._pending) > self.settings.pending_max_traces:
                _, old = self._pending.popitem(last=False)
                for o in old:
                    out.extend(self._record(o, UNKNOWN))
        elif len(waiting) < 1000:
            waiting.append(obs)
        else:
            out.extend(self._record(obs, UNKNOWN))
        return out

    def tick(self, now_ns: int) -> Iterable[Any]:
        """Fold and expire slots; emit metrics and check thresholds when due."""
        if not self.settings.enabled:
            return ()
        s = self.settings
        out: list[Any] = []
        self._advance(now_ns)
        now = self._now_ns
        out.extend(self._expire_pending(now))
        if now >= self._next_emit_ns:
            self._next_emit_ns = now + int(s.emit_interval_s * 1e9)
            out.extend(self._metrics(now))
        if s.thresholds and now >= self._next_check_ns:
            self._next_check_ns = now + int(s.check_interval_s * 1e9)
            out.extend(self._check_thresholds(now))
        return out

    # -- queries ----------------------------------------------------------------------------

    def live_keys(self) -> list[Key]:
        """The live ``(feature, model, endpoint)`` keys."""
        return list(self._keys)

    def window(self, key: Key, window_s: int | None = None) -> dict[str, Any]:
        """Merged sketches and counters of ``key`` over ``window_s`` (the shortest by default).

        Returns ``{"requests", "errors", "stalls", "sketches": {name: DDSketch}}``.
        """
        slot = self._window(key, window_s or self.settings.windows_s[0])
        return {"requests": slot.requests, "errors": slot.errors, "stalls": slot.stalls,
                "sketches": dict(slot.sketches)}

    def quantile(self, key: Key, sketch: str, q: float, window_s: int | None = None
                 ) -> float | None:
        """The ``q`` quantile of ``sketch`` (one of :data:`SKETCHES`) for ``key``."""
        sk = self._window(key, window_s or self.settings.windows_s[0]).sketches.get(sketch)
        return None if sk is None or not sk.count else sk.get_quantile_value(q)

    def summary(self, window_s: int | None = None) -> dict[str, Any]:
        """Per-key latency over a window, TTFT apart from total latency, for the report."""
        s = self.settings
        window = window_s or s.windows_s[-1]
        rows = []
        for key in self._keys:
            slot = self._window(key, window)
            if not slot.requests:
                continue
            row: dict[str, Any] = {
                "feature": key[0], "model": key[1], "endpoint": key[2],
                "streaming": "ttft" in slot.sketches,
                "requests": slot.requests, "errors": slot.errors,
                "error_rate": slot.errors / slot.requests, "stalls": slot.stalls,
            }
            for name in SKETCHES:
                sk = slot.sketches.get(name)
                row[name] = None if sk is None else _quantile_map(name, sk, s.quantiles)
            rows.append(row)
        rows.sort(key=lambda r: (-r["requests"], r["endpoint"], r["feature"], r["model"]))
        return {"window_s": window, "relative_accuracy": s.relative_accuracy,
                "quantiles": list(s.quantiles), "endpoints": rows}

    def memory_stats(self) -> dict[str, int]:
        """Counts of keys, slots, sketches and sketch bins held (for bounds checks)."""
        slots = sketches = bins = 0
        for st in self._keys.values():
            for slot in (*st.fine.values(), *st.coarse.values()):
                slots += 1
                for sk in slot.sketches.values():
                    sketches += 1
                    bins += len(sk._store.bins) + len(sk._negative_store.bins)
        return {"keys": len(self._keys), "slots": slots, "sketches": sketches, "bins": bins,
                "pending_traces": len(self._pending), "roots": len(self._roots)}

    # -- snapshots ------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The sketch state of every key as plain (JSON-serialisable) data."""
        s = self.settings
        return {
            "format": SNAPSHOT_FORMAT,
            "relative_accuracy": s.relative_accuracy,
            "slot_s": s.slot_s,
            "windows_s": list(s.windows_s),
            "now_ns": self._now_ns,
            "keys": [
                {"feature": k[0], "model": k[1], "endpoint": k[2],
                 "fine": [[i, slot.state()] for i, slot in st.fine.items()],
                 "coarse": [[p, slot.state()] for p, slot in st.coarse.items()]}
                for k, st in self._keys.items()
            ],
        }

    def merge(self, other: Mapping[str, Any]) -> None:
        """Add another monitor's :meth:`snapshot` (e.g. from another process) into this one.

        Raises:
            ValueError: the snapshot was taken with another format, accuracy or slot size.
        """
        s = self.settings
        if other.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a latency snapshot ({other.get('format')!r})")
        if not math.isclose(float(other["relative_accuracy"]), s.relative_accuracy) \
                or int(other["slot_s"]) != s.slot_s \
                or min(other["windows_s"]) != s.windows_s[0]:
            raise ValueError("snapshot taken with another relative_accuracy, slot_s or "
                             "shortest window; it cannot be merged exactly")
        self._advance(int(other.get("now_ns") or 0))
        for entry in other["keys"]:
            state = self._state(self._slot_key(
                (str(entry["feature"]), str(entry["model"]), str(entry["endpoint"]))))
            for index, raw in entry["fine"]:
                self._merge_slot(state, int(index), None, raw)
            for period, raw in entry["coarse"]:
                self._merge_slot(state, None, int(period), raw)
        self._roll(force=True)

    def _merge_slot(self, state: _KeyState, index: int | None, period: int | None,
                    raw: Mapping[str, Any]) -> None:
        s = self.settings
        slot = _Slot.from_state(raw, s.relative_accuracy, s.bin_limit)
        current = self._now_ns // self.slot_ns
        if index is not None and index > current - self.fine_slots:
            target = state.fine.setdefault(index, _Slot())
        else:
            p = period if period is not None else (index or 0) // self.fine_slots
            target = state.coarse.setdefault(p, _Slot())
        target.merge(slot)

    # -- recording ------------------------------------------------------------------------

    def _slot_key(self, key: Key) -> Key:
        if key in self._keys or len(self._keys) < self.settings.max_keys:
            return key
        self.overflowed += 1
        return (OTHER, OTHER, OTHER)

    def _state(self, key: Key) -> _KeyState:
        state = self._keys.get(key)
        if state is None:
            state = self._keys[key] = _KeyState()
        return state

    def _record(self, obs: _Obs, endpoint: str) -> list[Any]:
        now = self._now_ns
        t = obs.t_ns or now
        slot_ns, fine_slots = self.slot_ns, self.fine_slots
        if t > now:
            self._advance(t)
            now = t
        current = now // slot_ns
        index = t // slot_ns
        if index // fine_slots < (current - self.max_slots + 1) // fine_slots:
            self.late += 1
            return []
        keys = self._keys
        key = (obs.feature, obs.model, endpoint)
        state = keys.get(key)
        if state is None:
            key = self._slot_key(key)
            state = keys.get(key)
            if state is None:
                state = keys[key] = _KeyState()
        if index > current - fine_slots:
            slots = state.fine
        else:
            slots = state.coarse
            index //= fine_slots
        slot = slots.get(index)
        if slot is None:
            slot = slots[index] = _Slot()
        slot.requests += 1
        slot.stalls += obs.stalls
        if obs.error:
            slot.errors += 1
        else:
            sketches = slot.sketches
            # in this order, which a new slot's sketches keep (it shows in snapshots)
            for name, value in (("total", obs.total), ("ttft", obs.ttft), ("tbt", obs.tbt),
                                ("output_tps", obs.otps)):
                if value is not None and value >= 0.0:  # also skips NaN
                    sk = sketches.get(name)
                    if sk is None:
                        sk = sketches[name] = self._sketch()
                    sk.add(value)
        if self._detect_changes:
            return self._detect(key, state, obs)
        return []

    def _sketch(self) -> Sketch:
        return Sketch(self.settings.relative_accuracy, self.settings.bin_limit)

    # -- change detection ---------------------------------------------------------------------

    def _detect(self, key: Key, state: _KeyState, obs: _Obs) -> list[Any]:
        errors = state.errors
        if errors is None:
            cd = self.settings.change_detection
            errors = state.errors = BernoulliCusum(
                cd.arl0, ratio=cd.error_ratio, warmup=cd.warmup, min_events=cd.error_min_events)
        changes: list[tuple[str, ChangePoint]] = []
        change = errors.update(obs.error)
        if change is not None:
            changes.append(("error_rate", change))
        if not obs.error:
            value = obs.total
            if not value <= 0.0:
                change = self._detector(state, "total").update(math.log(value))
                if change is not None:
                    changes.append(("total", change))
            ttft = obs.ttft
            if not (ttft is None or ttft <= 0.0):
                change = self._detector(state, "ttft").update(math.log(ttft))
                if change is not None:
                    changes.append(("ttft", change))
        if not changes:
            return []
        return [a for series, ch in changes
                if (a := self._change_alert(key, series, ch)) is not None]

    def _detector(self, state: _KeyState, series: str) -> GaussianCusum:
        det = state.detectors.get(series)
        if det is None:
            cd = self.settings.change_detection
            det = state.detectors[series] = GaussianCusum(
                cd.arl0, shift_sigma=cd.shift_sigma, warmup=cd.warmup, clip=cd.clip)
        return det

    def _change_alert(self, key: Key, series: str, change: ChangePoint) -> Alert | None:
        cd = self.settings.change_detection
        now = self._now_ns
        fired_key = (f"latency.change.{series}", key)
        last = self._fired.get(fired_key)
        if last is not None and now - last < cd.cooldown_s * 1e9:
            return None
        self._fired[fired_key] = now
        if series == "error_rate":
            before, after = change.baseline_mean, change.new_mean
            text = f"error rate rose from about {before:.2%} to {after:.2%}"
        else:
            before, after = math.exp(change.baseline_mean), math.exp(change.new_mean)
            what = "total latency" if series == "total" else "TTFT"
            text = (f"{what} went {change.direction}: typical {_seconds(before)} -> "
                    f"{_seconds(after)} (geometric mean)")
        return Alert(
            rule="latency.change", severity=cd.severity, time_ns=now, value=after,
            threshold=before, message=f"{text} on endpoint {key[2]!r} "
                                      f"(feature {key[0]!r}, model {key[1]!r})",
            labels={"feature": key[0], "model": key[1], "endpoint": key[2], "series": series,
                    "direction": change.direction},
        )

    # -- time and windows ----------------------------------------------------------------------

    def _advance(self, t_ns: int) -> None:
        if t_ns > self._now_ns:
            self._now_ns = t_ns
        if self._now_ns // self.slot_ns != self._rolled_slot:
            self._roll()

    def _roll(self, force: bool = False) -> None:
        """Fold slots out of the shortest window into periods; drop what no window covers."""
        current = self._now_ns // self.slot_ns
        if current == self._rolled_slot and not force:
            return
        self._rolled_slot = current
        oldest_fine = current - self.fine_slots + 1
        oldest_period = (current - self.max_slots + 1) // self.fine_slots
        for key in list(self._keys):
            state = self._keys[key]
            for index in [i for i in state.fine if i < oldest_fine]:
                slot = state.fine.pop(index)
                target = state.coarse.setdefault(index // self.fine_slots, _Slot())
                target.merge(slot)
            for period in [p for p in state.coarse if p < oldest_period]:
                del state.coarse[period]
            if not state.fine and not state.coarse:
                del self._keys[key]
        if len(self._fired) > 4 * self.settings.max_keys:
            horizon = self._now_ns - int(self.settings.cooldown_s * 1e9)
            self._fired = {k: v for k, v in self._fired.items() if v >= horizon}

    def _window(self, key: Key, window_s: int) -> _Slot:
        state = self._keys.get(key)
        out = _Slot()
        if state is None:
            return out
        current = self._now_ns // self.slot_ns
        start = current - window_s // self.settings.slot_s + 1
        for index, slot in state.fine.items():
            if index >= start:
                out.merge(slot)
        if window_s > self.settings.windows_s[0]:
            for period, slot in state.coarse.items():
                if (period + 1) * self.fine_slots - 1 >= start:
                    out.merge(slot)
        return out

    def _expire_pending(self, now: int) -> list[Any]:
        out: list[Any] = []
        horizon = now - int(self.settings.pending_max_s * 1e9)
        while self._pending:
            trace_id, waiting = next(iter(self._pending.items()))
            if waiting[0].t_ns >= horizon:
                break
            del self._pending[trace_id]
            for obs in waiting:
                out.extend(self._record(obs, UNKNOWN))
        return out

    # -- periodic outputs ----------------------------------------------------------------------

    def _metrics(self, now: int) -> list[Metric]:
        s = self.settings
        out: list[Metric] = []
        for key in list(self._keys):
            labels = {"feature": key[0], "model": key[1], "endpoint": key[2]}
            for window in s.windows_s:
                slot = self._window(key, window)
                if not slot.requests:
                    continue

                def metric(name: str, value: float, unit: str | None = None,
                           window: float = window, labels: dict[str, str] = labels) -> None:
                    out.append(Metric(name=name, value=value, time_ns=now, window_s=window,
                                      labels=labels, unit=unit))

                metric("latency.requests", float(slot.requests))
                metric("latency.errors", float(slot.errors))
                metric("latency.error_rate", slot.errors / slot.requests)
                metric("latency.stalls", float(slot.stalls))
                for name in SKETCHES:
                    sk = slot.sketches.get(name)
                    if sk is None or not sk.count:
                        continue
                    for label, value in _quantile_map(name, sk, s.quantiles).items():
                        unit = "tokens/s" if name == "output_tps" else "s"
                        suffix = "" if name == "output_tps" else "_s"
                        metric(f"latency.{name}_{label}{suffix}", value, unit)
        return out

    def _check_thresholds(self, now: int) -> list[Alert]:
        s = self.settings
        out: list[Alert] = []
        for key in list(self._keys):
            th = s.thresholds.get(key[2]) or s.thresholds.get("*")
            if th is None:
                continue
            slot = self._window(key, s.threshold_window_s)
            checks: list[tuple[str, float | None, float | None, str]] = [
                ("latency.ttft_p95_s", th.ttft_p95_s, self._q(slot, "ttft", 0.95), "TTFT p95"),
                ("latency.tbt_p99_s", th.tbt_p99_s, self._q(slot, "tbt", 0.99), "TBT p99"),
                ("latency.total_p95_s", th.total_p95_s, self._q(slot, "total", 0.95),
                 "total latency p95"),
            ]
            for rule, limit, value, what in checks:
                if limit is not None and value is not None and value > limit:
                    out.extend(self._fire(rule, key, now, value, limit,
                                          f"{what} {value:.3f} s > {limit:.3f} s"))
            if th.stalls is not None and slot.stalls > th.stalls:
                out.extend(self._fire("latency.stalls", key, now, float(slot.stalls),
                                      float(th.stalls),
                                      f"{slot.stalls} stalls > {th.stalls}"))
        return out

    def _q(self, slot: _Slot, name: str, q: float) -> float | None:
        sk = slot.sketches.get(name)
        if sk is None or sk.count < self.settings.min_samples:
            return None
        value = sk.get_quantile_value(q)
        return None if value is None else float(value)

    def _fire(self, rule: str, key: Key, now: int, value: float, limit: float,
              text: str) -> list[Alert]:
        s = self.settings
        last = self._fired.get((rule, key))
        if last is not None and now - last < s.cooldown_s * 1e9:
            return []
        self._fired[(rule, key)] = now
        window = s.threshold_window_s
        return [Alert(
            rule=rule, severity=s.severity, time_ns=now, value=value, threshold=limit,
            message=f"{text} on endpoint {key[2]!r} (feature {key[0]!r}, model {key[1]!r}), "
                    f"last {window} s",
            labels={"feature": key[0], "model": key[1], "endpoint": key[2],
                    "window_s": str(window)},
        )]


def _quantile_map(name: str, sketch: Sketch, quantiles: Iterable[float]) -> dict[str, float]:
    """``{"p50": v, "p95": v, ...}``; for output speed the low tail (``p5`` for 0.95...)."""
    out: dict[str, float] = {}
    for q in quantiles:
        if name == "output_tps":
            q = round(1.0 - q, 6)
        value = sketch.get_quantile_value(q)
        if value is not None:
            out[f"p{round(q * 100, 4):g}"] = float(value)
    return out


def _seconds(value: float) -> str:
    """A duration with a unit that keeps three significant digits (s, ms or µs)."""
    if value >= 1.0:
        return f"{value:.3g} s"
    if value >= 1e-3:
        return f"{value * 1e3:.3g} ms"
    return f"{value * 1e6:.3g} µs"
