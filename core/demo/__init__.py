"""``vigil demo``: a simulated production service that silently degrades, and what catches it.

:func:`run_demo` initialises llmvigil on a local store in its own directory (plus an
in-process memory backend the timeline reads, plus any backend of the user's config
named with ``--backend``), with the real monitors configured for a run compressed into
a minute; plays a scripted day of the document-analysis service on a fake streaming
LLM (:mod:`.scenario`); and measures when each layer fired (:mod:`.timeline`).

Nothing needs the network or an account. Every figure in the result is measured in
the run: the update's request index is drawn from the seed, and each detection is
the first alert a monitor actually published.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError
from ..model import Alert
from .fake_llm import FakeLLM
from .scenario import CanaryProbe, PlayLog, Scenario, Script, build_script, play
from .service import DocumentService
from .timeline import Timeline, build_timeline

__all__ = [
    "CHECK_BASELINE",
    "CHECK_WINDOW",
    "DEFAULT_REQUESTS",
    "DEFAULT_SPEED",
    "MARKER",
    "DemoOptions",
    "DemoResult",
    "demo_config",
    "prepare_directory",
    "run_demo",
]

DEFAULT_REQUESTS = 4000
DEFAULT_SPEED = 0.1
#: Outputs the date checks learn their baseline from, and test at a time.
CHECK_BASELINE = 600
CHECK_WINDOW = 200
#: Per-user spend over a rolling hour that raises ``cost.user_hourly_limit``.
USER_USD_PER_HOUR = 0.5
MARKER = ".vigil-demo"
_instances = itertools.count(1)


@dataclass(frozen=True)
class DemoOptions:
    """How to run the demo (the ``vigil demo`` options).

    Args:
        requests: requests in the run.
        seed: draws users, documents, the update's and the cost spike's positions
            and the model's answers.
        speed: time scale of the simulation (1.0: real latencies and about 10
            requests a second; 0.1: ten times faster). The monitors' time windows
            scale with it, so they see the same number of requests at any speed.
        directory: where the local store, journals, alerts and config go; cleared
            at the start of each run (only if it is a demo directory).
        backends: names of backends in ``config`` to publish the same run to.
        config: the YAML config those backends are read from.
        fingerprint_leak: the updated model reports a new model id.
        transpose_rate: share of outputs the updated model transposes.
    """

    requests: int = DEFAULT_REQUESTS
    seed: int = 7
    speed: float = DEFAULT_SPEED
    directory: Path = Path(MARKER)
    backends: tuple[str, ...] = ()
    config: Path | None = None
    fingerprint_leak: bool = False
    transpose_rate: float = 0.05

    def scenario(self) -> Scenario:
        """The scripted scenario these options describe."""
        return Scenario(requests=self.requests, seed=self.seed,
                        transpose_rate=self.transpose_rate,
                        fingerprint_leak=self.fingerprint_leak)


@dataclass
class DemoResult:
    """A finished run: the script, what was measured, and where things were written."""

    options: DemoOptions
    script: Script
    log: PlayLog
    timeline: Timeline
    directory: Path
    store_path: Path
    config_path: Path
    backends: list[str]
    elapsed_s: float
    canary_runs: list[Any] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain data for ``vigil demo --json``."""
        return {
            "options": {"requests": self.options.requests, "seed": self.options.seed,
                        "speed": self.options.speed,
                        "fingerprint_leak": self.options.fingerprint_leak,
                        "transpose_rate": self.options.transpose_rate},
            **self.timeline.as_dict(),
            "store": str(self.store_path),
            "config": str(self.config_path),
            "backends": self.backends,
            "elapsed_s": round(self.elapsed_s, 2),
        }


# -- the run's directory and configuration ----------------------------------------------


