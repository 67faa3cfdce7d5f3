"""Output checks: the built-ins, registration, the monitor's windows and alerts, and the
calibration of the date-validity check on simulated date-extraction outputs."""

from __future__ import annotations

import calendar
import json
import random
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llmvigil
import pytest
from llmvigil.adapters.memory import get_memory_backend
from llmvigil.core.checks import (
    CHECK_TYPES,
    DateFormat,
    build_check,
    find_dates,
    register_check,
    registered_checks,
    unregister_check,
)
from llmvigil.core.checks import builtins as B
from llmvigil.core.checks import grounding as G
from llmvigil.core.errors import ConfigError
from llmvigil.core.model import Alert, Metric, Span, new_span_id, new_trace_id
from llmvigil.core.monitors.checks import CheckMonitor

S = 1_000_000_000
T0 = 1_700_000_000 * S
DATE_CHECK = {"name": "date_valid", "type": "valid_date", "format": "%d/%m/%Y",
              "field": "date"}


def span(output: Any, feature: str | None = "extract", *, input: Any = None, t: int = T0,
         kind: str = "chain", root: bool = True, name: str = "extract") -> Span:
    return Span(trace_id=new_trace_id(), parent_id=None if root else new_span_id(), name=name,
                kind=kind, feature=feature, output=output, input=input, start_ns=t, end_ns=t)


def alerts(out: Any) -> list[Alert]:
    return [r for r in out if isinstance(r, Alert)]


def metric_values(out: Any, name: str) -> dict[str, float]:
    return {m.labels["feature"]: m.value for m in out if isinstance(m, Metric) and m.name == name}


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    yield
    for feature, checks in registered_checks().items():
        for check in checks:
            unregister_check(feature, check.name)


# -- dates ----------------------------------------------------------------------------------


def test_valid_date_finds_impossible_dates_in_text_and_fields() -> None:
    text = build_check({"name": "d", "type": "valid_date", "format": "%d/%m/%Y"})
    assert text("Invoice dated 04/03/2024, paid 05/03/2024.") is True
    assert text("due 13/25/2024") is False  # month 25
    assert text("due 31/04/2024") is False  # 31 April
    assert text("29/02/2023") is False and text("29/02/2024") is True
    assert text("ISO 2024-03-04 is another format") is None  # nothing of this format
    assert text(None) is None
    field = build_check(DATE_CHECK)
    assert field({"date": "12/13/2024"}) is False
    assert field('{"date": "12/12/2024"}') is True  # JSON text is parsed for the path
    assert field({"other": 1}) is None
    required = build_check({**DATE_CHECK, "require": True})
    assert required({"other": 1}) is False and required({"date": "soon"}) is False


def test_date_formats_with_names_two_digit_years_and_times() -> None:
    names = build_check({"name": "d", "type": "valid_date", "format": "%d %B %Y"})
    assert names("signed 4 March 2024") is True
    assert names("signed 31 February 2024") is False
    assert names("12 apples 2024") is None  # not a month name: not a date
    fmt = DateFormat("%m/%d/%y %H:%M")
    got = [(s, e, d) for s, e, d in fmt.finditer("at 02/29/24 23:59 and 02/30/24 10:00")]
    assert [d.isoformat() if d else None for _s, _e, d in got] == ["2024-02-29", None]
    assert fmt.parse("12/31/99 25:00") is None  # hour 25
    assert DateFormat("%Y-%m-%d").parse("2024-03-04").isoformat() == "2024-03-04"  # type: ignore[union-attr]
    for bad in ("%d/%m/%Q", "%H:%M", "%d/%d/%Y"):
        with pytest.raises(ValueError):
            DateFormat(bad)


def test_date_format_share_counts_other_shapes_as_failures() -> None:
    check = build_check({"name": "f", "type": "date_format", "format": "%d/%m/%Y"})
    assert check("on 04/03/2024") is True
    assert check("on 2024-03-04") is False
    assert check("on 4 March 2024") is False
    assert check("04/03/2024 then 4/3/24") is False
    assert check("4/3/2024") is False  # not zero-padded
    lax = build_check({"name": "f", "type": "date_format", "format": "%d/%m/%Y",
                       "zero_padded": False})
    assert lax("4/3/2024") is True
    assert check("no dates at all") is None


