"""The LangSmith importer: llmvigil -> LangSmith (the real adapter and SDK) -> back.

History is emitted through llmvigil with the memory and langsmith backends into the
local LangSmith API (tests/langsmith_server.py), which answers the runs query and the
feedback list from what it ingested; the importer reads it back and the records are
compared field by field with what the memory backend received.
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import json
import logging
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llmvigil
import msgspec
import pytest
from langsmith_server import LangSmithServer
from llmvigil.adapters.local import LocalStore
from llmvigil.adapters.local import llmvigil_adapters as local_adapters
from llmvigil.core import capture
from llmvigil.core.migrate import Skipped, record_key
from llmvigil.core.migrate.engine import Checkpoint, Destination, Selection, migrate
from llmvigil.core.model import Score, SessionEvent, Span
from llmvigil.importers.langsmith import (
    LangSmithImporter,
    LangSmithReadError,
    feedback_to_record,
)
from llmvigil.plugins.manager import importer_infos, new_plugin_manager
from vigil_testing import start

ADAPTER = "llmvigil.adapters.langsmith"
IMPORTER = "llmvigil.importers.langsmith"
PROJECT = "vigil-import"
T_HIST = 1_714_564_800 * 10**9  # 2024-05-01T12:00:00Z
SECOND = 10**9
ADAPTER_NS = uuid.UUID("6c6c6d76-6967-696c-2d6c-616e67736d74")  # adapters/langsmith.py


def at_us(ns: int) -> int:
    """A time as LangSmith keeps it: truncated to the microsecond."""
    return ns // 1000 * 1000


def expected_span(m: Span) -> Span:
    """What the importer must give back for a span the adapter sent: everything, times to
    the µs, attributes merged into metadata (LangSmith has one metadata map)."""
    return msgspec.structs.replace(m, start_ns=at_us(m.start_ns), end_ns=at_us(m.end_ns),
                                   metadata={**m.attributes, **m.metadata}, attributes={})


class History:
    """What llmvigil sent (the memory backend's records) and the server that got it."""

    def __init__(self, server: LangSmithServer, spans: list[Span], scores: list[Score],
                 events: list[SessionEvent]) -> None:
        self.server = server
        self.spans = spans
        self.scores = scores
        self.events = events


def _historic(trace: str, n: int) -> list[Span]:
    """A root and a chain of descendants at T_HIST + i seconds, deepest emitted first."""
    spans: list[Span] = []
    parent = None
    for i in range(n):
        sid = f"{0xA000 + i:016x}"
        spans.append(Span(id=sid, trace_id=trace, parent_id=parent, name=f"hist-{i}",
                          kind="llm" if i == n - 1 else "chain", start_ns=T_HIST + i * SECOND
                          + 123_456_789, end_ns=T_HIST + (i + 30) * SECOND, status="ok",
                          model="claude-old" if i == n - 1 else None,
                          user_id="u-hist", session_id="s-hist", metadata={"i": i}))
        parent = sid
    return spans


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    tmp = tmp_path_factory.mktemp("ls-history")
    server = LangSmithServer()
    pm = new_plugin_manager()
    if not pm.has_plugin(ADAPTER):
        pm.register(importlib.import_module(ADAPTER), name=ADAPTER)
    backend = {"name": "langsmith", "api_key": server.api_key, "endpoint": server.url,
               "project": PROJECT, "timeout_s": 5.0, "redaction": "full"}
    memory = start(tmp, backends=[backend], plugin_manager=pm,
                   pipeline={"flush_interval_s": 2.0},
                   service={"name": "svc", "environment": "staging", "release": "1.2.3"})

    @llmvigil.trace(name="answer", kind="chain", user_id="u-1", session_id="conv-1",
                    tags=["prod", "chat"], metadata={"team": "search"})
    def answer(question: str) -> str:
        with llmvigil.span("call-model", kind="llm") as s:
            s.set(model="claude-x", provider="anthropic", cost_usd=0.0123, feature="dates")
            s.set_usage(input_tokens=100, output_tokens=20, cache_read_tokens=30,
                        cache_write_tokens=5)
            time.sleep(0.002)
            s.tick()
            s.set_output({"text": "It is 01/02/2024."})
        with llmvigil.span("plan", kind="agent"), llmvigil.span("lookup", kind="tool") as t:
            t.set_input({"query": question})
            t.set_output(["doc-1", "doc-2"])
        try:
            with llmvigil.span("flaky", kind="retriever"):
                raise ValueError("index down")
        except ValueError:
            pass
        return "answer"

    answer("when?")
    # A historic trace whose deepest span reaches LangSmith before its ancestors: the
    # adapter hangs it under the root run; its real parent must come back.
    old = _historic("b" * 32, 5)
    capture.emit(old[-1])
    assert llmvigil.flush(10)
    for sp in reversed(old[:-1]):
        capture.emit(sp)
    assert llmvigil.flush(10)
    spans = {s.name: s for s in memory.spans}
    root, llm = spans["answer"], spans["call-model"]
    llmvigil.feedback(root.trace_id, kind="thumbs_down", comment="wrong date",
                      correction="2024-02-01", user_id="u-1", metadata={"ticket": 7})
    llmvigil.feedback(llm.id, kind="rating", value=0.25, name="date_accuracy",
                      category="dates", source="judge")
    llmvigil.session_event("conv-1", "task_complete", trace_id=root.trace_id, user_id="u-1")
    assert llmvigil.flush(10)
    assert server.wait_for(lambda s: len(s.runs) == 10 and len(s.feedback) == 3)
    assert server.invalid == []
    h = History(server, list(memory.spans), list(memory.scores), list(memory.session_events))
    llmvigil.shutdown(timeout=3)
    yield h
    server.close()


@pytest.fixture
def server(history: History) -> Iterator[LangSmithServer]:
    """A fresh LangSmith holding a copy of the history (tests may damage it)."""
    srv = LangSmithServer(api_key=history.server.api_key)
    with history.server.lock:
        srv.projects = copy.deepcopy(history.server.projects)
        srv.runs = copy.deepcopy(history.server.runs)
        srv.feedback = copy.deepcopy(history.server.feedback)
    yield srv
    srv.close()


def importer(srv: LangSmithServer, **settings: Any) -> LangSmithImporter:
    return LangSmithImporter({"api_key": srv.api_key, "endpoint": srv.url, "project": PROJECT,
                              "retry_backoff_s": 0.0, **settings})


def records(items: list[Any]) -> list[Any]:
    return [i for i in items if not isinstance(i, Skipped)]


# -- the round trip ------------------------------------------------------------------------


def test_round_trip_gives_back_every_span_field(history: History,
                                               server: LangSmithServer) -> None:
    got = records(list(importer(server, page_size=3).read({})))
    spans = [r for r in got if isinstance(r, Span)]
    assert len(spans) == len(history.spans) == 10
    by_id = {s.id: s for s in spans}
    assert set(by_id) == {m.id for m in history.spans}
    for m in history.spans:
        assert by_id[m.id] == expected_span(m), m.name
    # spot checks of what the equality covers, against the emitted values themselves
    sent = {m.name: m for m in history.spans}
    llm = by_id[sent["call-model"].id]
    assert llm.usage is not None
    assert (llm.usage.input_tokens, llm.usage.output_tokens, llm.usage.cache_read_tokens,
            llm.usage.cache_write_tokens) == (100, 20, 30, 5)
    assert llm.cost_usd == 0.0123 and llm.ttft_s == sent["call-model"].ttft_s
    assert by_id[sent["plan"].id].kind == "agent"  # LangSmith holds it as a chain run
    assert by_id[sent["lookup"].id].parent_id == sent["plan"].id
    assert (by_id[sent["flaky"].id].status, by_id[sent["flaky"].id].error,
            by_id[sent["flaky"].id].error_type) == ("error", "index down", "ValueError")
    assert by_id[sent["hist-4"].id].parent_id == sent["hist-3"].id
    assert by_id[sent["answer"].id].tags == ["prod", "chat"]
    assert (llm.user_id, llm.session_id, llm.environment, llm.release) == (
        "u-1", "conv-1", "staging", "1.2.3")
    # spans come oldest first, (start, id) order
    assert [record_key(s) for s in spans] == sorted(record_key(s) for s in spans)


def test_round_trip_gives_back_scores_and_session_events(history: History,
                                                         server: LangSmithServer) -> None:
    first = records(list(importer(server).read({})))
    again = records(list(importer(server, page_size=1).read({})))
    assert first == again  # ids and every field are stable across reads
    scores = [r for r in first if isinstance(r, Score)]
    events = [r for r in first if isinstance(r, SessionEvent)]
    assert len(scores) == len(history.scores) == 2 and len(events) == 1
    by_name = {s.name: s for s in scores}
    for m in history.scores:
        got = by_name[m.name]
        # LangSmith has no place for a score's own id and time: the feedback's are used
        assert got.id == str(uuid.uuid5(ADAPTER_NS, f"score:{m.id}"))
        assert m.time_ns <= got.time_ns <= m.time_ns + 30 * SECOND
        assert msgspec.structs.replace(got, id=m.id, time_ns=m.time_ns) == m
    (m_event,) = history.events
    (event,) = events
    assert event.id == str(uuid.uuid5(ADAPTER_NS, f"session_event:{m_event.id}"))
    assert msgspec.structs.replace(event, id=m_event.id, time_ns=m_event.time_ns) == m_event
    assert [record_key(s) for s in scores] == sorted(record_key(s) for s in scores)
    # spans first, then feedback
    kinds = [type(r).__name__ for r in first]
    assert kinds.index("Score") > max(i for i, k in enumerate(kinds) if k == "Span")


def test_feedback_keeps_llmvigil_ids_and_times_that_map_back_to_it() -> None:
    """When the source metadata carries llmvigil's record id and time (and the id maps
    to the feedback uuid as the adapter derives it) they win over the feedback's."""
    rid = "00000000deadbeef"
    fb = {"id": str(uuid.uuid5(ADAPTER_NS, f"score:{rid}")), "key": "k", "score": 1,
          "created_at": "2025-01-01T00:00:00.000001", "run_id": None, "trace_id": None,
          "feedback_source": {"type": "api", "metadata": {
              "llmvigil_record_id": rid, "llmvigil_time_ns": T_HIST + 5}}}
    score = feedback_to_record(fb)
    assert (score.id, score.time_ns) == (rid, T_HIST + 5)
    forged = dict(fb, id=str(uuid.uuid4()))
    other = feedback_to_record(forged)
    assert (other.id, other.time_ns) == (forged["id"], 1_735_689_600_000_001_000)


def test_runs_from_other_tools_get_deterministic_ids(server: LangSmithServer) -> None:
    trace = uuid.UUID("018f2c4e-0000-7000-8000-00000000abcd")
    convention = uuid.UUID(hex="1234567890abcdef" + trace.hex[16:])  # OTel bridge ids
    other = uuid.UUID("018f2c4e-0001-7000-8000-0000000000ff")
    base = {"session_name": PROJECT, "trace_id": str(trace), "run_type": "llm",
            "end_time": "2024-05-01T12:00:09.000000"}
    server.runs[str(trace)] = dict(base, id=str(trace), name="root", run_type="chain",
                                   start_time="2024-05-01T12:00:00.000000",
                                   extra={"metadata": {"conversation_id": "c-9"}})
    server.runs[str(convention)] = dict(
        base, id=str(convention), parent_run_id=str(trace), name="child",
        start_time="2024-05-01T12:00:01.000000", prompt_tokens=11, completion_tokens=4,
        total_cost="0.5", error="RateLimitError('slow down')",
        events=[{"name": "new_token", "time": "2024-05-01T12:00:01.250000"}])
    server.runs[str(other)] = dict(base, id=str(other), parent_run_id=str(convention),
                                   name="grandchild", run_type="parser",
                                   start_time="2024-05-01T12:00:02.000000")
    got = {s.name: s for s in records(list(importer(server).read({"kinds": ["spans"]})))
           if s.trace_id == trace.hex}
    root_id = hashlib.sha256(b"langsmith-run:" + trace.bytes).hexdigest()[:16]
    assert got["root"].id == root_id and got["root"].parent_id is None
    assert got["root"].session_id == "c-9" and "conversation_id" not in got["root"].metadata
    assert (got["child"].id, got["child"].parent_id) == ("1234567890abcdef", root_id)
    assert got["grandchild"].id == hashlib.sha256(
        b"langsmith-run:" + other.bytes).hexdigest()[:16]
    assert got["grandchild"].parent_id == "1234567890abcdef"
    assert got["grandchild"].kind == "span"
    child = got["child"]
    assert child.usage is not None and (child.usage.input_tokens,
                                        child.usage.output_tokens) == (11, 4)
    assert child.cost_usd == 0.5 and child.status == "error"
    assert child.error == "RateLimitError('slow down')" and child.error_type is None
    assert math.isclose(child.ttft_s or 0, 0.25)
    again = {s.name: s for s in records(list(importer(server).read({"kinds": ["spans"]})))
             if s.trace_id == trace.hex}
    assert again == got


# -- pagination, filters, limit ------------------------------------------------------------


def test_pages_follow_the_cursors(history: History, server: LangSmithServer) -> None:
    whole = records(list(importer(server, page_size=100).read({"kinds": ["spans"]})))
    before = server.count("POST", "/runs/query")
    paged = records(list(importer(server, page_size=3).read({"kinds": ["spans"]})))
    assert paged == whole and len(paged) == 10
    assert server.count("POST", "/runs/query") - before == math.ceil(10 / 3)
    before = server.count("GET", "/feedback")
    fb = records(list(importer(server, page_size=1).read({"kinds": ["scores",
                                                                  "session_events"]})))
    assert len(fb) == 3
    assert server.count("GET", "/feedback") - before == 4  # 3 full pages, then an empty one


def test_time_window_kinds_and_limit(history: History, server: LangSmithServer) -> None:
    hist = sorted((s for s in history.spans if s.name.startswith("hist-")), key=record_key)
    since, until = T_HIST + 1 * SECOND, T_HIST + 4 * SECOND  # hist-1 .. hist-3
    got = records(list(importer(server).read({"since_ns": since, "until_ns": until})))
    assert [s.id for s in got] == [s.id for s in hist[1:4]]
    assert all(isinstance(s, Span) for s in got)  # the feedback is newer than the window
    limited = records(list(importer(server, page_size=2).read({"limit": 3})))
    everything = records(list(importer(server).read({})))
    assert limited == everything[:3]
    only_events = records(list(importer(server).read({"kinds": ["session_events"]})))
    assert [type(r) for r in only_events] == [SessionEvent]
    # resuming after hist-2: the query starts at its time; the engine skips what is <= it
    after = {"spans": record_key(hist[2])}
    resumed = records(list(importer(server).read({"after": after, "kinds": ["spans"]})))
    assert [s.id for s in resumed if record_key(s) > after["spans"]] == \
        [s.id for s in everything if isinstance(s, Span) and record_key(s) > after["spans"]]
    assert min(s.start_ns for s in resumed) == at_us(hist[2].start_ns)


def test_estimate_counts_runs_and_feedback(server: LangSmithServer) -> None:
    imp = importer(server)
    assert imp.estimate({}) == 13
    assert imp.total({"kinds": ["spans"]}) == 10
    assert imp.estimate({"limit": 4}) == 4
    assert imp.estimate({"since_ns": T_HIST}) is None


# -- bad data ---------------------------------------------------------------------------------


def test_malformed_records_are_skipped_counted_and_named(
        server: LangSmithServer, caplog: pytest.LogCaptureFixture) -> None:
    bad_json, bad_usage = str(uuid.uuid4()), str(uuid.uuid4())
    trace = str(uuid.uuid4())
    base = {"session_name": PROJECT, "trace_id": trace, "name": "bad", "run_type": "llm"}
    server.runs[bad_json] = dict(base, id=bad_json, start_time="2024-05-01T12:00:02.5",
                                 extra='{"metadata": {"user_id": ')
    server.runs[bad_usage] = dict(base, id=bad_usage, start_time="2024-05-01T12:00:02.6",
                                  extra={"metadata": {"usage_metadata": {
                                      "input_tokens": "many"}}})
    bad_fb = str(uuid.uuid4())
    server.feedback[bad_fb] = {"id": bad_fb, "key": "k", "created_at": "yesterday",
                               "session_id": server.projects[PROJECT]["id"]}
    imp = importer(server, page_size=2)
    with caplog.at_level(logging.WARNING, logger="llmvigil.importers.langsmith"):
        items = list(imp.read({}))
    skipped = [i for i in items if isinstance(i, Skipped)]
    assert {(s.record_id, s.kind) for s in skipped} == {
        (bad_json, "spans"), (bad_usage, "spans"), (bad_fb, "scores")}
    messages = {s.record_id: s.message() for s in skipped}
    assert f"span {bad_json}" in messages[bad_json] and "extra is malformed JSON" in \
        messages[bad_json]
    assert "input_tokens is not a token count ('many')" in messages[bad_usage]
    assert "created_at is not an ISO 8601 time ('yesterday')" in messages[bad_fb]
    assert imp.skipped == {"malformed run: extra is malformed JSON": 1,
                           "malformed run: usage_metadata.input_tokens is not a token count "
                           "('many')": 1,
                           "malformed feedback: created_at is not an ISO 8601 time "
                           "('yesterday')": 1}
    logged = caplog.text
    assert bad_json in logged and bad_usage in logged and bad_fb in logged
    assert "skipped 3 unreadable record(s)" in logged
    assert len(records(items)) == 13  # everything else came through


def test_a_vendor_error_mid_stream_names_the_page_and_cursor(server: LangSmithServer) -> None:
    server.fail_next("POST", "/runs/query", 500, skip=2, times=5)
    imp = importer(server, page_size=2, max_retries=1)
    got: list[Any] = []
    with pytest.raises(LangSmithReadError) as err:
        for item in imp.read({}):
            got.append(item)
    # pages 1 and 2 (4 runs) were read; the 4th waits for a later start time (ties are
    # sorted by id) so 3 were delivered before the failure
    assert got == records(list(importer(server).read({})))[:3]
    e = err.value
    assert (e.page, e.status, e.records) == (3, 500, 3) and e.cursor
    assert "POST /runs/query page 3" in str(e) and repr(e.cursor) in str(e)
    assert "after 2 attempts: HTTP 500" in str(e) and server.api_key not in str(e)


def test_a_transient_error_is_retried(server: LangSmithServer) -> None:
    server.fail_next("POST", "/runs/query", 503, skip=1, times=1)
    server.fail_next("GET", "/feedback", 429, times=1)
    got = records(list(importer(server, page_size=4, max_retries=2).read({})))
    assert len(got) == 13
    assert [r.status for r in server.requests if r.path == "/runs/query"].count(503) == 1


def test_a_permanent_error_is_not_retried(server: LangSmithServer) -> None:
    server.fail_next("POST", "/runs/query", 403, times=5)
    with pytest.raises(LangSmithReadError, match=r"page 1 \(first page\) failed: HTTP 403"):
        list(importer(server, max_retries=3).read({}))
    assert server.count("POST", "/runs/query") == 1


def test_an_unknown_project_is_a_clear_error(server: LangSmithServer) -> None:
    with pytest.raises(Exception, match="no project 'nope'"):
        list(importer(server).read({"project": "nope"}))


# -- through the migration engine --------------------------------------------------------


def test_migration_stopped_by_a_500_resumes_from_its_checkpoint(
        tmp_path: Path, history: History, server: LangSmithServer) -> None:
    dest_path = tmp_path / "dest.db"
    (info,) = [i for i in local_adapters() if i.name == "local"]  # upserts by id

    def destination() -> Destination:
        return Destination("local", info, {"path": str(dest_path)}, redaction="full")

    selection = Selection()
    ck_path = tmp_path / "ck.json"
    server.fail_next("POST", "/runs/query", 500, skip=2, times=1)
    ck = Checkpoint.open(ck_path, source="langsmith", destinations=["local"],
                         selection=selection)
    first = migrate(importer(server, page_size=2, max_retries=0), [destination()],
                    source="langsmith", selection=selection, checkpoint=ck, batch_size=2)
    assert first.stopped is not None and "page 3" in first.stopped
    assert first.read["spans"] == 3  # as in the test above
    ck = Checkpoint.open(ck_path, source="langsmith", destinations=["local"],
                         selection=selection)
    second = migrate(importer(server, page_size=2), [destination()], source="langsmith",
                     selection=selection, checkpoint=ck, batch_size=2)
    assert second.stopped is None and second.problems == []
    # the first run delivered the 3 spans it read; the second asked LangSmith for runs
    # from the checkpoint's time on, so it saw only the 3rd again
    assert first.destinations[0].written["spans"] == 3
    assert second.already_delivered["spans"] == 1
    with LocalStore(dest_path) as store:
        spans = list(store.read("spans"))
        assert store.count("scores") == 2 and store.count("session_events") == 1
    assert sorted(s.id for s in spans) == sorted(m.id for m in history.spans)
    assert {s.id: s for s in spans} == {m.id: expected_span(m) for m in history.spans}


def test_importer_is_discovered() -> None:
    pm = new_plugin_manager()
    if not pm.has_plugin(IMPORTER):
        pm.register(importlib.import_module(IMPORTER), name=IMPORTER)
    info = importer_infos(pm)["langsmith"]
    assert info.extra == "langsmith" and info.factory is LangSmithImporter


# -- at scale ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_ten_thousand_spans_in_trees_round_trip() -> None:
    """~10,000 spans in trees: the runs are built by the adapter's own mapping and put
    straight into the server (the HTTP ingest of 10,000 runs, validated one by one, is
    covered at small scale above and would cost 15 s here); feedback goes over HTTP."""
    from llmvigil.adapters.langsmith import LangSmithBackend, dotted_orders, span_to_run
    from test_files import make_history

    history = make_history(3000)
    spans = [r for r in history if isinstance(r, Span)]
    feedback = [r for r in history if isinstance(r, (Score, SessionEvent))][:400]
    assert len(spans) >= 10_000
    with LangSmithServer() as srv:
        backend = LangSmithBackend({"api_key": srv.api_key, "endpoint": srv.url,
                                    "project": PROJECT, "timeout_s": 30.0})
        try:
            for i in range(0, len(spans), 500):
                batch = spans[i:i + 500]
                for sp, order in zip(batch, dotted_orders(batch, backend.lineage), strict=True):
                    run = json.loads(json.dumps(span_to_run(sp, order, PROJECT), default=str))
                    srv.runs[run["id"]] = run
            srv._project(PROJECT)
            scores = [r for r in feedback if isinstance(r, Score)]
            events = [r for r in feedback if isinstance(r, SessionEvent)]
            assert backend.llmvigil_export_scores(scores).value == "success"
            assert backend.llmvigil_export_session_events(events).value == "success"
        finally:
            backend.llmvigil_shutdown(timeout_s=1)
        assert srv.invalid == []
        started = time.monotonic()
        got = records(list(importer(srv).read({})))
        elapsed = time.monotonic() - started
    got_spans = [r for r in got if isinstance(r, Span)]
    assert [record_key(s) for s in got_spans] == sorted(record_key(s) for s in got_spans)
    assert {s.id: s for s in got_spans} == {m.id: expected_span(m) for m in spans}
    got_fb = {(r.name if isinstance(r, Score) else r.event, r.trace_id,
               r.session_id): r for r in got if not isinstance(r, Span)}
    assert len(got_fb) == len(feedback)
    for m in feedback:
        r = got_fb[(m.name if isinstance(m, Score) else m.event, m.trace_id, m.session_id)]
        assert msgspec.structs.replace(r, id=m.id, time_ns=m.time_ns) == m
    print(f"imported {len(got)} records in {elapsed:.1f}s")
