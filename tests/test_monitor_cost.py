"""The cost monitor, prices and budgets, checked against independent computations.

Costs are recomputed in the test with ``genai_prices.calc_price`` (and by hand from
the rates genai-prices publishes for the model), budgets and limits by hand-summed
spend.
"""

from __future__ import annotations

import logging
import math
import threading
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import llmvigil
import pytest
from llmvigil.core.errors import BudgetExceeded, ConfigError
from llmvigil.core.model import Alert, Metric, Span, StreamStats, Usage
from llmvigil.core.monitors import budget
from llmvigil.core.monitors.cost import CostMonitor, SpaceSaving
from llmvigil.core.monitors.prices import PriceBook, _rates_cost
from llmvigil.plugins.hookspecs import hookimpl
from llmvigil.plugins.manager import new_plugin_manager
from llmvigil.plugins.types import Price
from vigil_testing import start

S = 1_000_000_000
H = 3600 * S
T0 = 1_767_571_200 * S  # 2026-01-05 00:00:00 UTC
SONNET = "claude-sonnet-4-5"

#: A private model priced by override: $1 per 1,000 input tokens, $2 per 1,000 output.
TEST_PRICES = {"acme-ft": {"input_per_mtok": 1000.0, "output_per_mtok": 2000.0}}


def anthropic_stream_span(end_ns: int, *, input_tokens: int, cache_read: int, cache_write: int,
                          output_tokens: int, model: str = SONNET, user: str = "u1",
                          feature: str = "support") -> Span:
    """The span an instrumented ``client.messages.stream(...)`` call with prompt caching
    produces: Anthropic's ``input_tokens`` excludes the cached tokens, which come as
    ``cache_read_input_tokens`` and ``cache_creation_input_tokens``."""
    return Span(
        trace_id="a" * 32, name="anthropic.messages.stream", kind="llm",
        start_ns=end_ns - 4 * S, end_ns=end_ns, status="ok", provider="anthropic",
        operation="chat", model=model, response_model=f"{model}-20250929",
        response_id="msg_01", stop_reason="end_turn", ttft_s=0.6,
        stream=StreamStats(items=output_tokens, n=output_tokens - 1, mean_s=0.01,
                           p50_s=0.01, p95_s=0.02, max_s=0.05),
        usage=Usage(input_tokens=input_tokens, output_tokens=output_tokens,
                    cache_read_tokens=cache_read, cache_write_tokens=cache_write),
        user_id=user, feature=feature,
    )


def cost_span(end_ns: int, usd: float, *, user: str = "u1", feature: str = "support") -> Span:
    """An LLM span on the override-priced model costing ``usd`` (1,000 input tokens = $1)."""
    return Span(trace_id="b" * 32, kind="llm", model="acme-ft", provider="acme",
                start_ns=end_ns - S, end_ns=end_ns, user_id=user, feature=feature,
                usage=Usage(input_tokens=round(usd * 1000)))


def monitor(**config: Any) -> CostMonitor:
    config.setdefault("prices", TEST_PRICES)
    config.setdefault("change_detection", {"enabled": False})
    return CostMonitor(config)


def alerts(records: Any) -> list[Alert]:
    return [r for r in records if isinstance(r, Alert)]


@pytest.fixture(autouse=True)
def _no_active_budget() -> Any:
    yield
    budget.deactivate()


# -- prices ------------------------------------------------------------------------------


def genai_total(model: str, *, input_tokens: int, cache_read: int, cache_write: int,
                output_tokens: int) -> float:
    """The cost by genai-prices directly; its ``input_tokens`` include cached tokens."""
    calc = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=input_tokens + cache_read + cache_write,
                           cache_read_tokens=cache_read, cache_write_tokens=cache_write,
                           output_tokens=output_tokens),
        model_ref=model, provider_id="anthropic")
    return float(calc.total_price)