def test_find_dates_reads_numeric_dates_under_a_locale() -> None:
    text = "Signed 04/03/2024, due March 5, 2024, paid 2024-12-01; bad 31/02/2024; v1.2.3"
    dmy = [(raw, d.isoformat() if d else None) for _s, _e, raw, d in find_dates(text, "dmy")]
    assert dmy == [("04/03/2024", "2024-03-04"), ("March 5, 2024", "2024-03-05"),
                   ("2024-12-01", "2024-12-01"), ("31/02/2024", None)]
    mdy = [d.isoformat() if d else None for *_x, d in find_dates("04/03/2024", "mdy")]
    assert mdy == ["2024-04-03"]


# -- JSON, text, language, regex, custom ------------------------------------------------------


def test_json_checks() -> None:
    parses = build_check({"name": "j", "type": "json_parses"})
    assert parses('```json\n{"a": 1}\n```') is True
    assert parses('{"a": 1') is False
    assert parses({"already": "parsed"}) is True
    assert parses('{"a": "' + "x" * 50 + '...[truncated 900 chars]') is None  # cut by capture
    schema = build_check({"name": "s", "type": "json_schema", "schema": {
        "type": "object", "required": ["date"], "properties": {"date": {"type": "string"}}}})
    assert schema('{"date": "04/03/2024"}') is True
    assert schema('{"date": 4}') is False and schema("not json") is False
    count = build_check({"name": "c", "type": "field_count"})
    assert count('{"a": 1, "b": "", "c": null, "d": [], "e": "x"}') == 2.0
    assert count("not json") == 0.0
    keys = build_check({"name": "c", "type": "field_count", "count": "keys", "field": "items"})
    assert keys({"items": [1, 2, 3]}) == 3.0


def test_length_refusal_and_language() -> None:
    tokens = build_check({"name": "t", "type": "length"})
    chars = build_check({"name": "c", "type": "length", "unit": "chars"})
    assert tokens("one two  three\nfour") == 4.0 and chars("héllo") == 5.0
    refusal = build_check({"name": "r", "type": "refusal"})
    assert refusal("Here is the summary.") is True
    assert refusal("I\u2019m sorry, but I can\u2019t help with that.") is False
    custom = build_check({"name": "r", "type": "refusal", "phrases": ["nope"]})
    assert custom("I'm sorry") is True and custom("NOPE.") is False
    fr = build_check({"name": "l", "type": "language", "language": "fr"})
    assert fr("Le contrat est signé par les deux parties dans la ville de Paris.") is True
    assert fr("The contract is signed by both parties in the city of Paris.") is False
    assert fr("Bonjour Paris") is None  # too short to tell
    en = build_check({"name": "l", "type": "language", "language": "en"})
    assert en("The contract is signed by both parties in the city of Paris.") is True
    assert en("Der Vertrag ist von beiden Parteien in der Stadt Berlin unterschrieben.") is False


def test_regex_check_and_its_safety_rules() -> None:
    has_total = build_check({"name": "r", "type": "regex", "pattern": r"total: \d+"})
    assert has_total("the total: 42") is True and has_total("no") is False
    banned = build_check({"name": "r", "type": "regex", "pattern": "confidential",
                          "fail_when": "match", "ignore_case": True})
    assert banned("CONFIDENTIAL memo") is False and banned("memo") is True
    full = build_check({"name": "r", "type": "regex", "pattern": r"\d{4}", "mode": "fullmatch"})
    assert full("2024") is True and full("x2024") is False
    if B._re2() is None:
        for risky in (r"(a+)+b", r"(a|ab)*c", r"(\w+\s?)*$"):
            with pytest.raises(ConfigError, match="exponential"):
                build_check({"name": "r", "type": "regex", "pattern": risky}, "x")
    assert B.backtracking_risk(r"(foo|bar)+\d{1,3}-[a-z]+") is None
    with pytest.raises(ConfigError, match="invalid regular expression"):
        build_check({"name": "r", "type": "regex", "pattern": "(unclosed"}, "x")


