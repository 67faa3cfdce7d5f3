"""The LangSmith backend, end to end: llmvigil -> real ``langsmith`` SDK -> local API.

Records go through the whole pipeline (capture, worker, outbox) beside the memory
backend; :class:`LangSmithServer` decodes the multipart/JSON wire format and checks it
against LangSmith's documented run and feedback schemas.
"""

from __future__ import annotations

import importlib
import json
import logging
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import llmvigil
import pytest
from langsmith_server import LangSmithServer
from llmvigil.adapters.memory import MemoryBackend
from llmvigil.core.errors import ConfigError
from llmvigil.core.model import Score, SessionEvent, Span, Usage, new_span_id, new_trace_id
from llmvigil.core.runtime import emit_metric, get_runtime
from llmvigil.plugins.manager import new_plugin_manager
from llmvigil.plugins.types import ExportResult
from vigil_testing import start

MODULE = "llmvigil.adapters.langsmith"
langsmith_adapter = importlib.import_module(MODULE)
LangSmithBackend = langsmith_adapter.LangSmithBackend
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
PROJECT = "vigil-tests"
Make = Callable[..., Any]


# -- helpers: the documented mapping, written out independently --------------------------


def at(ns: int) -> datetime:
    """A span time as LangSmith holds it: UTC, microseconds."""
    return EPOCH + timedelta(microseconds=ns // 1000)


def parse(text: str) -> datetime:
    return datetime.fromisoformat(text)


def segment(ns: int, run_id: str) -> str:
    return at(ns).strftime("%Y%m%dT%H%M%S%fZ") + run_id


def ls_trace(trace_id: str) -> str:
    return str(uuid.UUID(hex=trace_id))


def ls_run(span: Span) -> str:
    if span.parent_id is None:
        return ls_trace(span.trace_id)
    return str(uuid.UUID(hex=span.id + span.trace_id[16:]))


def plugin_manager() -> Any:
    pm = new_plugin_manager()
    if not pm.has_plugin(MODULE):
        pm.register(importlib.import_module(MODULE), name=MODULE)
    return pm


def start_with_langsmith(tmp_path: Path, server: LangSmithServer, *, timeout_s: float = 2.0,
                         pipeline: dict[str, Any] | None = None) -> MemoryBackend:
    backend = {"name": "langsmith", "api_key": server.api_key, "endpoint": server.url,
               "project": PROJECT, "timeout_s": timeout_s, "redaction": "full"}
    return start(tmp_path, backends=[backend], plugin_manager=plugin_manager(),
                 pipeline=pipeline or {}, service={"name": "svc"})


def outbox_status() -> dict[str, Any]:
    rt = get_runtime()
    assert rt is not None
    status: dict[str, Any] = rt.pipeline.status()["backends"]["langsmith"]
    return status


def wait_until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


@pytest.fixture
def make_backend() -> Iterator[Callable[..., Any]]:
    """Builds backends outside llmvigil's runtime (to drive their hooks directly)."""
    built: list[Any] = []

    def make(server: LangSmithServer, **settings: Any) -> Any:
        built.append(LangSmithBackend({"api_key": server.api_key, "endpoint": server.url,
                                       "project": PROJECT, "timeout_s": 1.0, **settings}))
        return built[-1]

    yield make
    for be in built:
        be.llmvigil_shutdown(timeout_s=0.5)


def span(trace_id: str, parent: Span | None, name: str, start_ms: int, **fields: Any) -> Span:
    base = 1_700_000_000_000_000_000
    return Span(id=new_span_id(), trace_id=trace_id, parent_id=parent.id if parent else None,
                name=name, kind=fields.pop("kind", "chain"), start_ns=base + start_ms * 1_000_000,
                end_ns=base + (start_ms + 50) * 1_000_000, **fields)


@pytest.fixture
def server() -> Iterator[LangSmithServer]:
    with LangSmithServer() as srv:
        yield srv


# -- the main path ------------------------------------------------------------------------


def test_trace_tree_scores_and_session_events_arrive_field_by_field(
    tmp_path: Path, server: LangSmithServer
) -> None:
    # The first timed drain comes after the trace: it travels in one batch, at flush().
    memory = start_with_langsmith(tmp_path, server, pipeline={"flush_interval_s": 2.0})

    @llmvigil.trace(name="answer", kind="chain", user_id="u-1", session_id="conv-1",
                    tags=["prod"], metadata={"team": "search"})
    def answer(question: str) -> str:
        with llmvigil.span("call-model", kind="llm") as s:
            s.set(model="claude-x", provider="anthropic", cost_usd=0.0123)
            s.set_usage(input_tokens=100, output_tokens=20, cache_read_tokens=30,
                        cache_write_tokens=5)
            time.sleep(0.003)
            s.tick()  # first token
            s.set_output({"text": "It is 01/02/2024."})
        with llmvigil.span("lookup", kind="tool") as t:
            t.set_input({"query": question})
            t.set_output(["doc-1"])
        try:
            with llmvigil.span("flaky", kind="retriever"):
                raise ValueError("index down")
        except ValueError:
            pass
        return "answer"

    assert answer("when?") == "answer"
    assert llmvigil.flush(10)
    spans = {s.name: s for s in memory.spans}
    root, llm = spans["answer"], spans["call-model"]
    assert server.wait_for(lambda s: len(s.runs) == 4)
    runs = {r["name"]: r for r in server.runs.values()}
    trace = ls_trace(root.trace_id)

    # ids, links and dotted orders
    for name, sp in spans.items():
        run = runs[name]
        assert run["id"] == ls_run(sp) and run["trace_id"] == trace
        assert run["session_name"] == PROJECT
        assert parse(run["start_time"]) == at(sp.start_ns)
        assert parse(run["end_time"]) == at(sp.end_ns)
        assert run["extra"]["metadata"]["llmvigil_span_id"] == sp.id
        if sp is not root:
            assert run["parent_run_id"] == trace
            assert run["dotted_order"] == runs["answer"]["dotted_order"] + "." + segment(
                sp.start_ns, run["id"])
    assert runs["answer"]["id"] == trace and "parent_run_id" not in runs["answer"]
    assert runs["answer"]["dotted_order"] == segment(root.start_ns, trace)
    ordered = sorted(runs.values(), key=lambda r: r["dotted_order"])
    assert [r["name"] for r in ordered] == ["answer", "call-model", "lookup", "flaky"]

    # run types, inputs, outputs, tags, errors
    assert {n: r["run_type"] for n, r in runs.items()} == {
        "answer": "chain", "call-model": "llm", "lookup": "tool", "flaky": "retriever"}
    assert runs["answer"]["inputs"] == {"question": "when?"}
    assert runs["answer"]["outputs"] == {"output": "answer"}
    assert runs["call-model"]["outputs"] == {"text": "It is 01/02/2024."}
    assert runs["lookup"]["inputs"] == {"query": "when?"}
    assert runs["lookup"]["outputs"] == {"output": ["doc-1"]}
    assert runs["answer"]["tags"] == ["prod"]
    assert runs["flaky"]["error"] == "ValueError: index down"
    assert all("error" not in runs[n] for n in ("answer", "call-model", "lookup"))

    # the LLM run: provider, model, usage with cache tokens and cost, first token
    md = runs["call-model"]["extra"]["metadata"]
    assert md["ls_provider"] == "anthropic" and md["ls_model_name"] == "claude-x"
    assert md["usage_metadata"] == {
        "input_tokens": 135, "output_tokens": 20, "total_tokens": 155,
        "input_token_details": {"cache_read": 30, "cache_creation": 5},
        "total_cost": 0.0123,
    }
    assert llm.ttft_s is not None and llm.ttft_s >= 0.003
    (event,) = runs["call-model"]["events"]
    assert event["name"] == "new_token"
    expected_first = EPOCH + timedelta(microseconds=(llm.start_ns + llm.ttft_s * 1e9) / 1000)
    assert abs(parse(event["time"]) - expected_first) <= timedelta(microseconds=1)
    assert "usage_metadata" not in runs["lookup"]["extra"]["metadata"]

    # conversation and user ids (children inherit them), user metadata kept
    for run in runs.values():
        meta = run["extra"]["metadata"]
        assert (meta["session_id"], meta["thread_id"], meta["user_id"]) == (
            "conv-1", "conv-1", "u-1")
    assert runs["answer"]["extra"]["metadata"]["team"] == "search"

    # scores and a session event, once the runs exist
    thumbs = llmvigil.feedback(root.trace_id, kind="thumbs_down", comment="wrong date",
                               correction="2024-02-01", user_id="u-1")
    judge = llmvigil.feedback(llm.id, kind="rating", value=0.25, name="date_accuracy",
                              category="dates", source="judge")
    event_rec = llmvigil.session_event("conv-1", "task_complete", trace_id=root.trace_id)
    assert thumbs is not None and judge is not None and event_rec is not None
    assert llmvigil.flush(10)
    wanted = {"user_feedback", "date_accuracy", "session_event:task_complete"}
    assert server.wait_for(lambda s: wanted <= {
        f["key"] + (f":{f['value']}" if f["key"] == "session_event" else "")
        for f in s.feedback.values()})
    project_id = server.projects[PROJECT]["id"]
    by_key = {f["key"]: f for f in server.feedback.values()
              if f["key"] != "session_event" or f.get("value") == "task_complete"}
    fb = by_key["user_feedback"]
    assert (fb["run_id"], fb["trace_id"], fb["session_id"]) == (trace, trace, project_id)
    assert fb["score"] == 0.0 and fb["comment"] == "wrong date"
    assert fb["correction"] == {"output": "2024-02-01"}
    assert fb["feedback_source"]["type"] == "api"
    assert fb["feedback_source"]["metadata"]["kind"] == "thumbs_down"
    assert fb["feedback_source"]["metadata"]["user_id"] == "u-1"
    jf = by_key["date_accuracy"]
    assert (jf["run_id"], jf["trace_id"]) == (runs["call-model"]["id"], trace)
    assert jf["score"] == 0.25 and jf["value"] == "dates"
    assert jf["feedback_source"]["type"] == "model"
    sf = by_key["session_event"]
    assert (sf["run_id"], sf["trace_id"], sf["value"]) == (trace, trace, "task_complete")
    assert sf["feedback_source"]["metadata"]["session_id"] == "conv-1"
    assert sf["extend_trace_retention"] is False

    # synchronous client: no /info round trip, no background tracing queue
    assert server.count("GET", "/info") == 0
    assert not [t for t in threading.enumerate() if "tracing_control" in t.name]
    assert server.invalid == []
    assert {r.headers["x-api-key"] for r in server.requests} == {server.api_key}


def test_feedback_sent_before_its_run_exists_is_retried(
    tmp_path: Path, server: LangSmithServer
) -> None:
    start_with_langsmith(tmp_path, server, pipeline={"flush_interval_s": 2.0})

    with llmvigil.span("handler", kind="chain") as handler:
        llmvigil.feedback(handler, "thumbs_up")
        llmvigil.flush(10)  # the score goes out alone: its run does not exist yet
    assert llmvigil.flush(10)
    assert server.wait_for(lambda s: len(s.feedback) == 1, timeout_s=15)
    (fb,) = server.feedback.values()
    (run,) = server.runs.values()
    assert fb["run_id"] == run["id"] == fb["trace_id"] and fb["score"] == 1.0
    statuses = [r.status for r in server.requests if r.path == "/feedback"]
    assert 404 in statuses and statuses[-1] == 200
    assert server.invalid == []


def test_metrics_are_not_held_and_counted(tmp_path: Path, server: LangSmithServer) -> None:
    memory = start_with_langsmith(tmp_path, server)
    emit_metric("cost_usd_per_hour", 1.5, feature="search")
    assert llmvigil.flush(10)
    assert "cost_usd_per_hour" in [m.name for m in memory.metrics]
    assert outbox_status()["cannot_hold"] >= len(memory.metrics)
    assert server.requests == []


# -- ids, lineage and re-delivery ----------------------------------------------------------


def test_redelivery_upserts_the_same_runs_and_feedback(
    server: LangSmithServer, make_backend: Make
) -> None:
    t = new_trace_id()
    root = span(t, None, "root", 0)
    child = span(t, root, "child", 10, kind="llm", usage=Usage(input_tokens=3))
    score = Score(name="user_feedback", trace_id=t, span_id=child.id, value=1.0)
    first = make_backend(server)
    assert first.llmvigil_export_spans([child, root]) is ExportResult.SUCCESS
    assert first.llmvigil_export_scores([score]) is ExportResult.SUCCESS
    before = {k: dict(v) for k, v in server.runs.items()}

    assert first.llmvigil_export_spans([child, root]) is ExportResult.SUCCESS
    # A new process (empty memory) replaying its journal sends the very same runs...
    again = make_backend(server)
    assert again.llmvigil_export_spans([child, root]) is ExportResult.SUCCESS
    assert server.runs == before
    assert sorted(server.run_posts) == sorted([ls_run(child), ls_run(root)] * 3)
    # ...and its feedback is already there (409), which counts as delivered.
    assert again.llmvigil_export_scores([score]) is ExportResult.SUCCESS
    assert len(server.feedback) == 1
    assert [r.status for r in server.requests if r.path == "/feedback"] == [200, 409]
    assert server.invalid == []


def test_children_exported_before_their_parents(
    server: LangSmithServer, make_backend: Make
) -> None:
    t = new_trace_id()
    trace = ls_trace(t)
    root = span(t, None, "root", 0)
    agent = span(t, root, "agent", 10, kind="agent")
    tool = span(t, agent, "tool", 20, kind="tool")
    be = make_backend(server)
    # Spans end child first: each batch misses the parent of what it carries.
    for batch in ([tool], [agent], [root]):
        assert be.llmvigil_export_spans(batch) is ExportResult.SUCCESS
    runs = {r["name"]: r for r in server.runs.values()}
    # The root is exact; unknown parents fall back to the root run, whose id every
    # span can name, and the real parent span id stays in the metadata.
    assert runs["root"]["dotted_order"] == segment(root.start_ns, trace)
    for sp in (agent, tool):
        run = runs[sp.name]
        assert run["parent_run_id"] == trace
        assert run["dotted_order"] == segment(sp.start_ns, trace) + "." + segment(
            sp.start_ns, ls_run(sp))
        assert run["extra"]["metadata"]["llmvigil_parent_span_id"] == sp.parent_id
    assert runs["agent"]["run_type"] == "chain"
    assert runs["agent"]["extra"]["metadata"]["llmvigil_kind"] == "agent"

    # A parent exported first (a child that outlives it) gives the child its exact order,
    # even in a later batch, and so does an ancestor chain within one batch.
    late = span(t, agent, "late", 30)
    deep = span(t, late, "deep", 40)
    assert be.llmvigil_export_spans([deep]) is ExportResult.SUCCESS  # before "late": fallback
    t2 = new_trace_id()
    r2 = span(t2, None, "r2", 0)
    c2 = span(t2, r2, "c2", 5)
    g2 = span(t2, c2, "g2", 6)
    assert be.llmvigil_export_spans([r2]) is ExportResult.SUCCESS
    assert be.llmvigil_export_spans([g2, c2]) is ExportResult.SUCCESS
    runs = {r["name"]: r for r in server.runs.values()}
    assert runs["c2"]["dotted_order"] == runs["r2"]["dotted_order"] + "." + segment(
        c2.start_ns, ls_run(c2))
    assert runs["g2"]["dotted_order"] == runs["c2"]["dotted_order"] + "." + segment(
        g2.start_ns, ls_run(g2))
    assert runs["g2"]["parent_run_id"] == ls_run(c2)
    assert runs["deep"]["parent_run_id"] == trace
    assert server.invalid == []


def test_lineage_is_bounded_and_cycles_do_not_loop(
    server: LangSmithServer, make_backend: Make
) -> None:
    be = make_backend(server, lineage_size=3)
    t = new_trace_id()
    a = span(t, None, "a", 0)
    b = span(t, a, "b", 1)
    a.parent_id = b.id  # a corrupt import: a <-> b
    b2 = span(t, a, "b2", 2)
    assert be.llmvigil_export_spans([a, b, b2]) is ExportResult.SUCCESS
    for i in range(5):
        root = span(new_trace_id(), None, f"r{i}", i)
        assert be.llmvigil_export_spans([root]) is ExportResult.SUCCESS
    assert len(be.lineage._orders) == 3
    assert server.invalid == []


def test_non_hex_ids_map_to_stable_uuids() -> None:
    a = langsmith_adapter.run_uuid("imported-trace", "step-1")
    assert a == langsmith_adapter.run_uuid("imported-trace", "step-1")
    assert a != langsmith_adapter.run_uuid("imported-trace", "step-2")
    assert langsmith_adapter.run_uuid("imported-trace", "x", root=True) == (
        langsmith_adapter.trace_uuid("imported-trace"))


def test_feedback_for_a_run_that_never_arrives_lands_on_the_project(
    server: LangSmithServer, make_backend: Make
) -> None:
    be = make_backend(server, orphan_feedback_after_s=0)
    t = new_trace_id()
    assert be.llmvigil_export_spans([span(new_trace_id(), None, "other", 0)]) is (
        ExportResult.SUCCESS)  # the project exists
    lost = Score(name="user_feedback", trace_id=t, value=0.0, time_ns=1)
    assert be.llmvigil_export_scores([lost]) is ExportResult.SUCCESS
    canary = Score(name="canary_dates", kind="canary", source="canary", value=1.0)
    event = SessionEvent(session_id="conv-9", event="abandon")
    assert be.llmvigil_export_scores([canary]) is ExportResult.SUCCESS
    assert be.llmvigil_export_session_events([event]) is ExportResult.SUCCESS
    project_id = server.projects[PROJECT]["id"]
    by_key = {f["key"]: f for f in server.feedback.values()}
    for key in ("user_feedback", "canary_dates", "session_event"):
        assert by_key[key]["session_id"] == project_id
        assert by_key[key].get("run_id") is None
    assert by_key["user_feedback"]["feedback_source"]["metadata"]["llmvigil_trace_id"] == t
    assert server.invalid == []


# -- the stand-in API rejects what LangSmith rejects ---------------------------------------


def test_server_rejects_malformed_runs(server: LangSmithServer) -> None:
    import langsmith
    from langsmith import schemas as ls_schemas

    errors: list[Exception] = []
    client = langsmith.Client(
        api_url=server.url, api_key=server.api_key, auto_batch_tracing=False,
        info=ls_schemas.LangSmithInfo(batch_ingest_config={"use_multipart_endpoint": True}),
        tracing_error_callback=errors.append, omit_traced_runtime_info=True,
    )
    root_id, child_id = uuid.uuid4(), uuid.uuid4()
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    stamp = when.strftime("%Y%m%dT%H%M%S%fZ")
    good = {"id": root_id, "trace_id": root_id, "dotted_order": f"{stamp}{root_id}",
            "name": "r", "run_type": "chain", "start_time": when, "session_name": PROJECT}
    bad_runs = {
        "single part for root": {**good,
                                 "dotted_order": f"{stamp}{root_id}.{stamp}{child_id}"},
        "trace_id must equal": {**good, "id": child_id, "dotted_order": f"{stamp}{child_id}"},
        "parent_run_id": {**good, "id": child_id, "parent_run_id": uuid.uuid4(),
                          "dotted_order": f"{stamp}{root_id}.{stamp}{child_id}"},
        "at least two parts": {**good, "id": child_id, "parent_run_id": root_id,
                               "dotted_order": f"{stamp}{child_id}"},
        "first part": {**good, "id": child_id, "parent_run_id": root_id,
                       "trace_id": uuid.uuid4(),
                       "dotted_order": f"{stamp}{root_id}.{stamp}{child_id}"},
        "run_type": {**good, "run_type": "agent"},
        "unknown fields": {**good, "usage_metadata": {"input_tokens": 1}},
        "usage metadata": {**good, "extra": {"metadata": {"usage_metadata": {"tokens": 1}}}},
        "start_time": {**good, "start_time": when + timedelta(microseconds=1)},
    }
    for expected, run in bad_runs.items():
        errors.clear()
        client.multipart_ingest(create=[run])
        assert len(errors) == 1, expected
        assert expected in server.invalid[-1], (expected, server.invalid[-1])
    assert server.runs == {}
    client.multipart_ingest(create=[good])
    assert list(server.runs) == [str(root_id)]
    client.close(timeout=0)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_server_decodes_compressed_multipart(server: LangSmithServer, encoding: str) -> None:
    import gzip

    import requests
    import zstandard
    from requests_toolbelt import MultipartEncoder

    run_id = uuid.uuid4()
    run = {"id": str(run_id), "trace_id": str(run_id), "name": "r", "run_type": "tool",
           "dotted_order": f"20240501T120000000000Z{run_id}",
           "start_time": "2024-05-01T12:00:00+00:00", "session_name": PROJECT}
    body = json.dumps(run).encode()
    encoder = MultipartEncoder({f"post.{run_id}": (
        None, body, "application/json", {"Content-Length": str(len(body))})})
    raw = encoder.to_string()
    packed = gzip.compress(raw) if encoding == "gzip" else zstandard.compress(raw)
    response = requests.post(f"{server.url}/runs/multipart", data=packed, timeout=5, headers={
        "x-api-key": server.api_key, "Content-Type": encoder.content_type,
        "Content-Encoding": encoding})
    assert response.status_code == 202, response.text
    assert server.runs[str(run_id)]["run_type"] == "tool"


# -- failures ------------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "expected"), [
    (500, ExportResult.RETRY), (503, ExportResult.RETRY), (429, ExportResult.RETRY),
    (408, ExportResult.RETRY), (400, ExportResult.FAILURE), (401, ExportResult.RETRY),
    (403, ExportResult.RETRY), (422, ExportResult.FAILURE), (409, ExportResult.SUCCESS),
])
def test_http_statuses_map_to_export_results(
    server: LangSmithServer, status: int, expected: ExportResult,
    caplog: pytest.LogCaptureFixture, make_backend: Make,
) -> None:
    be = make_backend(server)
    server.fail(status, retry_after=30 if status == 429 else None)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        assert be.llmvigil_export_spans([span(new_trace_id(), None, "r", 0)]) is expected
    assert time.monotonic() - t0 < 1.0  # no SDK sleeps, no Retry-After wait
    assert server.api_key not in caplog.text and server.api_key[-6:] not in caplog.text


