"""The phoenix backend against a real Phoenix server, read back with the Phoenix client.

The server runs from ``.venv-phoenix`` (``scripts/phoenix-venv.sh``); without it these
tests skip. Each test writes to its own Phoenix project.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("phoenix.otel", reason="needs llmvigil[phoenix]")
pytest.importorskip("phoenix.client", reason="needs llmvigil[phoenix]")

import httpx
import llmvigil
from llmvigil.core.errors import MissingExtraError
from llmvigil.core.model import Score
from llmvigil.core.runtime import get_runtime
from llmvigil.plugins.manager import new_plugin_manager
from llmvigil.plugins.types import ExportResult
from phoenix.client import Client
from phoenix_server import PhoenixServer, phoenix_server  # noqa: F401  (fixture)
from vigil_testing import start

MODULE = "llmvigil.adapters.phoenix"
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def plugin_manager() -> Any:
    pm = new_plugin_manager()
    if not pm.has_plugin(MODULE):
        pm.register(importlib.import_module(MODULE), name=MODULE)
    return pm


def wait_for(probe: Callable[[], Any], timeout: float = 30.0) -> Any:
    """Poll ``probe`` until it returns something truthy; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.2)


def same_time(iso: str, ns: int) -> bool:
    """Whether one of Phoenix's ISO timestamps is ``ns`` at its precision (1 us, rounded)."""
    us = (datetime.fromisoformat(iso) - _EPOCH) // timedelta(microseconds=1)
    return abs(us * 1000 - ns) <= 1000


def start_phoenix_backend(tmp_path: Path, url: str, project: str, **settings: Any) -> Any:
    pipeline = settings.pop("pipeline", {})
    return start(
        tmp_path,
        backends=[{"name": "phoenix", "endpoint": url, "project": project,
                   "redaction": "full", **settings}],
        plugin_manager=plugin_manager(), service={"name": "svc-phoenix"}, pipeline=pipeline,
    )


def spans_of(client: Client, project: str) -> list[Any]:
    """The project's spans; none while Phoenix has not created the project yet."""
    try:
        return client.spans.get_spans(project_identifier=project, limit=100)
    except httpx.HTTPStatusError as exc:
        if exc.response.status_code == 404:
            return []
        raise


def rest_annotations(url: str, project: str, kind: str, ids: list[str]) -> list[Any]:
    """Annotations read with Phoenix's documented REST API (no client getter for these)."""
    response = httpx.get(f"{url}/v1/projects/{project}/{kind}_annotations",
                         params={f"{kind}_ids": ids}, timeout=10)
    response.raise_for_status()
    return list(response.json()["data"])