def test_streamed_anthropic_call_with_prompt_caching_is_priced_like_genai_prices() -> None:
    mon = monitor()
    # first call writes the system prompt to the cache, the second reads it
    first = anthropic_stream_span(T0 + S, input_tokens=24, cache_read=0, cache_write=3_200,
                                  output_tokens=410)
    second = anthropic_stream_span(T0 + 2 * S, input_tokens=31, cache_read=3_200,
                                   cache_write=0, output_tokens=655)
    for span in (first, second):
        assert list(mon.observe(span)) == []
        u = span.usage
        assert u is not None
        expected = genai_total(SONNET, input_tokens=u.input_tokens, output_tokens=u.output_tokens,
                               cache_read=u.cache_read_tokens, cache_write=u.cache_write_tokens)
        assert span.cost_usd == pytest.approx(expected, rel=1e-12)
        assert span.price_source == "genai-prices"
        assert span.price_version == genai_prices.__version__
    # by hand, from the rates genai-prices publishes: each token kind at its own rate
    calc = genai_prices.calc_price(genai_prices.Usage(input_tokens=1, output_tokens=1),
                                   model_ref=SONNET, provider_id="anthropic")
    mp = calc.model_price

    def rate(value: Any) -> Decimal:
        return value.base if hasattr(value, "base") else value

    r_in, r_out = rate(mp.input_mtok), rate(mp.output_mtok)
    r_read, r_write = rate(mp.cache_read_mtok), rate(mp.cache_write_mtok)
    assert len({r_in, r_read, r_write}) == 3  # the test means something
    by_hand_1 = (24 * r_in + 3_200 * r_write + 410 * r_out) / Decimal(1_000_000)
    by_hand_2 = (31 * r_in + 3_200 * r_read + 655 * r_out) / Decimal(1_000_000)
    assert first.cost_usd == pytest.approx(float(by_hand_1), rel=1e-12)
    assert second.cost_usd == pytest.approx(float(by_hand_2), rel=1e-12)
    assert mon.spend_today() == pytest.approx(float(by_hand_1 + by_hand_2), rel=1e-12)


def test_long_context_tier_matches_genai_prices() -> None:
    book = PriceBook()
    usage = Usage(input_tokens=150_000, cache_read_tokens=60_000, cache_write_tokens=5_000,
                  output_tokens=2_000)  # 215k input tokens in all: over the 200k tier
    result = book.cost(usage, SONNET, "anthropic")
    assert result is not None
    assert result.cost_usd == pytest.approx(genai_total(
        SONNET, input_tokens=150_000, cache_read=60_000, cache_write=5_000,
        output_tokens=2_000), rel=1e-12)
    below = book.cost(Usage(input_tokens=150_000), SONNET, "anthropic")
    assert below is not None
    assert result.cost_usd > below.cost_usd * (215_000 / 150_000)  # tier rate applies to all


@pytest.mark.parametrize("model,provider", [
    ("gpt-4o", "openai"), ("gpt-4o-mini", None), ("claude-haiku-4-5", "aws.bedrock"),
    ("gemini-2.5-pro", "gcp.vertex_ai"),
])
def test_other_providers_match_genai_prices(model: str, provider: str | None) -> None:
    usage = Usage(input_tokens=1_000, cache_read_tokens=4_000, output_tokens=300)
    result = PriceBook().cost(usage, model, provider)
    assert result is not None
    expected = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=5_000, cache_read_tokens=4_000, output_tokens=300),
        model_ref=model).total_price
    assert result.cost_usd == pytest.approx(float(expected), rel=1e-9)


def test_tier_boundary_matches_genai_prices() -> None:
    """A tier applies when the total input *exceeds* its threshold (200k for Sonnet); the
    per-span arithmetic gives exactly what walking each rate's tiers gives."""
    book = PriceBook()
    rates = book.resolve(SONNET, "anthropic").rates
    assert rates is not None and any(r is not None and r[1] for r in rates)  # tiered
    for total in (199_999, 200_000, 200_001):
        for read, write in ((0, 0), (50_000, 1_000)):
            usage = Usage(input_tokens=total - read - write, cache_read_tokens=read,
                          cache_write_tokens=write, output_tokens=700)
            result = book.cost(usage, SONNET, "anthropic")
            assert result is not None
            assert result.cost_usd == pytest.approx(genai_total(
                SONNET, input_tokens=total - read - write, cache_read=read,
                cache_write=write, output_tokens=700), rel=1e-12)
            assert result.cost_usd == _rates_cost(rates, total - read - write, 700, read, write)


