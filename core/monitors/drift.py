"""The drift monitor: do a feature's outputs still look like its baseline?

For each feature, a sample of span outputs (``sample_rate``) is embedded with a
pluggable embedder (``hashed`` by default, see :mod:`llmvigil.plugins.embedders`) and
compared with a baseline by an MMD² permutation test (:func:`llmvigil.core.drift.mmd_test`):

* **Baseline**: the outputs given to :meth:`DriftMonitor.set_baseline`, or else the
  first ``baseline_size`` sampled outputs of the feature. It stays fixed until
  :meth:`DriftMonitor.reset_baseline` (after an intended change) or a new
  ``set_baseline``.
* **Recent window**: the latest ``window_size`` sampled outputs after the baseline
  (by span end time), sliding.
* **Test**: at most every ``interval_s`` per feature, once the window holds
  ``min_window`` outputs and ``min_new`` arrived since the previous test. It publishes
  ``drift.p_value`` (with ``drift.p_value.n``, the window size) and ``drift.mmd2``,
  labelled by ``feature``, and an Alert (rule ``drift.detected``) when
  ``p < alpha``, at most once per ``cooldown_s`` per feature.

``alpha`` is the false-alarm probability of one test. Successive tests share most of
their window, so false alarms come in runs; the cooldown turns a run into one alert.

The worker thread only samples and queues output texts. Embedding (possibly a
network call, see the ``provider`` embedder) and the test run in one small
background thread; their results are published at the next :meth:`tick`. With
``background: false`` they run inside ``tick`` instead, which then blocks for the
embedding and the test (about 0.1 s for windows of 1,000 with the hashed embedder).

Memory per feature: two float32 matrices (``baseline_size`` and ``window_size`` rows
of the embedder's dimension: 3 MB with the defaults) and up to ``window_size``
queued texts of at most ``max_chars`` characters. At most ``max_features`` features
are tracked (least recently seen evicted first). Spans without a feature use
``feature="_none"``; there is no ``_all`` series, because a mix of features drifts
whenever the traffic mix does.

:meth:`DriftMonitor.snapshot` returns the baselines and windows as plain data (the
embeddings with their span end times) and :meth:`DriftMonitor.merge` lines another
process's up by time, so the merged windows are those of one monitor fed every
process's outputs.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import queue
import threading
import time
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from pydantic import Field, model_validator

from ...plugins.types import EmbedderInfo
from ..drift import DEFAULT_KERNEL_MAX_N, MMDResult, mmd_test
from ..errors import ConfigError, PluginError
from ..model import Alert, Metric, Span
from .windows import Settings, parse_settings

__all__ = ["DriftMonitor", "DriftSettings", "embedder_infos", "output_text"]

_log = logging.getLogger("llmvigil.drift")

NONE = "_none"
RULE = "drift.detected"
SNAPSHOT_FORMAT = "llmvigil.drift.v1"
#: Settings two monitors must share for their snapshots to merge.
MERGE_SETTINGS = ("embedder", "embedder_options", "spans", "sample_rate", "max_chars",
                  "baseline_size", "window_size")
_NO_TIMES = np.zeros(0, dtype=np.int64)


class DriftSettings(Settings):
    """``monitors.drift``: embedder, sampling, windows, test and alert settings."""

    enabled: bool = True
    #: Name of an embedder offered through the ``llmvigil_embedders`` hook.
    embedder: str = Field(default="hashed", min_length=1)
    #: Passed to the embedder's factory (e.g. ``dim`` for ``hashed``).
    embedder_options: dict[str, Any] = {}
    #: Which spans' outputs are watched: LLM calls, root spans, or every span.
    spans: Literal["llm", "root", "all"] = "llm"
    sample_rate: float = Field(default=1.0, gt=0, le=1)
    #: Outputs are cut to this many characters before embedding.
    max_chars: int = Field(default=2000, ge=1)
    baseline_size: int = Field(default=1000, ge=10, le=20_000)
    window_size: int = Field(default=1000, ge=10, le=20_000)
    min_window: int = Field(default=200, ge=10)
    min_new: int = Field(default=100, ge=1)
    interval_s: float = Field(default=300.0, gt=0)
    alpha: float = Field(default=0.01, gt=0, lt=1)
    permutations: int = Field(default=500, ge=19, le=10_000)
    #: ``auto``: the exact kernel up to ``kernel_max_n`` pooled outputs, RFF above.
    method: Literal["auto", "kernel", "rff"] = "auto"
    kernel_max_n: int = Field(default=DEFAULT_KERNEL_MAX_N, ge=4)
    rff_frequencies: int = Field(default=128, ge=8, le=4096)
    cooldown_s: float = Field(default=3600.0, ge=0)
    severity: Literal["info", "warning", "error", "critical"] = "warning"
    max_features: int = Field(default=20, ge=1)
    background: bool = True
    #: Seed of the permutations (reproducible p-values); random when unset.
    seed: int | None = None

    @model_validator(mode="after")
    def _check(self) -> DriftSettings:
        """The window must be able to reach ``min_window``."""
        if self.min_window > self.window_size:
            raise ValueError("min_window must be at most window_size")
        return self


def embedder_infos(plugin_manager: Any = None) -> dict[str, EmbedderInfo]:
    """Every embedder by name: the built-ins plus those offered by plugins.

    Raises:
        PluginError: a plugin offers a name already taken, or returns something else
            than :class:`~llmvigil.plugins.types.EmbedderInfo`.
    """
    from ...plugins.embedders import BUILTIN_EMBEDDERS  # plugins import core: not at the top

    found = {info.name: info for info in BUILTIN_EMBEDDERS}
    if plugin_manager is None:
        return found
    for impl in plugin_manager.hook.llmvigil_embedders.get_hookimpls():
        try:
            offered: Sequence[Any] = impl.function() or ()
        except Exception as exc:
            raise PluginError(
                f"plugin {impl.plugin_name!r}: llmvigil_embedders() raised {exc!r}"
            ) from exc
        for info in offered:
            if not isinstance(info, EmbedderInfo):
                raise PluginError(f"plugin {impl.plugin_name!r}: llmvigil_embedders() "
                                  f"returned {info!r}, expected EmbedderInfo")
            if found.get(info.name, info) is not info:
                raise PluginError(
                    f"plugin {impl.plugin_name!r}: embedder name {info.name!r} is taken"
                )
            found[info.name] = info
    return found


def output_text(output: Any, max_chars: int) -> str | None:
    """The text embedded for a span output: strings as they are, other data as sorted JSON."""
    if output is None:
        return None
    if isinstance(output, str):
        text = output
    else:
        try:
            text = json.dumps(output, sort_keys=True, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            text = str(output)
    return text[:max_chars]


class _Feature:
    """Everything kept for one feature; guarded by the monitor's lock.

    Every output carries its span's end time: the baseline keeps the earliest
    ``baseline_size`` outputs and the window the latest ``window_size``, so outputs from
    several processes (:meth:`DriftMonitor.merge`) line up in time.
    """

    def __init__(self, window_size: int) -> None:
        self.baseline: np.ndarray | None = None
        self.baseline_times = _NO_TIMES
        self.fixed = False  # baseline given by set_baseline
        self.generation = 0  # bumped when the baseline is replaced
        self.assigned = 0  # outputs routed to the baseline so far
        self.baseline_texts: list[tuple[int, str]] = []
        self.texts: deque[tuple[int, str]] = deque(maxlen=window_size)
        self.window: np.ndarray | None = None  # embedded recent outputs, oldest first
        self.window_times = _NO_TIMES
        self.new = 0  # embedded since the last test
        self.next_due_ns = 0
        self.last_alert_ns: int | None = None

    @property
    def count(self) -> int:
        """Embedded outputs in the recent window."""
        return 0 if self.window is None else self.window.shape[0]


@dataclass
class _Item:
    key: str
    state: _Feature
    generation: int
    baseline_texts: list[tuple[int, str]]
    texts: list[tuple[int, str]]


@dataclass
class _Outcome:
    key: str
    time_ns: int
    result: MMDResult
    baseline_n: int


@dataclass
class _Counters:
    sampled: int = 0
    sampled_out: int = 0
    superseded: int = 0
    embedded: int = 0
    embed_errors: int = 0
    test_errors: int = 0
    tests: int = 0
    alerts: int = 0
    evicted: int = 0
    last_job_s: float = 0.0
    max_job_s: float = 0.0
    busy_skips: int = 0


class DriftMonitor:
    """Embedding drift per feature, against a baseline, with a calibrated p-value.

    Args:
        config: the ``monitors.drift`` mapping, a :class:`DriftSettings`, or ``None``.
        where: the config path named in error messages.
        plugin_manager: where embedders come from (``llmvigil_embedders``); the
            built-in ones are always available.

    Raises:
        ConfigError: invalid settings, an unknown embedder, or embedder options its
            factory rejects.
    """

    def __init__(self, config: Mapping[str, Any] | DriftSettings | None = None, *,
                 where: str = "monitors.drift", plugin_manager: Any = None) -> None:
        s = self.settings = parse_settings(DriftSettings, config, where)
        self._where = where
        self.embed: Callable[[Sequence[str]], Any] | None = None
        if s.enabled:
            self.embed = self._build_embedder(plugin_manager)
        self._lock = threading.Lock()
        self._features: OrderedDict[str, _Feature] = OrderedDict()
        self._outcomes: deque[_Outcome] = deque()
        self._jobs: queue.Queue[tuple[list[_Item], int] | None] = queue.Queue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._rng = np.random.default_rng(s.seed)
        self._inflight: dict[int, _Item] = {}  # handed to the drift thread, by id()
        self._threshold = int(s.sample_rate * 2**32)
        self.counters = _Counters()

    def _build_embedder(self, plugin_manager: Any) -> Callable[[Sequence[str]], Any]:
        s = self.settings
        infos = embedder_infos(plugin_manager)
        info = infos.get(s.embedder)
        if info is None:
            raise ConfigError(
                f"{self._where}.embedder: unknown embedder {s.embedder!r}; known embedders: "
                f"{', '.join(sorted(infos))} (a third-party embedder registers through the "
                "'llmvigil' entry-point group)"
            )
        try:
            embed: Callable[[Sequence[str]], Any] = info.factory(dict(s.embedder_options))
        except Exception as exc:
            raise ConfigError(f"{self._where}: {exc}") from exc
        return embed

    # -- observe (worker thread) ----------------------------------------------------

    #: The record classes the pipeline offers to :meth:`observe`.
    observes = (Span,)

    def observe(self, record: Any) -> Iterable[Any]:
        """Queue the output text of a watched span, if sampled; other records are ignored."""
        if not isinstance(record, Span) or self.embed is None:
            return ()
        mode = self.settings.spans
        if (mode == "llm" and record.kind != "llm") or (mode == "root" and
                                                        record.parent_id is not None):
            return ()
        if self._threshold < 2**32 and zlib.crc32(record.id.encode()) >= self._threshold:
            self.counters.sampled_out += 1
            return ()
        text = output_text(record.output, self.settings.max_chars)
        if text is None:
            return ()
        self.counters.sampled += 1
        entry = (record.end_ns or record.start_ns, text)
        with self._lock:
            state = self._state(record.feature or NONE)
            if not state.fixed and state.assigned < self.settings.baseline_size:
                state.assigned += 1
                state.baseline_texts.append(entry)
            else:
                if len(state.texts) == state.texts.maxlen:
                    self.counters.superseded += 1
                state.texts.append(entry)
        return ()

    def _state(self, key: str) -> _Feature:
        """The state of ``key`` (created if new, evicting the least recently seen)."""
        state = self._features.get(key)
        if state is None:
            state = self._features[key] = _Feature(self.settings.window_size)
            if len(self._features) > self.settings.max_features:
                self._features.popitem(last=False)
                self.counters.evicted += 1
        else:
            self._features.move_to_end(key)
        return state

    # -- tick (worker thread) -------------------------------------------------------

    def tick(self, now_ns: int) -> Iterable[Any]:
        """Publish finished tests; start the embedding and tests that are due."""
        out = self._publish()
        if self.embed is None:
            return out
        if not self._idle.is_set():
            self.counters.busy_skips += 1
            return out
        job = self._due(now_ns)
        if not job:
            return out
        self._idle.clear()
        if self.settings.background:
            self._start_thread()
            self._jobs.put((job, now_ns))
        else:
            self._run(job, now_ns)
            out.extend(self._publish())
        return out

    def _due(self, now_ns: int) -> list[_Item]:
        job = []
        interval_ns = int(self.settings.interval_s * 1e9)
        with self._lock:
            for key, state in self._features.items():
                if now_ns < state.next_due_ns or not (state.baseline_texts or state.texts
                                                      or self._testable(state)):
                    continue
                state.next_due_ns = now_ns + interval_ns
                item = _Item(key, state, state.generation, state.baseline_texts,
                             list(state.texts))
                job.append(item)
                self._inflight[id(item)] = item
                state.baseline_texts = []
                state.texts.clear()
        return job

    def _testable(self, state: _Feature) -> bool:
        """Whether the feature's embedded outputs alone are enough for a test (after a merge)."""
        s = self.settings
        complete = state.baseline is not None and (state.fixed or
                                                   state.baseline.shape[0] >= s.baseline_size)
        return complete and state.count >= s.min_window and state.new >= s.min_new

    def _publish(self) -> list[Any]:
        out: list[Any] = []
        s = self.settings
        while self._outcomes:
            o = self._outcomes.popleft()
            r = o.result
            labels = {"feature": o.key}
            out.append(Metric(name="drift.p_value", value=r.p_value, time_ns=o.time_ns,
                              labels=labels))
            out.append(Metric(name="drift.p_value.n", value=float(r.n_y), time_ns=o.time_ns,
                              unit="1", labels=dict(labels)))
            out.append(Metric(name="drift.mmd2", value=r.mmd2, time_ns=o.time_ns,
                              labels=dict(labels)))
            if r.p_value >= s.alpha:
                continue
            with self._lock:
                state = self._features.get(o.key)
                last = state.last_alert_ns if state is not None else None
                if last is not None and o.time_ns - last < s.cooldown_s * 1e9:
                    continue
                if state is not None:
                    state.last_alert_ns = o.time_ns
            self.counters.alerts += 1
            out.append(Alert(
                rule=RULE, severity=s.severity, time_ns=o.time_ns,
                message=(f"outputs of feature {o.key!r} drifted from their baseline: "
                         f"MMD² permutation test p={r.p_value:.2g} < alpha={s.alpha} "
                         f"(mmd2={r.mmd2:.3g}, recent n={r.n_y}, baseline n={o.baseline_n}, "
                         f"embedder {s.embedder}, {r.method})"),
                value=r.p_value, threshold=s.alpha, labels=dict(labels),
            ))
        return out

    # -- background work ------------------------------------------------------------

    def _start_thread(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._loop, name="llmvigil-drift",
                                            daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            entry = self._jobs.get()
            if entry is None:
                return
            try:
                self._run(*entry)
            except Exception as exc:  # the thread must survive anything
                _log.exception("llmvigil drift job failed: %r", exc)
                self._idle.set()

    def _run(self, job: list[_Item], time_ns: int) -> None:
        """Embed the queued texts of each item, then test the features that are ready."""
        started = time.perf_counter()
        try:
            for item in job:
                self._run_item(item, time_ns)
        finally:
            with self._lock:
                for item in job:
                    self._inflight.pop(id(item), None)
            elapsed = time.perf_counter() - started
            self.counters.last_job_s = elapsed
            self.counters.max_job_s = max(self.counters.max_job_s, elapsed)
            self._idle.set()

    def _embed(self, texts: list[str]) -> np.ndarray:
        assert self.embed is not None
        vectors = np.asarray(self.embed(texts), dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(texts):
            raise ValueError(f"embedder {self.settings.embedder!r} returned shape "
                             f"{vectors.shape} for {len(texts)} texts")
        self.counters.embedded += len(texts)
        return vectors

    def _run_item(self, item: _Item, time_ns: int) -> None:
        s = self.settings
        state = item.state
        try:
            base = self._embed([t for _, t in item.baseline_texts]) \
                if item.baseline_texts else None
            recent = self._embed([t for _, t in item.texts]) if item.texts else None
        except Exception as exc:
            self.counters.embed_errors += 1
            _log.warning("llmvigil drift: embedder %r failed on %d texts: %r", s.embedder,
                         len(item.baseline_texts) + len(item.texts), exc)
            with self._lock:
                self._inflight.pop(id(item), None)
                if item.generation == state.generation:  # let later outputs fill the baseline
                    state.assigned -= len(item.baseline_texts)
            return
        with self._lock:
            self._inflight.pop(id(item), None)
            if base is not None and item.generation == state.generation:
                self._add_baseline(state, base, _times(item.baseline_texts))
            if recent is not None:
                self._add_window(state, recent, _times(item.texts))
            if not self._testable(state):
                return
            baseline, window = state.baseline, state.window
            assert window is not None and baseline is not None
            if window.shape[1] != baseline.shape[1]:
                return
            state.new = 0
        try:
            result = mmd_test(baseline, window, permutations=s.permutations, method=s.method,
                              rng=self._rng, kernel_max_n=s.kernel_max_n,
                              rff_frequencies=s.rff_frequencies)
        except Exception as exc:
            self.counters.test_errors += 1
            _log.warning("llmvigil drift: test failed for feature %r: %r", item.key, exc)
            return
        self.counters.tests += 1
        self._outcomes.append(_Outcome(item.key, time_ns, result, baseline.shape[0]))

    def _add_baseline(self, state: _Feature, rows: np.ndarray, times: np.ndarray) -> None:
        """Learn a baseline from the earliest outputs; later ones go to the window."""
        if state.fixed:
            self._add_window(state, rows, times)
            return
        if state.baseline is not None and state.baseline.shape[1] == rows.shape[1]:
            rows = np.concatenate([state.baseline, rows])
            times = np.concatenate([state.baseline_times, times])
        order = np.argsort(times, kind="stable")
        keep, rest = order[:self.settings.baseline_size], order[self.settings.baseline_size:]
        state.baseline, state.baseline_times = rows[keep], times[keep]
        if rest.size:
            self._add_window(state, rows[rest], times[rest])

    def _add_window(self, state: _Feature, rows: np.ndarray, times: np.ndarray) -> None:
        """Add embedded outputs to the window, which keeps the latest ``window_size``."""
        state.new += rows.shape[0]
        if state.window is not None and state.window.shape[1] == rows.shape[1]:
            rows = np.concatenate([state.window, rows])
            times = np.concatenate([state.window_times, times])
        order = np.argsort(times, kind="stable")[-self.settings.window_size:]
        state.window, state.window_times = rows[order], times[order]

    # -- baseline control (any thread) ----------------------------------------------

    def set_baseline(self, feature: str | None, outputs: Iterable[Any]) -> int:
        """Embed ``outputs`` (in the calling thread) and make them ``feature``'s baseline.

        At most ``baseline_size`` outputs are kept (a uniform random sample). The
        recent window is kept. Returns the number of outputs in the baseline.

        Raises:
            ValueError: fewer than 10 usable outputs.
            RuntimeError: the monitor is disabled.
        """
        if self.embed is None:
            raise RuntimeError("the drift monitor is disabled")
        texts = [t for t in (output_text(o, self.settings.max_chars) for o in outputs)
                 if t is not None]
        if len(texts) < 10:
            raise ValueError(f"a baseline needs at least 10 outputs, got {len(texts)}")
        if len(texts) > self.settings.baseline_size:
            pick = np.random.default_rng(self.settings.seed).choice(
                len(texts), size=self.settings.baseline_size, replace=False)
            texts = [texts[i] for i in sorted(pick)]
        vectors = self._embed(texts)
        with self._lock:
            state = self._state(feature or NONE)
            state.generation += 1
            state.baseline = vectors
            state.baseline_times = np.zeros(vectors.shape[0], dtype=np.int64)
            state.fixed = True
            state.baseline_texts = []
        return len(texts)

    def reset_baseline(self, feature: str | None) -> None:
        """Forget ``feature``'s baseline: its next ``baseline_size`` outputs form a new one."""
        with self._lock:
            state = self._features.get(feature or NONE)
            if state is None:
                return
            state.generation += 1
            state.baseline = None
            state.baseline_times = _NO_TIMES
            state.fixed = False
            state.assigned = 0
            state.baseline_texts = []
            state.last_alert_ns = None

    def baseline_size(self, feature: str | None) -> int:
        """How many embedded outputs form ``feature``'s baseline now (0 when none)."""
        with self._lock:
            state = self._features.get(feature or NONE)
            return 0 if state is None or state.baseline is None else state.baseline.shape[0]

    # -- snapshots (any thread) -----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Every feature's baseline and recent window as plain (JSON-serialisable) data.

        Embeddings travel as base64 little-endian float32 with each output's span end
        time; outputs not embedded yet (queued, or in the drift thread's hands) travel as
        text, for the monitor that merges them to embed.
        """
        with self._lock:
            inflight = list(self._inflight.values())
            features = [self._feature_snapshot(key, state, inflight)
                        for key, state in self._features.items()]
        return {"format": SNAPSHOT_FORMAT, **self._merge_settings(),
                "counters": dataclasses.asdict(self.counters), "features": features}

    def _merge_settings(self) -> dict[str, Any]:
        s = self.settings
        return {name: _plain(getattr(s, name)) for name in MERGE_SETTINGS}

    def _feature_snapshot(self, key: str, state: _Feature,
                          inflight: list[_Item]) -> dict[str, Any]:
        queued_baseline, queued = list(state.baseline_texts), list(state.texts)
        for item in inflight:
            if item.state is state:
                if item.generation == state.generation:
                    queued_baseline += item.baseline_texts
                queued += item.texts
        return {
            "feature": key, "fixed": state.fixed,
            "baseline": _encode(state.baseline), "baseline_times": state.baseline_times.tolist(),
            "window": _encode(state.window), "window_times": state.window_times.tolist(),
            "queued_baseline": [[t, text] for t, text in queued_baseline],
            "queued": [[t, text] for t, text in queued],
        }

    def merge(self, other: Mapping[str, Any]) -> None:
        """Add another monitor's :meth:`snapshot` (e.g. from another process) into this one.

        Outputs line up by span end time: the baseline keeps the earliest
        ``baseline_size`` outputs of both and the window the latest ``window_size``, so
        merging every replica's snapshot into a fresh monitor gives the windows of one
        monitor fed all their outputs. A baseline given by :meth:`set_baseline` wins over
        a learnt one (whose outputs then join the window); of two given baselines this
        monitor keeps its own. Counters add. Merge each snapshot once.

        Raises:
            ValueError: the snapshot was taken with another format, embedder, embedder
                options, spans, sample_rate, max_chars, baseline_size or window_size, or
                holds embeddings of another dimension; nothing is merged then.
            RuntimeError: this monitor is disabled.
        """
        if other.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not a drift snapshot ({other.get('format')!r})")
        mine = self._merge_settings()
        differ = [f"{name} ({_plain(other.get(name))!r} != {mine[name]!r})"
                  for name in MERGE_SETTINGS if _plain(other.get(name)) != mine[name]]
        if differ:
            raise ValueError(f"snapshot taken with another {', '.join(differ)}; its "
                             "windows cannot be merged")
        if self.embed is None:
            raise RuntimeError("the drift monitor is disabled")
        parts = [_Part.parse(raw) for raw in other["features"]]
        with self._lock:
            for part in parts:
                self._check_dimension(part)
            for part in parts:
                self._merge_part(part)
        self._add_counters(other.get("counters") or {})

    def _check_dimension(self, part: _Part) -> None:
        state = self._features.get(part.key)
        mine = [] if state is None else [state.baseline, state.window]
        dims = {rows.shape[1] for rows in [*mine, part.baseline, part.window]
                if rows is not None}
        if len(dims) > 1:
            raise ValueError(f"feature {part.key!r}: embeddings of dimensions "
                             f"{sorted(dims)} cannot be merged")

    def _merge_part(self, part: _Part) -> None:
        s = self.settings
        state = self._state(part.key)
        if part.baseline is not None and part.fixed:
            if not state.fixed:
                self._adopt_baseline(state, part.baseline)
        elif part.baseline is not None:
            self._add_baseline(state, part.baseline, part.baseline_times)
            state.assigned = min(s.baseline_size, state.assigned + part.baseline.shape[0])
        if part.window is not None:
            self._add_window(state, part.window, part.window_times)
        if state.fixed:
            self._queue(state, part.queued_baseline + part.queued)
            return
        state.baseline_texts = sorted(state.baseline_texts + part.queued_baseline,
                                      key=lambda entry: entry[0])
        state.assigned = min(s.baseline_size, state.assigned + len(part.queued_baseline))
        self._queue(state, part.queued)

    def _adopt_baseline(self, state: _Feature, rows: np.ndarray) -> None:
        """Take a given baseline in place of a learnt one, whose outputs join the window."""
        learnt, learnt_times, pending = state.baseline, state.baseline_times, state.baseline_texts
        state.generation += 1
        state.fixed = True
        state.baseline = rows
        state.baseline_times = np.zeros(rows.shape[0], dtype=np.int64)
        state.baseline_texts = []
        if learnt is not None:
            self._add_window(state, learnt, learnt_times)
        self._queue(state, pending)

    def _queue(self, state: _Feature, entries: list[tuple[int, str]]) -> None:
        """Queue texts for the window, keeping the latest ``window_size`` by time."""
        if not entries:
            return
        merged = sorted([*state.texts, *entries], key=lambda entry: entry[0])
        size = self.settings.window_size
        self.counters.superseded += max(0, len(merged) - size)
        state.texts = deque(merged[-size:], maxlen=size)

    def _add_counters(self, theirs: Mapping[str, Any]) -> None:
        c = self.counters
        for field in dataclasses.fields(c):
            value = theirs.get(field.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if field.name == "max_job_s":
                c.max_job_s = max(c.max_job_s, float(value))
            elif field.name != "last_job_s":
                setattr(c, field.name, getattr(c, field.name) + int(value))

    # -- control --------------------------------------------------------------------

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Wait until the background job in flight (if any) is done; ``True`` when it is."""
        return self._idle.wait(timeout_s)

    def close(self, timeout_s: float = 1.0) -> None:
        """Stop the background thread (a job in flight is abandoned after ``timeout_s``)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            self._jobs.put(None)
            thread.join(timeout_s)
        close = getattr(self.embed, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()

    def stats(self) -> dict[str, Any]:
        """Memory, sampling, loss and timing counters, for status pages."""
        c = self.counters
        with self._lock:
            features = len(self._features)
            queued = sum(len(f.texts) + len(f.baseline_texts) for f in self._features.values())
        return {
            "features": features, "features_evicted": c.evicted, "queued_texts": queued,
            "sampled": c.sampled, "sampled_out": c.sampled_out, "superseded": c.superseded,
            "embedded": c.embedded, "embed_errors": c.embed_errors, "tests": c.tests,
            "test_errors": c.test_errors, "alerts": c.alerts, "busy_skips": c.busy_skips,
            "last_job_s": c.last_job_s, "max_job_s": c.max_job_s,
            "job_running": not self._idle.is_set(),
        }


@dataclass
class _Part:
    """One feature of a snapshot, decoded and checked."""

    key: str
    fixed: bool
    baseline: np.ndarray | None
    baseline_times: np.ndarray
    window: np.ndarray | None
    window_times: np.ndarray
    queued_baseline: list[tuple[int, str]]
    queued: list[tuple[int, str]]

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> _Part:
        """Decode one entry of a snapshot's ``features`` (``ValueError`` when malformed)."""
        key = str(raw["feature"])
        baseline = _decode(raw.get("baseline"), f"feature {key!r} baseline")
        window = _decode(raw.get("window"), f"feature {key!r} window")
        return cls(key, bool(raw.get("fixed")),
                   baseline, _times_of(raw.get("baseline_times"), baseline, key),
                   window, _times_of(raw.get("window_times"), window, key),
                   _entries(raw.get("queued_baseline")), _entries(raw.get("queued")))


def _times(entries: Sequence[tuple[int, str]]) -> np.ndarray:
    """The span end times of queued ``(time, text)`` entries."""
    return np.fromiter((t for t, _ in entries), dtype=np.int64, count=len(entries))


def _plain(value: Any) -> Any:
    """``value`` as JSON would carry it (tuples become lists), for comparing settings."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def _encode(rows: np.ndarray | None) -> dict[str, Any] | None:
    if rows is None:
        return None
    data = np.ascontiguousarray(rows, dtype="<f4")
    return {"shape": list(data.shape), "float32": base64.b64encode(data.tobytes()).decode()}


def _decode(data: Mapping[str, Any] | None, what: str) -> np.ndarray | None:
    if data is None:
        return None
    shape = tuple(int(n) for n in data["shape"])
    raw = base64.b64decode(data["float32"], validate=True)
    if len(shape) != 2 or len(raw) != 4 * shape[0] * shape[1]:
        raise ValueError(f"{what}: {len(raw)} bytes do not hold float32 rows of shape {shape}")
    return np.frombuffer(raw, dtype="<f4").reshape(shape).astype(np.float32)


def _times_of(values: Sequence[int] | None, rows: np.ndarray | None, key: str) -> np.ndarray:
    times = np.asarray(values or [], dtype=np.int64)
    if times.shape != ((0,) if rows is None else (rows.shape[0],)):
        raise ValueError(f"feature {key!r}: {times.size} times for "
                         f"{0 if rows is None else rows.shape[0]} embedded outputs")
    return times


def _entries(values: Sequence[Sequence[Any]] | None) -> list[tuple[int, str]]:
    return [(int(t), str(text)) for t, text in values or ()]
