"""All five vendor backends at once, beside ``local``: every vendor gets the same traces.

One ``llmvigil.init`` publishes to LangSmith, Langfuse and Helicone (the local servers
in ``tests/``, which decode the real wire formats), a real Phoenix server and W&B in
offline mode (every wandb directory in the test's temp dir). A small app runs: a chain
root whose LLM child streams its reply, then feedback and a session event. Each vendor
is read back in its own model, the way its adapter test reads it, and must hold the
same ids and parent links, tokens, cost, time to first token, user and session ids and
feedback score as the in-memory reference backend.

Then Helicone accepts connections and never answers: the next trace still reaches the
other four on time and the app is not slowed; once Helicone answers again, what was
journaled for it arrives, nothing lost. Without Phoenix's server (``.venv-phoenix``)
the Phoenix part is left out, with a warning, the way the Phoenix tests skip.
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llmvigil
import pytest
from fault.fault_servers import wait_until
from helicone_server import API_KEY as HELICONE_KEY
from helicone_server import HeliconeServer
from langfuse_server import LangfuseServer
from langsmith_server import LangSmithServer
from llmvigil.adapters.helicone import request_id
from llmvigil.adapters.local import LocalStore
from llmvigil.adapters.memory import MemoryBackend
from llmvigil.core.model import Score, SessionEvent, Span
from llmvigil.core.runtime import get_runtime
from phoenix_server import PhoenixServer, phoenix_server  # noqa: F401  (fixture)
from test_adapter_langfuse import A_OBS, iso, utc
from test_adapter_langsmith import at, ls_run, ls_trace, parse
from test_adapter_wandb import records, run_dir, table, wandb_env  # noqa: F401  (fixture)
from vigil_testing import start

USER, SESSION, FEATURE = "u-42", "sess-42", "chat"
MODEL, PROVIDER, COST = "claude-x", "anthropic", 0.0123
INPUT, OUTPUT, CACHE_READ = 120, 30, 800
FIRST_TOKEN_S = 0.004  # the model "thinks" this long before its first token
APP_OVERHEAD_S = 0.05  # what llmvigil may add to a call, outage or not
ON_TIME_S = 15.0  # the healthy vendors get a trace within this, Helicone down or not
LANGSMITH_PROJECT = "vigil-all"


# -- the instrumented app ------------------------------------------------------------------


@llmvigil.trace(name="answer", kind="chain", user_id=USER, session_id=SESSION,
                feature=FEATURE)
def answer(question: str) -> str:
    """The app's entry point: a chain around one streamed model call."""
    return "".join(stream_reply(question))


@llmvigil.trace(name="claude", kind="llm")
def stream_reply(question: str) -> Iterator[str]:
    """The model call, streamed: llmvigil times the first item as the first token."""
    llm = llmvigil.current_span()
    assert llm is not None
    llm.set(model=MODEL, provider=PROVIDER, cost_usd=COST)
    llm.set_usage(input_tokens=INPUT, output_tokens=OUTPUT, cache_read_tokens=CACHE_READ)
    time.sleep(FIRST_TOKEN_S)
    yield "3 April "
    yield "2025"


def timed_answer(question: str) -> float:
    """Seconds one call of the app took, beyond its own model wait."""
    t0 = time.perf_counter()
    assert answer(question) == "3 April 2025"
    return time.perf_counter() - t0 - FIRST_TOKEN_S


# -- the reference: what llmvigil recorded -------------------------------------------------


@dataclass
class Ref:
    """One trace as the memory backend got it, and the records given on it."""

    root: Span
    llm: Span
    feedback: Score
    event: SessionEvent | None = None

    @property
    def ttft_s(self) -> float:
        assert self.llm.ttft_s is not None
        return self.llm.ttft_s

    @property
    def ttft_ns(self) -> int:
        return round(self.ttft_s * 1e9)


