"""The Langfuse importer: llmvigil -> Langfuse (the real adapter, OTLP and scores) -> back.

History is emitted through llmvigil with the memory and langfuse backends into the
local Langfuse API (tests/langfuse_server.py), which decodes the OTLP spans and scores
and serves them back through the v2 observations and v3 scores APIs, newest first; the
importer reads them back and the records are compared field by field with what the
memory backend received.
"""

from __future__ import annotations

import copy
import importlib
import logging
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import llmvigil
import msgspec
import pytest
from langfuse_server import OBSERVATIONS_V2_PATH, SCORES_V3_PATH, LangfuseServer
from llmvigil.adapters.local import LocalStore
from llmvigil.adapters.local import llmvigil_adapters as local_adapters
from llmvigil.core import capture
from llmvigil.core.errors import ConfigError
from llmvigil.core.migrate import Skipped, record_key
from llmvigil.core.migrate.engine import Checkpoint, Destination, Selection, migrate
from llmvigil.core.model import SafetyVerdict, Score, SessionEvent, Span
from llmvigil.importers.langfuse import LangfuseImporter, LangfuseReadError, windows
from llmvigil.plugins.manager import importer_infos, new_plugin_manager
from vigil_testing import start

ADAPTER = "llmvigil.adapters.langfuse"
IMPORTER = "llmvigil.importers.langfuse"
T_HIST = 1_714_564_800 * 10**9  # 2024-05-01T12:00:00Z
SECOND = 10**9
LONG = "x" * 300  # longer than the 200 characters Langfuse returns of a metadata value


def at_us(ns: int) -> int:
    """A time as Langfuse keeps it: truncated to the microsecond."""
    return ns // 1000 * 1000


def expected_span(m: Span) -> Span:
    return msgspec.structs.replace(m, start_ns=at_us(m.start_ns), end_ns=at_us(m.end_ns))


class History:
    """What llmvigil sent (the memory backend's records) and the server that got it."""

    def __init__(self, server: LangfuseServer, memory: Any) -> None:
        self.server = server
        self.spans: list[Span] = list(memory.spans)
        self.scores: list[Score] = list(memory.scores)
        self.events: list[SessionEvent] = list(memory.session_events)
        self.verdicts: list[SafetyVerdict] = list(memory.safety_verdicts)

    @property
    def score_like(self) -> list[Any]:
        return [*self.scores, *self.events, *self.verdicts]


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    tmp = tmp_path_factory.mktemp("lf-history")
    server = LangfuseServer()
    pm = new_plugin_manager()
    if not pm.has_plugin(ADAPTER):
        pm.register(importlib.import_module(ADAPTER), name=ADAPTER)
    backend = {"name": "langfuse", "public_key": server.public_key,
               "secret_key": server.secret_key, "host": server.url, "redaction": "full"}
    memory = start(tmp, backends=[backend], plugin_manager=pm,
                   service={"name": "svc", "environment": "staging", "release": "1.2.3"})

    with llmvigil.span("answer", kind="chain", user_id="u-1", session_id="conv-1",
                       tags=["prod", "chat"], metadata={"team": "search"}) as root:
        root.set_input({"question": "when?"})
        with llmvigil.span("call-model", kind="llm", model="claude-x",
                           response_model="claude-x-20250101", provider="anthropic") as gen:
            gen.set_usage(input_tokens=120, output_tokens=30, cache_read_tokens=1000,
                          cache_write_tokens=200)
            gen.set(cost_usd=0.0123, feature="dates")
            time.sleep(0.002)
            gen.tick()
            gen.set_output("on 03/04/2025")
        with llmvigil.span("embed", kind="embedding", model="embed-1") as emb:
            emb.set_usage(input_tokens=8)
        with llmvigil.span("plan", kind="agent"), llmvigil.span("lookup", kind="tool") as t:
            t.set_input({"query": "when?"})
            t.set_output(["doc-1", "doc-2"])
        with pytest.raises(ValueError), llmvigil.span("fetch", kind="retriever"):
            raise ValueError("index offline")
    for i in range(5):  # a historic trace, one span a second
        capture.emit(Span(
            id=f"{0xA000 + i:016x}", trace_id="b" * 32,
            parent_id=f"{0xA000 + i - 1:016x}" if i else None, name=f"hist-{i}",
            kind="llm" if i == 4 else "span", start_ns=T_HIST + i * SECOND + 123_456_789,
            end_ns=T_HIST + (i + 30) * SECOND, status="ok", user_id="u-hist",
            model="claude-old" if i == 4 else None, metadata={"i": i, "notes": LONG},
            attributes={"code.function": "f" * 250}))
    assert llmvigil.flush(10)
    spans = {s.name: s for s in memory.spans}
    gen_span = spans["call-model"]
    llmvigil.feedback(gen_span, "thumbs_up", comment="good", user_id="u-1",
                      metadata={"ticket": 7})
    llmvigil.feedback(root.trace_id, kind="rating", value=0.25, name="date_accuracy",
                      category="dates", source="judge")
    llmvigil.feedback(spans["lookup"], kind="flag", category="pii", name="review_flag",
                      source="review", feature="search")
    llmvigil.feedback(gen_span, kind="correction", correction="2025-04-03", name="fix")
    llmvigil.session_event("conv-1", "task_complete", trace_id=root.trace_id, user_id="u-1")
    capture.emit(SafetyVerdict(action="review", reason="mentions a card number",
                               category="pii", decided_by="rules", trace_id=root.trace_id,
                               span_id=gen_span.id))
    assert llmvigil.flush(10)
    deadline = time.monotonic() + 10
    while len(server.span_ids()) < 11 or len(server.scores_by_id()) < 6:
        assert time.monotonic() < deadline, "the history did not reach Langfuse"
        time.sleep(0.02)
    h = History(server, memory)
    llmvigil.shutdown(timeout=3)
    assert len(h.spans) == 11 and len(h.score_like) == 6
    yield h
    server.close()