def prepare_directory(directory: Path) -> Path:
    """Create ``directory``, or empty it if an earlier demo run made it.

    Raises:
        ConfigError: it exists, is not empty and was not made by the demo (it is
            never cleared then).
    """
    directory = directory.expanduser()
    if directory.exists():
        if not directory.is_dir():
            raise ConfigError(f"--dir {directory}: exists and is not a directory")
        if any(directory.iterdir()):
            if not (directory / MARKER).exists():
                raise ConfigError(
                    f"--dir {directory}: not empty and not a demo directory (no {MARKER} "
                    "marker); the demo clears its directory at each run, so give it its own")
            shutil.rmtree(directory)
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    (directory / MARKER).write_text("made by `vigil demo`: cleared at each run\n")
    return directory


def demo_config(directory: Path, *, speed: float, seed: int) -> dict[str, Any]:
    """The llmvigil config of a run: everything but the backends.

    Times are in simulated seconds (about 10 requests each) multiplied by ``speed``,
    so every window holds the same number of requests at any speed.
    """

    def sim(seconds: float) -> float:
        return round(seconds * speed, 6)

    return {
        "service": {"name": "document-analysis (demo)", "environment": "demo",
                    "release": "2025.10"},
        "store": {"path": str(directory / "vigil.db")},
        "pipeline": {"journal_dir": str(directory / "journal"), "flush_interval_s": 0.2,
                     "backoff_initial_s": 0.1, "backoff_max_s": 2.0},
        "capture": {"max_field_chars": 4096},
        "alerts": {"default_route": ["demo_file"],
                   "sinks": {"demo_file": {"type": "file",
                                           "path": str(directory / "alerts.jsonl")}}},
        "monitors": {
            "cost": {"budgets": {"user_usd_per_hour": USER_USD_PER_HOUR},
                     "emit_interval_s": sim(10)},
            "checks": {
                "baseline_size": CHECK_BASELINE, "window": CHECK_WINDOW, "alpha": 0.001,
                "cooldown_s": 3600, "cusum": {"enabled": True, "mtbfa": 1_000_000},
                "features": {"extract_dates": [
                    {"name": "date_valid", "type": "valid_date", "format": "%d/%m/%Y",
                     "field": "date"},
                    {"name": "dates_in_source", "type": "grounded_dates", "field": "date",
                     "source_field": "document", "locale": "dmy"},
                ]},
            },
            "feedback": {
                "window_s": sim(100), "bucket_s": sim(10), "emit_interval_s": sim(10),
                "drop": {"baseline_s": sim(300), "alpha": 0.0005, "min_samples": 50,
                         "min_baseline_samples": 150, "check_interval_s": sim(10),
                         "cooldown_s": 3600},
            },
            # Compressed, simulated latencies are tens of milliseconds: the machine's own
            # scheduling noise moves them as much, so latency change detection is off.
            "latency": {"emit_interval_s": sim(10), "change_detection": {"enabled": False}},
            "sessions": {"emit_interval_s": sim(10), "idle_timeout_s": sim(1800)},
            "fingerprint": {"emit_interval_s": sim(10)},
            "drift": {"spans": "root", "baseline_size": 500, "window_size": 300,
                      "min_window": 200, "min_new": 150, "interval_s": sim(30),
                      "alpha": 0.001, "permutations": 2000, "seed": seed,
                      "cooldown_s": 3600},
            "safety": {"emit_interval_s": sim(10), "window_s": sim(3600),
                       "bucket_s": sim(60)},
        },
    }


def _user_backends(names: Sequence[str], config: Path | None) -> list[dict[str, Any]]:
    """The backend entries of the user's config named by ``--backend``.

    Raises:
        ConfigError: a name is not a backend of that config (the message lists them).
    """
    if not names:
        return []
    from ..config import load_config

    loaded = load_config(config)
    where = loaded.source or "the default configuration (no config file found)"
    entries = {b.key: b for b in loaded.backends}
    entries.update({b.name: b for b in loaded.backends if b.name not in entries})
    out = []
    for name in names:
        if name == "local":
            raise ConfigError("--backend local: the demo always writes to its own local "
                              "store (in --dir); name another backend")
        entry = entries.get(name)
        if entry is None:
            known = ", ".join(sorted(entries)) or "none"
            raise ConfigError(f"--backend {name}: not a backend of {where}; its backends: "
                              f"{known} (add it under 'backends:' or pass --config)")
        out.append({"name": entry.name, "enabled": True, "redaction": entry.redaction,
                    "timeout_s": entry.timeout_s, **entry.settings})
    return out


