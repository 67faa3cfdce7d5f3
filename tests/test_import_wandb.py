"""The wandb importer on offline runs written by the real wandb SDK.

A history is written through llmvigil (memory + wandb backends, offline mode), read
back from the run's ``.wandb`` transaction log and table files, and compared field by
field with what the memory backend received, as far as W&B holds it. The online path
(W&B's public API) needs a W&B server and is not exercised here.
"""

from __future__ import annotations

import importlib
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("wandb")

import llmvigil
import msgspec
from llmvigil.core import capture
from llmvigil.core.errors import ConfigError
from llmvigil.core.migrate import Skipped, record_key
from llmvigil.core.model import (
    Alert,
    Metric,
    SafetyVerdict,
    Score,
    SessionEvent,
    Span,
    StreamStats,
    Usage,
    new_span_id,
    new_trace_id,
    to_builtins,
)
from llmvigil.core.runtime import get_runtime
from llmvigil.importers.wandb import (
    WandbImporter,
    WandbReadError,
    metric_id,
    parse_metric_key,
)
from llmvigil.plugins.manager import importer_infos, new_plugin_manager
from vigil_testing import start

IMPORTER = "llmvigil.importers.wandb"
S, MS = 10**9, 10**6
PROJECT = "vigil-import"
ENV_VARS = ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR")


@dataclass
class History:
    root: Path  # the wandb directory holding the run
    base: int
    spans: list[Span]
    scores: list[Score]
    session_events: list[SessionEvent]
    safety_verdicts: list[SafetyVerdict]
    alerts: list[Alert]
    metrics: list[Metric]
    replayed: int


