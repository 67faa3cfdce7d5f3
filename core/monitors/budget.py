"""Budget enforcement before a call: ``llmvigil.budget.check(user_id=..., feature=...)``.

:func:`check` reads the spend the active :class:`~.cost.CostMonitor` has counted (the
monitor registers itself when built; reads take the monitor's lock, so the
application thread reading and the worker writing never see a torn state) and
compares it with the limits of ``monitors.cost.budgets``:

* ``global_usd_per_day``: everything spent today;
* ``features_usd_per_day[feature]``: what ``feature`` spent today;
* ``user_usd_per_hour``: what ``user_id`` spent over the last hour.

A limit is hit when the spend already reached it, or when ``spent + estimated_usd``
would pass it. With ``enforce: raise`` (the default) a hit raises
:class:`~llmvigil.core.errors.BudgetExceeded`; with ``enforce: decide`` it returns a
:class:`BudgetDecision` with ``allowed=False``. Spend reaches the monitor through the
background queue, so it lags the calls by about one flush interval.

Without an active cost monitor (llmvigil not initialised, or ``monitors.cost``
disabled) every call is allowed.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..capture import finite_number
from ..errors import BudgetExceeded

if TYPE_CHECKING:
    from .cost import CostMonitor

__all__ = ["BudgetDecision", "BudgetExceeded", "activate", "active_monitor", "check",
           "deactivate"]

_lock = threading.Lock()
_active: weakref.ref[CostMonitor] | None = None


@dataclass(frozen=True)
class BudgetDecision:
    """Whether a call may go ahead, and the limit that decided.

    ``spent_usd``/``limit_usd``/``scope`` describe the limit that was hit or, when
    the call is allowed, the limit closest to being hit (``None`` when none applies).
    ``scope`` reads ``global/day``, ``feature:<name>/day`` or ``user:<id>/hour``.
    """

    allowed: bool
    reason: str
    spent_usd: float | None = None
    limit_usd: float | None = None
    scope: str | None = None


def activate(monitor: CostMonitor) -> None:
    """Make ``monitor`` the one :func:`check` reads (held weakly)."""
    global _active
    with _lock:
        _active = weakref.ref(monitor)


def deactivate(monitor: CostMonitor | None = None) -> None:
    """Forget the active monitor (only if it is ``monitor``, when given)."""
    global _active
    with _lock:
        if monitor is None or (_active is not None and _active() is monitor):
            _active = None


def active_monitor() -> CostMonitor | None:
    """The cost monitor :func:`check` reads, if any."""
    with _lock:
        return _active() if _active is not None else None


def check(user_id: str | None = None, feature: str | None = None, *,
          estimated_usd: float = 0.0) -> BudgetDecision:
    """Decide whether a call for ``user_id``/``feature`` costing ``estimated_usd`` may run.

    Raises:
        BudgetExceeded: a limit is hit and the config says ``enforce: raise``; its
            ``scope``, ``spent_usd`` and ``limit_usd`` name the limit.
        ValueError: ``estimated_usd`` is not a finite number.
    """
    try:
        estimated = max(0.0, finite_number(float, estimated_usd, "estimated_usd"))
    except (TypeError, ValueError, OverflowError):
        raise ValueError("budget.check(estimated_usd=...): expected a number of dollars, "
                         f"got {estimated_usd!r:.100}") from None
    monitor = active_monitor()
    if monitor is None:
        return BudgetDecision(True, "no active cost monitor")
    closest: tuple[float, str, float, float] | None = None
    for scope, spent, limit in monitor.budget_status(user_id, feature):
        if spent >= limit or spent + estimated > limit:
            reason = (f"budget {scope} hit: spent ${spent:.4f} of ${limit:.4f}"
                      + (f" (+${estimated:.4f} estimated)" if estimated else ""))
            if monitor.settings.budgets.enforce == "raise":
                raise BudgetExceeded(reason, scope=scope, spent_usd=spent, limit_usd=limit)
            return BudgetDecision(False, reason, spent, limit, scope)
        ratio = (spent + estimated) / limit
        if closest is None or ratio > closest[0]:
            closest = (ratio, scope, spent, limit)
    if closest is None:
        return BudgetDecision(True, "no budget applies")
    _, scope, spent, limit = closest
    return BudgetDecision(True, f"within budget {scope}: ${spent:.4f} of ${limit:.4f}",
                          spent, limit, scope)
