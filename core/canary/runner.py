"""Running canaries: call each case's target, check it, compare with the last run, report.

:func:`run_suite` runs the cases of a :class:`~.spec.CanarySuite` concurrently on an
asyncio loop (at most ``concurrency`` at once; sync callables in threads that carry
the context, see :class:`Targets`), each inside a
``span("canary:<name>", kind="chain")``. :func:`run_once` adds what a scheduled run
needs: it compares the outcomes with the latest stored ones (:class:`~.history.History`),
emits a :class:`~llmvigil.core.model.Score` per case (kind ``canary``), one
:class:`~llmvigil.core.model.Alert` per case whose pass/fail or extracted values
changed, a ``canary.pass_rate`` :class:`~llmvigil.core.model.Metric`, and stores the run.

:class:`Targets` calls targets and is shared with the golden-set evaluation.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from .. import capture
from ..context import run_in_context
from ..model import Alert, Metric, Score, new_span_id, now_ns
from .expectations import Evaluation, Failure, as_text, evaluate, values_differ
from .history import History, StoredResult
from .spec import CanaryCase, CanarySuite, TargetSpec

__all__ = [
    "CaseResult",
    "Change",
    "RunReport",
    "Targets",
    "compare",
    "run_once",
    "run_suite",
]

#: Characters of a case's output kept in its Score's metadata.
OUTPUT_PREVIEW_CHARS = 500
_SEVERITY_ORDER = ("info", "warning", "error")


class Targets:
    """Calls targets for one run: async callables on the loop, sync ones each in a
    daemon thread that carries the caller's context (:func:`run_in_context`), and
    Anthropic models through one instrumented client per endpoint.

    Daemon threads, not a pool: a sync target that hangs past its timeout must not
    keep the process from exiting. Use as an async context manager, inside the loop
    that runs the calls.
    """

    def __init__(self) -> None:
        self._clients: dict[tuple[str | None, str, float], Any] = {}

    async def __aenter__(self) -> Targets:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def call(self, target: TargetSpec, value: Any) -> Any:
        """Run ``target`` on ``value`` (a prompt string, a messages list, any input)."""
        if target.fn is not None:
            return await self._call_function(target.fn, value, target.kwargs)
        return await self._call_model(target, value)

    async def _call_function(self, fn: Callable[..., Any], value: Any,
                             kwargs: Mapping[str, Any]) -> Any:
        if inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
                getattr(fn, "__call__", None)):  # noqa: B004 - an async __call__ method
            result = fn(value, **kwargs)
        else:
            result = await _in_thread(run_in_context(fn, value, **kwargs))
        if inspect.isawaitable(result):
            result = await result
        return result

    def _client(self, target: TargetSpec) -> Any:
        key = (target.base_url, target.api_key_env, target.timeout_s)
        client = self._clients.get(key)
        if client is None:
            import anthropic

            from ..instrument import instrument

            client = anthropic.AsyncAnthropic(
                api_key=os.environ.get(target.api_key_env), base_url=target.base_url,
                timeout=target.timeout_s, max_retries=2)
            instrument(client)
            self._clients[key] = client
        return client

    async def _call_model(self, target: TargetSpec, value: Any) -> str:
        messages, system = _anthropic_messages(value, target.system)
        params: dict[str, Any] = {"model": target.model, "max_tokens": target.max_tokens,
                                  "messages": messages}
        if system:
            params["system"] = system
        if target.temperature is not None:
            # Sent raw: anthropic 2.x no longer has a temperature argument, and recent
            # models reject sampling parameters; older ones still honour it.
            params["extra_body"] = {"temperature": target.temperature}
        message = await self._client(target).messages.create(**params)
        return "".join(block.text for block in message.content
                       if getattr(block, "type", None) == "text")

    async def aclose(self) -> None:
        """Close the model clients."""
        clients, self._clients = list(self._clients.values()), {}
        for client in clients:
            try:
                await client.close()
            except Exception as exc:
                capture.internal_error("canary.client_close", exc)


async def _in_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a new daemon thread and await its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(ok: bool, value: Any) -> None:
        if future.done():
            return  # cancelled: the case timed out or the run was interrupted
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def work() -> None:
        try:
            value = fn()
        except BaseException as exc:
            outcome: tuple[bool, Any] = (False, exc)
        else:
            outcome = (True, value)
        # A closed loop raises RuntimeError: nobody waits for this result any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=work, name="vigil-target", daemon=True).start()
    return await future


def _anthropic_messages(value: Any, system: str | None) -> tuple[list[dict[str, Any]], str]:
    """The Messages API ``messages`` and ``system`` for a prompt or a messages list."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}], system or ""
    if isinstance(value, list) and all(isinstance(m, Mapping) for m in value):
        systems = [str(m.get("content", "")) for m in value if m.get("role") == "system"]
        rest = [{"role": m.get("role"), "content": m.get("content")} for m in value
                if m.get("role") != "system"]
        return rest, "\n\n".join([*([system] if system else []), *systems])
    raise TypeError(f"a model target takes a prompt string or a list of messages, "
                    f"got {type(value).__name__}")