def test_a_hanging_endpoint_is_cut_at_the_timeout(
    server: LangSmithServer, make_backend: Make
) -> None:
    be = make_backend(server, timeout_s=0.5)
    server.hang()
    t0 = time.monotonic()
    assert be.llmvigil_export_spans([span(new_trace_id(), None, "r", 0)]) is (
        ExportResult.RETRY)
    assert time.monotonic() - t0 < 1.5
    server.recover()


OUTAGES: dict[str, Callable[[LangSmithServer], None]] = {
    "refused": LangSmithServer.refuse,
    "http-500": lambda s: s.fail(500),
    "http-429": lambda s: s.fail(429, retry_after=60),
    "hang": LangSmithServer.hang,
}


@pytest.mark.parametrize("outage", list(OUTAGES))
def test_outage_is_journaled_then_redelivered(
    tmp_path: Path, server: LangSmithServer, outage: str
) -> None:
    memory = start_with_langsmith(tmp_path, server, timeout_s=0.5, pipeline={
        "max_retries": 1, "breaker_failures": 1, "breaker_reset_s": 0.3})

    @llmvigil.trace(name="request", kind="chain")
    def request(i: int) -> int:
        with llmvigil.span("model", kind="llm") as s:
            s.set_usage(input_tokens=i, output_tokens=1)
        return i

    OUTAGES[outage](server)
    durations = []
    for i in range(10):
        t0 = time.perf_counter()
        assert request(i) == i
        durations.append(time.perf_counter() - t0)
        time.sleep(0.02)
    assert max(durations) < 0.05
    assert wait_until(lambda: len(memory.spans) == 20)  # the other backend is unaffected
    assert wait_until(lambda: outbox_status()["journaled"] > 0)
    assert server.runs == {}

    server.recover()
    request(10)
    assert wait_until(lambda: len(memory.spans) == 22)
    expected = {ls_run(s) for s in memory.spans}
    assert server.wait_for(lambda s: set(s.runs) == expected, timeout_s=20), (
        outbox_status(), len(server.runs))
    assert outbox_status()["replayed"] > 0
    assert server.invalid == []


