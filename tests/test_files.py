"""Export files: JSON lines and OTLP/JSON round trips, bad input, `vigil export`/`import`."""

from __future__ import annotations

import base64
import importlib.util
import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import llmvigil
import pytest
from llmvigil.adapters.local import LocalStore
from llmvigil.core.cli_migrate import app
from llmvigil.core.migrate import Skipped
from llmvigil.core.migrate.files import FileImporter, detect_format, read_file, write_file
from llmvigil.core.model import (
    Alert,
    Metric,
    Record,
    SafetyVerdict,
    Score,
    SessionEvent,
    Span,
    StreamStats,
    Usage,
    encode,
)
from typer.testing import CliRunner

T0 = 1_714_000_000_000_000_000  # 2024-04-24T23:06:40Z


def make_history(traces: int, *, seed: int = 7, t0: int = T0) -> list[Record]:
    """A deterministic history: trees of spans with scores, sessions, metrics, alerts.

    Each trace is a chain root with 1-3 llm children (some with a tool grandchild),
    one score per trace, a session start every 4th trace, a verdict every 5th, a
    metric every 3rd and an alert every 10th. Values vary so sums are meaningful.
    """
    rng = random.Random(seed)
    out: list[Record] = []
    counter = iter(range(1, 10**9))

    def sid() -> str:
        return f"{next(counter):016x}"

    for i in range(traces):
        tid = f"{rng.getrandbits(128):032x}"
        start = t0 + i * 1_000_000_000
        session = f"s{i % 9}"
        user = f"user-{i % 13}"
        root = Span(id=tid[:16], trace_id=tid, name="handle_request", kind="chain",
                    start_ns=start, end_ns=start + rng.randint(50, 900) * 1_000_000,
                    status="ok", input={"question": f"q{i}", "n": i},
                    output=f"réponse {i}", user_id=user, session_id=session,
                    feature=("extract", "summarise", None)[i % 3], environment="prod",
                    release="1.2.3", tags=["web"], metadata={"tenant": i % 4})
        out.append(root)
        for j in range(1 + i % 3):
            t = root.start_ns + (j + 1) * 1_000_000
            failed = i % 17 == 0 and j == 0
            llm = Span(
                id=sid(), trace_id=tid, parent_id=root.id, name="anthropic.messages",
                kind="llm", start_ns=t, end_ns=t + rng.randint(10, 40) * 1_000_000,
                status="error" if failed else "ok",
                error="overloaded" if failed else None,
                error_type="APIStatusError" if failed else None,
                input={"messages": [{"role": "user", "content": f"q{i}"}], "system": "sys"},
                output=None if failed else {"role": "assistant",
                                            "content": [{"type": "text", "text": f"a{i}"}]},
                model="claude-sonnet-4-5", response_model="claude-sonnet-4-5-20250929",
                provider="anthropic", operation="chat", stop_reason="end_turn",
                usage=Usage(rng.randint(10, 5000), rng.randint(1, 900),
                            rng.randint(0, 300), rng.randint(0, 50)),
                cost_usd=None if i % 11 == 0 else round(rng.random() / 100, 8),
                price_source="genai-prices", price_version="0.0.30",
                ttft_s=round(rng.random(), 4),
                stream=StreamStats(items=5, n=4, mean_s=0.01, p50_s=0.01, p95_s=0.02,
                                   max_s=0.03, stalls=0),
                user_id=user, session_id=session, feature=root.feature,
                attributes={"retry": j},
            )
            out.append(llm)
            if j == 1:
                out.append(Span(id=sid(), trace_id=tid, parent_id=llm.id, name="search",
                                kind="tool", start_ns=t + 1000, end_ns=t + 2000, status="ok",
                                input={"query": "x"}, output=[1, 2, 3]))
        out.append(Score(id=sid(), name="user_feedback", time_ns=root.end_ns + 1,
                         trace_id=tid, span_id=root.id, kind=("thumbs_up", "thumbs_down")[i % 2],
                         value=float(1 - i % 2), source="user", user_id=user,
                         session_id=session, comment="merci" if i % 2 else None))
        if i % 4 == 0:
            out.append(SessionEvent(id=sid(), session_id=session, event="start",
                                    time_ns=start - 1, user_id=user, trace_id=tid))
        if i % 5 == 0:
            out.append(SafetyVerdict(id=sid(), action="serve", time_ns=root.end_ns,
                                     reason="clean", decided_by="rules", trace_id=tid,
                                     span_id=root.id))
        if i % 3 == 0:
            out.append(Metric(id=sid(), name="ttft_p95_s", value=rng.random(),
                              time_ns=root.end_ns, window_s=300.0,
                              labels={"feature": str(root.feature or "_none")}, unit="s"))
        if i % 10 == 0:
            out.append(Alert(id=sid(), rule="cost_spike", severity="warning",
                             message=f"cost up {i}%", time_ns=root.end_ns, value=2.0,
                             threshold=1.5, labels={"feature": "_all"}))
    return out