def test_custom_check_from_yaml_and_from_python() -> None:
    truthy = build_check({"name": "t", "type": "custom", "function": "operator:truth"})
    assert truthy("x") is True and truthy("") is False
    with pytest.raises(ConfigError, match="cannot import"):
        build_check({"name": "t", "type": "custom", "function": "no_such_mod:fn"}, "w")
    check = register_check("extract", "n_items", lambda out: len(out), field="items",
                           kind="value")
    assert check({"items": [1, 2]}) == 2.0
    assert [c.name for c in registered_checks()["extract"]] == ["n_items"]
    assert unregister_check("extract", "n_items") and not unregister_check("extract", "x")
    with pytest.raises(ValueError):
        register_check("extract", "bad name!", lambda out: True)
    with pytest.raises(ValueError):
        register_check("extract", "x", lambda out: True, on="sometimes")


def test_config_errors_name_the_key() -> None:
    where = "monitors.checks"
    cases = [
        ({"features": {"f": [{"name": "x", "type": "nope"}]}},
         "monitors.checks.features.f[0].type: 'nope' is not a check type; known: "),
        ({"features": {"f": [{"name": "x", "type": "valid_date"}]}},
         "monitors.checks.features.f[0].format: required key is missing"),
        ({"features": {"f": [{"name": "x", "type": "valid_date", "format": "%Q"}]}},
         "unsupported directive %Q"),
        ({"features": {"f": [{"name": "x", "type": "length", "colour": 1}]}},
         "monitors.checks.features.f[0].colour: unknown key"),
        ({"features": {"f": [{"name": "x", "type": "length", "expected_fail_rate": 0.1}]}},
         "expected_fail_rate does not apply"),
        ({"features": {"f": [DATE_CHECK, DATE_CHECK]}}, "declared twice"),
        ({"alpha": 0.01, "mtbfa": 100}, "give alpha or mtbfa, not both"),
        ({"on": "leaf"}, "monitors.checks.on"),
        ({"features": {"f": [{"name": "x", "type": "json_schema", "schema": {"type": 5}}]}},
         "invalid JSON schema"),
        ({"value_test": "ks", "features": {"f": [
            {"name": "x", "type": "length", "alternative": "greater"}]}}, "two-sided"),
    ]
    for config, expected in cases:
        with pytest.raises(ConfigError) as err:
            CheckMonitor(config, where=where)
        assert expected in str(err.value), (config, str(err.value))
    assert set(CHECK_TYPES) >= {"valid_date", "date_format", "json_parses", "json_schema",
                                "regex", "length", "refusal", "language", "field_count",
                                "custom", "grounded_dates", "grounded_numbers",
                                "grounded_quotes"}


# -- linear time on adversarial input -----------------------------------------------------------