# -- the run ----------------------------------------------------------------------------------


def run_demo(options: DemoOptions, *,
             on_request: Callable[[int, PlayLog], None] | None = None,
             on_script: Callable[[Script], None] | None = None,
             on_alert: Callable[[Alert, int], None] | None = None) -> DemoResult:
    """Run the demo end to end and measure what each monitoring layer caught.

    Args:
        on_request: called as each request is issued (progress displays).
        on_script: called with the drawn script before the run starts.
        on_alert: called with each alert the memory backend received while the run
            goes on, and the index of the request being issued (live displays).

    Raises:
        ConfigError: bad options (too few requests, a backend not in the config, a
            directory the demo may not clear).
    """
    from ...adapters.memory import get_memory_backend
    from .. import runtime

    if options.speed <= 0:
        raise ConfigError("--speed must be positive")
    started = time.perf_counter()
    try:
        script = build_script(options.scenario(),
                              extract_before=CHECK_BASELINE + CHECK_WINDOW + 100,
                              extract_after=3 * CHECK_WINDOW)
    except ValueError as exc:
        raise ConfigError(f"--requests {options.requests}: {exc}") from None
    extra = _user_backends(options.backends, options.config)
    directory = prepare_directory(Path(options.directory))
    config = demo_config(directory, speed=options.speed, seed=options.seed)
    config_path = directory / "vigil-demo.yaml"
    config_path.write_text(
        "# The llmvigil configuration `vigil demo` ran with (backends are given on the\n"
        "# command line). Times are compressed: see `vigil demo --help`.\n"
        + yaml.safe_dump(config, sort_keys=False))
    instance = f"demo-{os.getpid()}-{next(_instances)}"
    backends: list[Any] = [
        # The global redaction (capture.redact) already ran; a second, masked view per
        # backend would double the worker's regex work for no gain on demo data.
        {"name": "local", "path": str(directory / "vigil.db"), "redaction": "full"},
        {"name": "memory", "instance": instance, "redaction": "full"},
        *extra,
    ]
    if on_script is not None:
        on_script(script)
    llm = FakeLLM(seed=options.seed, speed=options.speed,
                  transpose_rate=options.transpose_rate,
                  fingerprint_leak=options.fingerprint_leak)
    service = DocumentService(llm)
    rt = runtime.init(config_path, backends=backends)
    memory = get_memory_backend(instance)
    canary = CanaryProbe(service, script.canary_documents, directory / "vigil.db")
    seen = 0
    polled = 0.0

    def progress(index: int, log: PlayLog) -> None:
        nonlocal seen, polled
        if on_request is not None:
            on_request(index, log)
        now = time.monotonic()
        if on_alert is not None and now - polled > 0.25:
            polled = now
            with memory.lock:
                new = memory.alerts[seen:]
            seen += len(new)
            for alert in new:
                on_alert(alert, index)

    try:
        log = asyncio.run(play(script, service, llm, speed=options.speed, canary=canary,
                               on_request=progress))
        canary.wait()
        for monitor in rt.monitors:
            wait_idle = getattr(monitor, "wait_idle", None)
            if callable(wait_idle):
                wait_idle(10.0)
    finally:
        runtime.shutdown(timeout=15.0)
        canary.close()
    timeline = build_timeline(script, log, memory, canary_runs=canary.runs,
                              user_limit_usd=USER_USD_PER_HOUR)
    with memory.lock:  # the backend stays registered: let its records go
        for held in (memory.spans, memory.scores, memory.session_events, memory.metrics,
                     memory.alerts, memory.safety_verdicts):
            held.clear()
    return DemoResult(options, script, log, timeline, directory, directory / "vigil.db",
                      config_path, [_key(b) for b in backends if b is not backends[1]],
                      time.perf_counter() - started, canary.runs)


def _key(backend: dict[str, Any]) -> str:
    """How a backend entry is named: ``name`` or ``name:instance``."""
    instance = backend.get("instance")
    return str(backend["name"]) if instance is None else f"{backend['name']}:{instance}"