def edge_records() -> list[Record]:
    """Records that stress the OTLP mapping: vendor (non-hex) ids, empty names, nulls."""
    tid = "ab" * 16
    return [
        Span(id="run-7f3a", trace_id="langsmith-trace-1", parent_id="run-parent", name="",
             start_ns=T0, end_ns=0, status="ok", error="warning only", usage=Usage(),
             stream=StreamStats(), metadata={"none": None, "nested": {"k": [1, "a"]},
                                             "empty": [], "mixed": [1, 2.5], "big": 2**70},
             attributes={"free": None, "flag": True}, tags=["a", "b"], input="plain",
             output={"x": None}),
        Span(id="cd" * 8, trace_id=tid, name="embed", kind="embedding", start_ns=T0 + 5,
             end_ns=T0 + 9, operation=None, usage=Usage(input_tokens=3)),
        Score(id="ef" * 8, name="judge", time_ns=T0 + 10, kind="judge", value=0.25,
              label=None, category="accuracy", correction="fixed", metadata={"m": None}),
        Score(id="0123456789abcdef", name="orphan", time_ns=T0 + 11, span_id="cd" * 8,
              kind="rating", value=4.0, label="good"),
        Score(id="score-x", name="vendor", time_ns=T0 + 12, trace_id="langsmith-trace-1",
              span_id="run-7f3a", kind="custom"),
        SessionEvent(id="aa" * 8, session_id="s", event="abandon", time_ns=T0 + 13),
        Alert(id="bb" * 8, rule="r", severity="critical", message="m", time_ns=T0 + 14),
        Metric(id="cc" * 8, name="llmvigil.pipeline.dropped", value=3.0, time_ns=T0 + 15),
        Metric(id="dd" * 8, name="pipeline.dropped", value=4.0, time_ns=T0 + 15),
    ]


def by_id(records: list[Any]) -> dict[str, Any]:
    return {r.id: r for r in records}


def write_store(path: Path, records: list[Record]) -> None:
    with LocalStore(path) as store:
        store.write(records)


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


# -- JSON lines ---------------------------------------------------------------------------


def test_jsonl_round_trip_is_exact(tmp_path: Path) -> None:
    records = make_history(40) + edge_records()
    summary = write_file(records, tmp_path / "h.jsonl", "jsonl")
    assert summary.total == len(records) and not summary.skipped
    back = list(read_file(tmp_path / "h.jsonl"))
    assert back == records  # same order, every field equal
    lines = (tmp_path / "h.jsonl").read_bytes().splitlines()
    assert lines == [encode(r) for r in records]