def test_trace_tree_scores_and_sessions_read_back(tmp_path: Path,
                                                  phoenix_server: PhoenixServer) -> None:  # noqa: F811
    url, project = phoenix_server.url, f"llmvigil-{uuid.uuid4().hex[:8]}"
    memory = start_phoenix_backend(tmp_path, url, project)

    with llmvigil.span("support-agent", kind="agent", session_id="sess-A", user_id="u-7",
                       tags=["beta", "eu"], metadata={"plan": "pro"}) as agent:
        with llmvigil.span("retrieve", kind="retriever") as r:
            r.set_output(["doc-1", "doc-2"])
        with llmvigil.span("claude", kind="llm", model="claude-sonnet-4-5",
                           provider="anthropic") as llm:
            llm.set_input({"system": "Answer briefly",
                           "messages": [{"role": "user", "content": "Date of 03/04/2025?"}]})
            time.sleep(0.003)
            llm.tick()
            llm.tick()
            llm.set_usage(input_tokens=120, output_tokens=30, cache_read_tokens=800,
                          cache_write_tokens=50)
            llm.set(stop_reason="end_turn")
            llm.set_output("3 April 2025")
        with pytest.raises(ValueError), llmvigil.span("lookup", kind="tool"):
            raise ValueError("no such order")
    with llmvigil.span("follow-up", kind="llm", model="claude-haiku-4-5",
                       provider="anthropic", session_id="sess-A") as second:
        second.set_usage(input_tokens=10, output_tokens=5)

    span_score = llmvigil.feedback(llm, "thumbs_up", comment="right format")
    trace_score = llmvigil.feedback(agent.trace_id, "rating", value=4.0, name="trace_quality")
    session_score = llmvigil.feedback(None, "rating", value=0.5, session_id="sess-A",
                                      name="session_quality", source="judge")
    llmvigil.session_event("sess-A", "task_complete", user_id="u-7")
    assert span_score and trace_score and session_score
    assert trace_score.span_id is None and session_score.trace_id is None
    assert llmvigil.flush(15)

    client = Client(base_url=url)
    records = {s.id: s for s in memory.spans}
    assert len(records) == 5

    def all_spans() -> list[Any]:
        spans = spans_of(client, project)
        return spans if len(spans) == len(records) else []

    got = {s["context"]["span_id"]: s for s in wait_for(all_spans)}
    assert set(got) == set(records)
    for rid, rec in records.items():
        ps = got[rid]
        assert ps["context"]["trace_id"] == rec.trace_id
        assert ps["parent_id"] == rec.parent_id
        assert same_time(ps["start_time"], rec.start_ns)
        assert same_time(ps["end_time"], rec.end_ns)
        assert ps["name"] == rec.name

    kinds = {got[r.id]["name"]: got[r.id]["span_kind"] for r in records.values()}
    assert kinds == {"support-agent": "AGENT", "retrieve": "RETRIEVER", "claude": "LLM",
                     "lookup": "TOOL", "follow-up": "LLM"}

    rec = records[llm.span_id]
    a = got[llm.span_id]["attributes"]
    assert a["llm.model_name"] == "claude-sonnet-4-5"
    assert a["llm.provider"] == "anthropic"
    assert a["llm.token_count.prompt"] == 120 + 800 + 50
    assert a["llm.token_count.completion"] == 30
    assert a["llm.token_count.total"] == 1000
    assert a["llm.token_count.prompt_details.cache_read"] == 800
    assert a["llm.token_count.prompt_details.cache_write"] == 50
    assert a["session.id"] == "sess-A" and a["user.id"] == "u-7"
    assert a["output.value"] == "3 April 2025"
    assert a["output.mime_type"] == "text/plain"
    assert json.loads(a["input.value"])["messages"][0]["content"] == "Date of 03/04/2025?"
    assert a["llm.input_messages.0.message.role"] == "system"
    assert a["llm.input_messages.1.message.content"] == "Date of 03/04/2025?"
    assert a["llm.output_messages.0.message.content"] == "3 April 2025"
    assert got[llm.span_id]["status_code"] == "OK"
    (first,) = [e for e in got[llm.span_id]["events"]
                if e["name"] == "First Token Stream Event"]
    assert rec.ttft_s is not None and rec.ttft_s >= 0.003
    assert same_time(first["timestamp"], rec.start_ns + int(rec.ttft_s * 1e9))

    root = got[agent.span_id]["attributes"]
    assert root["tag.tags"] == ["beta", "eu"]
    assert root["metadata.plan"] == "pro"  # Phoenix parses the metadata JSON
    tool = next(s for s in got.values() if s["name"] == "lookup")
    assert tool["status_code"] == "ERROR" and "no such order" in tool["status_message"]
    assert any(e["name"] == "exception" for e in tool["events"])
    assert got[second.span_id]["attributes"]["session.id"] == "sess-A"

    def span_annotations() -> list[Any]:
        return client.spans.get_span_annotations(span_ids=[llm.span_id],
                                                 project_identifier=project)

    (sa,) = wait_for(span_annotations)
    assert sa["name"] == "user_feedback" and sa["annotator_kind"] == "HUMAN"
    assert sa["result"]["label"] == "thumbs_up" and sa["result"]["score"] == 1.0
    assert sa["result"]["explanation"] == "right format"
    assert sa["identifier"] == span_score.id

    (ta,) = wait_for(lambda: rest_annotations(url, project, "trace", [agent.trace_id]))
    assert ta["name"] == "trace_quality" and ta["result"]["score"] == 4.0

    def session_annotations() -> list[Any]:
        found = rest_annotations(url, project, "session", ["sess-A"])
        return found if len(found) == 2 else []

    session_anns = wait_for(session_annotations)
    by_name = {x["name"]: x for x in session_anns}
    assert by_name["session.task_complete"]["result"]["label"] == "task_complete"
    assert by_name["session_quality"]["result"]["score"] == 0.5
    assert by_name["session_quality"]["annotator_kind"] == "LLM"

    # Re-delivery (a journal replay after a crash) upserts: nothing is duplicated.
    rt = get_runtime()
    assert rt is not None
    hooks = rt.backends["phoenix"]
    assert hooks.llmvigil_export_spans(spans=list(memory.spans)) is ExportResult.SUCCESS
    assert hooks.llmvigil_export_scores(scores=list(memory.scores)) is ExportResult.SUCCESS
    time.sleep(1.0)
    assert len(spans_of(client, project)) == 5
    assert len(span_annotations()) == 1
    assert len(rest_annotations(url, project, "session", ["sess-A"])) == 2


