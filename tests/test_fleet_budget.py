"""Cost monitors on several replicas share one budget through Redis."""

from __future__ import annotations

import uuid

import pytest
from llmvigil.core.fleet.redis_state import RedisSpendLedger
from llmvigil.core.model import Span, Usage, new_trace_id, now_ns
from llmvigil.core.monitors.cost import CostMonitor

URL = "redis://127.0.0.1:6379/0"


def _redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(URL, socket_timeout=0.5).ping())
    except Exception:
        return False


pytestmark = pytest.mark.skipif(not _redis_up(), reason="Redis on 127.0.0.1:6379 does not answer")


def _span(user: str, usd: float) -> Span:
    t = now_ns()
    return Span(trace_id=new_trace_id(), name="call", kind="llm", start_ns=t, end_ns=t,
                model="claude-sonnet-4-6", usage=Usage(10, 10), cost_usd=usd, user_id=user,
                feature="extract")


def test_fleet_budget_trips_once_across_replicas_and_check_sees_the_fleet() -> None:
    prefix = f"llmvigil-test-{uuid.uuid4().hex[:8]}"
    config = {"budgets": {"features_usd_per_day": {"extract": 1.0}, "alert_at": [1.0],
                          "user_usd_per_hour": 0.5, "enforce": "decide"},
              "change_detection": {"enabled": False}, "spike": {"enabled": False}}
    replicas = [CostMonitor(config, register=False,
                            ledger=RedisSpendLedger(URL, key_prefix=prefix))
                for _ in range(3)]
    alerts = []
    for i in range(12):  # 12 x $0.10 spread over 3 replicas: no replica alone reaches $1
        alerts += [a for a in replicas[i % 3].observe(_span(f"u{i % 4}", 0.10))
                   if a.rule == "cost.budget"]
    assert len(alerts) == 1, "the fleet-wide budget fires exactly once"
    assert alerts[0].value == pytest.approx(1.0)
    status = dict((scope, spent) for scope, spent, _ in
                  replicas[0].budget_status(user_id="u1", feature="extract"))
    assert status["feature:extract/day"] == pytest.approx(1.2)
    assert status["user:u1/hour"] == pytest.approx(0.3)
    for monitor in replicas:
        monitor.close()


def test_redis_down_falls_back_to_local_figures() -> None:
    ledger = RedisSpendLedger("redis://127.0.0.1:9/0", key_prefix="unused")
    monitor = CostMonitor({"budgets": {"global_usd_per_day": 0.15, "alert_at": [1.0]}},
                          register=False, ledger=ledger)
    import time

    t0 = time.perf_counter()
    out = [a for i in range(2) for a in monitor.observe(_span("u", 0.10))]
    assert time.perf_counter() - t0 < 1.0
    assert [a.rule for a in out if a.rule == "cost.budget"] == ["cost.budget"]
    monitor.close()