def test_bad_jsonl_lines_are_named_counted_and_skipped(tmp_path: Path) -> None:
    good = make_history(3)
    lines = [encode(r).decode() for r in good]
    bad = {
        2: "{not json",
        4: json.dumps({"type": "spam", "id": "r-spam"}),
        5: json.dumps({"type": "span", "id": "r-notrace", "name": "x"}),
        7: json.dumps({"type": "span", "id": "r-tokens", "trace_id": "t",
                       "usage": {"gen_ai.usage.input_tokens": "many"}}),
        8: json.dumps({"id": "r-untyped"}),
        9: "[1, 2]",
        10: "",
    }
    for lineno in sorted(bad):
        lines.insert(lineno - 1, bad[lineno])
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    items = list(read_file(path))
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert [i for i in items if not isinstance(i, Skipped)] == good
    messages = [s.message() for s in skipped]
    assert len(skipped) == 6
    assert f"{path}:2: malformed JSON" in messages[0]
    assert f"{path}:4: record r-spam: unknown record type 'spam'" in messages[1]
    assert f"{path}:5: span r-notrace: invalid span" in messages[2]
    assert "trace_id" in messages[2]
    assert f"{path}:7: span r-tokens" in messages[3] and "input_tokens" in messages[3]
    assert f"{path}:8: record r-untyped: no 'type' field" in messages[4]
    assert f"{path}:9: expected a JSON object" in messages[5]
    assert [s.kind for s in skipped] == [None, None, "spans", "spans", None, None]


def test_import_cli_reports_bad_lines_and_imports_the_rest(tmp_path: Path) -> None:
    good = make_history(5)
    path = tmp_path / "mixed.jsonl"
    body = [encode(r).decode() for r in good]
    body.insert(3, '{"type": "score", "id": "sc-bad", "name": "x", "value": "high"}')
    body.insert(0, "garbage")
    path.write_text("\n".join(body) + "\n")
    result = cli("import", str(path), "--store", str(tmp_path / "dest.db"), "--json",
                 "--to-opt", "redaction=full")
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    n_spans = sum(isinstance(r, Span) for r in good)
    assert report["read"]["spans"] == n_spans
    assert report["invalid"] == {"unknown": 1, "scores": 1}
    assert report["destinations"][0]["written"]["spans"] == n_spans
    assert f"{path}:1: malformed JSON" in result.stderr
    assert f"{path}:5: score sc-bad: invalid score" in result.stderr
    with LocalStore(tmp_path / "dest.db") as store:
        back = [r for kind in ("spans", "scores", "session_events", "metrics", "alerts",
                               "safety_verdicts") for r in store.read(kind)]
    assert by_id(back) == by_id(good)


# -- OTLP/JSON ------------------------------------------------------------------------------


needs_otlp = pytest.mark.skipif(
    importlib.util.find_spec("opentelemetry.exporter.otlp.proto.common") is None,
    reason="needs llmvigil[otlp]")


@needs_otlp
def test_otlp_json_round_trip_gives_back_every_record(tmp_path: Path) -> None:
    records = make_history(30) + edge_records()
    path = tmp_path / "h.otlp.json"
    summary = write_file(records, path, "otlp-json", batch_size=50)
    assert summary.total == len(records)
    assert detect_format(path) == "otlp-json"
    back = list(read_file(path))
    assert not [b for b in back if isinstance(b, Skipped)]
    assert len(back) == len(records)
    originals, imported = by_id(records), by_id(back)
    for rid, original in originals.items():
        assert imported[rid] == original, rid
    spans = [r for r in records if isinstance(r, Span)]
    for s in spans:  # the fields the brief names, explicitly
        b = imported[s.id]
        assert (b.trace_id, b.parent_id, b.start_ns, b.end_ns, b.usage, b.model) == (
            s.trace_id, s.parent_id, s.start_ns, s.end_ns, s.usage, s.model)


def _hex_to_b64(doc: dict[str, Any]) -> None:
    for rs in doc.get("resourceSpans", ()):
        for ss in rs["scopeSpans"]:
            for span in ss["spans"]:
                for key in ("traceId", "spanId", "parentSpanId"):
                    if span.get(key):
                        span[key] = base64.b64encode(bytes.fromhex(span[key])).decode()


