"""The built-in monitors, built from the YAML ``monitors:`` section.

Each monitor runs on the worker thread (see :class:`llmvigil.core.pipeline.Monitor`)
and publishes what it computes as Metric and Alert records.
"""

from __future__ import annotations

from typing import Any

from ..config import VigilConfig
from .feedback import FeedbackMonitor
from .sessions import SessionsMonitor

__all__ = ["build_monitors"]

#: ``monitors:`` key -> monitor class; each takes ``(settings_mapping, where=...)``.
BUILTIN_MONITORS: dict[str, Any] = {
    "feedback": FeedbackMonitor,
    "sessions": SessionsMonitor,
}


def build_monitors(config: VigilConfig, *, skip: tuple[type, ...] = ()) -> list[Any]:
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
        monitor = cls(config.monitors.get(key), where=f"{prefix}monitors.{key}")
        if monitor.settings.enabled:
            built.append(monitor)
    return built