def emit_history(base: int) -> None:
    for i in range(6):
        t = base + i * 60 * S + 123_456_789
        tid = new_trace_id()
        root = Span(id=new_span_id(), trace_id=tid, name="answer", kind="chain",
                    start_ns=t, end_ns=t + 3 * S + 17, status="ok", input="Date question",
                    output={"answer": f"{i} April"}, user_id=f"u{i % 2}",
                    session_id=f"sess-{i % 3}", feature="support", environment="prod",
                    release="1.2.3", tags=["beta", "eu"], metadata={"plan": "pro", "n": i})
        llm = Span(
            id=new_span_id(), trace_id=tid, parent_id=root.id, name="claude", kind="llm",
            start_ns=t + 1_000_123, end_ns=t + 900_456_789,
            status="error" if i == 4 else "ok", error="overloaded" if i == 4 else None,
            error_type="OverloadedError" if i == 4 else None,
            input={"messages": [{"role": "user", "content": f"date {i}?"}]},
            output=f"0{i + 1}/04/2025", model="claude-sonnet-4-5",
            response_model="claude-sonnet-4-5-20250929", response_id=f"msg_{i}",
            provider="anthropic", operation="chat", stop_reason="end_turn",
            usage=Usage(input_tokens=100 + i, output_tokens=20, cache_read_tokens=5),
            cost_usd=0.0125 + i, price_source="genai-prices", ttft_s=0.25 + i / 7,
            stream=StreamStats(items=4, n=3, mean_s=0.1, p50_s=0.1, p95_s=0.2, max_s=0.2),
            user_id=f"u{i % 2}", session_id=f"sess-{i % 3}", feature="support",
            attributes={"app.region": "eu"})
        capture.emit(root)
        capture.emit(llm)
        capture.emit(Score(name="user_feedback", kind="thumbs_up", value=1.0, trace_id=tid,
                           span_id=llm.id, comment="right", source="user",
                           time_ns=t + 5 * S + 1, metadata={"via": "widget"}))
        capture.emit(Score(name="quality", kind="rating", value=0.75, label="good",
                           category="format", correction="x", trace_id=tid,
                           time_ns=t + 6 * S, user_id="u1", session_id="sess-1",
                           feature="support"))
        capture.emit(SessionEvent(session_id=f"sess-{i % 3}", event="start", time_ns=t,
                                  user_id="u1", trace_id=tid, feature="support",
                                  metadata={"channel": "web"}))
        capture.emit(SafetyVerdict(action="block", reason="ssn", category="pii",
                                   decided_by="rules", trace_id=tid, span_id=llm.id,
                                   time_ns=t + 7 * S, metadata={"rule": 3}))
        capture.emit(Metric(name="ttft_p95_s", value=0.5 + i, time_ns=base + i * 60 * S,
                            labels={"model": "claude", "feature": "support"}))
        capture.emit(Metric(name="cost_usd_per_hour", value=1.5 * i, time_ns=base + i * 60 * S))
        capture.emit(Metric(name="requests", value=float(i), time_ns=base + i * 60 * S,
                            labels={"endpoint": "a,b=c", "route": "/x"}))
    capture.emit(Alert(rule="ttft_p95", severity="warning", message="TTFT above 0.6s",
                       value=0.7, threshold=0.6, labels={"feature": "support"},
                       time_ns=base + 30 * S))
    with llmvigil.span("live", kind="llm", model="claude-haiku-4-5") as live:
        live.set_usage(input_tokens=3, output_tokens=4)
        live.set_output("ok")


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    tmp = tmp_path_factory.mktemp("wandb-import")
    with pytest.MonkeyPatch.context() as mp:
        for var in ENV_VARS:
            (tmp / var.lower()).mkdir()
            mp.setenv(var, str(tmp / var.lower()))
        mp.setenv("WANDB_MODE", "offline")
        mp.setenv("WANDB_SILENT", "true")
        for var in ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_RUN_ID"):
            mp.delenv(var, raising=False)
        memory = start(tmp, backends=[{"name": "wandb", "project": PROJECT}])
        base = (time.time_ns() // S - 7200) * S
        emit_history(base)
        assert llmvigil.flush(60)
        # A journal replay: the spans delivered a second time append rows again.
        rt = get_runtime()
        assert rt is not None
        replayed = list(memory.spans)[:5]
        rt.backends["wandb"].llmvigil_export_spans(spans=replayed)
        h = History(tmp / "wandb_dir" / "wandb", base, list(memory.spans),
                    list(memory.scores), list(memory.session_events),
                    list(memory.safety_verdicts), list(memory.alerts), list(memory.metrics),
                    len(replayed))
        llmvigil.shutdown(timeout=30)
    yield h


def importer(root: Path, **settings: Any) -> WandbImporter:
    return WandbImporter({"mode": "offline", "path": str(root), "project": PROJECT,
                          **settings})


def wandb_view(original: Any, got: Any) -> Any:
    """``original`` as W&B holds it, with ``got``'s times once they agree to the ms."""
    if isinstance(original, Span):
        assert abs(got.start_ns - original.start_ns) < MS
        assert got.end_ns - got.start_ns == original.end_ns - original.start_ns
        return msgspec.structs.replace(
            original, start_ns=got.start_ns, end_ns=got.end_ns, response_model=None,
            response_id=None, operation=None, stop_reason=None, error_type=None,
            price_source=None, price_version=None, stream=None, attributes={})
    assert abs(got.time_ns - original.time_ns) < MS
    return msgspec.structs.replace(original, time_ns=got.time_ns)


def test_round_trip_of_tables_and_history(history: History) -> None:
    imp = importer(history.root)
    items = list(imp.read({}))
    assert not imp.skipped and not [i for i in items if isinstance(i, Skipped)]
    assert len(imp.runs_read) == 1
    assert imp.duplicates == {"spans": history.replayed}  # the replayed batch, once

    kinds = [type(i) for i in items]
    assert kinds.index(Span) == 0 and kinds[:len(history.spans)] == [Span] * len(
        history.spans)
    for cls, originals in ((Span, history.spans), (Score, history.scores),
                           (SessionEvent, history.session_events),
                           (SafetyVerdict, history.safety_verdicts), (Alert, history.alerts)):
        got = [i for i in items if isinstance(i, cls)]
        assert got == sorted(got, key=record_key), cls
        by_id = {o.id: o for o in originals}
        assert {g.id for g in got} == set(by_id), cls
        for g in got:
            assert to_builtins(g) == to_builtins(wandb_view(by_id[g.id], g)), (cls, g.id)

    metrics = [i for i in items if isinstance(i, Metric)]
    assert metrics == sorted(metrics, key=record_key)
    # Every metric comes back with its name, labels and value, at the time of the history
    # row it shares (that of the first metric of its second): never later, same second.
    expected = sorted((m.name, sorted(m.labels.items()), m.value, m.time_ns // S)
                      for m in history.metrics)
    assert sorted((m.name, sorted(m.labels.items()), m.value, m.time_ns // S)
                  for m in metrics) == expected
    crafted = {(m.name, m.time_ns): m for m in metrics if m.time_ns % S == 0}
    for i in range(6):
        t = history.base + i * 60 * S
        assert crafted[("ttft_p95_s", t)].labels == {"model": "claude", "feature": "support"}
        assert crafted[("ttft_p95_s", t)].value == 0.5 + i
        assert crafted[("requests", t)].labels == {"endpoint": "a,b=c", "route": "/x"}
    m = crafted[("cost_usd_per_hour", history.base)]
    assert m.id == metric_id(m.name, {}, m.time_ns, m.value)
    assert (m.window_s, m.unit) == (0.0, None)  # not kept by W&B


def test_time_window_kinds_limit_and_resume(history: History) -> None:
    imp = importer(history.root)
    since, until = history.base + 60 * S, history.base + 180 * S
    window = list(imp.read({"since_ns": since, "until_ns": until,
                            "kinds": ("spans", "metrics")}))
    assert {type(i) for i in window} == {Span, Metric}
    spans = [i for i in window if isinstance(i, Span)]
    assert {s.id for s in spans} == {s.id for s in history.spans
                                     if since <= s.start_ns < until}
    assert len(spans) == 4  # traces 1 and 2
    assert all(since <= m.time_ns < until for m in window if isinstance(m, Metric))

    scores = list(imp.read({"kinds": ("scores",), "limit": 5}))
    ordered = sorted(history.scores, key=record_key)
    assert [s.id for s in scores] == [s.id for s in ordered[:5]]
    resumed = list(imp.read({"kinds": ("scores",), "after": {"scores": record_key(scores[2])}}))
    assert [s.id for s in resumed] == [s.id for s in ordered[3:]]


def test_bad_data_is_skipped_and_counted(history: History, tmp_path: Path) -> None:
    copy = tmp_path / "wandb"
    shutil.copytree(history.root, copy)
    (run,) = [p for p in copy.iterdir() if p.name.startswith("offline-run-")]
    tables = sorted((run / "files" / "media" / "table" / "llmvigil").glob("*.table.json"))
    span_tables = [t for t in tables if t.name.startswith("spans_")]
    score_tables = [t for t in tables if t.name.startswith("scores_")]
    data = msgspec.json.decode(span_tables[0].read_bytes())
    columns = data["columns"]
    replayed = {s.id for s in history.spans[:history.replayed]}
    j = next(j for j, row in enumerate(data["data"])
             if row[columns.index("span_id")] not in replayed)  # no good copy elsewhere
    first = dict(zip(columns, data["data"][j], strict=True))
    data["data"][j][columns.index("start")] = "yesterday"
    data["data"].append(["too", "short"])
    span_tables[0].write_bytes(msgspec.json.encode(data))
    score_tables[0].unlink()

    imp = importer(copy)
    items = list(imp.read({}))
    skipped = [i for i in items if isinstance(i, Skipped)]
    messages = [s.message() for s in skipped]
    assert any(f"span {first['span_id']}: malformed spans row: start is not an ISO 8601 "
               "time ('yesterday')" in m for m in messages), messages
    assert any(f"row {len(data['data']) - 1}: malformed spans row: the row does not match "
               "the 26 columns" in m for m in messages), messages
    assert any(f"table file {score_tables[0].relative_to(run / 'files')} is missing" in m
               for m in messages), messages
    assert sum(imp.skipped.values()) == len(skipped) == 3
    assert first["span_id"] not in {i.id for i in items if isinstance(i, Span)}
    spans = [i for i in items if isinstance(i, Span)]
    assert len(spans) == len(history.spans) - 1  # the rest is read

    # Corrupt bytes in the middle of the transaction log: wandb's reader skips them and
    # says so; that becomes a Skipped, the records around it are still read.
    log = next(run.glob("run-*.wandb"))
    raw = bytearray(log.read_bytes())
    raw[len(raw) // 2:len(raw) // 2 + 64] = b"\xff" * 64
    log.write_bytes(bytes(raw))
    items = list(importer(copy).read({}))
    corrupt = [i for i in items if isinstance(i, Skipped) and "corrupt data" in i.reason]
    assert len(corrupt) == 1 and "checksum mismatch" in corrupt[0].reason
    assert sum(isinstance(i, Span) for i in items) >= 1


def test_unreadable_log_raises_naming_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "run-bad.wandb"
    bad.write_bytes(b"garbage, not a W&B transaction log")
    with pytest.raises(WandbReadError, match=rf"{bad}: wandb leet inspect failed \(exit 1\) "
                                             r"after record None: .*bad header"):
        list(importer(bad).read({}))
    with pytest.raises(ConfigError, match="does not exist"):
        list(importer(tmp_path / "nowhere").read({}))


def test_online_api_errors_name_the_project() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    imp = WandbImporter({"mode": "online", "project": "p", "entity": "team",
                         "api_key": "k" * 40, "base_url": url, "timeout_s": 1})
    started = time.monotonic()
    with pytest.raises(WandbReadError, match="listing the runs of 'p' failed"):
        list(imp.read({}))
    assert time.monotonic() - started < 30


def test_metric_keys_and_registration() -> None:
    assert parse_metric_key("monitor/ttft_p95_s") == ("ttft_p95_s", {})
    assert parse_metric_key("monitor/a.b{x=1,y=a,b}") == ("a.b", {"x": "1", "y": "a,b"})
    assert parse_metric_key("monitor/c{k=v=w}") == ("c", {"k": "v=w"})
    pm = new_plugin_manager()
    if not pm.has_plugin(IMPORTER):
        pm.register(importlib.import_module(IMPORTER), name=IMPORTER)
    assert importer_infos(pm)["wandb"].factory is WandbImporter
    with pytest.raises(ConfigError, match="mode must be online or offline"):
        WandbImporter({"mode": "weave"})