@needs_otlp
def test_otlp_json_is_standard_otlp(tmp_path: Path) -> None:
    """Each line is an OTLP/JSON request: protobuf parses it once ids are base64 again."""
    from google.protobuf.json_format import ParseDict
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    records = make_history(6)
    path = tmp_path / "h.json"
    write_file(records, path, "otlp-json")
    spans: dict[str, Any] = {}
    points = 0
    for line in path.read_text().splitlines():
        doc = json.loads(line)
        if "resourceSpans" in doc:
            raw_ids = [s["spanId"] for rs in doc["resourceSpans"] for ss in rs["scopeSpans"]
                       for s in ss["spans"]]
            assert all(len(i) == 16 and int(i, 16) for i in raw_ids)  # hex, not base64
            _hex_to_b64(doc)
            request = ParseDict(doc, ExportTraceServiceRequest())
            for rs in request.resource_spans:
                service = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
                assert service["service.name"] == "llmvigil"
                for ss in rs.scope_spans:
                    assert ss.scope.name == "llmvigil"
                    for s in ss.spans:
                        spans[s.span_id.hex()] = s
        else:
            request = ParseDict(doc, ExportMetricsServiceRequest())
            for rm in request.resource_metrics:
                for sm in rm.scope_metrics:
                    for m in sm.metrics:
                        assert m.name == "llmvigil.ttft_p95_s" and m.unit == "s"
                        points += len(m.gauge.data_points)
    assert points == sum(isinstance(r, Metric) for r in records)
    for record in records:
        if not isinstance(record, Span):
            continue
        proto = spans[record.id]
        assert proto.trace_id.hex() == record.trace_id
        assert (proto.parent_span_id.hex() or None) == record.parent_id
        assert (proto.start_time_unix_nano, proto.end_time_unix_nano) == (
            record.start_ns, record.end_ns)
        attrs = {kv.key: kv.value for kv in proto.attributes}
        if record.kind == "llm":
            assert attrs["gen_ai.request.model"].string_value == record.model
            assert record.usage is not None
            assert attrs["gen_ai.usage.input_tokens"].int_value == record.usage.input_tokens
            assert attrs["gen_ai.usage.output_tokens"].int_value == record.usage.output_tokens
            assert proto.kind == 3  # SPAN_KIND_CLIENT
            assert proto.status.code == (2 if record.status == "error" else 1)


@needs_otlp
def test_foreign_otlp_json_imports_best_effort(tmp_path: Path) -> None:
    """A file from another OpenTelemetry source (OpenInference and GenAI attributes,
    pretty-printed over several lines) maps onto spans."""
    doc = {"resourceSpans": [{"resource": {}, "scopeSpans": [{"spans": [
        {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "b7ad6b7169203331",
         "name": "ChatOpenAI", "kind": "SPAN_KIND_CLIENT", "startTimeUnixNano": "1000",
         "endTimeUnixNano": 2500,
         "attributes": [
             {"key": "openinference.span.kind", "value": {"stringValue": "LLM"}},
             {"key": "llm.model_name", "value": {"stringValue": "gpt-4o"}},
             {"key": "llm.token_count.prompt", "value": {"intValue": "12"}},
             {"key": "llm.token_count.completion", "value": {"intValue": 7}},
             {"key": "input.value", "value": {"stringValue": "hi"}},
             {"key": "custom", "value": {"kvlistValue": {"values": [
                 {"key": "a", "value": {"doubleValue": "NaN"}}]}}}],
         "status": {"code": "STATUS_CODE_ERROR", "message": "rate limited"}},
        {"traceId": "0af7651916cd43dd8448eb211c80319c", "spanId": "00f067aa0ba902b7",
         "parentSpanId": "b7ad6b7169203331", "name": "tool call",
         "attributes": [{"key": "gen_ai.operation.name",
                         "value": {"stringValue": "execute_tool"}}]},
        {"traceId": "not-an-id", "spanId": "00f067aa0ba902b8", "name": "broken"},
    ]}]}]}
    path = tmp_path / "collector.json"
    path.write_text(json.dumps(doc, indent=2))
    items = list(read_file(path))
    llm, tool, broken = items
    assert isinstance(llm, Span) and isinstance(tool, Span)
    assert (llm.kind, llm.model, llm.usage, llm.input) == ("llm", "gpt-4o", Usage(12, 7), "hi")
    assert (llm.status, llm.error, llm.start_ns, llm.end_ns) == ("error", "rate limited",
                                                                 1000, 2500)
    assert llm.attributes["openinference.span.kind"] == "LLM"
    assert str(llm.attributes["custom"]["a"]) == "nan"
    assert (tool.kind, tool.parent_id, tool.operation) == ("tool", llm.id, "execute_tool")
    assert isinstance(broken, Skipped) and "traceId 'not-an-id'" in broken.reason
    assert broken.record_id == "00f067aa0ba902b8"