@dataclass
class CaseResult:
    """The outcome of one case in one run."""

    case: str
    passed: bool
    failures: list[Failure] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    output: str = ""
    duration_s: float = 0.0
    trace_id: str | None = None
    span_id: str | None = None
    feature: str = "canary"
    target: str = ""

    @property
    def label(self) -> str:
        """``pass``, ``fail`` or ``error``."""
        return "pass" if self.passed else "error" if self.error else "fail"

    def stored(self, run_id: str, time_ns: int) -> StoredResult:
        """The row kept in the history."""
        return StoredResult(case=self.case, passed=self.passed, values=self.values,
                            failures=tuple(f.as_dict() for f in self.failures),
                            error=self.error, time_ns=time_ns, run_id=run_id)


_MISSING: Any = object()


@dataclass(frozen=True)
class Change:
    """A difference between a case's latest stored outcome and this run's."""

    case: str
    kind: Literal["status", "value"]
    key: str | None
    before: Any
    after: Any

    @staticmethod
    def _show(value: Any) -> str:
        if value is _MISSING:
            return "(missing)"
        if isinstance(value, bool):
            return "pass" if value else "fail"
        text = json.dumps(value, ensure_ascii=False, default=str)
        return text if len(text) <= 60 else text[:57] + "..."

    @property
    def before_text(self) -> str:
        """The old value as shown to a person."""
        return self._show(self.before)

    @property
    def after_text(self) -> str:
        """The new value as shown to a person."""
        return self._show(self.after)

    def describe(self) -> str:
        """One line: ``status: pass -> fail`` or ``date: "2024-04-03" -> "2024-03-04"``."""
        what = "status" if self.kind == "status" else self.key
        return f"{what}: {self.before_text} -> {self.after_text}"

    def as_dict(self) -> dict[str, Any]:
        """Plain data for alert metadata and JSON output."""
        return {"case": self.case, "kind": self.kind, "key": self.key,
                "before": None if self.before is _MISSING else self.before,
                "after": None if self.after is _MISSING else self.after,
                "before_missing": self.before is _MISSING,
                "after_missing": self.after is _MISSING}


def compare(previous: Mapping[str, StoredResult], results: Sequence[CaseResult],
            tolerances: Mapping[str, Mapping[str, float]] | None = None) -> list[Change]:
    """What changed since the previous outcomes: pass/fail, and extracted values.

    Values are compared only when both runs got an output from the target (an error
    is a status change, not a value change); a value that appears or disappears is a
    change. ``tolerances`` (case -> key -> allowed difference) makes numbers within
    it count as unchanged. Cases without a previous outcome have no changes.
    """
    changes: list[Change] = []
    for result in results:
        before = previous.get(result.case)
        if before is None:
            continue
        if before.passed != result.passed:
            changes.append(Change(result.case, "status", None, before.passed, result.passed))
        if before.error is not None or result.error is not None:
            continue
        allowed = (tolerances or {}).get(result.case, {})
        for key in sorted(set(before.values) | set(result.values)):
            old = before.values.get(key, _MISSING)
            new = result.values.get(key, _MISSING)
            if old is _MISSING or new is _MISSING:
                if old is not new:
                    changes.append(Change(result.case, "value", key, old, new))
            elif values_differ(old, new, allowed.get(key)):
                changes.append(Change(result.case, "value", key, old, new))
    return changes


async def _run_case(case: CanaryCase, targets: Targets, suite: str) -> CaseResult:
    result = CaseResult(case=case.name, passed=False, feature=case.feature,
                        target=case.target.label)
    start = time.perf_counter()
    evaluation: Evaluation | None = None
    try:
        with capture.span(f"canary:{case.name}", kind="chain", feature=case.feature) as span:
            result.trace_id, result.span_id = span.trace_id, span.span_id
            span.set_input(case.input)
            span.set(tags=["canary"], metadata={"canary.suite": suite,
                                                "canary.target": case.target.label})
            output = await asyncio.wait_for(targets.call(case.target, case.input),
                                            timeout=case.target.timeout_s)
            span.set_output(output)
            result.output = as_text(output)
            evaluation = evaluate(case.expect, output, case.predicates)
            span.set(metadata={"canary.passed": evaluation.passed})
    except asyncio.TimeoutError:
        result.error = f"timed out after {case.target.timeout_s:g}s"
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.duration_s = time.perf_counter() - start
    if evaluation is not None:
        result.passed = evaluation.passed
        result.failures = evaluation.failures
        # As the history will hold them, so a value compares equal to its stored self.
        result.values = json.loads(json.dumps(evaluation.values, default=str))
    else:
        result.failures = [Failure("target", result.error or "no output")]
    return result


