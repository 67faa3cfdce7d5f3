"""The helicone importer against the local Helicone stand-in (tests/helicone_server.py).

A history is logged through llmvigil (memory + helicone backends), read back through
the documented request query API and compared field by field with what the memory
backend received, as far as Helicone can hold it.
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llmvigil
import msgspec
import pytest
from helicone_server import API_KEY, HeliconeServer
from llmvigil.adapters.memory import get_memory_backend
from llmvigil.core import capture
from llmvigil.core.errors import ConfigError
from llmvigil.core.migrate import Skipped, record_key
from llmvigil.core.migrate.engine import Checkpoint, Destination, Selection, migrate
from llmvigil.core.model import (
    Score,
    Span,
    StreamStats,
    Usage,
    new_span_id,
    new_trace_id,
    to_builtins,
)
from llmvigil.importers.helicone import HeliconeImporter, HeliconeReadError, foreign_ids
from llmvigil.plugins.manager import get_adapter, importer_infos, new_plugin_manager
from vigil_testing import start

IMPORTER = "llmvigil.importers.helicone"
S, MS = 10**9, 10**6
N_TRACES = 10
SENT_PER_TRACE = 3  # llm, tool and embedding spans (the chain root is not sent)


def plugin_manager() -> Any:
    pm = new_plugin_manager()
    if not pm.has_plugin(IMPORTER):
        pm.register(importlib.import_module(IMPORTER), name=IMPORTER)
    return pm


@pytest.fixture
def server() -> Iterator[HeliconeServer]:
    srv = HeliconeServer().start()
    yield srv
    srv.stop()


def importer(server: HeliconeServer, **settings: Any) -> HeliconeImporter:
    return HeliconeImporter({"api_key": API_KEY, "api_url": server.url, "timeout_s": 5,
                             "retry_backoff_s": 0.01, "properties": {"App": "vigil-test"},
                             **settings})


def emit_history(base: int) -> dict[str, list[Any]]:
    """N_TRACES traces 10 s apart (three starting at the same ns), every field set."""
    sent: list[Span] = []
    for i in range(N_TRACES):
        t = base + (3 if i in (4, 5) else i) * 10 * S + 123_456_789  # 3, 4, 5 tie
        tid = new_trace_id()
        root = Span(id=new_span_id(), trace_id=tid, name="answer", kind="chain",
                    start_ns=t, end_ns=t + 3 * S, status="ok")
        failed = i == 7
        llm = Span(
            id=new_span_id(), trace_id=tid, parent_id=root.id, name="claude", kind="llm",
            start_ns=t + 1_000_123, end_ns=t + 900_456_789,
            status="error" if failed else "ok",
            error="overloaded" if failed else None,
            error_type="OverloadedError" if failed else None,
            input={"system": "Answer briefly",
                   "messages": [{"role": "user", "content": f"Date of 0{i % 9 + 1}/04/2025?"}]},
            output=None if failed else f"{i} April 2025", model="claude-sonnet-4-5",
            response_model="claude-sonnet-4-5-20250929", response_id=f"msg_{i}",
            provider="anthropic", stop_reason=None if failed else "end_turn",
            usage=Usage(input_tokens=120 + i, output_tokens=30, cache_read_tokens=800,
                        cache_write_tokens=50),
            cost_usd=0.0123 + i / 1000, ttft_s=0.25 + i / 1000 + 0.0004,
            stream=StreamStats(items=3, n=2, mean_s=0.1, p50_s=0.1, p95_s=0.1, max_s=0.1),
            user_id=f"u{i % 3}", session_id=f"sess-{i % 4}", feature="support",
            environment="prod", release="1.2.3", tags=["beta", "eu"],
            metadata={"plan": "pro", "city": "Zürich"})
        tool = Span(id=new_span_id(), trace_id=tid, parent_id=root.id, name="lookup",
                    kind="tool", start_ns=t + 2 * S, end_ns=t + 2 * S + 7 * MS, status="ok",
                    input={"order": i}, output=["doc-1", 2])
        embed = Span(id=new_span_id(), trace_id=tid, parent_id=tool.id, name="embed",
                     kind="embedding", start_ns=t + 2 * S + 500, end_ns=t + 2 * S + 3 * MS,
                     status="ok", input=f"order {i}", model="voyage-3",
                     usage=Usage(input_tokens=42))
        for span in (root, llm, tool, embed):
            capture.emit(span)
        sent += [llm, tool, embed]
        capture.emit(Score(name="user_feedback", kind="thumbs_up" if i % 2 else "thumbs_down",
                           trace_id=tid, span_id=llm.id, source="user", time_ns=t + 5 * S))
        capture.emit(Score(name="accuracy", kind="judge", value=0.92 - i / 100, trace_id=tid,
                           span_id=llm.id, source="judge", time_ns=t + 6 * S))
        capture.emit(Score(name="trace_quality", value=1.0, trace_id=tid, time_ns=t + 7 * S))
    return {"sent": sent}


def helicone_view(span: Span) -> Span:
    """What Helicone can hold of ``span`` (see the capability notes of both sides)."""
    ttft = None if span.ttft_s is None else round(span.ttft_s * 1000) / 1000
    return msgspec.structs.replace(
        span, start_ns=span.start_ns // MS * MS, end_ns=span.end_ns // MS * MS, ttft_s=ttft,
        stream=None, price_source=None, price_version=None,
        cost_usd=None if span.cost_usd is None else float(f"{span.cost_usd:.10g}"),
        metadata={k.lower(): str(v) for k, v in span.metadata.items()})


@pytest.fixture
def history(tmp_path: Path, server: HeliconeServer) -> dict[str, Any]:
    memory = start(tmp_path, backends=[{
        "name": "helicone", "api_key": API_KEY, "base_url": server.url, "api_url": server.url,
        "properties": {"App": "vigil-test"}, "span_kinds": ["llm", "embedding", "tool"],
    }], plugin_manager=plugin_manager())
    base = (time.time_ns() // S - 3600) * S
    before = time.time_ns()
    emitted = emit_history(base)
    assert llmvigil.flush(30)
    llmvigil.shutdown(timeout=10)
    sent_ids = {s.id for s in emitted["sent"]}
    spans = [s for s in memory.spans if s.id in sent_ids]
    assert len(spans) == N_TRACES * SENT_PER_TRACE == len(server.delivered_ids())
    assert not server.errors
    return {"base": base, "before": before, "spans": spans, "scores": list(memory.scores)}


def test_round_trip_keeps_ids_tree_and_fields(server: HeliconeServer,
                                               history: dict[str, Any]) -> None:
    imp = importer(server, page_size=4)
    items = list(imp.read({}))
    assert not server.errors, server.errors  # every query had the documented shape
    assert not imp.skipped and not imp.incomplete
    n = len(history["spans"])
    assert imp.pages == n // 4 + 1 and len(server.queries) == imp.pages
    assert [q["offset"] for q in server.queries] == [4 * k for k in range(imp.pages)]

    spans = [i for i in items if isinstance(i, Span)]
    assert items[:len(spans)] == spans and spans == sorted(spans, key=record_key)
    originals = {s.id: s for s in history["spans"]}
    assert {s.id for s in spans} == set(originals)
    for span in spans:
        assert to_builtins(span) == to_builtins(helicone_view(originals[span.id])), span.name
    assert len({s.start_ns for s in spans if s.name == "claude"}) == N_TRACES - 2  # ties

    scores = [i for i in items if isinstance(i, Score)]
    assert items[len(spans):] == scores and scores == sorted(scores, key=record_key)
    by_span = {}
    for s in scores:
        by_span.setdefault(s.span_id, {})[s.name] = s
    llms = [o for o in history["spans"] if o.kind == "llm"]
    assert set(by_span) == {o.id for o in llms}  # the trace-level scores were not sent
    originals_by_span = {(s.span_id, s.name): s for s in history["scores"] if s.span_id}
    for span_id, named in by_span.items():
        feedback, accuracy = named["user_feedback"], named["accuracy"]
        want = originals_by_span[(span_id, "user_feedback")]
        assert (feedback.kind, feedback.value, feedback.source) == (
            want.kind, 1.0 if want.kind == "thumbs_up" else 0.0, "user")
        assert feedback.trace_id == want.trace_id
        assert history["before"] // MS * MS <= feedback.time_ns <= time.time_ns()
        # Helicone keeps integers: the value comes back to 1 / score_multiplier.
        assert accuracy.value == round(originals_by_span[(span_id, "accuracy")].value * 100) / 100
        assert accuracy.time_ns == next(s.end_ns for s in spans if s.id == span_id)

    again = list(importer(server, page_size=1000).read({}))
    assert again == items  # the same ids and order, whatever the page size


def test_bodies_from_signed_urls_without_the_api_key(server: HeliconeServer,
                                                      history: dict[str, Any]) -> None:
    inline = list(importer(server).read({}))
    server.inline_bodies = False
    server.extra_rows.append({**server.rows()[0], "request_id": "req-gone",
                              "request_properties": {}, "properties": {},
                              "feedback_rating": None, "scores": None,
                              "signed_body_url": f"{server.url}/signed-body/req-gone"})
    imp = importer(server, body_workers=4, max_retries=0)
    items = list(imp.read({}))
    assert not server.errors, server.errors  # no Authorization header went to the URLs
    assert server.body_fetches == len(history["spans"]) + 1
    gone_trace, gone_span = foreign_ids("req-gone")
    (gone,) = [i for i in items if isinstance(i, Span) and i.id == gone_span]
    assert gone.input is None and gone.output is None and gone.trace_id == gone_trace
    assert imp.incomplete == {"imported without its content: signed body unavailable "
                              "(HTTP 404)": 1}
    assert [i for i in items if not (isinstance(i, Span) and i.id == gone_span)] == inline


def test_time_window_limit_kinds_and_resume(server: HeliconeServer,
                                            history: dict[str, Any]) -> None:
    imp = importer(server, page_size=5)
    full = list(imp.read({}))
    spans = [i for i in full if isinstance(i, Span)]
    base = history["base"]
    since, until = base + 30 * S, base + 70 * S
    window = list(imp.read({"since_ns": since, "until_ns": until}))
    assert [s.id for s in window if isinstance(s, Span)] == \
        [s.id for s in spans if since <= s.start_ns < until]
    assert sum(isinstance(s, Span) for s in window) == 4 * SENT_PER_TRACE  # traces 3..6
    assert [s.id for s in window if isinstance(s, Score)] == \
        [s.id for s in full if isinstance(s, Score) and since <= s.time_ns < until]
    assert server.queries[-1]["filter"] == {
        "left": {"request_response_rmt": {"request_created_at": {
            "gte": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(since // S))}}},
        "operator": "and",
        "right": {"request_response_rmt": {"request_created_at": {
            "lt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(until // S))}}}}

    assert list(imp.read({"limit": 7})) == full[:7]
    assert list(imp.read({"kinds": ("scores",)})) == [i for i in full if isinstance(i, Score)]
    resumed = list(imp.read({"kinds": ("spans",), "after": {"spans": record_key(spans[11])}}))
    assert resumed == spans[12:]
    assert imp.estimate({}) is None and imp.total({}) is None


def test_malformed_rows_are_skipped_and_foreign_requests_mapped(
        server: HeliconeServer) -> None:
    good = {
        "request_id": "0b6f8e1e-3c5a-4d2b-9a7e-1f2e3d4c5b6a",
        "request_created_at": "2025-03-01T10:00:00.250Z",
        "response_created_at": "2025-03-01T10:00:01.750Z", "delay_ms": 1500,
        "time_to_first_token": 320, "response_status": 200, "provider": "OPENAI",
        "request_model": "gpt-4o", "response_model": "gpt-4o-2024-08-06",
        "request_path": "https://api.openai.com/v1/chat/completions",
        "request_user_id": "user-9", "prompt_tokens": 100, "completion_tokens": 10,
        "prompt_cache_read_tokens": 20, "prompt_cache_write_tokens": 0, "cost": 0.002,
        "request_properties": {"env": "staging", "Helicone-Session-Id": "s-42"},
        "request_body": {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]},
        "response_body": {"choices": [{"message": {"content": "hello"}}]},
        "feedback_rating": True, "feedback_created_at": "2025-03-01T10:05:00.000Z",
        "scores": {"quality": 80},
    }
    server.extra_rows += [
        good,
        {**good, "request_id": None},
        {**good, "request_id": "req-bad-time", "request_created_at": "yesterday"},
        {**good, "request_id": "req-bad-tokens", "prompt_tokens": "many"},
        {**good, "request_id": "req-bad-score", "scores": {"quality": "high"},
         "feedback_rating": None},
        "not a row",
    ]
    imp = importer(server)
    items = list(imp.read({"since_ns": 1_740_000_000 * S}))
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert {(s.record_id, s.kind) for s in skipped} == {
        (None, "spans"), ("req-bad-time", "spans"), ("req-bad-tokens", "spans"),
        ("req-bad-score", "scores")}
    assert len(skipped) == 5
    messages = " | ".join(s.message() for s in skipped)
    assert "span req-bad-time: malformed request: request_created_at is not a time " \
           "('yesterday')" in messages
    assert "span req-bad-tokens: malformed request: prompt_tokens is not a number " \
           "('many')" in messages
    assert "score req-bad-score: malformed feedback or score: score 'quality' is not a " \
           "number ('high')" in messages
    assert "malformed request: not a JSON object" in messages
    assert sum(imp.skipped.values()) == 5

    spans = {s.trace_id: s for s in items if isinstance(s, Span)}
    trace_id, span_id = foreign_ids(good["request_id"])
    assert trace_id == good["request_id"].replace("-", "")
    span = spans[trace_id]
    assert (span.id, span.parent_id, span.kind, span.name) == (
        span_id, None, "llm", good["request_path"])
    assert (span.start_ns, span.end_ns, span.ttft_s) == (
        1_740_823_200_250 * MS, 1_740_823_201_750 * MS, 0.32)
    assert (span.model, span.response_model, span.provider) == (
        "gpt-4o", "gpt-4o-2024-08-06", "openai")
    assert span.usage == Usage(input_tokens=100, output_tokens=10, cache_read_tokens=20)
    assert (span.cost_usd, span.price_source) == (0.002, "helicone")
    assert (span.user_id, span.session_id, span.metadata) == ("user-9", "s-42",
                                                              {"env": "staging"})
    assert span.input == good["request_body"] and span.output == good["response_body"]
    scores = {s.name: s for s in items if isinstance(s, Score) and s.span_id == span_id}
    assert scores["user_feedback"].kind == "thumbs_up"
    assert scores["user_feedback"].time_ns == 1_740_823_500 * S
    assert scores["quality"].value == 0.8 and scores["quality"].time_ns == span.end_ns
    # The score-less request with a bad score is still imported.
    assert foreign_ids("req-bad-score")[0] in spans


def test_error_mid_stream_names_page_and_offset(server: HeliconeServer,
                                                history: dict[str, Any]) -> None:
    full = list(importer(server, page_size=4).read({}))
    server.fail_query_at_offset, server.fail_query_count = 8, 1
    assert list(importer(server, page_size=4, max_retries=1).read({})) == full  # retried

    server.fail_query_count = None
    seen: list[Any] = []
    with pytest.raises(HeliconeReadError) as err:
        for item in importer(server, page_size=4, max_retries=2).read({}):
            seen.append(item)
    assert (err.value.page, err.value.offset, err.value.status) == (3, 8, 500)
    assert "page 3 (offset 8) failed after 3 attempts: HTTP 500" in str(err.value)
    assert len(seen) >= 7 and seen == full[:len(seen)]

    server.fail_query_status = 200  # Helicone's {data: null, error} answer: not retried
    queries = len(server.queries)
    with pytest.raises(HeliconeReadError, match="Helicone answered error 'simulated "
                                                "failure at offset 8'"):
        list(importer(server, page_size=4, max_retries=2).read({}))
    assert len(server.queries) - queries == 3


def test_migration_through_the_engine(server: HeliconeServer, history: dict[str, Any],
                                      tmp_path: Path) -> None:
    pm = plugin_manager()
    assert importer_infos(pm)["helicone"].factory is HeliconeImporter
    selection = Selection()
    ck = Checkpoint.open(tmp_path / "ck.json", source="helicone", destinations=["memory"],
                         selection=selection)
    dest = Destination("memory", get_adapter(pm, "memory"), {"instance": "hel-dest"},
                       redaction="full")
    report = migrate(importer(server, page_size=7), [dest], source="helicone",
                     selection=selection, checkpoint=ck, batch_size=8)
    assert report.problems == [] and report.stopped is None
    got = get_memory_backend("hel-dest")
    assert len(got.spans) == len(history["spans"]) and len(got.scores) == 2 * N_TRACES


def test_refused_key_is_named(server: HeliconeServer) -> None:
    with pytest.raises(HeliconeReadError, match=r"page 1 \(offset 0\) failed: HTTP 401 .*"
                                                r"\(check api_key / HELICONE_API_KEY\)"):
        list(HeliconeImporter({"api_key": "wrong", "api_url": server.url}).read({}))


def test_settings() -> None:
    with pytest.raises(ConfigError, match="api_key is not set"):
        HeliconeImporter({})
    with pytest.raises(ConfigError, match="score_multiplier must be positive"):
        HeliconeImporter({"api_key": "k", "score_multiplier": 0})
    imp = HeliconeImporter({"api_key": "secret-key", "api_url": "https://eu.api.helicone.ai/",
                            "query_path": "v1/request/query"})
    assert repr(imp) == "<HeliconeImporter https://eu.api.helicone.ai/v1/request/query>"