def _by_hand(price: Price, usage: Usage) -> float:
    """A flat price applied without the price book: cache tokens without a rate are input."""
    read = price.cache_read_per_mtok
    write = price.cache_write_per_mtok
    return (usage.input_tokens * price.input_per_mtok
            + usage.output_tokens * price.output_per_mtok
            + usage.cache_read_tokens * (price.input_per_mtok if read is None else read)
            + usage.cache_write_tokens * (price.input_per_mtok if write is None else write)
            ) / 1e6


def test_cached_prices_give_what_a_fresh_lookup_gives() -> None:
    """The book resolves a (model, fallback, provider) once and reuses it: every later
    call gives exactly the cost, source and version a book asked for the first time
    gives, overrides still win, and an unknown model stays unpriced."""
    overrides = {
        "acme-*": {"input_per_mtok": 3, "output_per_mtok": 4, "cache_read_per_mtok": 0.3,
                   "version": "v9"},
        "openai/gpt-4o": {"input_per_mtok": 7, "output_per_mtok": 9},
        "Claude-Haiku-4-5": {"input_per_mtok": 1, "output_per_mtok": 2},
    }
    calls: list[tuple[str, str | None, str | None]] = [
        ("claude-haiku-4-5", "anthropic", None),  # override (names are case-insensitive)
        ("gpt-4o", "openai", None),  # override by provider/model
        ("gpt-4o", None, None),  # genai-prices: the override names another provider
        ("acme-ft-2", "acme", None),  # override by pattern
        (f"{SONNET}-20250929", "anthropic", SONNET),  # genai-prices, tiered
        ("claude-opus-4-1", "anthropic", None),
        ("nobody-knows-7b", "vllm", None),  # unpriced
        ("nobody-knows-7b", None, "acme-x"),  # the fallback name is priced
    ]
    usages = [Usage(), Usage(input_tokens=10, output_tokens=3),
              Usage(input_tokens=150_000, output_tokens=900, cache_read_tokens=60_000,
                    cache_write_tokens=5_000),
              Usage(input_tokens=1_000, cache_read_tokens=4_000, output_tokens=300)]
    book = PriceBook(overrides)
    for _ in range(3):  # the first round fills the cache, the others read it
        for model, provider, fallback in calls:
            for usage in usages:
                got = book.cost(usage, model, provider, fallback_model=fallback)
                fresh = PriceBook(overrides).cost(usage, model, provider,
                                                  fallback_model=fallback)
                assert got == fresh
    assert len(book._cache) == len(calls)
    # and against computations that do not go through the book
    haiku = PriceBook(overrides).cost(usages[3], "claude-haiku-4-5", "anthropic")
    assert haiku is not None and haiku.source == "config"
    assert haiku.cost_usd == _by_hand(Price(1, 2), usages[3])
    acme = book.cost(usages[2], "ACME-ft-2", None)
    assert acme is not None and (acme.source, acme.version) == ("config", "v9")
    assert acme.cost_usd == _by_hand(Price(3, 4, 0.3), usages[2])
    assert book.cost(usages[1], "nobody-knows-7b", "vllm") is None
    for usage in usages[1:]:
        got = book.cost(usage, f"{SONNET}-20250929", "anthropic", fallback_model=SONNET)
        assert got is not None and got.source == "genai-prices"
        assert got.cost_usd == pytest.approx(genai_total(
            SONNET, input_tokens=usage.input_tokens, cache_read=usage.cache_read_tokens,
            cache_write=usage.cache_write_tokens, output_tokens=usage.output_tokens),
            rel=1e-12)


