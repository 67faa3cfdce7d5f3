"""`vigil migrate`/`compare` and the engine: resume, idempotence, failures, fidelity."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from llmvigil.adapters.local import LocalStore
from llmvigil.core.cli_migrate import app
from llmvigil.core.migrate import Skipped
from llmvigil.core.migrate.engine import (
    CANNOT_HOLD,
    NOT_DELIVERED,
    REJECTED,
    Checkpoint,
    Destination,
    RetryPolicy,
    Selection,
    migrate,
)
from llmvigil.core.migrate.files import LocalImporter
from llmvigil.core.model import Metric, Record, Score, Span
from llmvigil.plugins.hookspecs import hookimpl
from llmvigil.plugins.types import AdapterInfo, Capabilities, ExportResult
from test_files import by_id, make_history, write_store
from typer.testing import CliRunner

KINDS = ("spans", "scores", "session_events", "metrics", "alerts", "safety_verdicts")


def cli(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def stored(path: Path) -> list[Record]:
    with LocalStore(path) as store:
        return [r for kind in KINDS for r in store.read(kind)]


def counts(path: Path) -> dict[str, int]:
    with LocalStore(path) as store:
        return {kind: store.count(kind) for kind in KINDS}


def key(r: Any) -> tuple[int, str]:
    return (r.start_ns if isinstance(r, Span) else r.time_ns, r.id)


@pytest.fixture(scope="module")
def history() -> list[Record]:
    return make_history(3000)  # ~10,000 spans in trees, plus scores, sessions, metrics


@pytest.fixture
def src(tmp_path: Path, history: list[Record]) -> Path:
    path = tmp_path / "src.db"
    write_store(path, history)
    return path


def run_migrate(src: Path, dst: Path, *extra: str) -> tuple[int, dict[str, Any]]:
    result = cli("migrate", "--from", "local", "--from-opt", f"path={src}", "--to", "local",
                 "--to-opt", f"path={dst}", "--to-opt", "redaction=full", "--json", *extra)
    assert "Traceback" not in result.output, result.output
    return result.exit_code, json.loads(result.stdout)


# -- local -> local through the CLI ------------------------------------------------------


def test_interrupted_migration_resumes_and_reruns_duplicate_nothing(
        tmp_path: Path, src: Path, history: list[Record]) -> None:
    dst, ck = tmp_path / "dst.db", tmp_path / "ck.json"
    spans = sorted((r for r in history if isinstance(r, Span)), key=key)
    assert len(spans) >= 10_000

    code, first = run_migrate(src, dst, "--limit", "4000", "--checkpoint", str(ck),
                              "--batch-size", "300")
    assert code == 0 and first["read"] == {"spans": 4000}
    assert counts(dst)["spans"] == 4000
    mark = json.loads(ck.read_text())["kinds"]["spans"]
    assert (mark["time_ns"], mark["id"]) == key(spans[3999])  # the last delivered span

    code, second = run_migrate(src, dst, "--checkpoint", str(ck), "--batch-size", "300")
    expected = Counter({"spans": len(spans) - 4000})
    for r in history:
        if not isinstance(r, Span):
            expected[{"Score": "scores", "SessionEvent": "session_events",
                      "Metric": "metrics", "Alert": "alerts",
                      "SafetyVerdict": "safety_verdicts"}[type(r).__name__]] += 1
    assert code == 0 and second["read"] == dict(expected) and second["resumed"]
    assert counts(dst) == counts(src)
    assert by_id(stored(dst)) == by_id(history)

    code, again = run_migrate(src, dst, "--checkpoint", str(ck))
    assert code == 0 and again["read"] == {}  # complete: nothing new to move

    code, rerun = run_migrate(src, dst)  # no checkpoint: everything again, upserted
    assert code == 0 and sum(rerun["destinations"][0]["written"].values()) == len(history)
    assert counts(dst) == counts(src)


def test_fidelity_report_matches_the_source_store(tmp_path: Path, src: Path) -> None:
    code, report = run_migrate(src, tmp_path / "dst.db")
    assert code == 0
    with sqlite3.connect(src) as conn:
        sums = conn.execute(
            "SELECT COUNT(*), SUM(input_tokens), SUM(output_tokens), SUM(cache_read_tokens),"
            " SUM(cache_write_tokens), SUM(cost_usd), SUM(kind = 'llm' AND cost_usd IS NULL)"
            " FROM spans").fetchone()
        per_kind = {k: conn.execute(f"SELECT COUNT(*) FROM {k}").fetchone()[0] for k in KINDS}
    names = ("spans", "input_tokens", "output_tokens", "cache_read_tokens",
             "cache_write_tokens", "cost_usd", "unpriced_llm_spans")
    expected = dict(zip(names, sums, strict=True))
    for totals in (report["source_totals"], report["destinations"][0]["totals"]):
        for name in names:
            assert totals[name] == pytest.approx(expected[name], rel=1e-12), name
    assert report["read"] == {k: n for k, n in per_kind.items() if n}
    assert report["destinations"][0]["written"] == report["read"]
    assert report["destinations"][0]["skipped"] == {}


def test_dry_run_counts_and_lists_what_the_destination_cannot_hold(
        tmp_path: Path, src: Path) -> None:
    result = cli("migrate", "--from", "local", "--from-opt", f"path={src}", "--to", "langfuse",
                 "--dry-run", "--since", "2024-04-24T00:00:00Z")
    assert result.exit_code == 0, result.output
    text = result.stdout
    per_kind = counts(src)
    assert "would write" in text
    for kind in ("spans", "scores", "session events"):
        assert f"│ {kind}" in text
    assert f"{per_kind['metrics']} destination cannot hold them" in text
    assert f"{per_kind['alerts']} destination cannot hold them" in text
    assert "langfuse cannot hold: metrics, alerts" in text
    assert "cost: only the total" in text  # a note from the capability table
    dry_local = cli("migrate", "--from", "local", "--from-opt", f"path={src}", "--to", "local",
                    "--to-opt", f"path={tmp_path / 'never.db'}", "--dry-run", "--json")
    assert dry_local.exit_code == 0
    assert json.loads(dry_local.stdout)["destinations"][0]["written"] == {
        k: n for k, n in per_kind.items() if n}
    assert not (tmp_path / "never.db").exists()


def test_checkpoint_of_another_selection_is_refused(tmp_path: Path, src: Path) -> None:
    ck = tmp_path / "ck.json"
    assert run_migrate(src, tmp_path / "d.db", "--checkpoint", str(ck), "--limit", "10",
                       "--since", "2024-04-25")[0] == 0
    result = cli("migrate", "--from", "local", "--from-opt", f"path={src}", "--to", "local",
                 "--to-opt", f"path={tmp_path / 'd.db'}", "--checkpoint", str(ck))
    assert result.exit_code == 2
    assert "written for another migration" in result.stderr and "Traceback" not in result.output


def test_unknown_importer_and_bad_options_are_clear_errors(tmp_path: Path, src: Path) -> None:
    result = cli("migrate", "--from", "langsmyth", "--to", "local")
    assert result.exit_code == 2 and "no importer 'langsmyth'" in result.stderr
    known = result.stderr.split("no importer 'langsmyth'")[1]
    for name in ("file", "local", "langsmith", "langfuse", "phoenix", "helicone", "wandb"):
        assert name in known, name
    result = cli("migrate", "--from", "local", "--to", "nowhere")
    assert result.exit_code == 2 and "unknown backend 'nowhere'" in result.stderr
    result = cli("migrate", "--from", "local", "--from-opt", "path", "--to", "local")
    assert result.exit_code == 2 and "expected key=value" in result.stderr
    result = cli("migrate", "--from", "local", "--from-opt", f"path={src}", "--to", "local",
                 "--since", "last tuesday")
    assert result.exit_code == 2 and "--since" in result.stderr


def test_destination_redaction_applies_unless_full(tmp_path: Path) -> None:
    span = Span(trace_id="ab" * 16, id="cd" * 8, name="x", output="mail bob@example.com")
    write_store(tmp_path / "s.db", [span])
    for level, expected in (("masked", False), ("full", True)):
        dst = tmp_path / f"{level}.db"
        result = cli("migrate", "--from", "local", "--from-opt", f"path={tmp_path / 's.db'}",
                     "--to", "local", "--to-opt", f"path={dst}", "--to-opt",
                     f"redaction={level}")
        assert result.exit_code == 0
        (back,) = stored(dst)
        assert ("bob@example.com" in back.output) is expected  # type: ignore[union-attr]


def test_verify_reads_the_destination_back(tmp_path: Path) -> None:
    write_store(tmp_path / "s.db", make_history(30))
    result = cli("migrate", "--from", "local", "--from-opt", f"path={tmp_path / 's.db'}",
                 "--to", "local", "--to-opt", f"path={tmp_path / 'd.db'}", "--verify")
    assert result.exit_code == 0, result.output
    assert "compare local (A) vs local (B)" in result.stdout
    assert "same within tolerance" in result.stdout


# -- compare ----------------------------------------------------------------------------------


def test_compare_reports_differences_beyond_tolerance(tmp_path: Path) -> None:
    history = make_history(200)
    write_store(tmp_path / "a.db", history)
    write_store(tmp_path / "b.db", history)
    same = cli("compare", "local", "local", "--a-opt", f"path={tmp_path / 'a.db'}",
               "--b-opt", f"path={tmp_path / 'b.db'}")
    assert same.exit_code == 0 and "same within tolerance" in same.stdout

    # B loses one whole trace and one llm call is re-counted with 1,000 more input tokens.
    spans = [r for r in history if isinstance(r, Span)]
    lost = spans[0].trace_id
    changed = next(s for s in spans if s.kind == "llm" and s.trace_id != lost)
    with sqlite3.connect(tmp_path / "b.db") as conn:
        conn.execute("DELETE FROM spans WHERE trace_id = ?", (lost,))
    assert changed.usage is not None
    usage = msgspec.structs.replace(changed.usage,
                                    input_tokens=changed.usage.input_tokens + 1000)
    write_store(tmp_path / "b.db", [msgspec.structs.replace(changed, usage=usage)])
    result = cli("compare", "local", "local", "--a-opt", f"path={tmp_path / 'a.db'}",
                 "--b-opt", f"path={tmp_path / 'b.db'}", "--json", "--tolerance", "0.001")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    rows = {r["metric"]: r for r in data["rows"]}
    kept = [s for s in spans if s.trace_id != lost]
    assert rows["spans"]["diff"] == -sum(s.trace_id == lost for s in spans)
    in_a = sum(s.usage.input_tokens for s in spans if s.usage)
    in_b = sum(s.usage.input_tokens for s in kept if s.usage) + 1000
    assert (rows["input tokens"]["a"], rows["input tokens"]["b"]) == (in_a, in_b)
    roots_a = [s.duration_s for s in spans if s.parent_id is None]
    roots_b = [s.duration_s for s in kept if s.parent_id is None]
    assert rows["latency p95 s"]["a"] == pytest.approx(np.percentile(roots_a, 95))
    assert rows["latency p95 s"]["b"] == pytest.approx(np.percentile(roots_b, 95))
    assert rows["traces"]["diff"] == -1 and data["traces_only_in_a"] == 1
    assert data["examples_only_in_a"] == [lost]
    assert not rows["spans"]["ok"] and rows["scores"]["ok"]
    loose = cli("compare", "local", "local", "--a-opt", f"path={tmp_path / 'a.db'}",
                "--b-opt", f"path={tmp_path / 'b.db'}", "--tolerance", "0.5", "--json")
    loose_rows = {r["metric"]: r["ok"] for r in json.loads(loose.stdout)["rows"]}
    assert loose_rows["spans"] and loose_rows["input tokens"]
    assert loose.exit_code == 1  # a trace on one side only is a difference at any tolerance


# -- the engine with a test destination --------------------------------------------------------


class SinkBackend:
    """A destination that records batches and answers what the test scripts."""

    def __init__(self, script: list[Any] | None = None,
                 reject: frozenset[str] = frozenset()) -> None:
        self.script = list(script or [])  # answers to the next calls, then SUCCESS
        self.reject = reject
        self.received: list[Any] = []
        self.calls = 0
        self.closed = False

    def _answer(self, batch: Sequence[Any]) -> ExportResult:
        self.calls += 1
        if self.script:
            answer = self.script.pop(0)
            if isinstance(answer, Exception):
                raise answer
            if answer is not ExportResult.SUCCESS:
                return answer  # type: ignore[no-any-return]
        if any(r.id in self.reject for r in batch):
            return ExportResult.FAILURE
        self.received.extend(batch)
        return ExportResult.SUCCESS

    @hookimpl
    def llmvigil_export_spans(self, spans: Sequence[Span]) -> ExportResult:
        return self._answer(spans)

    @hookimpl
    def llmvigil_export_scores(self, scores: Sequence[Score]) -> ExportResult:
        return self._answer(scores)

    @hookimpl
    def llmvigil_shutdown(self, timeout_s: float) -> None:
        self.closed = True


def sink_destination(sink: SinkBackend) -> Destination:
    info = AdapterInfo(name="sink", factory=lambda _settings: sink, capabilities=Capabilities(
        holds={"spans": "list", "scores": "list"}, notes=("metrics: nowhere",)))
    return Destination("sink", info, {}, redaction="full")


class ListImporter:
    """Yields given items; optionally raises after ``fail_after`` of them."""

    def __init__(self, items: Sequence[Any], fail_after: int | None = None,
                 error: BaseException | None = None) -> None:
        self.items = list(items)
        self.fail_after = fail_after
        self.error = error or RuntimeError("vendor API answered 502")

    def read(self, options: Mapping[str, Any]) -> Iterator[Any]:
        for i, item in enumerate(self.items):
            if self.fail_after is not None and i == self.fail_after:
                raise self.error
            yield item


def spans_and_scores(traces: int) -> list[Record]:
    return [r for r in make_history(traces) if isinstance(r, (Span, Score))]


def test_retry_with_backoff_then_success() -> None:
    records = [r for r in spans_and_scores(20) if isinstance(r, Span)]
    sink = SinkBackend([ExportResult.RETRY, ConnectionError("reset"), ExportResult.SUCCESS])
    sleeps: list[float] = []
    report = migrate(ListImporter(records), [sink_destination(sink)], batch_size=1000,
                     retry=RetryPolicy(3, 0.5, 0.8), sleep=sleeps.append)
    assert by_id(sink.received) == by_id(records) and not report.lossy
    assert len(sleeps) == 2 and 0 <= sleeps[0] <= 0.5 and 0 <= sleeps[1] <= 0.8
    assert sink.closed


def test_destination_down_stops_resumably_and_resume_sends_each_batch_once(
        tmp_path: Path) -> None:
    records = sorted((r for r in spans_and_scores(60) if isinstance(r, Span)), key=key)
    n = len(records)
    down = SinkBackend([ExportResult.SUCCESS] * 2 + [ExportResult.RETRY] * 10)
    ck = Checkpoint.open(tmp_path / "ck.json", source="list", destinations=["sink"],
                         selection=Selection())
    report = migrate(ListImporter(records), [sink_destination(down)], source="list",
                     checkpoint=ck, batch_size=50, retry=RetryPolicy(2, 0.01, 0.01),
                     sleep=lambda _s: None)
    assert report.stopped and "kept failing (3 attempts on 50 spans)" in report.stopped
    assert report.lossy and len(down.received) == 100
    dest = report.destinations[0]
    assert dest.written["spans"] == 100
    assert dest.skipped["spans"][NOT_DELIVERED] == report.read["spans"] - 100
    saved = json.loads((tmp_path / "ck.json").read_text())
    assert saved["complete"] is False
    assert (saved["kinds"]["spans"]["time_ns"], saved["kinds"]["spans"]["id"]) == key(
        records[99])

    up = SinkBackend()
    ck = Checkpoint.open(tmp_path / "ck.json", source="list", destinations=["sink"],
                         selection=Selection())
    resumed = migrate(ListImporter(records), [sink_destination(up)], source="list",
                      checkpoint=ck, batch_size=50)
    assert resumed.already_delivered["spans"] == 100 and resumed.read["spans"] == n - 100
    assert not resumed.lossy
    ids = [r.id for r in down.received + up.received]
    assert len(ids) == len(set(ids)) == n


def test_rejected_records_are_isolated_and_the_rest_delivered() -> None:
    records = spans_and_scores(40)
    bad = {records[5].id, records[77].id}
    sink = SinkBackend(reject=frozenset(bad))
    problems: list[str] = []
    report = migrate(ListImporter(records), [sink_destination(sink)], batch_size=64,
                     on_problem=problems.append)
    assert by_id(sink.received) == {k: v for k, v in by_id(records).items() if k not in bad}
    dest = report.destinations[0]
    assert sum(c[REJECTED] for c in dest.skipped.values()) == 2
    assert all(any(rid in p for p in problems) for rid in bad)
    assert report.lossy


def test_importer_failure_mid_stream_keeps_what_was_read(tmp_path: Path) -> None:
    records = sorted(spans_and_scores(50), key=lambda r: (isinstance(r, Score), key(r)))
    ck = Checkpoint.open(tmp_path / "ck.json", source="v", destinations=["sink"],
                         selection=Selection())
    sink = SinkBackend()
    report = migrate(ListImporter(records, fail_after=120), [sink_destination(sink)],
                     source="v", checkpoint=ck, batch_size=50)
    assert report.stopped == ("importer 'v' failed after 120 records: RuntimeError: "
                              "vendor API answered 502")
    assert len(sink.received) == 120  # the partial batch was delivered before stopping
    ck = Checkpoint.open(tmp_path / "ck.json", source="v", destinations=["sink"],
                         selection=Selection())
    rest = SinkBackend()
    migrate(ListImporter(records), [sink_destination(rest)], source="v", checkpoint=ck)
    assert by_id(sink.received + rest.received) == by_id(records)
    assert len(rest.received) == len(records) - 120


def test_unreadable_items_and_capabilities_are_counted() -> None:
    records = spans_and_scores(5)
    metric = Metric(name="m", value=1.0)
    items: list[Any] = [*records, Skipped("bad line", "f.jsonl:3", "r1", "spans"), metric,
                        "not a record"]
    problems: list[str] = []
    report = migrate(ListImporter(items), [sink_destination(SinkBackend())],
                     on_problem=problems.append)
    assert report.invalid == Counter({"spans": 1, "unknown": 1})
    assert report.destinations[0].skipped == {"metrics": Counter({CANNOT_HOLD: 1})}
    assert problems[0] == "f.jsonl:3: span r1: bad line"
    assert "'str', not an llmvigil record" in problems[1]
    assert report.lossy


def test_out_of_order_kinds_are_never_skipped_on_resume(tmp_path: Path) -> None:
    spans = sorted((r for r in spans_and_scores(10) if isinstance(r, Span)), key=key)
    shuffled = spans[5:] + spans[:5]
    ck = Checkpoint.open(tmp_path / "ck.json", source="v", destinations=["sink"],
                         selection=Selection())
    problems: list[str] = []
    migrate(ListImporter(shuffled), [sink_destination(SinkBackend())], source="v",
            checkpoint=ck, batch_size=4, on_problem=problems.append)
    assert any("do not come in (time, id) order" in p for p in problems)
    saved = json.loads((tmp_path / "ck.json").read_text())["kinds"]["spans"]
    assert saved["ordered"] is False and "time_ns" not in saved
    again = Checkpoint.open(tmp_path / "ck.json", source="v", destinations=["sink"],
                            selection=Selection())
    assert not again.covers("spans", key(spans[0])) and again.after() == {}


def test_interrupt_stops_cleanly() -> None:
    records = spans_and_scores(10)
    sink = SinkBackend()
    report = migrate(ListImporter(records, fail_after=30, error=KeyboardInterrupt()),
                     [sink_destination(sink)], batch_size=20)
    assert report.interrupted and report.stopped == "interrupted"
    assert len(sink.received) == 20 and sink.closed
    assert report.destinations[0].skipped_total("spans") + report.destinations[0].skipped_total(
        "scores") == 10


def test_local_importer_resume_point_and_window(tmp_path: Path) -> None:
    history = make_history(20)
    write_store(tmp_path / "s.db", history)
    spans = sorted((r for r in history if isinstance(r, Span)), key=key)
    imp = LocalImporter({"path": str(tmp_path / "s.db")})
    after = {"spans": key(spans[9])}
    got = list(imp.read({"kinds": ("spans",), "after": after}))
    assert got == spans[10:]
    assert imp.estimate({"kinds": ("spans",), "after": after}) == len(spans) - 10
    window = list(imp.read({"since_ns": spans[3].start_ns, "until_ns": spans[8].start_ns,
                            "kinds": ["spans"]}))
    assert window == [s for s in spans if spans[3].start_ns <= s.start_ns < spans[8].start_ns]


# -- settings from the config file ------------------------------------------------------------


def test_backends_and_settings_come_from_the_config_entries(tmp_path: Path) -> None:
    from llmvigil.adapters.memory import get_memory_backend

    history = make_history(12)
    write_store(tmp_path / "app.db", history)
    config = tmp_path / "vigil.yaml"
    config.write_text(
        f"store: {{path: {tmp_path / 'app.db'}}}\n"
        "backends:\n"
        "  - local\n"
        f"  - {{name: local, instance: archive, path: {tmp_path / 'archive.db'},"
        " redaction: full}\n"
        "  - {name: memory, instance: cfg-import, redaction: full}\n")
    moved = cli("migrate", "--from", "local", "--to", "local:archive", "-c", str(config),
                "--kinds", "spans,scores")
    assert moved.exit_code == 0, moved.output
    assert by_id(stored(tmp_path / "archive.db")) == by_id(
        [r for r in history if isinstance(r, (Span, Score))])

    exported = cli("export", "-c", str(config), "-o", str(tmp_path / "h.jsonl"))
    assert exported.exit_code == 0, exported.output
    imported = cli("import", str(tmp_path / "h.jsonl"), "-c", str(config), "--json",
                   "--to", "memory:cfg-import", "--to", "local:archive")
    assert imported.exit_code == 0, imported.output
    report = json.loads(imported.stdout)
    assert [d["name"] for d in report["destinations"]] == ["memory:cfg-import",
                                                           "local:archive"]
    memory = get_memory_backend("cfg-import")
    assert by_id(memory.spans + memory.scores) == by_id(
        [r for r in history if isinstance(r, (Span, Score))])
    assert by_id(stored(tmp_path / "archive.db")) == by_id(history)