def soon(predicate: Callable[[], Any], what: str) -> None:
    """Wait until ``predicate`` holds, at most :data:`ON_TIME_S`."""
    wait_until(predicate, ON_TIME_S, what)


def traces(memory: MemoryBackend, count: int) -> list[tuple[Span, Span]]:
    """The (root, LLM span) of each trace, oldest first, once ``count`` arrived."""
    wait_until(lambda: len(memory.spans) == 2 * count, 10, f"{count} traces in memory")
    roots = sorted((s for s in memory.spans if s.name == "answer"), key=lambda s: s.start_ns)
    pairs = []
    for root in roots:
        (llm,) = [s for s in memory.spans if s.parent_id == root.id]
        assert llm.kind == "llm" and llm.trace_id == root.trace_id
        assert llm.ttft_s is not None and llm.ttft_s >= FIRST_TOKEN_S
        pairs.append((root, llm))
    return pairs


def outbox(name: str) -> dict[str, Any]:
    """The delivery counters of backend ``name``."""
    rt = get_runtime()
    assert rt is not None
    counts: dict[str, Any] = rt.pipeline.status()["backends"][name]
    return counts


# -- vendors: started, configured, read back ------------------------------------------------


@dataclass
class Vendors:
    """The running vendor servers (Phoenix is ``None`` when not installed)."""

    langsmith: LangSmithServer
    langfuse: LangfuseServer
    helicone: HeliconeServer
    phoenix: PhoenixServer | None
    phoenix_project: str
    wandb_env: Path

    def backends(self) -> list[Any]:
        """The ``backends:`` section a user would write for these five (plus local)."""
        entries: list[Any] = [
            "local",
            {"name": "langsmith", "api_key": self.langsmith.api_key,
             "endpoint": self.langsmith.url, "project": LANGSMITH_PROJECT},
            {"name": "langfuse", "public_key": self.langfuse.public_key,
             "secret_key": self.langfuse.secret_key, "host": self.langfuse.url},
            {"name": "helicone", "api_key": HELICONE_KEY, "base_url": self.helicone.url,
             "api_url": self.helicone.url, "timeout_s": 0.5},
            {"name": "wandb", "project": "vigil-all", "mode": "offline"},
        ]
        if self.phoenix is not None:
            entries.append({"name": "phoenix", "endpoint": self.phoenix.url,
                            "project": self.phoenix_project})
        return entries


@pytest.fixture
def phoenix_or_none(request: pytest.FixtureRequest) -> PhoenixServer | None:
    """The shared Phoenix server, or ``None`` where the Phoenix tests would skip."""
    try:
        pytest.importorskip("phoenix.otel", reason="needs llmvigil[phoenix]")
        pytest.importorskip("phoenix.client", reason="needs llmvigil[phoenix]")
        server: PhoenixServer = request.getfixturevalue("phoenix_server")
    except pytest.skip.Exception as skipped:
        warnings.warn(f"Phoenix part left out: {skipped.msg}", stacklevel=1)
        return None
    return server


@pytest.fixture
def vendors(wandb_env: Path, phoenix_or_none: PhoenixServer | None  # noqa: F811
            ) -> Iterator[Vendors]:
    """Local LangSmith, Langfuse and Helicone servers, Phoenix if installed, W&B offline."""
    langfuse, helicone = LangfuseServer(), HeliconeServer().start()
    with LangSmithServer() as langsmith:
        yield Vendors(langsmith, langfuse, helicone, phoenix_or_none,
                      f"vigil-all-{uuid.uuid4().hex[:8]}", wandb_env)
        llmvigil.shutdown(timeout=10)
        langfuse.close()
        helicone.stop()