def test_price_cache_is_bounded_and_expires() -> None:
    book = PriceBook({"m-*": {"input_per_mtok": 1, "output_per_mtok": 1}}, refresh_s=0.0)
    usage = Usage(input_tokens=1_000_000)
    for i in range(10_050):
        result = book.cost(usage, f"m-{i}")
        assert result is not None and result.cost_usd == 1.0
        assert len(book._cache) <= 10_001
    # refresh_s=0: every call resolves again, and an answer is never stale
    assert book.cost(usage, "m-1") == book.cost(usage, "m-1")


def test_unpriced_model_gets_no_cost_a_metric_and_one_warning(
        caplog: pytest.LogCaptureFixture) -> None:
    mon = monitor(emit_interval_s=60)
    caplog.set_level(logging.WARNING, logger="llmvigil.cost")
    spans = [Span(trace_id="c" * 32, kind="llm", model="in-house-7b", provider="vllm",
                  end_ns=T0 + i * S, usage=Usage(input_tokens=100, output_tokens=10))
             for i in range(3)]
    for span in spans:
        assert list(mon.observe(span)) == []
        assert span.cost_usd is None and span.price_source is None
    assert mon.spend_today() == 0.0
    warnings = [r for r in caplog.records if "in-house-7b" in r.getMessage()]
    assert len(warnings) == 1 and "not costed at zero" in warnings[0].getMessage()
    metrics = [r for r in mon.tick(T0 + 5 * S)
               if isinstance(r, Metric) and r.name == "cost.unpriced_spans"]
    assert [(m.value, m.labels) for m in metrics] == [
        (3.0, {"model": "in-house-7b", "provider": "vllm"})]
    assert mon.summary()["unpriced_spans"] == 3


def test_overrides_win_over_plugins_which_win_over_genai_prices() -> None:
    class PricePlugin:
        @hookimpl
        def llmvigil_price(self, model: str, provider: str | None) -> Price | None:
            if model.startswith("claude"):
                return Price(1.0, 2.0, 0.5, 1.5, source="plugin:test", version="7")
            return None

    pm = new_plugin_manager(load_entrypoints=False)
    pm.register(PricePlugin())
    mon = CostMonitor({"prices": {
        "anthropic/claude-opus-4-1": {"input_per_mtok": 10, "output_per_mtok": 20,
                                      "cache_read_per_mtok": 1, "cache_write_per_mtok": 12.5,
                                      "version": "contract-2026"},
        "ft:gpt-4o-mini:acme:*": {"input_per_mtok": 0.3, "output_per_mtok": 1.2},
    }}, pm=pm)
    usage = dict(input_tokens=1000, cache_read=2000, cache_write=400, output_tokens=100)
    opus = anthropic_stream_span(T0, model="claude-opus-4-1", **usage)
    sonnet = anthropic_stream_span(T0, **usage)
    mon.observe(opus)
    mon.observe(sonnet)
    assert (opus.price_source, opus.price_version) == ("config", "contract-2026")
    assert opus.cost_usd == pytest.approx((1000 * 10 + 2000 * 1 + 400 * 12.5 + 100 * 20) / 1e6)
    assert (sonnet.price_source, sonnet.price_version) == ("plugin:test", "7")
    assert sonnet.cost_usd == pytest.approx((1000 * 1 + 2000 * 0.5 + 400 * 1.5 + 100 * 2) / 1e6)
    ft = Span(trace_id="d" * 32, kind="llm", model="ft:gpt-4o-mini:acme:support-v3",
              provider="openai", usage=Usage(input_tokens=1000, cache_read_tokens=1000,
                                             output_tokens=500))
    mon.observe(ft)
    # no cache rate in the override: cache reads are priced as input
    assert ft.cost_usd == pytest.approx((2000 * 0.3 + 500 * 1.2) / 1e6)
    assert ft.price_source == "config"
    # a span that already carries a cost keeps it
    given = cost_span(T0, 1.0)
    given.cost_usd, given.price_source = 0.5, "provider"
    mon.observe(given)
    assert (given.cost_usd, given.price_source) == (0.5, "provider")