@pytest.fixture
def server(history: History) -> Iterator[LangfuseServer]:
    """A fresh Langfuse holding a copy of the history (tests may damage it)."""
    srv = LangfuseServer(history.server.public_key, history.server.secret_key)
    with history.server.lock:
        srv.spans = copy.deepcopy(history.server.spans)
        srv.scores = copy.deepcopy(history.server.scores)
    yield srv
    srv.close()


def importer(srv: LangfuseServer, **settings: Any) -> LangfuseImporter:
    return LangfuseImporter({"public_key": srv.public_key, "secret_key": srv.secret_key,
                             "host": srv.url, "retry_backoff_s": 0.0, **settings})


def records(items: Any) -> list[Any]:
    return [i for i in items if not isinstance(i, Skipped)]


def gets(srv: LangfuseServer, path: str) -> list[dict[str, list[str]]]:
    """The query of every GET to ``path`` so far."""
    out = []
    for a in srv.attempts:
        split = urlsplit(a.path)
        if a.method == "GET" and split.path == path:
            out.append(parse_qs(split.query))
    return out


# -- the round trip --------------------------------------------------------------------------


def test_round_trip_gives_back_every_span_field(history: History,
                                               server: LangfuseServer) -> None:
    imp = importer(server, page_size=2, sort_window=3, expand_metadata=["notes"])
    spans = [r for r in records(imp.read({})) if isinstance(r, Span)]
    assert len(spans) == len(history.spans)
    by_id = {s.id: s for s in spans}
    for m in history.spans:
        assert by_id[m.id] == expected_span(m), m.name
    sent = {m.name: m for m in history.spans}
    gen = by_id[sent["call-model"].id]
    assert (gen.model, gen.response_model) == ("claude-x", "claude-x-20250101")
    assert gen.usage is not None and (gen.usage.input_tokens, gen.usage.cache_read_tokens,
                                      gen.usage.cache_write_tokens) == (120, 1000, 200)
    assert gen.cost_usd == 0.0123 and gen.ttft_s == sent["call-model"].ttft_s
    assert by_id[sent["fetch"].id].error == "index offline"
    assert by_id[sent["lookup"].id].parent_id == sent["plan"].id
    assert by_id[sent["answer"].id].tags == ["prod", "chat"]
    assert by_id[sent["lookup"].id].tags == []  # trace tags belong to the root
    assert by_id[sent["hist-0"].id].attributes == {"code.function": "f" * 250}
    assert [record_key(s) for s in spans] == sorted(record_key(s) for s in spans)
    assert imp.skipped == {}