def check_langsmith(srv: LangSmithServer, ref: Ref) -> None:
    """Runs (tree, usage with cost, first-token event, ids) and feedback in LangSmith."""
    trace, llm_run_id = ls_trace(ref.root.trace_id), ls_run(ref.llm)

    def arrived(s: LangSmithServer) -> bool:
        keys = {(f.get("run_id"), f["key"]) for f in s.feedback.values()}
        return {trace, llm_run_id} <= set(s.runs) and (llm_run_id, "user_feedback") in keys

    assert srv.wait_for(arrived, timeout_s=ON_TIME_S), "LangSmith: runs and feedback"
    root, llm = srv.runs[trace], srv.runs[llm_run_id]
    assert root["trace_id"] == llm["trace_id"] == trace
    assert "parent_run_id" not in root and llm["parent_run_id"] == trace
    assert llm["dotted_order"].split(".")[0].endswith(trace)
    assert (root["run_type"], llm["run_type"]) == ("chain", "llm")
    for run, span in ((root, ref.root), (llm, ref.llm)):
        meta = run["extra"]["metadata"]
        assert meta["llmvigil_span_id"] == span.id
        assert (meta["user_id"], meta["session_id"]) == (USER, SESSION)
        assert parse(run["start_time"]) == at(span.start_ns)
    meta = llm["extra"]["metadata"]
    assert (meta["ls_model_name"], meta["ls_provider"]) == (MODEL, PROVIDER)
    assert meta["usage_metadata"] == {
        "input_tokens": INPUT + CACHE_READ, "output_tokens": OUTPUT,
        "total_tokens": INPUT + CACHE_READ + OUTPUT,
        "input_token_details": {"cache_read": CACHE_READ}, "total_cost": COST}
    (event,) = llm["events"]
    assert event["name"] == "new_token"
    first = parse(event["time"]) - at(ref.llm.start_ns + ref.ttft_ns)
    assert abs(first.total_seconds()) <= 1e-6

    (fb,) = [f for f in srv.feedback.values()
             if f.get("run_id") == llm_run_id and f["key"] == "user_feedback"]
    assert (fb["trace_id"], fb["score"]) == (trace, ref.feedback.value)
    assert fb.get("comment") == ref.feedback.comment
    assert fb["feedback_source"]["metadata"]["kind"] == ref.feedback.kind
    if ref.event is not None:
        events = [f for f in srv.feedback.values()
                  if f["key"] == "session_event" and f.get("run_id") == trace]
        assert [(f["value"], f["feedback_source"]["metadata"]["session_id"])
                for f in events] == [(ref.event.event, SESSION)]
    assert srv.invalid == []


def check_langfuse(srv: LangfuseServer, ref: Ref) -> None:
    """Observations (generation with usage, cost, completion start) and scores."""
    def arrived() -> bool:
        return {ref.root.id, ref.llm.id} <= srv.span_ids() and (
            ref.feedback.id in srv.scores_by_id())

    soon(arrived, "Langfuse: spans and score")
    got = srv.spans_by_id()
    for span in (ref.root, ref.llm):
        r = got[span.id]
        assert (r.trace_id, r.parent_span_id) == (span.trace_id, span.parent_id or "")
        assert (r.start_ns, r.end_ns) == (span.start_ns, span.end_ns)
        assert r.scope_name == "langfuse-sdk"  # not Phoenix's or another exporter's
        assert r.resource_attributes["service.name"] == "checkout-bot"
        assert (r.attributes["user.id"], r.attributes["session.id"]) == (USER, SESSION)
    assert got[ref.root.id].attributes[A_OBS + "type"] == "chain"
    g = got[ref.llm.id].attributes
    assert (g[A_OBS + "type"], g[A_OBS + "model.name"]) == ("generation", MODEL)
    assert json.loads(g[A_OBS + "usage_details"]) == {
        "input": INPUT, "output": OUTPUT, "input_cache_read": CACHE_READ,
        "total": INPUT + OUTPUT + CACHE_READ}
    assert json.loads(g[A_OBS + "cost_details"]) == {"total": COST}
    assert iso(json.loads(g[A_OBS + "completion_start_time"])) == utc(
        ref.llm.start_ns + ref.ttft_ns)

    scores = srv.scores_by_id()
    s = scores[ref.feedback.id]
    assert (s["traceId"], s["observationId"]) == (ref.llm.trace_id, ref.llm.id)
    assert (s["name"], s["value"], s["dataType"]) == ("user_feedback",
                                                      ref.feedback.value, "BOOLEAN")
    assert s.get("comment") == ref.feedback.comment
    if ref.event is not None:
        e = scores[ref.event.id]
        assert (e["sessionId"], e["name"], e["value"]) == (
            SESSION, "session_event", ref.event.event)


