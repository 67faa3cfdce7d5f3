"""The review queue: storage next to the local store, the safety monitor filling it, and
``vigil review list|show|resolve`` publishing decisions as Scores."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import llmvigil
import pytest
import yaml
from llmvigil.adapters.local import LocalStore
from llmvigil.adapters.memory import get_memory_backend
from llmvigil.core.cli_review import app
from llmvigil.core.model import Metric, Score, Span, new_trace_id
from llmvigil.core.monitors.safety import SafetyMonitor
from llmvigil.core.safety import check
from llmvigil.core.safety.review import (
    AlreadyResolved,
    NewItem,
    ReviewError,
    ReviewItem,
    ReviewQueue,
    UnknownItem,
    review_score,
)
from typer.testing import CliRunner
from vigil_testing import start

CARD = "4111 1111 1111 1111"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _item(key: str, **fields: object) -> NewItem:
    base: dict[str, object] = {"key": key, "source": "rules", "action": "review",
                               "reason": "credit_card detected", "category": "credit_card",
                               "prompt": "p", "response": "r"}
    base.update(fields)
    return NewItem(**base)  # type: ignore[arg-type]


# -- the queue ------------------------------------------------------------------------------


def test_queue_lives_in_the_store_file_with_private_modes(tmp_path: Path) -> None:
    path = tmp_path / "store" / "vigil.db"
    old = os.umask(0o022)
    try:
        store = LocalStore(path)
        store.write([Span(trace_id=new_trace_id(), name="call")])
        with ReviewQueue(path) as queue:
            first = queue.add(_item("v1", feature="support"))
            assert queue.add(_item("v1", feature="support")) is None  # idempotent by key
            second = queue.add(_item("v2", feature=None))
            assert (first, second) == (1, 2)
            assert queue.open_counts() == {"support": 1, None: 1}
        assert store.count("spans") == 1  # both share the file
        store.close()
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    assert _mode(path.parent) == 0o700
    for suffix in ("-wal", "-shm"):
        sidecar = path.with_name(path.name + suffix)
        if sidecar.exists():
            assert _mode(sidecar) == 0o600
    assert ReviewQueue.peek_open_counts(path) == {"support": 1, None: 1}


def test_new_queue_file_is_0600_and_peek_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    assert ReviewQueue.peek_open_counts(path) is None
    assert not path.exists()
    old = os.umask(0o000)
    try:
        ReviewQueue(path).close()
    finally:
        os.umask(old)
    assert _mode(path) == 0o600
    LocalStore(tmp_path / "other.db").close()
    assert ReviewQueue.peek_open_counts(tmp_path / "other.db") is None  # no table there


def test_resolve_unknown_bad_and_repeated_decisions(tmp_path: Path) -> None:
    with ReviewQueue(tmp_path / "q.db") as queue:
        queue.add(_item("v1"))
        with pytest.raises(UnknownItem, match=r"no review item with id 7 .*ids 1 to 1"):
            queue.get(7)
        with pytest.raises(ReviewError, match="unknown decision 'maybe'; expected one of "
                                              "allow, block"):
            queue.resolve(1, "maybe")
        with pytest.raises(ReviewError, match="unknown status 'closed'"):
            queue.items("closed")
        item = queue.resolve(1, "allow", "fine", reviewer="ana", score_id="s1")
        assert (item.status, item.decision, item.note, item.reviewer, item.score_id) == (
            "resolved", "allow", "fine", "ana", "s1")
        assert item.resolved_ns and item.resolved_ns >= item.created_ns
        with pytest.raises(AlreadyResolved, match="already resolved as 'allow' by ana"):
            queue.resolve(1, "block")
        assert queue.resolve(1, "block", force=True).decision == "block"
        assert queue.open_counts() == {}
        assert [i.id for i in queue.items("resolved")] == [1]
        assert queue.items("open") == []


def test_review_score_links_the_decision() -> None:
    reviewed = ReviewItem(key="v", source="judge", action="block", reason="weapons",
                          category="weapons", trace_id="t" * 32, span_id="s" * 16,
                          feature="chat", user_id="u", verdict_id="v", id=3)
    score = review_score(reviewed, "allow", "false positive", "ana")
    assert (score.kind, score.source, score.label, score.value, score.comment) == (
        "review", "review", "allow", 1.0, "false positive")
    assert (score.trace_id, score.span_id, score.feature, score.category) == (
        "t" * 32, "s" * 16, "chat", "weapons")
    assert score.metadata == {"review_id": 3, "verdict_id": "v", "reviewer": "ana",
                              "flagged_by": "judge", "flagged_action": "block",
                              "flag_reason": "weapons"}
    assert review_score(reviewed, "block").value == 0.0


# -- the monitor fills the queue ----------------------------------------------------------------


def test_review_verdicts_are_queued_redacted_and_counted(tmp_path: Path) -> None:
    store = tmp_path / "vigil.db"
    monitor = SafetyMonitor({"emit_interval_s": 60, "review": {"max_chars": 200}},
                            store_path=str(store))
    start(tmp_path, monitors=[monitor])
    response = f"Your card {CARD} is on file. " + "x" * 500
    with llmvigil.span("answer", feature="billing", user_id="u7") as s:
        flagged = check("my mail is ana@example.com", response)
    served = check("hi", "Hello!", feature="billing")
    blocked = check("hi", "you should just kill yourself", feature="chat")
    assert (flagged.action, served.action, blocked.action) == ("review", "serve", "block")
    assert monitor.flush(10)
    with ReviewQueue(store) as queue:
        items = queue.items("open")
    assert len(items) == 1  # only review verdicts by default
    item = items[0]
    assert (item.key, item.verdict_id, item.source, item.action, item.category) == (
        flagged.id, flagged.id, "rules", "review", "credit_card")
    assert (item.trace_id, item.span_id, item.feature, item.user_id) == (
        s.trace_id, s.span_id, "billing", "u7")
    assert CARD not in item.response and "[CREDIT_CARD]" in item.response
    assert item.prompt == "my mail is [EMAIL]"
    assert item.response.endswith(f"[truncated, {len(response) - 200} more characters]")
    assert item.decided_by == "rule:pii.credit_card"
    llmvigil.flush()
    t = flagged.time_ns + 61 * 10**9
    out = list(monitor.tick(t))
    monitor.flush(10)
    out += list(monitor.tick(t + 61 * 10**9))
    sizes = {m.labels["feature"]: m.value for m in out
             if isinstance(m, Metric) and m.name == "safety.queue_size"}
    assert sizes == {"billing": 1.0, "_all": 1.0}


def test_blocked_verdicts_are_queued_when_configured(tmp_path: Path) -> None:
    store = tmp_path / "vigil.db"
    monitor = SafetyMonitor({"review": {"actions": ["review", "block"]}}, store_path=str(store))
    start(tmp_path, monitors=[monitor])
    check("q", "go ahead and hurt yourself", feature="chat")
    check("q", "fine answer", feature="chat")
    assert monitor.flush(10)
    with ReviewQueue(store) as queue:
        assert [(i.action, i.category) for i in queue.items()] == [("block", "self_harm")]


# -- the CLI ----------------------------------------------------------------------------------


@pytest.fixture
def queued(tmp_path: Path) -> tuple[Path, Path]:
    """A config file (memory + local backends) and a queue holding two items."""
    store = tmp_path / "vigil.db"
    config = tmp_path / "vigil.yaml"
    config.write_text(yaml.safe_dump({
        "backends": [{"name": "memory", "instance": "cli", "redaction": "full"}, "local"],
        "store": {"path": str(store)},
        "pipeline": {"journal_dir": str(tmp_path / "journal"), "flush_interval_s": 0.05},
    }))
    with ReviewQueue(store) as queue:
        queue.add(_item("v1", feature="billing", trace_id="a" * 32, span_id="b" * 16,
                        verdict_id="v1", prompt="mail ana@example.com",
                        response=f"card {CARD}", reason="credit_card detected in the response"))
        queue.add(_item("v2", feature="chat", action="block", category="weapons",
                        source="judge", reason="gives instructions", decided_by="judge:x"))
    return config, store


runner = CliRunner()


def said(text: str) -> str:
    """What a person reads, without rich's panel borders and line wrapping."""
    return " ".join(text.replace("│", " ").split())