async def run_suite(suite: CanarySuite, *, concurrency: int | None = None,
                    on_result: Callable[[CaseResult], None] | None = None) -> list[CaseResult]:
    """Run every case once, at most ``concurrency`` (default: the suite's) at a time.

    Returns the results in the order of the cases; ``on_result`` is called as each
    case finishes (for a progress bar). A target that raises or times out makes its
    case fail with the error; nothing a target does escapes.
    """
    limit = asyncio.Semaphore(concurrency or suite.concurrency)

    async def one(case: CanaryCase, targets: Targets) -> CaseResult:
        async with limit:
            result = await _run_case(case, targets, suite.name)
        if on_result is not None:
            on_result(result)
        return result

    async with Targets() as targets:
        return list(await asyncio.gather(*(one(c, targets) for c in suite.cases)))


def _score(result: CaseResult, suite: CanarySuite, run_id: str) -> Score:
    metadata: dict[str, Any] = {
        "suite": suite.name, "case": result.case, "run_id": run_id,
        "target": result.target, "duration_s": round(result.duration_s, 6),
        "failed": [f.as_dict() for f in result.failures],
        "values": result.values,
        "output": result.output[:OUTPUT_PREVIEW_CHARS],
    }
    if result.error:
        metadata["error"] = result.error
    return Score(
        name=f"canary:{result.case}", kind="canary", source="canary",
        value=1.0 if result.passed else 0.0, label="pass" if result.passed else "fail",
        trace_id=result.trace_id, span_id=result.span_id, feature=result.feature,
        comment="; ".join(f"{f.expectation}: {f.message}" for f in result.failures) or None,
        metadata=metadata,
    )


def _alert(case: str, changes: Sequence[Change], result: CaseResult, suite: CanarySuite,
           run_id: str) -> Alert:
    status = next((c for c in changes if c.kind == "status"), None)
    # No status change: only values moved. Otherwise a recovery, or a new failure.
    severity = "warning" if status is None else "info" if status.after else "error"
    what = "; ".join(c.describe() for c in changes)
    return Alert(
        rule="canary_change", severity=severity,
        message=f"canary {suite.name}/{case} changed since the last run: {what}",
        value=1.0 if result.passed else 0.0,
        labels={"suite": suite.name, "case": case, "feature": result.feature,
                "change": ",".join(sorted({c.kind for c in changes}))},
    )


@dataclass
class RunReport:
    """One full run: results, changes against the previous run, and the exit status."""

    suite: str
    run_id: str
    time_ns: int
    results: list[CaseResult]
    changes: list[Change]
    previous_time_ns: int | None
    alerts: list[Alert] = field(default_factory=list)

    @property
    def failed(self) -> list[CaseResult]:
        """The cases that did not pass."""
        return [r for r in self.results if not r.passed]

    @property
    def pass_rate(self) -> float:
        """The share of cases that passed."""
        return sum(r.passed for r in self.results) / len(self.results) if self.results else 1.0

    @property
    def exit_code(self) -> int:
        """0 when every case passed and nothing changed, else 1."""
        return 1 if self.failed or self.changes else 0


def run_once(suite: CanarySuite, history: History | None, *, concurrency: int | None = None,
             on_result: Callable[[CaseResult], None] | None = None,
             emit: Callable[[Any], None] = capture.emit) -> RunReport:
    """Run the suite, compare with the stored last run, publish and store the outcome.

    Emits (through ``emit``, the pipeline by default) a Score per case, an Alert per
    changed case and a ``canary.pass_rate`` Metric; stores the run in ``history``.
    """
    run_id = new_span_id()
    time_ns = now_ns()
    results = asyncio.run(run_suite(suite, concurrency=concurrency, on_result=on_result))
    previous = history.last_results(suite.name) if history is not None else {}
    tolerances = {c.name: c.expect.tolerances() for c in suite.cases}
    changes = compare(previous, results, tolerances)
    report = RunReport(suite.name, run_id, time_ns, results, changes,
                       max((p.time_ns for p in previous.values()), default=None))
    for result in results:
        emit(_score(result, suite, run_id))
    by_case: dict[str, list[Change]] = {}
    for change in changes:
        by_case.setdefault(change.case, []).append(change)
    for result in results:
        if result.case in by_case:
            alert = _alert(result.case, by_case[result.case], result, suite, run_id)
            report.alerts.append(alert)
            emit(alert)
    emit(Metric(name="canary.pass_rate", value=report.pass_rate,
                labels={"feature": suite.feature, "suite": suite.name}))
    if history is not None:
        history.record_run(suite.name, [r.stored(run_id, time_ns) for r in results])
    return report