def check_phoenix(url: str, project: str, ref: Ref) -> None:
    """Spans (OpenInference attributes, first-token event) and annotations in Phoenix."""
    from phoenix.client import Client
    from test_adapter_phoenix import rest_annotations, same_time, spans_of

    client = Client(base_url=url)
    wanted = {ref.root.id, ref.llm.id}

    def spans() -> dict[str, Any]:
        found = {s["context"]["span_id"]: s for s in spans_of(client, project)}
        return found if wanted <= set(found) else {}

    soon(spans, "Phoenix: spans")
    got = spans()
    for span in (ref.root, ref.llm):
        ps = got[span.id]
        assert (ps["context"]["trace_id"], ps["parent_id"]) == (span.trace_id, span.parent_id)
        assert same_time(ps["start_time"], span.start_ns)
        assert same_time(ps["end_time"], span.end_ns)
        a = ps["attributes"]
        assert (a["user.id"], a["session.id"]) == (USER, SESSION)
    assert (got[ref.root.id]["span_kind"], got[ref.llm.id]["span_kind"]) == ("CHAIN", "LLM")
    a = got[ref.llm.id]["attributes"]
    assert (a["llm.model_name"], a["llm.provider"]) == (MODEL, PROVIDER)
    assert a["llm.token_count.prompt"] == INPUT + CACHE_READ
    assert a["llm.token_count.prompt_details.cache_read"] == CACHE_READ
    assert a["llm.token_count.completion"] == OUTPUT
    assert a["llm.token_count.total"] == INPUT + CACHE_READ + OUTPUT
    assert a["gen_ai.usage.cost"] == COST  # Phoenix prices calls itself; ours is kept
    (first,) = [e for e in got[ref.llm.id]["events"]
                if e["name"] == "First Token Stream Event"]
    assert same_time(first["timestamp"], ref.llm.start_ns + ref.ttft_ns)

    def annotations() -> list[Any]:
        return list(client.spans.get_span_annotations(span_ids=[ref.llm.id],
                                                       project_identifier=project))

    soon(annotations, "Phoenix: span annotation")
    (ann,) = annotations()
    assert (ann["name"], ann["identifier"]) == ("user_feedback", ref.feedback.id)
    assert (ann["result"]["score"], ann["result"]["label"]) == (
        ref.feedback.value, ref.feedback.kind)
    assert ann["result"].get("explanation") == ref.feedback.comment
    if ref.event is not None:
        name = f"session.{ref.event.event}"

        def session_annotations() -> list[Any]:
            found = rest_annotations(url, project, "session", [SESSION])
            return [x["result"]["label"] for x in found if x["name"] == name]

        soon(session_annotations, "Phoenix: session annotation")
        assert session_annotations() == [ref.event.event]