def _adversarial() -> dict[str, str]:
    n = 100_000
    rng = random.Random(0)
    return {
        "digits": "1" * n, "slashes": "1/" * (n // 2), "dates": "1/1/" * (n // 4),
        "dots": "0." * (n // 2), "dashes": "12-" * (n // 3), "spaces": "1 " * (n // 2),
        "months": "January " * (n // 8), "month_digits": "4 March " * (n // 8),
        "commas": "1," * (n // 2), "thousands": "1,000" * (n // 5), "quote_open": '"' + "a" * n,
        "quotes": '"a' * (n // 2), "curly": "\u201c" * n, "words": "the " * (n // 4),
        "brackets": "[" * n,
        "mixed": "".join(rng.choice("0123456789/.-, \"ab\n") for _ in range(n)),
        "truncated": "x" * n + "...[truncated 5 chars]",
    }


def test_builtin_regexes_are_linear_on_adversarial_100kb_inputs() -> None:
    patterns = [B._GENERIC_DATE_RE, G._NUMBER_RES["."], G._NUMBER_RES[","], G._QUOTE_RE,
                B._WORD_RE, B._TRUNCATED_RE, B._PATH_TOKEN, G._SPACE_RE]
    patterns += [DateFormat(f)._finder for f in ("%d/%m/%Y", "%d %B %Y", "%Y-%m-%d %H:%M:%S",
                                                 "%b %d, %Y", "%d.%m.%y %I:%M %p")]
    patterns += [DateFormat(f)._strict for f in ("%d/%m/%Y", "%d %B %Y")]
    worst = 0.0
    for name, text in _adversarial().items():
        for pattern in patterns:
            start = time.perf_counter()
            for _ in pattern.finditer(text):
                pass
            pattern.fullmatch(text)
            took = time.perf_counter() - start
            worst = max(worst, took)
            assert took < 0.5, (name, pattern.pattern[:60], took)
    assert worst < 0.5


def test_every_check_type_is_fast_on_adversarial_100kb_outputs() -> None:
    specs = [
        {"name": "a", "type": "valid_date", "format": "%d/%m/%Y"},
        {"name": "a", "type": "date_format", "format": "%d %B %Y"},
        {"name": "a", "type": "json_parses"},
        {"name": "a", "type": "regex", "pattern": r"total: \d+"},
        {"name": "a", "type": "length"}, {"name": "a", "type": "refusal"},
        {"name": "a", "type": "language", "language": "en"},
        {"name": "a", "type": "field_count"},
        {"name": "a", "type": "grounded_dates", "source_field": "doc"},
        {"name": "a", "type": "grounded_numbers", "source_field": "doc"},
        {"name": "a", "type": "grounded_quotes", "source_field": "doc"},
    ]
    inputs = _adversarial()
    for spec in specs:
        check = build_check(spec)
        for name, text in inputs.items():
            start = time.perf_counter()
            check(text, {"doc": text})  # the output is also the source: worst case
            took = time.perf_counter() - start
            # linear work is ~0.3 s at most here (50,000 numbers); backtracking is minutes
            assert took < 1.0, (spec["type"], name, took)


# -- the monitor --------------------------------------------------------------------------------


def _monitor(**over: Any) -> CheckMonitor:
    config = {"baseline_size": 200, "window": 100, "alpha": 0.01, "cooldown_s": 0,
              "features": {"extract": [DATE_CHECK]}, **over}
    return CheckMonitor(config)


def _feed(mon: CheckMonitor, outputs: list[Any], feature: str = "extract",
          t: int = T0) -> list[Any]:
    out: list[Any] = []
    for i, o in enumerate(outputs):
        out.extend(mon.observe(span(o, feature, t=t + i)))
    return out


def good(i: int) -> dict[str, str]:
    return {"date": f"{i % 28 + 1:02d}/{i % 12 + 1:02d}/2024"}


def bad(i: int) -> dict[str, str]:
    return {"date": f"{i % 12 + 1:02d}/{i % 15 + 13:02d}/2024"}  # month 13..27


def test_monitor_learns_a_baseline_then_tests_windows_with_fisher() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    mon = _monitor()
    _feed(mon, [good(i) for i in range(198)] + [bad(0), bad(1)])  # baseline: 2 of 200 fail
    first = list(mon.tick(T0))
    assert metric_values(first, "checks.date_valid.baseline_n") == {"extract": 200.0}
    assert metric_values(first, "checks.date_valid.baseline_fail_rate") == {"extract": 0.01}
    _feed(mon, [good(i) for i in range(92)] + [bad(i) for i in range(8)], t=T0 + 10 * S)
    out = list(mon.tick(T0 + 20 * S))
    p_ref = scipy_stats.fisher_exact([[8, 92], [2, 198]], alternative="greater").pvalue
    assert metric_values(out, "checks.date_valid.fail_rate") == {"extract": 0.08}
    assert metric_values(out, "checks.date_valid.n") == {"extract": 100.0}
    assert metric_values(out, "checks.date_valid.p_value")["extract"] == pytest.approx(p_ref,
                                                                                         rel=1e-9)
    assert metric_values(out, "checks.date_valid.effect")["extract"] == pytest.approx(0.07)
    [alert] = alerts(out)
    assert alert.rule == "checks.date_valid" and alert.labels["feature"] == "extract"
    assert alert.labels["test"] == "fisher" and alert.labels["n"] == "100"
    assert float(alert.labels["p_value"]) == pytest.approx(p_ref, rel=1e-2)
    assert alert.value == 0.08 and alert.threshold == 0.01
    examples = json.loads(alert.labels["examples"])
    assert len(examples) == 5 and examples[0]["output"] == bad(0)["date"]
    assert all(e["trace_id"] and e["span_id"] for e in examples)
    assert "fail rate 8.00% in 100 outputs vs 1.00%" in alert.message
    metric = next(m for m in out if isinstance(m, Metric) and m.name.endswith(".p_value"))
    assert metric.labels == {"feature": "extract", "check": "date_valid", "test": "fisher"}
    assert metric.window_s == pytest.approx(99 / 1e9)


def test_clean_windows_raise_nothing_and_cooldown_limits_repeats() -> None:
    mon = _monitor(cooldown_s=3600)
    _feed(mon, [good(i) for i in range(200)])
    for w in range(3):
        _feed(mon, [good(i) for i in range(100)], t=T0 + w * S)
        assert alerts(mon.tick(T0 + w * S)) == []
    fired = []
    for w in range(3):
        _feed(mon, [bad(i) for i in range(30)] + [good(i) for i in range(70)], t=T0 + w * S)
        fired.append(len(alerts(mon.tick(T0 + (10 + w) * S))))
    assert fired == [1, 0, 0]
    assert mon.stats()["alerts_suppressed"] == 2
    assert len(alerts(mon.tick(T0 + 5000 * S))) == 0  # no window closed: nothing to test


def test_examples_are_truncated_and_capped() -> None:
    mon = _monitor(examples=2, example_chars=20,
                   features={"extract": [{"name": "n", "type": "regex", "pattern": "^ok"}]})
    _feed(mon, ["ok"] * 200)
    _feed(mon, ["ok"] * 90 + ["not ok " + "x" * 100] * 10)
    [alert] = alerts(mon.tick(T0))
    examples = json.loads(alert.labels["examples"])
    assert len(examples) == 2 and all(len(e["output"]) == 20 for e in examples)
    assert examples[0]["output"].endswith("...")


def test_bh_adjusts_across_every_window_tested_at_one_evaluation() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    features = {"*": [DATE_CHECK]}
    mon = _monitor(features=features, alpha=0.05)
    fails = {"a": 0, "b": 3, "c": 5, "d": 9}
    for f in fails:
        _feed(mon, [good(i) for i in range(200)], feature=f)
    mon.tick(T0)
    for f, k in fails.items():
        _feed(mon, [bad(i) for i in range(k)] + [good(i) for i in range(100 - k)], feature=f)
    out = list(mon.tick(T0 + S))
    raw = metric_values(out, "checks.date_valid.p_value")
    adj = metric_values(out, "checks.date_valid.p_adjusted")
    names = sorted(raw)
    ref = scipy_stats.false_discovery_control([raw[f] for f in names], method="bh")
    assert [adj[f] for f in names] == pytest.approx(list(ref), rel=1e-12)
    fired = {a.labels["feature"] for a in alerts(out)}
    assert fired == {f for f, q in zip(names, ref, strict=True) if q <= 0.05}
    assert "a" not in fired and "d" in fired


def test_on_selects_root_llm_or_named_spans() -> None:
    cfg = {"baseline_size": 10, "window": 10, "features": {"f": [
        {"name": "root", "type": "length"},
        {"name": "llm", "type": "length", "on": "llm"},
        {"name": "named", "type": "length", "on": "name:summarise"}]}}
    mon = CheckMonitor(cfg)
    mon.observe(span("a b", "f", kind="chain"))
    mon.observe(span("a b c", "f", kind="llm", root=False))
    mon.observe(span("a", "f", kind="tool", root=False, name="summarise"))
    state = mon.state("f")
    assert {k: v["baseline_n"] for k, v in state.items()} == {"root": 1, "llm": 1, "named": 1}
    failed = span("an output that would count", "f")
    failed.status = "error"
    mon.observe(failed)
    assert mon.state("f")["root"]["baseline_n"] == 1
    default_llm = CheckMonitor({**cfg, "on": "llm", "features": {"f": [
        {"name": "x", "type": "length"}]}})
    default_llm.observe(span("a b", "f", kind="chain"))
    assert default_llm.state("f")["x"]["baseline_n"] == 0


def test_value_checks_use_mann_whitney_or_ks_against_the_baseline() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = random.Random(3)
    base = [" ".join(["w"] * rng.randint(40, 60)) for _ in range(200)]
    longer = [" ".join(["w"] * rng.randint(45, 70)) for _ in range(100)]
    for test in ("mannwhitney", "ks"):
        mon = _monitor(value_test=test, features={"extract": [{"name": "len", "type": "length"}]})
        _feed(mon, base)
        mon.tick(T0)
        _feed(mon, longer)
        out = list(mon.tick(T0 + S))
        x = [len(s.split()) for s in longer]
        y = [len(s.split()) for s in base]
        if test == "mannwhitney":
            ref = scipy_stats.mannwhitneyu(x, y, alternative="two-sided").pvalue
        else:
            ref = scipy_stats.ks_2samp(x, y, method="exact").pvalue
        assert metric_values(out, "checks.len.p_value")["extract"] == pytest.approx(ref,
                                                                                   rel=1e-6)
        [alert] = alerts(out)
        assert alert.labels["test"] == test and float(alert.labels["effect"]) > 0
        assert "median" in alert.message
        examples = json.loads(alert.labels["examples"])
        assert max(e["value"] for e in examples) == max(x)


def test_declared_rate_uses_the_binomial_test_without_a_baseline() -> None:
    scipy_stats = pytest.importorskip("scipy.stats")
    mon = _monitor(features={"extract": [{**DATE_CHECK, "expected_fail_rate": 0.01}]})
    _feed(mon, [bad(i) for i in range(5)] + [good(i) for i in range(95)])
    out = list(mon.tick(T0))
    ref = scipy_stats.binomtest(5, 100, 0.01, alternative="greater").pvalue
    assert metric_values(out, "checks.date_valid.p_value")["extract"] == pytest.approx(ref)
    [alert] = alerts(out)
    assert alert.labels["test"] == "binomial" and "declared 1.00%" in alert.message


def test_set_baseline_and_reset_baseline() -> None:
    mon = _monitor()
    counts = mon.set_baseline("extract", [good(i) for i in range(300)] + ["no date"] * 5)
    assert counts == {"date_valid": 300}
    assert mon.state("extract")["date_valid"]["ready"] is True
    _feed(mon, [bad(i) for i in range(10)] + [good(i) for i in range(90)])
    assert len(alerts(mon.tick(T0))) == 1
    mon.reset_baseline("extract")
    state = mon.state("extract")["date_valid"]
    assert state["ready"] is False and state["baseline_n"] == 0
    with pytest.raises(ValueError):
        mon.set_baseline("extract", ["a"], inputs=[])


def test_registered_checks_join_running_monitors_and_errors_are_counted() -> None:
    mon = _monitor(baseline_size=20, window=20)
    _feed(mon, [good(i) for i in range(5)])
    register_check("extract", "has_vendor", lambda out: "vendor" in out)
    register_check("*", "boom", lambda out: 1 / 0)
    register_check("extract", "wrong", lambda out: "text", kind="rate")
    _feed(mon, [good(i) for i in range(5)])
    state = mon.state("extract")
    assert state["has_vendor"]["baseline_n"] == 5 and state["date_valid"]["baseline_n"] == 10
    assert mon.stats()["errors"] == 10
    unregister_check("extract", "has_vendor")
    _feed(mon, [good(0)])
    assert "has_vendor" not in mon.state("extract")


def test_window_s_closes_slow_windows() -> None:
    mon = _monitor(window=1000, window_s=60, min_window=50)
    _feed(mon, [good(i) for i in range(200)])
    _feed(mon, [good(i) for i in range(40)], t=T0 + S)
    assert metric_values(mon.tick(T0 + 100 * S), "checks.date_valid.n") == {}  # < min_window
    _feed(mon, [good(i) for i in range(20)], t=T0 + 2 * S)
    assert metric_values(mon.tick(T0 + 100 * S), "checks.date_valid.n") == {"extract": 60.0}


def test_features_are_bounded() -> None:
    mon = _monitor(features={"*": [DATE_CHECK]}, max_features=3)
    for f in "abcde":
        _feed(mon, [good(0)], feature=f)
    assert mon.stats()["features"] == 3 and mon.stats()["features_evicted"] == 2


def test_cusum_signals_within_a_window() -> None:
    mon = _monitor(baseline_size=2000, window=100_000, cooldown_s=3600,
                   cusum={"enabled": True, "mtbfa": 100_000})
    _feed(mon, [good(i) for i in range(1998)] + [bad(0), bad(1)])
    assert mon.state("extract")["date_valid"]["cusum"]["arl0"] >= 100_000
    assert _feed(mon, [good(i) for i in range(3000)]) == []
    rng = random.Random(5)
    out = _feed(mon, [bad(i) if rng.random() < 0.03 else good(i) for i in range(2000)])
    [alert] = alerts(out)  # one: the cooldown holds back the chart's next signals
    assert mon.stats()["alerts_suppressed"] >= 1
    assert alert.labels["test"] == "cusum" and json.loads(alert.labels["examples"])
    assert "CUSUM" in alert.message and float(alert.labels["p_value"]) < 0.05


# -- end to end ----------------------------------------------------------------------------------


def test_alerts_reach_the_backend_through_the_runtime(tmp_path: Path) -> None:
    mon = CheckMonitor({"baseline_size": 20, "window": 20, "alpha": 0.01,
                        "features": {"extract": [DATE_CHECK]}})
    llmvigil.init(backends=[{"name": "memory", "instance": "checks-e2e"}],
                  pipeline={"journal_dir": str(tmp_path / "j"), "flush_interval_s": 0.05},
                  store={"path": str(tmp_path / "v.db")}, monitors=[mon])

    @llmvigil.trace(feature="extract")
    def extract(document: str, i: int) -> dict[str, str]:
        return bad(i) if i >= 20 and i % 2 else good(i)

    for i in range(40):
        extract("doc", i)
    assert llmvigil.flush(5)
    backend = get_memory_backend("checks-e2e")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        with backend.lock:
            got = [a for a in backend.alerts if a.rule == "checks.date_valid"]
        if got:
            break
        time.sleep(0.05)
    assert got and got[0].labels["feature"] == "extract"


# -- calibration: the date-transposition scenario -------------------------------------------------


def _dates(rng: random.Random, n: int, transposed: bool) -> list[dict[str, str]]:
    """Extraction outputs with real DD/MM/YYYY dates, or all written MM/DD (transposed)."""
    out = []
    for _ in range(n):
        year, month = rng.randint(2015, 2025), rng.randint(1, 12)
        day = rng.randint(1, calendar.monthrange(year, month)[1])
        first, second = (month, day) if transposed else (day, month)
        out.append({"date": f"{first:02d}/{second:02d}/{year}", "vendor": "ACME"})
    return out


class _Outputs:
    """Spans drawn from pools of clean and transposed outputs (a check only reads the
    output, so drawing from a large pool is drawing from its distribution)."""

    def __init__(self, rng: random.Random, noise: float = 0.0) -> None:
        self.rng = rng
        self.clean = [span(o) for o in _dates(rng, 20_000, False)]
        self.transposed = [span(o) for o in _dates(rng, 5_000, True)]
        # genuinely impossible dates, present whatever the model version
        self.broken = [span({"date": f"31/{m:02d}/2024"}) for m in (2, 4, 6, 9, 11)]
        self.noise = noise

    def draw(self, n: int, transposed: float) -> list[Span]:
        rng = self.rng
        k = sum(rng.random() < transposed for _ in range(n))
        e = sum(rng.random() < self.noise for _ in range(n - k)) if self.noise else 0
        picked = (rng.choices(self.transposed, k=k) + rng.choices(self.broken, k=e)
                  + rng.choices(self.clean, k=n - k - e))
        rng.shuffle(picked)
        return picked


def _monitor_on(pool: _Outputs, **over: Any) -> CheckMonitor:
    config = {"baseline_size": 5000, "window": 1000, "alpha": 0.01, "cooldown_s": 0,
              "features": {"extract": [DATE_CHECK]}, **over}
    mon = CheckMonitor(config)
    for s in pool.draw(5000, 0.0):
        mon.observe(s)
    mon.tick(T0)
    return mon


def _detection_rate(pool: _Outputs, transposed: float, windows: int) -> float:
    mon = _monitor_on(pool)
    fired = 0
    for w in range(windows):
        for s in pool.draw(1000, transposed):
            mon.observe(s)
        fired += bool(alerts(mon.tick(T0 + w)))
    assert mon.stats()["windows_tested"] == windows
    return fired / windows


def test_impossible_date_share_detects_one_percent_transposition() -> None:
    """The issue's calibration target, measured on 200 windows of 1,000 outputs each.

    Baseline 5,000 clean outputs, alpha 0.01 per window (exact one-sided Fisher): no
    false alarm on clean windows, >= 85% detection of 1% transposition (about 60% of
    transposed dates are impossible), ~100% at 3% (50 windows).
    """
    pool = _Outputs(random.Random(2024))
    false_alarms = _detection_rate(pool, 0.0, 200)
    one = _detection_rate(pool, 0.01, 200)
    three = _detection_rate(pool, 0.03, 50)
    print(f"false alarms {false_alarms:.1%}, detection at 1% {one:.1%}, at 3% {three:.1%}")
    assert false_alarms <= 0.02
    assert one >= 0.85
    assert three >= 0.99


def test_false_alarms_stay_below_alpha_with_a_nonzero_failure_rate() -> None:
    # 0.5% of outputs carry a genuinely impossible date in the baseline and in every
    # window: the window test must not mistake that level for a change. Ten
    # independent baselines, 20 windows each.
    pool = _Outputs(random.Random(99), noise=0.005)
    fired = windows = 0
    for _ in range(10):
        mon = _monitor_on(pool)
        for w in range(20):
            for s in pool.draw(1000, 0.0):
                mon.observe(s)
            fired += bool(alerts(mon.tick(T0 + w)))
            windows += 1
    print(f"false alarms with a 0.5% failure rate: {fired / windows:.1%}")
    assert fired / windows <= 0.02, fired / windows


def test_date_regexes_leave_iso_and_version_strings_alone() -> None:
    assert [raw for *_x, raw, _d in find_dates("build 1.2.3 and 10.0.19045")] == []
    assert re.fullmatch(r"\d", "1")  # sanity: the module's re is the stdlib one


def test_date_finders_skip_ahead_without_changing_a_match() -> None:
    """The leading lookaheads of the date patterns only speed the scan up."""
    import random
    import re

    from llmvigil.core.checks import date_checks as D

    fmt = D.DateFormat("%d/%m/%Y")
    pairs = [(D._GENERIC_DATE_RE, r"(?=[\dadfjmnos])"), (fmt._finder, r"(?=\d)")]
    assert all(p.pattern.startswith(head) for p, head in pairs)
    plain = [(p, re.compile(p.pattern[len(head):], p.flags)) for p, head in pairs]
    rng = random.Random(0)
    pieces = ["03/04/2025", "2025-04-03", "3 April 2025", "April 3rd, 2025", "Sept 3 2025",
              " ", ", ", "x", "/", "-", ".", "12", "2024", "of", "JUNE", "jul", "31/02/2023",
              "1.2.2020", "a1/2/2003", "é", "\n"]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(1, 12)))
        for fast, slow in plain:
            assert [m.groupdict() for m in fast.finditer(text)] == \
                [m.groupdict() for m in slow.finditer(text)], text