def test_a_refused_key_loses_nothing_once_it_is_accepted(
    tmp_path: Path, server: LangSmithServer, caplog: pytest.LogCaptureFixture
) -> None:
    """401 while the key is refused (revoked, rotated, not yet active): runs, feedback
    and session events are journaled, one warning names the setting, and everything
    arrives once the key is accepted."""
    memory = start_with_langsmith(tmp_path, server, timeout_s=0.5, pipeline={
        "max_retries": 1, "breaker_failures": 1, "breaker_reset_s": 0.3})
    good_key = server.api_key
    server.api_key = "lsv2_pt_the_rotated_key_0123456789"  # ours is refused: 401

    @llmvigil.trace(name="request", kind="chain", session_id="conv-9")
    def request(i: int) -> int:
        with llmvigil.span("model", kind="llm") as s:
            s.set_usage(input_tokens=i, output_tokens=1)
        return i

    with caplog.at_level(logging.WARNING, logger="llmvigil"):
        for i in range(10):
            assert request(i) == i
            time.sleep(0.02)
        assert wait_until(lambda: len(memory.spans) == 20)
        root = next(s for s in memory.spans if s.parent_id is None)
        llmvigil.feedback(root.trace_id, kind="thumbs_down", comment="late")
        llmvigil.session_event("conv-9", "task_complete", trace_id=root.trace_id)
        assert llmvigil.flush(10)
        assert wait_until(lambda: outbox_status()["journaled"] >= 22)
        assert outbox_status()["dropped"] == 0
        assert server.runs == {} and server.feedback == {}
        assert any(r.status == 401 for r in server.requests)

        server.api_key = good_key
        request(10)
        assert wait_until(lambda: len(memory.spans) == 22)
        expected = {ls_run(s) for s in memory.spans}
        assert server.wait_for(lambda s: set(s.runs) == expected and len(s.feedback) == 2,
                               timeout_s=20), (outbox_status(), len(server.runs))
    warnings = [r.getMessage() for r in caplog.records
                if "refused the API key" in r.getMessage()]
    assert len(warnings) == 1 and "LANGSMITH_API_KEY" in warnings[0], warnings
    assert good_key not in caplog.text
    assert wait_until(lambda: outbox_status()["replayed"] >= 22), outbox_status()
    assert outbox_status()["dropped"] == 0
    assert {f["key"] for f in server.feedback.values()} == {"user_feedback", "session_event"}
    assert server.invalid == []