def test_round_trip_gives_back_scores_events_and_verdicts(history: History,
                                                          server: LangfuseServer) -> None:
    got = records(importer(server).read({"kinds": ["scores", "session_events",
                                                   "safety_verdicts"]}))
    assert len(got) == 6
    by_id = {r.id: r for r in got}
    for m in history.score_like:
        assert by_id[m.id] == msgspec.structs.replace(m, time_ns=at_us(m.time_ns)), m
    for kind in (Score, SessionEvent, SafetyVerdict):
        mine = [record_key(r) for r in got if isinstance(r, kind)]
        assert mine == sorted(mine)


def test_newest_first_api_comes_out_oldest_first_in_windows(
        history: History, server: LangfuseServer) -> None:
    raw = httpx.get(server.url + OBSERVATIONS_V2_PATH, params={"limit": 1000},
                    auth=(server.public_key, server.secret_key)).json()["data"]
    assert [o["startTime"] for o in raw] == sorted((o["startTime"] for o in raw),
                                                   reverse=True)
    imp = importer(server, page_size=2, sort_window=3, expand_metadata="notes")
    assert imp.estimate({"kinds": ["spans"]}) == 11
    spans = records(imp.read({"kinds": ["spans"]}))
    assert [s.id for s in spans] == [
        m.id for m in sorted(history.spans, key=lambda m: (at_us(m.start_ns), m.id))]
    queries = gets(server, OBSERVATIONS_V2_PATH)
    scans = [q for q in queries if q.get("fields") == ["core"]]
    assert len(scans) == 1  # estimate() scanned; read() used that scan
    reads = [q for q in queries if q.get("fields", ["core"]) != ["core"]]
    starts = {(q.get("fromStartTime", [None])[0], q.get("toStartTime", [None])[0])
              for q in reads}
    assert len(starts) == math.ceil(11 / 3)  # 11 spans, windows of 3
    assert all(q["limit"] == ["2"] and q["expandMetadata"] == ["llmvigil,feature,notes"]
               for q in reads)
    # pages of 2 followed through their cursors
    assert sum(1 for q in reads if "cursor" in q) == len(reads) - len(starts)


def test_windows_cut_sorted_times() -> None:
    times = [1, 2, 2, 2, 3, 5, 8, 8, 9]
    assert windows(times, None, None, 3) == [(None, 2), (2, 8), (8, None)]
    assert windows(times, 0, 10, 4) == [(0, 3), (3, 9), (9, 10)]
    assert windows([], 5, None, 2) == [(5, None)]
    assert windows(times, None, None, 100) == [(None, None)]


def test_time_window_kinds_limit_and_resume(history: History,
                                            server: LangfuseServer) -> None:
    hist = sorted((s for s in history.spans if s.name.startswith("hist-")), key=record_key)
    since, until = T_HIST + 1 * SECOND, T_HIST + 4 * SECOND
    got = records(importer(server, expand_metadata="notes").read(
        {"since_ns": since, "until_ns": until}))
    assert got == [expected_span(s) for s in hist[1:4]]
    everything = records(importer(server, expand_metadata="notes").read({}))
    assert records(importer(server, sort_window=2, expand_metadata="notes").read(
        {"limit": 4})) == everything[:4]
    only = records(importer(server).read({"kinds": ["safety_verdicts"]}))
    assert [type(r) for r in only] == [SafetyVerdict]
    # a checkpoint holds the key of a record as imported (µs times)
    after = {"spans": record_key(expected_span(hist[2]))}
    resumed = records(importer(server, expand_metadata="notes").read(
        {"after": after, "kinds": ["spans"]}))
    assert resumed[0].id == hist[2].id  # the query started at the resume point's time
    assert [s.id for s in resumed] == [s.id for s in everything if isinstance(s, Span)
                                       and record_key(s) >= after["spans"]]