def check_helicone(srv: HeliconeServer, ref: Ref) -> None:
    """The LLM span as a Helicone request (headers, usage, timing) and its feedback."""
    rid = request_id(ref.llm.id)
    soon(lambda: rid in srv.delivered_ids() and srv.feedback.get(rid),
         "Helicone: request and feedback")
    logs = srv.logs[rid]
    assert all(log == logs[0] for log in logs)  # a re-delivery keeps the same request
    headers, body = logs[0]
    assert (headers["helicone-user-id"], headers["helicone-session-id"]) == (USER, SESSION)
    assert headers["helicone-property-trace-id"] == ref.llm.trace_id
    assert headers["helicone-property-span-id"] == ref.llm.id
    assert headers["helicone-property-parent-id"] == ref.root.id
    assert headers["helicone-property-cost-usd"] == str(COST)
    response = body["providerResponse"]["json"]
    assert body["providerRequest"]["json"]["model"] == response["model"] == MODEL
    assert response["usage"] == {"input_tokens": INPUT, "output_tokens": OUTPUT,
                                 "cache_read_input_tokens": CACHE_READ,
                                 "cache_creation_input_tokens": 0}
    timing = body["timing"]
    assert timing["timeToFirstToken"] == round(ref.ttft_s * 1000)  # integer ms
    assert timing["startTime"] == {"seconds": ref.llm.start_ns // 10**9,
                                   "milliseconds": ref.llm.start_ns % 10**9 // 10**6}
    assert set(srv.feedback[rid]) == {ref.feedback.kind == "thumbs_up"}
    assert srv.errors == []


def wandb_table_on_disk(env: Path, key: str) -> list[dict[str, Any]]:
    """Rows of every ``llmvigil/<key>`` table the live run has written to its files."""
    rows: list[dict[str, Any]] = []
    for path in (env / "wandb_dir" / "wandb").glob(
            f"offline-run-*/files/media/table/llmvigil/{key}_*.table.json"):
        data = json.loads(path.read_text())
        rows.extend(dict(zip(data["columns"], row, strict=True)) for row in data["data"])
    return rows


def check_wandb_rows(spans: list[dict[str, Any]], scores: list[dict[str, Any]],
                     ref: Ref) -> None:
    """The trace's rows in the W&B span and score tables."""
    by_id = {r["span_id"]: r for r in spans}
    for span in (ref.root, ref.llm):
        row = by_id[span.id]
        assert (row["trace_id"], row["parent_id"]) == (span.trace_id, span.parent_id)
        assert (row["user_id"], row["session_id"]) == (USER, SESSION)
    llm = by_id[ref.llm.id]
    assert (llm["kind"], llm["model"], llm["provider"]) == ("llm", MODEL, PROVIDER)
    assert (llm["input_tokens"], llm["output_tokens"], llm["cache_read_tokens"]) == (
        INPUT, OUTPUT, CACHE_READ)
    assert (llm["cost_usd"], llm["ttft_s"]) == (COST, ref.ttft_s)
    (score,) = [r for r in scores if r["id"] == ref.feedback.id]
    assert (score["span_id"], score["trace_id"]) == (ref.llm.id, ref.llm.trace_id)
    assert (score["kind"], score["value"], score["comment"]) == (
        ref.feedback.kind, ref.feedback.value, ref.feedback.comment)


def check_wandb_run(env: Path, refs: list[Ref]) -> None:
    """After shutdown: the run's transaction log, read with wandb's own reader."""
    run = run_dir(env)
    recs = records(next(run.glob("run-*.wandb")))
    assert recs[-1]["type"] == "exit"
    history = [r["history"]["item"] for r in recs if r["type"] == "history"]
    spans, scores = table(run, history, "llmvigil/spans"), table(run, history, "llmvigil/scores")
    assert len({r["span_id"] for r in spans}) == 2 * len(refs)
    for ref in refs:
        check_wandb_rows(spans, scores, ref)
    events = [(e["session_id"], e["event"], e["trace_id"])
              for e in table(run, history, "llmvigil/session_events")]
    assert events == [(SESSION, r.event.event, r.root.trace_id) for r in refs if r.event]


def check_all(v: Vendors, ref: Ref, *, helicone: bool = True) -> None:
    """The trace at every vendor (W&B from the table files its live run wrote)."""
    check_langsmith(v.langsmith, ref)
    check_langfuse(v.langfuse, ref)
    if v.phoenix is not None:
        check_phoenix(v.phoenix.url, v.phoenix_project, ref)
    if helicone:
        check_helicone(v.helicone, ref)
    soon(lambda: ref.feedback.id in {r["id"] for r in wandb_table_on_disk(
        v.wandb_env, "scores")}, "W&B: the score table on disk")
    check_wandb_rows(wandb_table_on_disk(v.wandb_env, "spans"),
                     wandb_table_on_disk(v.wandb_env, "scores"), ref)


# -- the test ------------------------------------------------------------------------------


def test_every_vendor_gets_the_same_traces_and_one_outage_costs_nothing(
    tmp_path: Path, vendors: Vendors
) -> None:
    memory = start(tmp_path, backends=vendors.backends(), service={"name": "checkout-bot"},
                   pipeline={"max_retries": 1, "breaker_failures": 1, "breaker_reset_s": 0.3})
    rt = get_runtime()
    assert rt is not None
    named = {"local", "langsmith", "langfuse", "helicone", "wandb"}
    named |= {"phoenix"} if vendors.phoenix else set()
    assert {name for name in rt.backends if not name.startswith("memory")} == named

    # 1. All healthy: one trace, its feedback and a session event reach every vendor.
    healthy_overhead = timed_answer("When is Easter?")
    ((root, llm),) = traces(memory, 1)
    thumbs = llmvigil.feedback(llm, "thumbs_up", comment="right date")
    event = llmvigil.session_event(SESSION, "task_complete", user_id=USER,
                                   trace_id=root.trace_id)
    assert thumbs is not None and event is not None
    assert llmvigil.flush(20)
    first = Ref(root, llm, thumbs, event)
    check_all(vendors, first)
    assert healthy_overhead < APP_OVERHEAD_S

    # 2. Helicone accepts connections and never answers. The second call is made while
    #    Helicone's outbox is stuck in a request that will never get its answer.
    helicone = vendors.helicone
    helicone.mode = "hang"
    outage_overheads = [timed_answer("And next year?")]
    soon(lambda: helicone.refused_ids, "Helicone to hold a request unanswered")
    outage_overheads.append(timed_answer("And the year after?"))
    assert max(outage_overheads) < APP_OVERHEAD_S, (healthy_overhead, outage_overheads)
    outage = []
    for root_n, llm_n in traces(memory, 3)[1:]:
        thumbs_down = llmvigil.feedback(llm_n, "thumbs_down")
        assert thumbs_down is not None
        outage.append(Ref(root_n, llm_n, thumbs_down))
    t_sent = time.monotonic()
    for ref in outage:
        check_all(vendors, ref, helicone=False)  # the other four, on time
    assert time.monotonic() - t_sent < ON_TIME_S
    soon(lambda: outbox("helicone")["journaled"] >= 4, "Helicone's records journaled")
    llm_ids = {request_id(ref.llm.id) for ref in outage}
    assert not llm_ids & helicone.delivered_ids()
    assert request_id(outage[0].llm.id) in helicone.refused_ids  # tried, and left hanging

    # 3. Helicone answers again: the journaled requests and feedback arrive, none lost.
    helicone.mode = "ok"
    for ref in [*outage, first]:
        check_helicone(helicone, ref)
    assert helicone.delivered_ids() == llm_ids | {request_id(llm.id)}
    soon(lambda: outbox("helicone")["replayed"] >= 4, "Helicone's journal replayed")
    assert outbox("helicone")["backlog"] == 0
    assert llmvigil.flush(20)
    status = rt.pipeline.status()["backends"]
    for name in rt.backends:
        assert status[name]["dropped"] == 0, (name, status[name])

    # 4. The whole run, read back after shutdown: W&B's log and the local store.
    llmvigil.shutdown(timeout=30)
    refs = [first, *outage]
    check_wandb_run(vendors.wandb_env, refs)
    local = LocalStore(tmp_path / "vigil.db")
    try:
        assert {(s.id, s.parent_id) for s in local.read("spans")} == {
            (s.id, s.parent_id) for s in memory.spans}
        assert {s.id for s in local.read("scores")} == {r.feedback.id for r in refs}
        assert [e.id for e in local.read("session_events")] == [event.id]
    finally:
        local.close()