def test_cost_reaches_the_backends_through_the_pipeline(tmp_path: Path) -> None:
    mon = CostMonitor({})
    memory = start(tmp_path, monitors=[mon])
    span = anthropic_stream_span(llmvigil.core.model.now_ns(), input_tokens=10, cache_read=100,
                                 cache_write=0, output_tokens=50)
    llmvigil.core.capture.emit(span)
    assert llmvigil.flush()
    [got] = [s for s in memory.spans if s.model == SONNET]
    assert got.cost_usd == pytest.approx(genai_total(
        SONNET, input_tokens=10, cache_read=100, cache_write=0, output_tokens=50), rel=1e-12)
    assert got.price_source == "genai-prices"


# -- budgets and limits ----------------------------------------------------------------------


def test_daily_budget_alerts_at_80_and_100_percent_once_per_day() -> None:
    mon = monitor(budgets={"global_usd_per_day": 1.0, "features_usd_per_day": {"search": 0.5}})
    fired: list[Alert] = []
    for i in range(10):  # 0.3 USD each: 0.9 after 3 (80%), 1.2 after 4 (100%)
        fired += alerts(mon.observe(cost_span(T0 + i * 60 * S, 0.3)))
    assert [(a.rule, a.labels["level"], a.severity) for a in fired] == [
        ("cost.budget", "80%", "warning"), ("cost.budget", "100%", "critical")]
    assert fired[0].value == pytest.approx(0.9) and fired[0].threshold == pytest.approx(0.8)
    assert fired[1].value == pytest.approx(1.2) and fired[1].labels["scope"] == "global"
    # the feature budget counts only its feature; the global one has fired already today
    feature = alerts(mon.observe(cost_span(T0 + H, 0.45, feature="search")))
    assert [(a.labels["scope"], a.labels.get("feature"), a.labels["level"])
            for a in feature] == [("feature", "search", "80%")]
    assert mon.spend_today("search") == pytest.approx(0.45)
    # next day (UTC midnight): spend restarts and the alerts can fire again
    next_day = T0 + 24 * H
    assert alerts(mon.observe(cost_span(next_day + S, 0.5))) == []
    again = alerts(mon.observe(cost_span(next_day + 2 * S, 0.5)))
    assert [a.labels["level"] for a in again] == ["80%", "100%"]
    assert mon.spend_today() == pytest.approx(1.0)


def test_budget_day_follows_the_configured_time_zone() -> None:
    mon = monitor(timezone="America/New_York", budgets={"global_usd_per_day": 10.0})
    mon.observe(cost_span(T0 + 2 * H, 3.0))  # 21:00 in New York, Jan 4
    mon.observe(cost_span(T0 + 6 * H, 1.0))  # 01:00 in New York, Jan 5: a new day
    assert mon.spend_today() == pytest.approx(1.0)


def test_per_user_hourly_limit() -> None:
    mon = monitor(budgets={"user_usd_per_hour": 1.0}, user_alert_cooldown_s=3600)
    fired: list[Alert] = []
    for i in range(6):  # 0.25 USD every 5 minutes: the limit is reached at the 4th call
        fired += alerts(mon.observe(cost_span(T0 + i * 300 * S, 0.25, user="alice")))
        fired += alerts(mon.observe(cost_span(T0 + i * 300 * S, 0.05, user="bob")))
    assert [(a.rule, a.labels) for a in fired] == [
        ("cost.user_hourly_limit", {"user": "alice"})]
    assert fired[0].value == pytest.approx(1.0) and fired[0].threshold == 1.0
    assert mon.user_spend_last_hour("alice") == pytest.approx(1.5)
    # two hours later the last hour holds only the new call: under the limit
    assert alerts(mon.observe(cost_span(T0 + 3 * H, 0.25, user="alice"))) == []
    assert mon.user_spend_last_hour("alice") == pytest.approx(0.25)
    assert mon.top_users(1, period="day") == [("alice", pytest.approx(1.75))]