def test_long_metadata_needs_expanding(history: History, server: LangfuseServer) -> None:
    got = {s.name: s for s in records(importer(server).read({"kinds": ["spans"]}))}
    # Langfuse cuts values over 200 characters unless asked: the importer always asks
    # for its own key (llmvigil) and feature, and for the keys in expand_metadata
    assert got["hist-0"].metadata["notes"] == ('"' + LONG)[:200]
    assert got["hist-0"].attributes == {"code.function": "f" * 250}


def test_estimate(server: LangfuseServer) -> None:
    imp = importer(server)
    assert imp.estimate({}) == 17
    assert imp.total({"kinds": ["scores"]}) == 6  # every score-like record is scanned
    assert imp.estimate({"since_ns": T_HIST + 2 * SECOND, "until_ns": T_HIST + 3 * SECOND,
                         "kinds": ["spans"]}) == 1
    assert imp.estimate({"limit": 5}) == 5


# -- other tools' data and bad data --------------------------------------------------------


def test_observations_and_scores_from_other_tools(server: LangfuseServer) -> None:
    trace = "c" * 32
    server.extra_observations += [
        {"id": "obs-root", "traceId": trace, "type": "SPAN", "name": "root",
         "startTime": "2024-05-01T12:00:00.5Z", "endTime": "2024-05-01T12:00:03Z",
         "level": "WARNING", "statusMessage": "slow", "environment": "default",
         "tags": ["t"], "input": "plain text", "output": '{"a": 1}',
         "metadata": {"k": "v"}},
        {"id": "obs-gen", "traceId": trace, "parentObservationId": "obs-root",
         "type": "GENERATION", "name": "gen", "startTime": "2024-05-01T12:00:01Z",
         "endTime": "2024-05-01T12:00:02Z", "model": "gpt-x",
         "usageDetails": {"prompt_tokens": 9, "completion_tokens": 3,
                          "cache_read_input_tokens": 2},
         "totalCost": 0.5, "completionStartTime": "2024-05-01T12:00:01.2Z",
         "tags": ["t"]},
        {"id": "obs-event", "traceId": trace, "parentObservationId": "obs-root",
         "type": "EVENT", "name": "ev", "startTime": "2024-05-01T12:00:01.5Z"},
    ]
    server.extra_scores += [
        {"id": "sc-label", "name": "tone", "dataType": "CATEGORICAL", "value": "polite",
         "timestamp": "2024-05-01T12:00:05Z", "source": "ANNOTATION",
         "subject": {"kind": "observation", "id": "obs-gen", "traceId": trace}},
        {"id": "sc-exp", "name": "acc", "dataType": "NUMERIC", "value": 1,
         "timestamp": "2024-05-01T12:00:06Z", "subject": {"kind": "experiment", "id": "e"}},
    ]
    imp = importer(server)
    items = list(imp.read({"since_ns": T_HIST, "until_ns": T_HIST + 10 * SECOND}))
    got = {r.id: r for r in records(items)}
    root, gen, ev = got["obs-root"], got["obs-gen"], got["obs-event"]
    assert (root.kind, root.status, root.environment, root.tags) == ("span", "ok", None, ["t"])
    assert root.attributes == {"langfuse.level": "WARNING", "langfuse.status_message": "slow"}
    assert (root.input, root.output, root.metadata) == ("plain text", {"a": 1}, {"k": "v"})
    assert (gen.kind, gen.parent_id, gen.model, gen.tags) == ("llm", "obs-root", "gpt-x", [])
    assert gen.usage is not None and (gen.usage.input_tokens, gen.usage.output_tokens,
                                      gen.usage.cache_read_tokens) == (9, 3, 2)
    assert gen.cost_usd == 0.5 and math.isclose(gen.ttft_s or 0, 0.2)
    assert ev.end_ns == ev.start_ns == T_HIST + 1_500_000_000
    label = got["sc-label"]
    assert isinstance(label, Score)
    assert (label.label, label.kind, label.source, label.span_id, label.trace_id) == (
        "polite", "custom", "review", "obs-gen", trace)
    assert [s.record_id for s in items if isinstance(s, Skipped)] == ["sc-exp"]
    assert imp.skipped == {"malformed score: a dataset experiment score (llmvigil has no "
                           "experiments)": 1}


