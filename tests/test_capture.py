"""@trace, span() and current_span(): records, nesting, streaming timing, failures."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import llmvigil
import numpy as np
import pytest
from llmvigil.adapters.memory import MemoryBackend


def spans_by_name(backend: MemoryBackend) -> dict[str, Any]:
    assert llmvigil.flush(10)
    return {s.name: s for s in backend.spans}


def test_trace_bare_and_with_arguments(memory: MemoryBackend) -> None:
    @llmvigil.trace
    def add(a: int, b: int = 2) -> int:
        return a + b

    @llmvigil.trace(name="extract", kind="llm", feature="docs", user_id="u1",
                    session_id="s1", tags=["t"], metadata={"m": 1})
    def extract(text: str) -> dict[str, str]:
        return {"date": text}

    assert add(1) == 3
    assert extract("01/02/2024") == {"date": "01/02/2024"}
    spans = spans_by_name(memory)
    a = spans[add.__qualname__]
    assert a.input == {"a": 1} and a.output == 3 and a.status == "ok"
    e = spans["extract"]
    assert (e.kind, e.feature, e.user_id, e.session_id) == ("llm", "docs", "u1", "s1")
    assert e.tags == ["t"] and e.metadata == {"m": 1}
    assert e.output == {"date": "01/02/2024"}
    assert e.end_ns >= e.start_ns > 0
    assert len(e.trace_id) == 32 and len(e.id) == 16


def test_wrapped_function_keeps_identity() -> None:
    @llmvigil.trace
    def documented(x: int) -> int:
        """Doc."""
        return x

    assert documented.__name__ == "documented" and documented.__doc__ == "Doc."


def test_capture_flags_turn_input_and_output_off(memory: MemoryBackend) -> None:
    @llmvigil.trace(capture_input=False, capture_output=False)
    def secret(x: str) -> str:
        return x

    secret("hidden")
    (s,) = spans_by_name(memory).values()
    assert s.input is None and s.output is None


def test_nesting_and_current_span(memory: MemoryBackend) -> None:
    seen = {}

    @llmvigil.trace(feature="f", user_id="u")
    def outer() -> None:
        seen["outer"] = llmvigil.current_span()
        inner()

    @llmvigil.trace
    def inner() -> None:
        s = llmvigil.current_span()
        assert s is not None
        s.set(model="m1", provider="p", tags=["x"], metadata={"k": 1}, custom="attr")
        s.set_usage(input_tokens=10, output_tokens=5, cache_read_tokens=3, cache_write_tokens=2)
        s.set_output("explicit")

    assert llmvigil.current_span() is None
    outer()
    assert llmvigil.current_span() is None
    spans = spans_by_name(memory)
    o, i = spans[outer.__qualname__], spans[inner.__qualname__]
    assert i.parent_id == o.id and i.trace_id == o.trace_id and o.parent_id is None
    assert (i.feature, i.user_id) == ("f", "u"), "attribution is inherited"
    assert (i.model, i.provider, i.tags, i.metadata) == ("m1", "p", ["x"], {"k": 1})
    assert i.attributes == {"custom": "attr"}
    assert i.usage is not None and i.usage.total_tokens == 20
    assert i.output == "explicit"


def test_user_exception_passes_through_unchanged(memory: MemoryBackend) -> None:
    class Boom(Exception):
        pass

    err = Boom("bad")

    @llmvigil.trace
    def fails() -> None:
        raise err

    with pytest.raises(Boom) as info:
        fails()
    assert info.value is err
    with pytest.raises(KeyError), llmvigil.span("block"):
        raise KeyError("k")
    spans = spans_by_name(memory)
    f = spans[fails.__qualname__]
    assert (f.status, f.error_type, f.error) == ("error", "test_user_exception_passes_through_"
                                                 "unchanged.<locals>.Boom", "bad")
    assert spans["block"].status == "error" and spans["block"].error_type == "KeyError"


async def test_async_function_and_gather_keep_parents(memory: MemoryBackend) -> None:
    @llmvigil.trace
    async def leaf(i: int) -> int:
        await asyncio.sleep(0.001 * (5 - i))
        return i

    @llmvigil.trace
    async def root() -> list[int]:
        return list(await asyncio.gather(*(leaf(i) for i in range(5))))

    assert await root() == [0, 1, 2, 3, 4]
    assert llmvigil.flush(10)
    r = next(s for s in memory.spans if s.name.endswith("root"))
    leaves = [s for s in memory.spans if s.name.endswith("leaf")]
    assert len(leaves) == 5 and all(s.parent_id == r.id for s in leaves)
    assert sorted(s.output for s in leaves) == [0, 1, 2, 3, 4]


async def test_create_task_keeps_parent(memory: MemoryBackend) -> None:
    @llmvigil.trace
    async def child() -> None:
        await asyncio.sleep(0)

    with llmvigil.span("parent") as p:
        task = asyncio.create_task(child())
    await task
    assert llmvigil.flush(10)
    c = next(s for s in memory.spans if s.name.endswith("child"))
    assert c.parent_id == p.span_id


def test_threads_keep_parent_with_run_in_context_and_executor(memory: MemoryBackend) -> None:
    @llmvigil.trace
    def work(i: int) -> int:
        return i

    with llmvigil.span("root") as root:
        t = threading.Thread(target=llmvigil.run_in_context(work, 1))
        t.start()
        t.join()
        with llmvigil.ContextExecutor(2) as pool:
            assert list(pool.map(work, [2, 3])) == [2, 3]
        with ThreadPoolExecutor(1) as plain:  # a plain pool has no context: a new trace
            plain.submit(work, 4).result()
    assert llmvigil.flush(10)
    works = {s.output: s for s in memory.spans if s.name.endswith("work")}
    assert all(works[i].parent_id == root.span_id for i in (1, 2, 3))
    assert works[4].parent_id is None and works[4].trace_id != root.trace_id


def test_generator_records_ttft_tbt_and_output(memory: MemoryBackend) -> None:
    ttft, gap = 0.05, 0.02

    @llmvigil.trace(kind="llm", name="stream")
    def stream(n: int):  # type: ignore[no-untyped-def]
        time.sleep(ttft)
        for i in range(n):
            if i:
                time.sleep(gap)
            yield f"t{i} "

    assert "".join(stream(6)) == "t0 t1 t2 t3 t4 t5 "
    s = spans_by_name(memory)["stream"]
    assert s.output == "t0 t1 t2 t3 t4 t5 "
    assert s.stream is not None and s.stream.items == 6 and s.stream.n == 5
    assert s.ttft_s == pytest.approx(ttft, rel=0.5)
    assert s.stream.mean_s == pytest.approx(gap, rel=0.5)
    assert s.stream.max_s >= s.stream.p95_s >= s.stream.p50_s > 0
    assert s.stream.stalls == 0


def test_stream_stats_match_numpy() -> None:
    from llmvigil.core.capture import StreamTimer

    rng = np.random.default_rng(1)
    gaps = rng.integers(1_000_000, 90_000_000, size=101)
    timer = StreamTimer(0)
    t = 5_000_000
    timer.tick(t)
    for g in gaps:
        t += int(g)
        timer.tick(t)
    st = timer.stats(stall_threshold_s=0.08)
    assert timer.ttft_s == pytest.approx(0.005)
    assert st.n == 101 and st.items == 102
    assert st.mean_s == pytest.approx(gaps.mean() / 1e9)
    assert st.p50_s == pytest.approx(np.percentile(gaps, 50) / 1e9)
    assert st.p95_s == pytest.approx(np.percentile(gaps, 95) / 1e9)
    assert st.max_s == pytest.approx(gaps.max() / 1e9)
    assert st.stalls == int((gaps > 80_000_000).sum())


def test_generator_closed_early_or_raising_ends_span(memory: MemoryBackend) -> None:
    @llmvigil.trace(name="early")
    def early():  # type: ignore[no-untyped-def]
        yield from range(100)

    @llmvigil.trace(name="raises")
    def raises():  # type: ignore[no-untyped-def]
        yield 1
        raise ValueError("midway")

    g = early()
    assert next(g) == 0 and next(g) == 1
    g.close()
    with pytest.raises(ValueError, match="midway"):
        list(raises())
    spans = spans_by_name(memory)
    assert spans["early"].status == "ok" and spans["early"].stream.items == 2
    assert spans["raises"].status == "error" and spans["raises"].error == "midway"


def test_generator_resumed_in_another_thread_keeps_parent(memory: MemoryBackend) -> None:
    @llmvigil.trace(name="gen")
    def gen():  # type: ignore[no-untyped-def]
        for i in range(3):
            with llmvigil.span(f"inner{i}"):
                pass
            yield i

    with llmvigil.span("owner") as owner:
        g = gen()
    assert next(g) == 0
    result: list[int] = []
    t = threading.Thread(target=lambda: result.extend(g))
    t.start()
    t.join()
    spans = spans_by_name(memory)
    assert result == [1, 2]
    assert spans["gen"].parent_id == owner.span_id
    assert all(spans[f"inner{i}"].parent_id == spans["gen"].id for i in range(3))


async def test_async_generator_streams_and_nests(memory: MemoryBackend) -> None:
    @llmvigil.trace(kind="llm", name="agen")
    async def agen(n: int):  # type: ignore[no-untyped-def]
        for i in range(n):
            await asyncio.sleep(0.005)
            with llmvigil.span(f"step{i}"):
                pass
            yield i

    items = [i async for i in agen(4)]
    assert items == [0, 1, 2, 3]
    spans = spans_by_name(memory)
    a = spans["agen"]
    assert a.stream.items == 4 and a.ttft_s > 0 and a.output == [0, 1, 2, 3]
    assert all(spans[f"step{i}"].parent_id == a.id for i in range(4))


async def test_cancelled_task_records_span(memory: MemoryBackend) -> None:
    @llmvigil.trace(name="slow")
    async def slow() -> None:
        await asyncio.sleep(10)

    task = asyncio.create_task(slow())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    s = spans_by_name(memory)["slow"]
    assert s.status == "error" and s.error_type == "CancelledError"


class _BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr explodes")


def test_awkward_values_are_recorded_safely(memory: MemoryBackend) -> None:
    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    huge = "x" * 100_000

    @llmvigil.trace(name="awkward")
    def awkward(*args: Any) -> Any:
        return {"nan": math.nan, "inf": math.inf, "bytes": b"\x00\xff", "bad": _BadRepr()}

    awkward(cyclic, huge, b"raw", _BadRepr(), {1: "int key"})
    s = spans_by_name(memory)["awkward"]
    from llmvigil.core.model import decode, encode

    assert decode(encode(s)) == s  # everything is plain, encodable data now
    args = s.input["args"]
    assert args[0] == [1, "<cycle list>"]
    assert len(args[1]) < 5000 and "truncated 95904 chars" in args[1]
    assert "failing __repr__" in args[3]
    assert s.output["nan"] == "nan" and s.output["inf"] == "inf"


def test_values_of_the_wrong_type_are_mended_or_kept_never_raised(
        memory: MemoryBackend, caplog: pytest.LogCaptureFixture) -> None:
    from llmvigil.core import capture, runtime

    key = "span.set_usage(input_tokens)"
    counted = capture.internal_errors.get(key, 0)
    capture.internal_errors.pop(key, None)  # so that this test sees the first warning
    with caplog.at_level("WARNING", logger="llmvigil"):
        with llmvigil.span("counts", kind="llm", model="claude-sonnet-4-5") as s:
            s.set_usage(input_tokens="abc", output_tokens="12", cache_read_tokens=-5,
                        cache_write_tokens=math.nan)
            s.set_usage(input_tokens=np.int64(7))
        with llmvigil.span("fields", kind="llm", model=123, user_id=42, feature=7.5,
                           ttft_s="fast", cost_usd="0.25", end_ns=None, tags=5,
                           metadata=[1], usage="lots") as f:
            f.set(stream="x")
        with llmvigil.span("counts again", kind="llm") as again:
            again.set_usage(input_tokens="abc")
    got = spans_by_name(memory)
    counts = got["counts"]
    assert (counts.usage.input_tokens, counts.usage.output_tokens,
            counts.usage.cache_read_tokens, counts.usage.cache_write_tokens) == (7, 12, 0, 0)
    assert counts.attributes["usage.input_tokens"] == "abc"
    assert counts.attributes["usage.cache_read_tokens"] == -5
    assert counts.attributes["usage.cache_write_tokens"] == "nan"  # NaN, made plain data
    fields = got["fields"]
    assert (fields.model, fields.user_id, fields.feature) == ("123", "42", "7.5")
    assert fields.cost_usd is not None and fields.ttft_s is None
    assert {k: fields.attributes[k] for k in ("ttft_s", "tags", "metadata", "usage", "stream")} \
        == {"ttft_s": "fast", "tags": 5, "metadata": [1], "usage": "lots", "stream": "x"}
    assert got["counts again"].attributes["usage.input_tokens"] == "abc"
    warned = [r.getMessage() for r in caplog.records if r.getMessage().startswith("llmvigil: ")]
    assert sum("input_tokens='abc'" in w for w in warned) == 1, "logged once per place"
    assert any("span field 'ttft_s' cannot hold 'fast'" in w for w in warned)
    assert capture.internal_errors[key] == 2, "counted every time"
    capture.internal_errors[key] += counted
    assert runtime.get_runtime().pipeline.status()["monitor_errors"] == 0


def test_records_from_the_api_always_decode_whatever_the_argument_types(
        memory: MemoryBackend, caplog: pytest.LogCaptureFixture) -> None:
    from llmvigil.core.model import decode, encode

    with caplog.at_level("WARNING", logger="llmvigil"):
        with llmvigil.span(123, kind="llm"):
            pass
        with llmvigil.span("odd kind", kind="bogus"):  # type: ignore[arg-type]
            pass
        assert llmvigil.session_event("s1", None) is None  # type: ignore[arg-type]
        llmvigil.session_event(7, 5, user_id=8, feature=9)  # type: ignore[arg-type]
        llmvigil.feedback("ab" * 8, kind=None, category=4)  # type: ignore[arg-type]
        llmvigil.feedback("ab" * 8, kind=3, correction=5, user_id=6)  # type: ignore[arg-type]
    assert llmvigil.flush(10)
    with memory.lock:
        records = [*memory.spans, *memory.scores, *memory.session_events]
    for record in records:
        assert decode(encode(record)) == record, record
    got = spans_by_name(memory)
    assert got["123"].kind == "llm"
    assert (got["odd kind"].kind, got["odd kind"].attributes["kind"]) == ("span", "bogus")
    assert [(e.session_id, e.event, e.user_id, e.feature) for e in memory.session_events] \
        == [("7", "5", "8", "9")]
    assert [(sc.kind, sc.category, sc.correction, sc.user_id) for sc in memory.scores] \
        == [("custom", "4", None, None), ("3", None, "5", "6")]
    assert any("session_event() needs an event" in r.getMessage() for r in caplog.records)
    assert any("span kind 'bogus'" in r.getMessage() for r in caplog.records)


def test_set_keeps_an_unknown_kind_as_an_attribute_like_span_does(memory: MemoryBackend) -> None:
    with llmvigil.span("relabelled", kind="llm") as s:
        s.set(kind="bogus")
    with llmvigil.span("known", kind="span") as k:
        k.set(kind="tool")
    got = spans_by_name(memory)
    assert (got["relabelled"].kind, got["relabelled"].attributes["kind"]) == ("llm", "bogus")
    assert got["known"].kind == "tool" and "kind" not in got["known"].attributes


def test_no_exception_from_llmvigil_reaches_user_code(memory: MemoryBackend) -> None:
    # A processor that always fails must not affect the application.
    from llmvigil.core import runtime

    rt = runtime.get_runtime()
    assert rt is not None

    def broken(record: Any) -> Any:
        raise RuntimeError("processor bug")

    rt.pipeline.processors.insert(0, broken)

    @llmvigil.trace
    def fine(x: int) -> int:
        return x + 1

    assert fine(1) == 2
    assert llmvigil.flush(5)
    assert rt.pipeline.counters.processor_errors >= 1


def test_trace_fields_are_checked_at_decoration(memory: MemoryBackend) -> None:
    for bad, message in ((dict(tags=5), "trace(tags=...): expected a list of strings, got 5"),
                         (dict(metadata=["k"]), "trace(metadata=...): expected a mapping")):
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            llmvigil.trace(**bad)(lambda: None)

    @llmvigil.trace(name=99, tags="prod", feature=12, user_id=7, metadata={"k": 1})
    def call() -> int:
        return 1

    assert call() == 1
    s = spans_by_name(memory)["99"]
    assert (s.tags, s.feature, s.user_id, s.metadata) == (["prod"], "12", "7", {"k": 1})


def test_invalid_kind_is_a_clear_error_at_decoration() -> None:
    with pytest.raises(ValueError, match="kind must be one of"):
        llmvigil.trace(kind="llmm")(lambda: None)
