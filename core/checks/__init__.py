"""Output property checks: declared in YAML or registered from Python.

A check turns one output into a pass/fail or a number; the checks monitor
(:mod:`llmvigil.core.monitors.checks`) learns each check's baseline per feature and
tests recent windows against it. YAML checks are declared under
``monitors.checks.features.<feature>`` (see ``docs/monitors/checks.md``); Python code
registers custom ones::

    from llmvigil.core.checks import register_check

    register_check("extract_dates", "has_total", lambda out: "total" in out)
    register_check("extract_dates", "n_items", lambda out: len(out["items"]),
                   kind="value")

A registered check applies to the feature's outputs from the next one the monitor
sees; the feature ``"*"`` means every feature.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from typing import Any

from .builtins import (
    BUILTIN_TYPES,
    MISSING,
    Check,
    CheckSpec,
    DateFormat,
    Kind,
    Subject,
    _call_user,
    build_spec,
    find_dates,
    text_of,
)
from .grounding import GROUNDED_TYPES

__all__ = [
    "CHECK_TYPES",
    "MISSING",
    "Check",
    "CheckSpec",
    "DateFormat",
    "Subject",
    "build_check",
    "find_dates",
    "register_check",
    "registered_checks",
    "registry_version",
    "text_of",
    "unregister_check",
]

#: Every YAML check ``type:`` -> its spec model.
CHECK_TYPES: dict[str, type[CheckSpec]] = {**BUILTIN_TYPES, **GROUNDED_TYPES}

_lock = threading.Lock()
_registry: dict[str, dict[str, Check]] = {}
_version = 0


def build_check(spec: Mapping[str, Any], where: str = "check") -> Check:
    """Build a check from its YAML mapping (``name``, ``type`` and the type's keys).

    Raises:
        ConfigError: the mapping is invalid; the message names the key under ``where``.
    """
    return build_spec(CHECK_TYPES, spec, where)


def register_check(feature: str, name: str, fn: Callable[..., Any], *, kind: Kind = "auto",
                   field: str | None = None, on: str | None = None,
                   alternative: str | None = None, expected_fail_rate: float | None = None,
                   with_input: bool = False) -> Check:
    """Register a custom check on the outputs of ``feature`` (``"*"``: every feature).

    Args:
        fn: ``fn(output) -> bool | float | None``: ``True`` passes, ``False``
            fails, a number is a measurement, ``None`` skips the output. With
            ``with_input``, ``fn(output, span_input)``. It runs on the monitor's
            worker thread and must be quick; an exception skips the output (counted).
        kind: ``rate`` (booleans), ``value`` (numbers) or ``auto`` (from the first result).
        field: a JSON path into the output (``date``, ``items[0].date``,
            ``items[*].price``); ``fn`` then receives that value.
        on: which spans: ``llm``, ``root``, ``any`` or ``name:<span name>``
            (default: the monitor's ``on``).
        alternative: ``greater`` (default for rates: more failures), ``less`` or
            ``two-sided`` (default for numbers).
        expected_fail_rate: a known failure rate to test against instead of a
            learnt baseline (exact binomial test).

    Returns:
        The registered :class:`Check` (a check of the same name is replaced).

    Raises:
        ValueError: a bad name, kind, path or ``on``.
    """
    if not isinstance(feature, str) or not feature:
        raise ValueError("feature must be a non-empty string ('*' for every feature)")
    if not callable(fn):
        raise ValueError("fn must be callable")
    check = Check(name, _call_user(fn, with_input), kind=kind, field=field, on=on,
                  alternative=alternative, expected_fail_rate=expected_fail_rate,
                  type="custom")
    global _version
    with _lock:
        _registry.setdefault(feature, {})[name] = check
        _version += 1
    return check


def unregister_check(feature: str, name: str) -> bool:
    """Remove a registered check; returns whether it was there."""
    global _version
    with _lock:
        checks = _registry.get(feature)
        if not checks or name not in checks:
            return False
        del checks[name]
        if not checks:
            del _registry[feature]
        _version += 1
        return True


def registered_checks() -> dict[str, list[Check]]:
    """The registered checks by feature (a snapshot)."""
    with _lock:
        return {feature: list(checks.values()) for feature, checks in _registry.items()}


def registry_version() -> int:
    """A number that changes whenever a check is registered or removed."""
    return _version