@needs_otlp
def test_bad_otlp_lines_are_skipped_with_line_numbers(tmp_path: Path) -> None:
    records = make_history(4)
    good = tmp_path / "good.json"
    write_file(records, good, "otlp-json", batch_size=5)
    lines = good.read_text().splitlines()
    lines.insert(1, '{"resourceSpans": [')
    lines.insert(2, '{"something": "else"}')
    path = tmp_path / "bad.json"
    path.write_text("\n".join(lines) + "\n")
    items = list(read_file(path))
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert [s.where for s in skipped] == [f"{path}:2", f"{path}:3"]
    assert "malformed JSON" in skipped[0].reason and "not an OTLP/JSON" in skipped[1].reason
    assert by_id([i for i in items if not isinstance(i, Skipped)]) == by_id(records)


# -- the CLI --------------------------------------------------------------------------------


@needs_otlp
def test_export_then_import_through_the_cli(tmp_path: Path) -> None:
    records = make_history(20) + edge_records()
    write_store(tmp_path / "src.db", records)
    for fmt in ("jsonl", "otlp-json"):
        out = tmp_path / f"h.{fmt}"
        result = cli("export", "--store", str(tmp_path / "src.db"), "--format", fmt,
                     "-o", str(out))
        assert result.exit_code == 0, result.output
        assert f"wrote {len(records)} records" in result.stderr
        dest = tmp_path / f"dest-{fmt}.db"
        imported = cli("import", str(out), "--store", str(dest), "--to-opt",
                       "redaction=full")
        assert imported.exit_code == 0, imported.output
        with LocalStore(dest) as store:
            back = [r for k in ("spans", "scores", "session_events", "metrics", "alerts",
                                "safety_verdicts") for r in store.read(k)]
        assert by_id(back) == by_id(records)


def test_export_window_and_kinds(tmp_path: Path) -> None:
    records = make_history(10)
    write_store(tmp_path / "src.db", records)
    since = T0 + 3 * 1_000_000_000
    until = T0 + 7 * 1_000_000_000
    iso = "%Y-%m-%dT%H:%M:%SZ"
    import time as _time

    result = cli("export", "--store", str(tmp_path / "src.db"), "-o", str(tmp_path / "w.jsonl"),
                 "--since", _time.strftime(iso, _time.gmtime(since / 1e9)),
                 "--until", _time.strftime(iso, _time.gmtime(until / 1e9)),
                 "--kinds", "spans,scores")
    assert result.exit_code == 0, result.output
    back = list(read_file(tmp_path / "w.jsonl"))

    def t(r: Any) -> int:
        return r.start_ns if isinstance(r, Span) else r.time_ns

    expected = [r for r in records if isinstance(r, (Span, Score)) and since <= t(r) < until]
    assert by_id(back) == by_id(expected) and expected
    bad = cli("export", "--store", str(tmp_path / "src.db"), "-o", str(tmp_path / "x"),
              "--kinds", "spans,bogus")
    assert bad.exit_code == 2 and "bogus" in bad.stderr and "Traceback" not in bad.output


def test_import_of_a_missing_file_or_a_directory_is_refused_before_anything_runs(
        tmp_path: Path) -> None:
    history = make_history(3)
    write_store(tmp_path / "dest.db", history)
    for bad, what in ((tmp_path / "typo.jsonl", "no such file"), (tmp_path, "is a directory")):
        result = cli("import", str(bad), "--store", str(tmp_path / "dest.db"))
        assert result.exit_code == 2, result.output
        assert f"{bad}: {what}" in result.stderr and "Traceback" not in result.output
        assert result.stdout == ""  # no empty import report
    with LocalStore(tmp_path / "dest.db") as store:
        kept = [r for kind in ("spans", "scores", "session_events", "metrics", "alerts",
                               "safety_verdicts") for r in store.read(kind)]
    assert by_id(kept) == by_id(history)


