"""The fingerprint monitor: provider-reported model ids and fingerprints per feature."""

from __future__ import annotations

from typing import Any

import pytest
from llmvigil.core.errors import ConfigError
from llmvigil.core.model import Alert, Metric, Span, new_span_id, new_trace_id
from llmvigil.core.monitors.fingerprint import FingerprintMonitor

S = 1_000_000_000
T0 = 1_700_000_000 * S


def llm(t: int, model: str | None = "claude-x-20250101", feature: str | None = "extract",
        kind: str = "llm", **attributes: Any) -> Span:
    return Span(trace_id=new_trace_id(), parent_id=new_span_id(), name="messages.create",
                kind=kind, feature=feature, response_model=model, model="claude-x",
                attributes=attributes, start_ns=t, end_ns=t)


def alerts(out: Any) -> list[Alert]:
    return [a for a in out if isinstance(a, Alert)]


def test_a_new_model_id_after_warm_up_alerts_once_per_cooldown() -> None:
    mon = FingerprintMonitor({"warmup_spans": 5, "cooldown_s": 600})
    out: list[Any] = []
    for i in range(5):  # warm-up: two ids seen, no alert
        model = "claude-x-20250101" if i % 2 else "claude-x-20250301"
        out += mon.observe(llm(T0 + i * S, model))
    for i in range(5, 50):
        out += mon.observe(llm(T0 + i * S))
    assert alerts(out) == []
    [alert] = alerts(mon.observe(llm(T0 + 60 * S, "claude-x-20250901")))
    assert alert.rule == "fingerprint.changed"
    assert alert.labels == {"feature": "extract", "kind": "model", "new": "claude-x-20250901",
                            "known": "model=claude-x-20250301,model=claude-x-20250101"}
    assert "claude-x-20250901" in alert.message and alert.value == 3.0
    # the same new id again: known now, no alert; another new id within the cooldown waits
    assert alerts(mon.observe(llm(T0 + 61 * S, "claude-x-20250901"))) == []
    assert alerts(mon.observe(llm(T0 + 62 * S, "claude-x-20251001"))) == []
    assert alerts(mon.tick(T0 + 100 * S)) == []
    [late] = alerts(mon.tick(T0 + 700 * S))
    assert late.labels["new"] == "claude-x-20251001"


def test_fingerprints_are_read_from_attributes_and_request_ids_are_not() -> None:
    mon = FingerprintMonitor({"warmup_spans": 2, "model": False})
    for i in range(3):
        mon.observe(llm(T0 + i, system_fingerprint="fp_1", **{"anthropic.request_id": f"r{i}"}))
    assert mon.known("extract") == {"model": [], "fingerprint": ["fp_1"]}
    out = mon.observe(llm(T0 + 5, **{"gen_ai.response.system_fingerprint": "fp_2"}))
    [alert] = alerts(out)
    assert alert.labels["kind"] == "fingerprint" and alert.labels["new"] == "fp_2"
    for key in ("request-id", "anthropic.request_id", "gen_ai.response.id", "x-request-id"):
        with pytest.raises(ConfigError, match="identify one request"):
            FingerprintMonitor({"attributes": ["system_fingerprint", key]})


def test_features_are_separate_and_only_selected_spans_count() -> None:
    mon = FingerprintMonitor({"warmup_spans": 1})
    mon.observe(llm(T0, "m1", feature="a"))
    mon.observe(llm(T0 + 1, "m2", feature="b"))  # b's warm-up: no alert
    assert alerts(mon.observe(llm(T0 + 2, "m2", feature="a"))) != []
    assert alerts(mon.observe(llm(T0 + 3, "m9", feature="c", kind="chain"))) == []
    assert mon.stats()["spans"] == 3
    assert alerts(mon.observe(llm(T0 + 4, None, feature="a"))) == []
    assert mon.stats()["without_id"] == 1
    none = FingerprintMonitor({"warmup_spans": 0})
    assert alerts(none.observe(llm(T0, "m1", feature=None))) == []  # first sight: no change
    [alert] = alerts(none.observe(llm(T0, "m2", feature=None)))
    assert alert.labels["feature"] == "_none"


def test_warm_up_in_time_and_distinct_metric() -> None:
    mon = FingerprintMonitor({"warmup_spans": 0, "warmup_s": 60, "window_s": 300,
                              "emit_interval_s": 10})
    mon.observe(llm(T0, "m1"))
    assert alerts(mon.observe(llm(T0 + 30 * S, "m2"))) == []  # still warming up
    assert alerts(mon.observe(llm(T0 + 61 * S, "m3"))) != []
    out = mon.tick(T0 + 62 * S)
    got = {m.labels["kind"]: m.value for m in out if isinstance(m, Metric)
           and m.name == "fingerprint.distinct" and m.labels["feature"] == "extract"}
    assert got == {"model": 3.0}
    assert [m for m in mon.tick(T0 + 65 * S) if isinstance(m, Metric)] == []  # interval
    later = {m.labels["kind"]: m.value for m in mon.tick(T0 + 340 * S) if isinstance(m, Metric)}
    assert later == {"model": 1.0}  # only m3 was seen within the last 300 s


def test_memory_is_bounded() -> None:
    mon = FingerprintMonitor({"warmup_spans": 0, "max_features": 2, "max_ids": 3,
                              "cooldown_s": 0})
    fired = [alerts(mon.observe(llm(T0 + i, f"m{i}", feature="a"))) for i in range(10)]
    assert len(mon.known("a")["model"]) == 3 and mon.stats()["ids_evicted"] == 7
    assert [len(a) for a in fired] == [0] + [1] * 9
    for f in "bcd":
        mon.observe(llm(T0, "m", feature=f))
    assert mon.stats()["features"] == 2 and mon.stats()["features_evicted"] == 2


def test_settings_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match=r"monitors\.fingerprint\.warmup_spans"):
        FingerprintMonitor({"warmup_spans": -1})
    with pytest.raises(ConfigError, match=r"monitors\.fingerprint\.on"):
        FingerprintMonitor({"on": "leaves"})
    with pytest.raises(ConfigError, match="unknown key"):
        FingerprintMonitor({"colour": "red"})