def test_malformed_records_are_skipped_counted_and_named(
        history: History, server: LangfuseServer, caplog: pytest.LogCaptureFixture) -> None:
    server.extra_observations += [
        {"id": "bad-usage", "traceId": "d" * 32, "type": "GENERATION",
         "startTime": "2024-05-01T12:00:02.5Z", "usageDetails": {"input": "lots"}},
        {"id": "bad-json", "traceId": "d" * 32, "type": "SPAN",
         "startTime": "2024-05-01T12:00:02.6Z", "metadata": '{"llmvigil": {"kind": '},
        {"id": "no-trace", "type": "SPAN", "startTime": "2024-05-01T12:00:02.7Z"},
    ]
    server.extra_scores.append({"id": "bad-bool", "name": "ok", "dataType": "BOOLEAN",
                                "value": "maybe", "timestamp": "2024-05-01T12:00:03Z",
                                "subject": {"kind": "trace", "id": "d" * 32}})
    imp = importer(server, page_size=2, sort_window=2, expand_metadata="notes")
    with caplog.at_level(logging.WARNING, logger="llmvigil.importers.langfuse"):
        items = list(imp.read({}))
    skipped = {s.record_id: s for s in items if isinstance(s, Skipped)}
    assert set(skipped) == {"bad-usage", "bad-json", "no-trace", "bad-bool"}
    assert "span bad-usage" in skipped["bad-usage"].message()
    assert "usageDetails.input is not a token count ('lots')" in skipped["bad-usage"].reason
    assert "metadata is malformed JSON" in skipped["bad-json"].reason
    assert "traceId is missing" in skipped["no-trace"].reason
    assert "BOOLEAN value 'maybe'" in skipped["bad-bool"].reason
    assert skipped["bad-bool"].kind == "scores"
    assert sum(imp.skipped.values()) == 4 and len(imp.skipped) == 4
    for rid in skipped:
        assert rid in caplog.text
    assert "skipped 4 unreadable record(s)" in caplog.text
    good = records(items)
    assert len(good) == 17
    assert {s.id: s for s in good if isinstance(s, Span)} == {
        m.id: expected_span(m) for m in history.spans}


def test_a_vendor_error_mid_stream_names_the_page_and_cursor(server: LangfuseServer) -> None:
    full = records(importer(server, page_size=2, sort_window=3).read({}))
    server.fail_next(OBSERVATIONS_V2_PATH, 500, skip=4, times=5)
    imp = importer(server, page_size=2, sort_window=3, max_retries=1)
    got: list[Any] = []
    with pytest.raises(LangfuseReadError) as err:
        for item in imp.read({}):
            got.append(item)
    e = err.value
    assert got and got == full[:len(got)] and e.records == len(got)
    assert e.status == 500 and e.page >= 1 and f"page {e.page}" in str(e)
    assert (repr(e.cursor) in str(e)) if e.cursor else ("first page" in str(e))
    assert "after 2 attempts: HTTP 500" in str(e) and server.secret_key not in str(e)


def test_transient_errors_are_retried_and_permanent_ones_are_not(
        server: LangfuseServer) -> None:
    server.fail_next(OBSERVATIONS_V2_PATH, 503, skip=1, times=1)
    server.fail_next(SCORES_V3_PATH, 429, times=1)
    assert len(records(importer(server, max_retries=2).read({}))) == 17
    before = len(gets(server, SCORES_V3_PATH))
    server.fail_next(SCORES_V3_PATH, 401, times=5)
    with pytest.raises(LangfuseReadError, match=r"first page\) failed: HTTP 401"):
        list(importer(server, max_retries=3).read({"kinds": ["scores"]}))
    assert len(gets(server, SCORES_V3_PATH)) - before == 1


def test_the_project_must_be_the_keys_project(server: LangfuseServer) -> None:
    with pytest.raises(ConfigError, match="belong to project llmvigil-test / proj-test"):
        list(importer(server).read({"project": "other"}))
    assert len(records(importer(server).read({"project": "llmvigil-test"}))) == 17


def test_missing_keys_are_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LANGFUSE_SECRET_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"secret_key not set.*LANGFUSE_SECRET_KEY"):
        LangfuseImporter({"public_key": "pk", "host": "http://127.0.0.1:9"})