def test_cli_list_and_show(queued: tuple[Path, Path]) -> None:
    config, _store = queued
    result = runner.invoke(app, ["list", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "credit_card" in result.output and "weapons" in result.output
    result = runner.invoke(app, ["list", "--config", str(config), "--json",
                                 "--feature", "billing"])
    listed = json.loads(result.stdout)
    assert [i["id"] for i in listed] == [1]
    assert listed[0]["response"] == "card [CREDIT_CARD]"  # redacted when shown
    result = runner.invoke(app, ["show", "1", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "credit_card detected in the response" in result.output
    assert "[CREDIT_CARD]" in result.output and CARD not in result.output
    assert "[EMAIL]" in result.output and "ana@example.com" not in result.output
    assert "a" * 32 in result.output  # the trace to look up


def test_cli_show_redacts_per_config(queued: tuple[Path, Path], tmp_path: Path) -> None:
    _config, store = queued
    config = tmp_path / "only-cards.yaml"
    config.write_text(yaml.safe_dump({"store": {"path": str(store)}, "monitors": {
        "safety": {"review": {"redact": ["credit_card"]}}}}))
    result = runner.invoke(app, ["show", "1", "--config", str(config), "--json"])
    shown = json.loads(result.stdout)
    assert shown["prompt"] == "mail ana@example.com"  # e-mail not in review.redact
    assert shown["response"] == "card [CREDIT_CARD]"


def test_cli_resolve_publishes_a_review_score(queued: tuple[Path, Path]) -> None:
    config, store = queued
    result = runner.invoke(app, ["resolve", "1", "--decision", "allow", "--note",
                                 "test card number", "--reviewer", "ana",
                                 "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "item 1: allow" in result.stdout
    with ReviewQueue(store) as queue:
        item = queue.get(1)
    assert (item.status, item.decision, item.note, item.reviewer) == (
        "resolved", "allow", "test card number", "ana")
    memory = get_memory_backend("cli")
    scores = [s for s in memory.scores if s.kind == "review"]
    assert len(scores) == 1
    score = scores[0]
    assert (score.id, score.source, score.label, score.value, score.comment) == (
        item.score_id, "review", "allow", 1.0, "test card number")
    assert (score.trace_id, score.span_id, score.feature) == ("a" * 32, "b" * 16, "billing")
    assert score.metadata["review_id"] == 1
    with LocalStore(store) as local:  # the local backend got the same score
        stored = [s for s in local.read("scores") if isinstance(s, Score)]
    assert [s.id for s in stored] == [score.id]
    result = runner.invoke(app, ["list", "--config", str(config), "--status", "resolved",
                                 "--json"])
    assert [i["decision"] for i in json.loads(result.stdout)] == ["allow"]
    assert llmvigil.core.runtime._runtime is None  # the CLI shut its runtime down


def test_cli_errors_are_clear(queued: tuple[Path, Path], tmp_path: Path) -> None:
    config, _store = queued
    result = runner.invoke(app, ["show", "99", "--config", str(config)])
    assert result.exit_code == 2
    assert "no review item with id 99" in said(result.stderr)
    assert "ids 1 to 2" in said(result.stderr)
    result = runner.invoke(app, ["resolve", "99", "--decision", "allow",
                                 "--config", str(config)])
    assert result.exit_code == 2 and "no review item with id 99" in said(result.stderr)
    result = runner.invoke(app, ["resolve", "1", "--decision", "maybe",
                                 "--config", str(config)])
    assert result.exit_code == 2
    assert "'maybe' is not one of 'allow', 'block'" in said(result.stderr)
    result = runner.invoke(app, ["resolve", "1", "--config", str(config)])
    assert result.exit_code == 2 and "--decision" in said(result.stderr)
    assert runner.invoke(app, ["resolve", "2", "--decision", "block",
                               "--config", str(config)]).exit_code == 0
    result = runner.invoke(app, ["resolve", "2", "--decision", "allow",
                                 "--config", str(config)])
    assert result.exit_code == 1
    assert "already resolved as 'block'; pass --force" in said(result.stderr)
    assert runner.invoke(app, ["resolve", "2", "--decision", "allow", "--force",
                               "--config", str(config)]).exit_code == 0
    result = runner.invoke(app, ["list", "--status", "closed", "--config", str(config)])
    assert result.exit_code == 2 and "'closed' is not one of" in said(result.stderr)
    bad = tmp_path / "bad.yaml"
    bad.write_text("monitors:\n  safety:\n    review:\n      redact: [ssn]\n")
    result = runner.invoke(app, ["list", "--config", str(bad)])
    assert result.exit_code == 2
    assert "monitors.safety.review.redact" in said(result.stderr) and "ssn" in said(result.stderr)


def test_cli_without_a_queue(tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text(yaml.safe_dump({"store": {"path": str(tmp_path / "none.db")}}))
    result = runner.invoke(app, ["list", "--config", str(config)])
    assert result.exit_code == 0 and "nothing was flagged" in result.stdout
    result = runner.invoke(app, ["show", "1", "--config", str(config)])
    assert result.exit_code == 1 and "no review queue in" in said(result.stderr)
    assert not (tmp_path / "none.db").exists()