def test_annotation_of_unknown_span_waits_then_gives_up(
        tmp_path: Path, phoenix_server: PhoenixServer) -> None:  # noqa: F811
    from llmvigil.adapters.phoenix import PhoenixBackend

    url, project = phoenix_server.url, f"llmvigil-{uuid.uuid4().hex[:8]}"
    memory = start_phoenix_backend(tmp_path, url, project)
    with llmvigil.span("known", kind="llm") as known:
        pass
    assert llmvigil.flush(10)
    client = Client(base_url=url)
    wait_for(lambda: spans_of(client, project))

    backend = PhoenixBackend({"endpoint": url, "project": project, "timeout_s": 5,
                              "annotation_wait_s": 0.5})
    try:
        good = Score(name="judge", kind="judge", value=0.9, trace_id=known.trace_id,
                     span_id=known.span_id, source="judge")
        orphan = Score(name="judge", kind="judge", value=0.1, trace_id=known.trace_id,
                       span_id="0123456789abcdef", source="judge")
        assert backend.llmvigil_export_scores([good, orphan]) is ExportResult.RETRY
        # The known span got its annotation although the batch waits for the other one.
        (ann,) = client.spans.get_span_annotations(span_ids=[known.span_id],
                                                   project_identifier=project)
        assert ann["annotator_kind"] == "LLM" and ann["result"]["score"] == 0.9
        time.sleep(0.6)
        assert backend.llmvigil_export_scores([orphan]) is ExportResult.FAILURE
    finally:
        backend.llmvigil_shutdown(1)
    assert memory.spans[0].id == known.span_id


def test_phoenix_down_journals_then_redelivers(tmp_path: Path,
                                               phoenix_server: PhoenixServer) -> None:  # noqa: F811
    import socket

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    project = f"llmvigil-{uuid.uuid4().hex[:8]}"
    pipeline = {"max_retries": 1, "breaker_failures": 1, "breaker_reset_s": 0.3}
    memory = start_phoenix_backend(tmp_path, dead, project, timeout_s=0.5, pipeline=pipeline)
    slowest = 0.0
    for i in range(10):
        t0 = time.perf_counter()
        with llmvigil.span(f"call-{i}", kind="llm", model="m") as sp:
            sp.set_usage(input_tokens=i, output_tokens=1)
        slowest = max(slowest, time.perf_counter() - t0)
    assert slowest < 0.05
    assert llmvigil.flush(15)
    ids = {s.id for s in memory.spans}
    assert len(ids) == 10
    rt = get_runtime()
    assert rt is not None
    box = next(b for b in rt.pipeline.outboxes if b.name == "phoenix")
    wait_for(lambda: box.counters.journaled >= 10, timeout=15)
    assert box.counters.delivered == 0
    llmvigil.shutdown(5)

    # The same journal, the backend now reachable: the journaled spans are replayed.
    start_phoenix_backend(tmp_path, phoenix_server.url, project, pipeline=pipeline)
    client = Client(base_url=phoenix_server.url)
    wait_for(lambda: {s["context"]["span_id"] for s in spans_of(client, project)} == ids)
    spans = spans_of(client, project)
    tokens = sorted(s["attributes"]["llm.token_count.prompt"] for s in spans)
    assert tokens == list(range(10))


def test_env_fallbacks_check_and_no_secret_in_repr(
        phoenix_server: PhoenixServer, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from llmvigil.adapters.phoenix import PhoenixBackend

    monkeypatch.setenv("PHOENIX_COLLECTOR_ENDPOINT", phoenix_server.url + "/")
    monkeypatch.setenv("PHOENIX_API_KEY", "px-secret-123")
    monkeypatch.setenv("PHOENIX_PROJECT_NAME", "from-env")
    monkeypatch.delenv("PHOENIX_PROJECT", raising=False)
    backend = PhoenixBackend({"timeout_s": 5})
    try:
        assert backend.endpoint == phoenix_server.url
        assert backend.project == "from-env"
        assert "px-secret-123" not in repr(backend)
        assert "from-env" in backend.llmvigil_check(5)
    finally:
        backend.llmvigil_shutdown(1)


def test_missing_sdk_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "phoenix.otel", None)
    with pytest.raises(MissingExtraError, match=r"llmvigil\[phoenix\]"):
        start_phoenix_backend(tmp_path, "http://127.0.0.1:9", "p")