def test_export_to_a_directory_says_to_give_a_file_name(tmp_path: Path) -> None:
    write_store(tmp_path / "src.db", make_history(2))
    result = cli("export", "--store", str(tmp_path / "src.db"), "-o", str(tmp_path))
    assert result.exit_code == 2, result.output
    assert f"{tmp_path}: is a directory; give a file name" in result.stderr
    assert "Traceback" not in result.output
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"], "no temporary file left"


def test_export_of_a_missing_store_says_so(tmp_path: Path) -> None:
    result = cli("export", "--store", str(tmp_path / "none.db"), "-o", str(tmp_path / "x"))
    assert result.exit_code == 1 and "no records yet" in result.stderr
    assert not (tmp_path / "x").exists()


def test_unreadable_store_rows_are_skipped_by_the_local_importer(tmp_path: Path) -> None:
    records = make_history(3)
    write_store(tmp_path / "src.db", records)
    victim = next(r for r in records if isinstance(r, Score))
    with sqlite3.connect(tmp_path / "src.db") as conn:
        conn.execute("UPDATE scores SET data = ? WHERE id = ?", (b"{broken", victim.id))
    result = cli("export", "--store", str(tmp_path / "src.db"), "-o", str(tmp_path / "x.jsonl"))
    assert result.exit_code == 1
    assert f"score {victim.id}: undecodable row" in result.stderr
    back = list(read_file(tmp_path / "x.jsonl"))
    assert by_id(back) == {k: v for k, v in by_id(records).items() if k != victim.id}


def test_file_importer_needs_a_path_and_estimates_jsonl(tmp_path: Path) -> None:
    from llmvigil.core.errors import ConfigError

    with pytest.raises(ConfigError, match="path=FILE"):
        FileImporter({})
    write_file(make_history(2), tmp_path / "h.jsonl")
    n = len((tmp_path / "h.jsonl").read_bytes().splitlines())
    assert FileImporter({"path": str(tmp_path / "h.jsonl")}).estimate({}) == n
    assert FileImporter({"path": str(tmp_path / "h.jsonl")}).estimate({"limit": 3}) == 3


@needs_otlp
def test_records_captured_by_the_runtime_survive_export_and_import(tmp_path: Path) -> None:
    """End to end: real @trace spans and feedback, through the local backend, a file and
    an import into a second store, compare equal."""
    store = tmp_path / "app.db"
    llmvigil.init(backends=["local"], store={"path": str(store)},
                  pipeline={"journal_dir": str(tmp_path / "j"), "flush_interval_s": 0.05})

    @llmvigil.trace(kind="llm", feature="extract", tags=["t"], metadata={"v": 2})
    def extract(text: str) -> dict[str, str]:
        llmvigil.current_span().set_usage(input_tokens=len(text), output_tokens=3)  # type: ignore[union-attr]
        return {"date": text[::-1]}

    @llmvigil.trace
    def handle(text: str) -> dict[str, str]:
        result = extract(text)
        llmvigil.feedback(kind="thumbs_up")
        return result

    for i in range(25):
        handle(f"2024-0{1 + i % 9}-1{i % 10}")
    llmvigil.shutdown(timeout=10)
    with LocalStore(store) as s:
        original = [r for k in ("spans", "scores") for r in s.read(k)]
    assert sum(isinstance(r, Span) for r in original) == 50
    assert cli("export", "--store", str(store), "-o", str(tmp_path / "h.json"),
               "--format", "otlp-json", "--kinds", "spans,scores").exit_code == 0
    assert cli("import", str(tmp_path / "h.json"), "--store", str(tmp_path / "copy.db"),
               "--to-opt", "redaction=full").exit_code == 0
    with LocalStore(tmp_path / "copy.db") as s:
        copied = [r for k in ("spans", "scores") for r in s.read(k)]
    assert by_id(copied) == by_id(original)
