"""The built-in monitors, built from the YAML ``monitors:`` section.

Each monitor runs on the worker thread (see :class:`llmvigil.core.pipeline.Monitor`)
and publishes what it computes as Metric and Alert records.
"""

from __future__ import annotations

from typing import Any

import pluggy

from ..config import VigilConfig
from .checks import CheckMonitor
from .cost import CostMonitor
from .drift import DriftMonitor
from .feedback import FeedbackMonitor
from .fingerprint import FingerprintMonitor
from .latency import LatencyMonitor
from .safety import SafetyMonitor
from .sessions import SessionsMonitor

__all__ = ["BUILTIN_MONITORS", "build_monitors"]

#: ``monitors:`` key -> monitor class, in the order the worker runs them: cost first,
#: so every later monitor (and every backend) sees ``span.cost_usd``.
BUILTIN_MONITORS: dict[str, Any] = {
    "cost": CostMonitor,
    "latency": LatencyMonitor,
    "feedback": FeedbackMonitor,
    "sessions": SessionsMonitor,
    "checks": CheckMonitor,
    "fingerprint": FingerprintMonitor,
    "drift": DriftMonitor,
    "safety": SafetyMonitor,
}


def _build(key: str, cls: Any, settings: Any, where: str, pm: pluggy.PluginManager,
           config: VigilConfig) -> Any:
    if cls is CostMonitor:
        from ..fleet.redis_state import ledger_from_config

        timezone = (settings or {}).get("timezone", "UTC")
        ledger = ledger_from_config(config.state, timezone=timezone,
                                    where=f"{config.source or 'config'}: state")
        return CostMonitor(settings, pm=pm, ledger=ledger)
    if cls is SafetyMonitor:
        return SafetyMonitor(settings, where=where, plugin_manager=pm,
                             store_path=config.store.path)
    if cls is DriftMonitor:
        return DriftMonitor(settings, where=where, plugin_manager=pm)
    if cls is LatencyMonitor:
        return LatencyMonitor(settings)
    return cls(settings, where=where)


def build_monitors(config: VigilConfig, pm: pluggy.PluginManager, *,
                   skip: tuple[type, ...] = ()) -> list[Any]:
    """Build every enabled built-in monitor from ``config.monitors``.

    Args:
        skip: monitor classes the caller already supplies (``init(monitors=...)``).

    Raises:
        ConfigError: a monitor's settings are invalid (the message names the key).
    """
    unknown = sorted(set(config.monitors) - set(BUILTIN_MONITORS))
    prefix = f"{config.source or 'config'}: "
    if unknown:
        from ..errors import ConfigError

        raise ConfigError(
            f"{prefix}monitors: unknown monitor(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(BUILTIN_MONITORS))}"
        )
    built = []
    for key, cls in BUILTIN_MONITORS.items():
        if cls in skip:
            continue
        monitor = _build(key, cls, config.monitors.get(key), f"{prefix}monitors.{key}", pm,
                         config)
        if monitor.settings.enabled:
            built.append(monitor)
    return built