def test_budget_check_raises_or_decides() -> None:
    assert budget.check("alice").allowed  # no cost monitor yet: allowed
    mon = monitor(budgets={"global_usd_per_day": 10.0, "features_usd_per_day": {"chat": 2.0},
                           "user_usd_per_hour": 1.0})
    assert budget.active_monitor() is mon
    mon.observe(cost_span(T0, 0.9, user="alice", feature="chat"))
    ok = budget.check("alice", "chat")
    assert ok.allowed and ok.scope == "user:alice/hour"
    assert (ok.spent_usd, ok.limit_usd) == (pytest.approx(0.9), 1.0)
    with pytest.raises(BudgetExceeded) as info:
        budget.check("alice", "chat", estimated_usd=0.2)
    assert info.value.scope == "user:alice/hour"
    assert info.value.spent_usd == pytest.approx(0.9) and info.value.limit_usd == 1.0
    mon.observe(cost_span(T0 + S, 1.2, user="bob", feature="chat"))
    with pytest.raises(BudgetExceeded, match="feature:chat/day"):
        budget.check("carol", "chat")
    assert budget.check("carol", "search").allowed
    assert budget.check().allowed

    deciding = monitor(budgets={"user_usd_per_hour": 1.0, "enforce": "decide"})
    assert budget.active_monitor() is deciding
    deciding.observe(cost_span(T0, 1.0, user="alice"))
    decision = budget.check(user_id="alice")
    assert not decision.allowed and decision.scope == "user:alice/hour"
    assert "spent $1.0000 of $1.0000" in decision.reason
    assert budget.check(user_id="bob").allowed
    for bad in ("abc", math.nan, None):
        with pytest.raises(ValueError, match=r"budget\.check\(estimated_usd=\.\.\.\): "
                                             "expected a number of dollars"):
            budget.check(user_id="alice", estimated_usd=bad)  # type: ignore[arg-type]
    deciding.close()
    assert budget.check(user_id="alice").allowed  # no active monitor


def test_budget_check_from_app_threads_while_the_worker_writes() -> None:
    mon = monitor(budgets={"global_usd_per_day": 1e9, "user_usd_per_hour": 1e9,
                           "enforce": "decide"})
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader() -> None:
        try:
            while not stop.is_set():
                assert budget.check("u7", "support").allowed
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for th in threads:
        th.start()
    for i in range(20_000):
        mon.observe(cost_span(T0 + i * 100_000_000, 0.001, user=f"u{i % 50}"))
    stop.set()
    for th in threads:
        th.join()
    assert errors == []
    assert mon.spend_today() == pytest.approx(20.0)


# -- spikes and top-N ----------------------------------------------------------------------


def test_spike_detector_compares_the_last_hour_with_the_median_hour() -> None:
    mon = monitor(spike={"factor": 3.0, "min_usd": 1.0, "min_baseline_hours": 3,
                         "check_interval_s": 60, "cooldown_s": 3600})
    fired: list[Alert] = []
    for minute in range(6 * 60):  # six hours at 2 USD per hour
        now = T0 + minute * 60 * S
        mon.observe(cost_span(now, 2.0 / 60))
        fired += alerts(mon.tick(now))
    assert fired == []
    for minute in range(6 * 60, 7 * 60):  # then 10 USD in an hour on one feature
        now = T0 + minute * 60 * S
        mon.observe(cost_span(now, 2.0 / 60))
        mon.observe(cost_span(now, 8.0 / 60, feature="search"))
        fired += alerts(mon.tick(now))
    rules = [(a.rule, a.labels["feature"]) for a in fired]
    assert rules == [("cost.spike", "_all")]  # search has no baseline hours of its own
    spike = fired[0]
    assert spike.threshold == pytest.approx(6.0, rel=0.05)  # 3 x a median hour of ~$2
    assert spike.value is not None and spike.value > spike.threshold