# -- configuration, check, missing SDK ---------------------------------------------------


def test_settings_fall_back_to_the_vendor_env_vars(
    server: LangSmithServer, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest
) -> None:
    monkeypatch.delenv("LANGSMITH_API_KEY", raising=False)
    monkeypatch.setenv("LANGCHAIN_API_KEY", server.api_key)
    monkeypatch.setenv("LANGSMITH_ENDPOINT", server.url)
    monkeypatch.delenv("LANGSMITH_PROJECT", raising=False)
    monkeypatch.delenv("LANGCHAIN_PROJECT", raising=False)
    be = LangSmithBackend({"service": "checkout", "timeout_s": 1.0})
    request.addfinalizer(lambda: be.llmvigil_shutdown(timeout_s=0.5))
    assert (be.endpoint, be.project) == (server.url, "checkout")
    assert server.api_key not in repr(be)
    assert be.llmvigil_export_spans([span(new_trace_id(), None, "r", 0)]) is (
        ExportResult.SUCCESS)
    assert set(server.projects) == {"checkout"}

    monkeypatch.setenv("LANGSMITH_API_KEY", "lsv2_wrong")
    monkeypatch.setenv("LANGSMITH_PROJECT", "from-env")
    be2 = LangSmithBackend({"service": "checkout", "timeout_s": 1.0})
    request.addfinalizer(lambda: be2.llmvigil_shutdown(timeout_s=0.5))
    assert be2.project == "from-env"
    assert be2.llmvigil_export_spans([span(new_trace_id(), None, "r", 0)]) is (
        ExportResult.RETRY)  # LANGSMITH_API_KEY wins over LANGCHAIN_API_KEY: 401

    for name in ("LANGSMITH_API_KEY", "LANGCHAIN_API_KEY", "LANGSMITH_ENDPOINT"):
        monkeypatch.delenv(name)
    monkeypatch.delenv("LANGCHAIN_ENDPOINT", raising=False)
    with pytest.raises(ConfigError, match="LANGSMITH_API_KEY"):
        LangSmithBackend({"service": "checkout"})