# -- through the migration engine --------------------------------------------------------


def test_migration_stopped_by_a_500_resumes_from_its_checkpoint(
        tmp_path: Path, history: History, server: LangfuseServer) -> None:
    (info,) = [i for i in local_adapters() if i.name == "local"]  # upserts by id
    dest_path = tmp_path / "dest.db"
    selection = Selection()
    ck_path = tmp_path / "ck.json"

    def run(**settings: Any) -> Any:
        ck = Checkpoint.open(ck_path, source="langfuse", destinations=["local"],
                             selection=selection)
        dest = Destination("local", info, {"path": str(dest_path)}, redaction="full")
        return migrate(importer(server, page_size=2, sort_window=3, expand_metadata="notes",
                                **settings), [dest], source="langfuse",
                       selection=selection, checkpoint=ck, batch_size=2)

    server.fail_next(OBSERVATIONS_V2_PATH, 500, skip=4, times=1)
    first = run(max_retries=0)
    assert first.stopped is not None and "page" in first.stopped
    delivered = first.destinations[0].written["spans"]
    assert 0 < delivered < 11
    second = run()
    assert second.stopped is None and second.problems == []
    # the second run asked Langfuse for spans from the checkpoint's time on
    assert second.already_delivered["spans"] == 1
    assert second.read["spans"] == 11 - delivered
    with LocalStore(dest_path) as store:
        spans = {s.id: s for s in store.read("spans")}
        score_like = [*store.read("scores"), *store.read("session_events"),
                      *store.read("safety_verdicts")]
    assert spans == {m.id: expected_span(m) for m in history.spans}
    assert {r.id for r in score_like} == {m.id for m in history.score_like}


def test_importer_is_discovered() -> None:
    pm = new_plugin_manager()
    if not pm.has_plugin(IMPORTER):
        pm.register(importlib.import_module(IMPORTER), name=IMPORTER)
    info = importer_infos(pm)["langfuse"]
    assert info.extra == "langfuse" and info.factory is LangfuseImporter


# -- at scale ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_spans_in_trees_round_trip() -> None:
    """~10,000 spans in trees and their scores, through the adapter's real OTLP and
    score exports, read back in windows of 2,000."""
    from llmvigil.adapters.langfuse import LangfuseBackend
    from test_files import make_history

    history = make_history(3000)
    spans = [r for r in history if isinstance(r, Span)]
    score_like = [r for r in history if isinstance(r, (Score, SessionEvent, SafetyVerdict))]
    assert len(spans) >= 10_000
    srv = LangfuseServer()
    try:
        backend = LangfuseBackend({"public_key": srv.public_key, "secret_key": srv.secret_key,
                                   "host": srv.url, "timeout_s": 30.0})
        try:
            for i in range(0, len(spans), 1000):
                assert backend.llmvigil_export_spans(spans[i:i + 1000]).value == "success"
            for kind, hook in ((Score, backend.llmvigil_export_scores),
                               (SessionEvent, backend.llmvigil_export_session_events),
                               (SafetyVerdict, backend.llmvigil_export_safety_verdicts)):
                batch = [r for r in score_like if isinstance(r, kind)]
                for i in range(0, len(batch), 1000):
                    assert hook(batch[i:i + 1000]).value == "success"
        finally:
            backend.llmvigil_shutdown(timeout_s=1)
        imp = importer(srv)
        started = time.monotonic()
        assert imp.estimate({}) == len(spans) + len(score_like)
        got = records(imp.read({}))
        elapsed = time.monotonic() - started
    finally:
        srv.close()
    got_spans = [r for r in got if isinstance(r, Span)]
    assert [record_key(s) for s in got_spans] == sorted(record_key(s) for s in got_spans)
    assert {s.id: s for s in got_spans} == {m.id: expected_span(m) for m in spans}
    others = {r.id: r for r in got if not isinstance(r, Span)}
    assert others == {m.id: msgspec.structs.replace(m, time_ns=at_us(m.time_ns))
                      for m in score_like}
    print(f"imported {len(got)} records in {elapsed:.1f}s")