def test_no_spike_below_the_minimum_spend() -> None:
    mon = monitor(spike={"factor": 2.0, "min_usd": 5.0, "min_baseline_hours": 2})
    fired: list[Alert] = []
    for minute in range(5 * 60):
        now = T0 + minute * 60 * S
        mon.observe(cost_span(now, (0.01 if minute < 4 * 60 else 0.05)))
        fired += alerts(mon.tick(now))
    assert fired == []  # 3 USD in the last hour: 5x the baseline but under min_usd


def test_top_users_and_features_and_metrics() -> None:
    mon = monitor(top_n=2, emit_interval_s=60)
    for i, (user, feature, usd) in enumerate([("alice", "chat", 3.0), ("bob", "chat", 1.0),
                                              ("carol", "search", 2.0), ("alice", "search", 0.5)]):
        mon.observe(cost_span(T0 + i * S, usd, user=user, feature=feature))
    assert mon.top_users(2) == [("alice", pytest.approx(3.5)), ("carol", pytest.approx(2.0))]
    assert mon.top_features() == [("chat", pytest.approx(4.0)), ("search", pytest.approx(2.5))]
    metrics = [r for r in mon.tick(T0 + 10 * S) if isinstance(r, Metric)]
    got = {(m.name, tuple(sorted(m.labels.items()))): m.value for m in metrics}
    assert got[("cost.spend_today_usd", (("feature", "_all"),))] == pytest.approx(6.5)
    assert got[("cost.spend_today_usd", (("model", "acme-ft"),))] == pytest.approx(6.5)
    assert got[("cost.spend_usd", (("feature", "chat"),))] == pytest.approx(4.0)
    assert got[("cost.user_spend_usd", (("user", "alice"),))] == pytest.approx(3.5)
    assert ("cost.user_spend_usd", (("user", "bob"),)) not in got  # top 2 only


def test_user_tracking_is_bounded_and_keeps_heavy_hitters() -> None:
    mon = monitor(max_users=50)
    for i in range(5_000):
        mon.observe(cost_span(T0 + i * 100_000_000, 0.01, user=f"light{i}"))
        if i % 10 == 0:
            mon.observe(cost_span(T0 + i * 100_000_000, 0.05, user="whale"))
    assert len(mon._users) <= 50 and len(mon._day_users) <= 50
    top_user, total = mon.top_users(1, period="day")[0]
    assert top_user == "whale" and total >= 25.0  # overestimate bounded by its error
    ss = SpaceSaving(3)
    for key, w in [("a", 5), ("b", 1), ("c", 1), ("d", 1), ("a", 5)]:
        ss.add(key, w)
    assert ss.top(1) == [("a", 10.0, 0.0)] and len(ss) == 3


def test_change_in_cost_per_call_is_detected() -> None:
    mon = CostMonitor({"prices": TEST_PRICES, "change_detection": {"arl0": 100_000}})
    fired: list[Alert] = []
    for i in range(600):
        fired += alerts(mon.observe(cost_span(T0 + i * S, 0.01 + 0.001 * (i % 7))))
    assert fired == []
    for i in range(600, 700):  # prompts doubled in size
        fired += alerts(mon.observe(cost_span(T0 + i * S, 0.02 + 0.002 * (i % 7))))
    assert [(a.rule, a.labels["direction"]) for a in fired] == [("cost.change", "up")]


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"monitors\.cost\.timezone: unknown time zone"):
        CostMonitor({"timezone": "Mars/Olympus"})
    with pytest.raises(ConfigError, match=r"monitors\.cost\.budgets\.global_usd_per_day"):
        CostMonitor({"budgets": {"global_usd_per_day": -5}})
    with pytest.raises(ConfigError, match=r"monitors\.cost\.prices\.x\.output_per_mtok: "
                                          r"required key is missing"):
        CostMonitor({"prices": {"x": {"input_per_mtok": 1}}})
    with pytest.raises(ConfigError, match=r"monitors\.cost\.budgets\.enforce"):
        CostMonitor({"budgets": {"enforce": "block"}})


def test_dates_of_the_fixtures() -> None:
    assert datetime.fromtimestamp(T0 / S, timezone.utc) == datetime(2026, 1, 5,
                                                                     tzinfo=timezone.utc)