def test_check_reads_without_sending(
    server: LangSmithServer, make_backend: Make
) -> None:
    be = make_backend(server)
    assert "will be created" in be.llmvigil_check(1.0)
    be.llmvigil_export_spans([span(new_trace_id(), None, "r", 0)])
    project_id = server.projects[PROJECT]["id"]
    assert project_id in be.llmvigil_check(1.0)
    bad = make_backend(server, api_key="lsv2_not_the_key")
    with pytest.raises(RuntimeError, match="rejected the API key") as err:
        bad.llmvigil_check(1.0)
    assert "lsv2_not_the_key" not in str(err.value)
    checks = [r for r in server.requests if r.path == "/sessions"]
    assert checks and all(r.method == "GET" for r in checks)
    server.refuse()
    with pytest.raises(RuntimeError, match="not reachable"):
        be.llmvigil_check(1.0)
    server.recover()
    server.hang()
    t0 = time.monotonic()
    with pytest.raises(RuntimeError, match="not reachable"):
        be.llmvigil_check(0.3)
    assert time.monotonic() - t0 < 1.0


def test_adapter_is_discovered_with_its_capabilities() -> None:
    from llmvigil.plugins.manager import get_adapter

    info = get_adapter(plugin_manager(), "langsmith")
    assert info.extra == "langsmith"
    caps = info.capabilities
    assert {k for k in ("spans", "scores", "session_events") if caps.can_hold(k)} == {
        "spans", "scores", "session_events"}
    assert not caps.can_hold("metrics") and not caps.can_hold("alerts")
    assert any(n.startswith("metrics:") for n in caps.notes)
    assert any(n.startswith("alerts:") for n in caps.notes)


def test_missing_sdk_names_the_extra(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import importlib, sys
        sys.modules["langsmith"] = None  # as if the extra were not installed
        import llmvigil
        from llmvigil.plugins.manager import new_plugin_manager
        module = importlib.import_module({MODULE!r})  # imports without the SDK
        pm = new_plugin_manager(load_entrypoints=False)
        if not pm.has_plugin({MODULE!r}):
            pm.register(module, name={MODULE!r})
        try:
            llmvigil.init(backends=[{{"name": "langsmith", "api_key": "k"}}],
                          plugin_manager=pm, pipeline={{"journal_dir": {str(tmp_path)!r}}})
        except llmvigil.MissingExtraError as exc:
            print(type(exc).__name__, exc)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "MissingExtraError" in out.stdout
    assert "pip install 'llmvigil[langsmith]'" in out.stdout
