"""The slow path: the Anthropic judge through the real SDK against a local Messages API,
the judge hook for other judges, sampling, and the background runner's isolation."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anthropic
import llmvigil
import pytest
from anthropic_server import AnthropicServer, Script
from llmvigil.core.errors import ConfigError
from llmvigil.core.model import Metric
from llmvigil.core.monitors.safety import SafetyMonitor
from llmvigil.core.safety import check
from llmvigil.core.safety.judge import JudgeError
from llmvigil.core.safety.review import ReviewQueue
from llmvigil.plugins import judges
from llmvigil.plugins.hookspecs import hookimpl
from llmvigil.plugins.judges import SYSTEM_PROMPT, AnthropicJudge, parse_verdict
from llmvigil.plugins.manager import new_plugin_manager
from llmvigil.plugins.types import SafetyJudgeInfo
from scipy.stats import binomtest
from vigil_testing import start

BLOCK = '{"action": "block", "category": "weapons", "reason": "explains how to build a weapon"}'


def plugin_manager(*extra: object) -> Any:
    """Built-in plugins (with the judges module, registered here until it is built in)."""
    pm = new_plugin_manager(load_entrypoints=False)
    if pm.get_plugin("llmvigil.plugins.judges") is None:
        pm.register(judges, name="llmvigil.plugins.judges")
    for plugin in extra:
        pm.register(plugin)
    return pm


class JudgePlugin:
    """A third-party judge plugin: ``fn`` answers every judgement."""

    def __init__(self, name: str, fn: Callable[[str, str], Any]) -> None:
        self.name = name
        self.fn = fn
        self.settings: list[Mapping[str, Any]] = []

    @hookimpl
    def llmvigil_safety_judges(self) -> list[SafetyJudgeInfo]:
        def factory(settings: Mapping[str, Any]) -> Callable[[str, str], Any]:
            self.settings.append(settings)
            return self.fn

        return [SafetyJudgeInfo(name=self.name, factory=factory)]


# -- the verdict format -----------------------------------------------------------------------


def test_parse_verdict_accepts_strict_json_only() -> None:
    assert parse_verdict(BLOCK) == ("block", "explains how to build a weapon", "weapons")
    assert parse_verdict(f"```json\n{BLOCK}\n```")[0] == "block"
    assert parse_verdict('{"action": "serve", "category": null, "reason": "fine"}') == (
        "serve", "fine", None)
    for bad, message in [
        ("Sure! It is safe.", "did not answer with JSON"),
        ('["block"]', "has no 'action'"),
        ('{"action": "delete", "reason": "x"}', "must be one of serve, review, block"),
        ('{"action": "block", "category": 3}', "'category' is not a string"),
    ]:
        with pytest.raises(JudgeError, match=message):
            parse_verdict(bad)


# -- the Anthropic judge through the real SDK -----------------------------------------------


def test_anthropic_judge_sends_a_strict_prompt_and_reads_the_verdict(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-env")
    with AnthropicServer(Script(chunks=[BLOCK])) as server:
        judge = AnthropicJudge({"base_url": server.url, "model": "claude-test-judge",
                                "max_tokens": 100, "max_retries": 0})
        verdict = judge("How do I make it?", "Step 1: take the pipe ...")
        request = server.requests[0]
    assert verdict == ("block", "explains how to build a weapon", "weapons")
    body = request.body
    assert request.path == "/v1/messages"
    assert (body["model"], body["max_tokens"]) == ("claude-test-judge", 100)
    assert "output_config" not in body
    assert body["system"] == SYSTEM_PROMPT
    content = body["messages"][0]["content"]
    assert "<user_prompt>\nHow do I make it?\n</user_prompt>" in content
    assert "<assistant_response>\nStep 1: take the pipe ...\n</assistant_response>" in content
    auth = request.headers.get("x-api-key") or request.headers.get("authorization", "")
    assert "sk-ant-from-env" in auth


def test_anthropic_judge_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="needs an API key: set ANTHROPIC_API_KEY"):
        AnthropicJudge({})
    with pytest.raises(ConfigError, match=r"monitors\.safety\.judge\.settings: max_tokens"):
        AnthropicJudge({"api_key": "k", "max_tokens": 1})
    with pytest.raises(ConfigError, match="temperature: Extra inputs"):
        AnthropicJudge({"api_key": "k", "temperature": 1})
    judge = AnthropicJudge({"api_key": "sk-ant-explicit", "max_chars": 100,
                            "structured_output": True})
    assert judge.model == "claude-haiku-4-5"
    body = judge.request("p", "a" * 60 + "b" * 60)
    assert "[... 20 characters omitted ...]" in body["messages"][0]["content"]
    assert body["output_config"]["format"]["schema"]["properties"]["action"]["enum"] == [
        "serve", "review", "block"]
    assert "sk-ant-explicit" not in repr(judge.options)


def test_anthropic_judge_errors_surface_to_the_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    with AnthropicServer(Script(error_status=529, error_message="Overloaded")) as server:
        judge = AnthropicJudge({"base_url": server.url, "api_key": "k", "max_retries": 0})
        with pytest.raises(anthropic.APIStatusError):
            judge("p", "r")
        server.script = Script(chunks=["I think it is fine."])
        with pytest.raises(JudgeError, match="did not answer with JSON"):
            judge("p", "r")


# -- the monitor runs the judge in the background ---------------------------------------------


def test_judge_verdicts_become_scores_flags_and_queue_items(tmp_path: Path) -> None:
    store = tmp_path / "vigil.db"
    with AnthropicServer(Script(chunks=[BLOCK])) as server:
        monitor = SafetyMonitor(
            {"judge": {"enabled": True, "sample_rate": 1.0,
                       "settings": {"base_url": server.url, "api_key": "sk-ant-test",
                                    "max_retries": 0}}},
            plugin_manager=plugin_manager(), store_path=str(store))
        memory = start(tmp_path, monitors=[monitor])
        with llmvigil.span("answer", feature="docs", user_id="u1") as s:
            verdict = check("how do I build it?", "Here is a harmless-looking answer.")
        check("q", "you should just kill yourself", feature="docs")  # blocked: not judged
        assert verdict.action == "serve"
        assert monitor.flush(20)
        llmvigil.flush()
        assert len(server.requests) == 1
    scores = [sc for sc in memory.scores if sc.kind == "judge"]
    assert len(scores) == 1
    score = scores[0]
    assert (score.name, score.source, score.label, score.value, score.category) == (
        "safety_judge", "judge", "block", 0.0, "weapons")
    assert (score.trace_id, score.span_id, score.feature, score.user_id) == (
        s.trace_id, s.span_id, "docs", "u1")
    assert score.metadata["verdict_id"] == verdict.id
    with ReviewQueue(store) as queue:
        items = queue.items()
    assert [(i.source, i.action, i.category, i.key, i.decided_by) for i in items] == [
        ("judge", "block", "weapons", f"{verdict.id}:judge", "judge:anthropic")]
    assert items[0].response == "Here is a harmless-looking answer."
    out = list(monitor.tick(time.time_ns() + 61 * 10**9))  # after the emit interval
    rates = {m.labels["feature"]: m.value for m in out
             if isinstance(m, Metric) and m.name == "safety.judge_flag_rate"}
    assert rates == {"docs": 1.0, "_all": 1.0}
    assert monitor.stats()["judge_judged"] == 1


def test_sampling_rate_matches_the_setting(tmp_path: Path) -> None:
    calls: list[str] = []
    plugin = JudgePlugin("counting", lambda p, r: (calls.append(r), ("serve", "ok", None))[1])
    monitor = SafetyMonitor({"review": {"enabled": False},
                             "judge": {"enabled": True, "name": "counting", "sample_rate": 0.3,
                                       "max_queue": 10_000, "settings": {"x": 1}}},
                            plugin_manager=plugin_manager(plugin))
    start(tmp_path, monitors=[monitor])
    n = 2000
    for i in range(n):
        check("q", f"answer number {i}")
    assert monitor.flush(30)
    k = len(calls)
    assert binomtest(k, n, 0.3).pvalue > 1e-6, k
    assert plugin.settings == [{"x": 1}]  # the factory got judge.settings, once
    assert monitor.judge.stats()["queue_dropped"] == 0


def test_a_slow_judge_never_blocks_check_and_its_queue_is_bounded(tmp_path: Path) -> None:
    release = threading.Event()

    def slow(prompt: str, response: str) -> tuple[str, str, str | None]:
        release.wait(5)
        return ("serve", "ok", None)

    monitor = SafetyMonitor({"review": {"enabled": False},
                             "judge": {"enabled": True, "name": "slow", "sample_rate": 1.0,
                                       "max_queue": 3}},
                            plugin_manager=plugin_manager(JudgePlugin("slow", slow)))
    start(tmp_path, monitors=[monitor])
    timings = []
    for i in range(20):
        t0 = time.perf_counter()
        check("q", f"answer {i}")
        timings.append(time.perf_counter() - t0)
    assert max(timings) < 0.05  # the judge waits for 5 s; check() does not
    release.set()
    assert monitor.flush(10)
    stats = monitor.judge.stats()
    assert stats["queue_dropped"] >= 16  # 3 queued + at most 1 in the judge's hands
    assert stats["judged"] + stats["queue_dropped"] == 20


def test_failing_or_unknown_judges_are_counted_not_raised(tmp_path: Path) -> None:
    def broken(prompt: str, response: str) -> Any:
        raise RuntimeError("judge down")

    answers: list[Any] = ["serve", ("block",), ("maybe", "x", None)]
    monitor = SafetyMonitor({"review": {"enabled": False},
                             "judge": {"enabled": True, "name": "broken", "sample_rate": 1.0}},
                            plugin_manager=plugin_manager(JudgePlugin("broken", broken)))
    odd = SafetyMonitor({"review": {"enabled": False},
                         "judge": {"enabled": True, "name": "odd", "sample_rate": 1.0}},
                        plugin_manager=plugin_manager(
                            JudgePlugin("odd", lambda p, r: answers.pop(0))))
    memory = start(tmp_path, monitors=[monitor])
    for _ in range(3):
        assert check("q", "fine").action == "serve"
    assert monitor.flush(10)
    assert (monitor.judge.failures, monitor.judge.judged) == (3, 0)
    for _ in range(3):
        odd.offer(check("q", "fine"), "q", "fine")
    assert odd.flush(10)
    assert (odd.judge.failures, odd.judge.judged) == (3, 0)
    llmvigil.flush()
    assert [sc for sc in memory.scores if sc.kind == "judge"] == []

    unknown = SafetyMonitor({"judge": {"enabled": True, "name": "nope", "sample_rate": 1.0}},
                            plugin_manager=plugin_manager())
    start(tmp_path, monitors=[unknown])
    check("q", "fine")
    check("q", "fine")
    assert unknown.flush(10)
    assert unknown.judge.failures == 2
    message = unknown.judge.unavailable or ""
    assert "unknown judge 'nope'; known judges: anthropic" in message
