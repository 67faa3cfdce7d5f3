"""llmvigil.compat: vendor decorators record what @llmvigil.trace records."""

from __future__ import annotations

import asyncio
import inspect
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import llmvigil
import llmvigil.compat as compat
import pytest
from llmvigil.adapters.memory import MemoryBackend
from llmvigil.compat import CompatWarning
from llmvigil.compat.langfuse import OBSERVATION_TYPES, observe
from llmvigil.compat.langsmith import RUN_TYPES, traceable
from llmvigil.compat.weave import KINDS, op
from llmvigil.core import capture
from llmvigil.core.model import Span

#: Fields a compat span must share with its @llmvigil.trace twin (ids and times differ).
SAME = ("name", "kind", "tags", "metadata", "input", "output", "status", "error",
        "error_type", "feature", "user_id", "session_id", "attributes", "parent_id")


@pytest.fixture(autouse=True)
def _fresh_warnings() -> Iterator[None]:
    compat._warned.clear()
    yield
    compat._warned.clear()


def spans(memory: MemoryBackend) -> list[Span]:
    assert llmvigil.flush(10)
    out = list(memory.spans)
    memory.spans.clear()
    return out


def twin_spans(memory: MemoryBackend, vendor: Callable[..., Any], native: Callable[..., Any],
               *args: Any, **kwargs: Any) -> tuple[Span, Span]:
    """Call both decorated versions the same way; return their spans."""
    for fn in (vendor, native):
        result = fn(*args, **kwargs)
        if inspect.iscoroutine(result):
            asyncio.run(result)
        elif inspect.isgenerator(result):
            list(result)
    a, b = spans(memory)
    return a, b


def assert_same(a: Span, b: Span) -> None:
    for f in SAME:
        assert getattr(a, f) == getattr(b, f), f
    assert (a.stream is None) == (b.stream is None)


def answer(question: str, k: int = 3) -> dict[str, Any]:
    return {"answer": question.upper(), "k": k}


async def answer_async(question: str) -> str:
    await asyncio.sleep(0)
    return question[::-1]


def tokens(n: int) -> Iterator[str]:
    yield from (f"t{i}" for i in range(n))


# -- the same spans as @llmvigil.trace ----------------------------------------------------


def test_traceable_forms_match_trace(memory: MemoryBackend) -> None:
    cases = [
        (traceable(answer), llmvigil.trace(kind="chain")(answer)),
        (traceable()(answer), llmvigil.trace(kind="chain")(answer)),
        (traceable("tool")(answer), llmvigil.trace(kind="tool")(answer)),
        (traceable(run_type="llm", name="ask", metadata={"v": 2}, tags=["a", "b"])(answer),
         llmvigil.trace(kind="llm", name="ask", metadata={"v": 2}, tags=["a", "b"])(answer)),
        (traceable(run_type="retriever", feature="search")(answer),
         llmvigil.trace(kind="retriever", feature="search")(answer)),
    ]
    for vendor, native in cases:
        a, b = twin_spans(memory, vendor, native, "why?", k=5)
        assert_same(a, b)
        assert a.input == {"question": "why?", "k": 5} and a.output == {"answer": "WHY?",
                                                                          "k": 5}


def test_observe_forms_match_trace(memory: MemoryBackend) -> None:
    cases = [
        (observe(answer), llmvigil.trace(answer)),
        (observe()(answer), llmvigil.trace()(answer)),
        (observe(name="gen", as_type="generation")(answer),
         llmvigil.trace(name="gen", kind="llm")(answer)),
        (observe(as_type="retriever", capture_input=False)(answer),
         llmvigil.trace(kind="retriever", capture_input=False)(answer)),
        (observe(capture_output=False, metadata={"m": 1}, tags=["t"])(answer),
         llmvigil.trace(capture_output=False, metadata={"m": 1}, tags=["t"])(answer)),
    ]
    for vendor, native in cases:
        assert_same(*twin_spans(memory, vendor, native, "q"))


def test_op_forms_match_trace(memory: MemoryBackend) -> None:
    cases = [
        (op(answer), llmvigil.trace(answer)),
        (op()(answer), llmvigil.trace()(answer)),
        (op(name="retrieve", kind="search")(answer),
         llmvigil.trace(name="retrieve", kind="retriever")(answer)),
        (op(kind="LLM", call_display_name="Ask")(answer),
         llmvigil.trace(kind="llm", name="Ask")(answer)),
    ]
    for vendor, native in cases:
        assert_same(*twin_spans(memory, vendor, native, "q"))


def test_async_generators_and_errors_match_trace(memory: MemoryBackend) -> None:
    for deco, native in ((traceable(run_type="llm"), llmvigil.trace(kind="llm")),
                         (observe(as_type="generation"), llmvigil.trace(kind="llm")),
                         (op(kind="llm"), llmvigil.trace(kind="llm"))):
        wrapped = deco(answer_async)
        assert inspect.iscoroutinefunction(wrapped)
        assert_same(*twin_spans(memory, wrapped, native(answer_async), "abc"))
        a, b = twin_spans(memory, deco(tokens), native(tokens), 4)
        assert_same(a, b)
        assert a.output == "t0t1t2t3" and a.stream is not None and a.stream.items == 4

        def boom(x: int) -> int:
            raise KeyError(x)

        for fn in (deco(boom), native(boom)):
            with pytest.raises(KeyError) as info:
                fn(7)
            assert info.value.args == (7,)  # the user's exception, unchanged
        a, b = spans(memory)
        assert_same(a, b)
        assert (a.status, a.error_type) == ("error", "KeyError")


def test_nesting_is_the_same_as_trace(memory: MemoryBackend) -> None:
    @observe(as_type="tool")
    def leaf(x: int) -> int:
        return x + 1

    @traceable(run_type="chain")
    def middle(x: int) -> int:
        return leaf(x) * 2

    @op
    def root(x: int) -> int:
        return middle(x)

    assert root(1) == 4
    by_name = {s.name: s for s in spans(memory)}
    r, m, leaf_span = by_name[root.__qualname__], by_name[middle.__qualname__], by_name[
        leaf.__qualname__]
    assert r.parent_id is None and m.parent_id == r.id and leaf_span.parent_id == m.id
    assert len({r.trace_id, m.trace_id, leaf_span.trace_id}) == 1


# -- kind mappings ----------------------------------------------------------------------------


def test_kind_tables(memory: MemoryBackend) -> None:
    expected = []
    for run_type, kind in RUN_TYPES.items():
        traceable(run_type=run_type, name=f"ls-{run_type}")(answer)("q")
        expected.append((f"ls-{run_type}", kind))
    for as_type, kind in OBSERVATION_TYPES.items():
        observe(as_type=as_type, name=f"lf-{as_type}")(answer)("q")
        expected.append((f"lf-{as_type}", kind))
    for weave_kind, kind in KINDS.items():
        op(kind=weave_kind.upper(), name=f"w-{weave_kind}")(answer)("q")
        expected.append((f"w-{weave_kind}", kind))
    assert sorted((s.name, s.kind) for s in spans(memory)) == sorted(expected)
    assert dict(RUN_TYPES) == {"llm": "llm", "chain": "chain", "tool": "tool",
                               "retriever": "retriever", "embedding": "embedding",
                               "prompt": "span", "parser": "span"}
    assert OBSERVATION_TYPES["generation"] == "llm" and KINDS["search"] == "retriever"


def test_unknown_types_record_span_and_warn(memory: MemoryBackend) -> None:
    with pytest.warns(CompatWarning, match="run_type='banana'") as caught:
        traceable(run_type="banana")(answer)("q")
    assert caught[0].filename == __file__
    with pytest.warns(CompatWarning, match="as_type='thing'"):
        observe(as_type="thing")(answer)("q")
    with pytest.warns(CompatWarning, match="kind='robot'"):
        op(kind="robot")(answer)("q")
    assert [s.kind for s in spans(memory)] == ["span", "span", "span"]


# -- honoured and ignored arguments -------------------------------------------------------------


def test_ignored_arguments_warn_once_each(memory: MemoryBackend) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for _ in range(3):
            traceable(client=object(), project_name="p", reduce_fn=list)(answer)("q")
            observe(transform_to_string="".join)(answer)("q")
            op(tracing_sample_rate=0.1, color="red", enable_code_capture=False)(answer)("q")
    messages = sorted(str(w.message) for w in caught if w.category is CompatWarning)
    assert len(messages) == 7
    for vendor, name in (("langsmith", "client"), ("langsmith", "project_name"),
                         ("langsmith", "reduce_fn"), ("langfuse", "transform_to_string"),
                         ("weave", "tracing_sample_rate"), ("weave", "color"),
                         ("weave", "enable_code_capture")):
        assert sum(f"compat.{vendor}: argument '{name}'" in m for m in messages) == 1
    assert len(spans(memory)) == 9  # ignored arguments never stop the tracing


def test_langsmith_extra_is_popped_and_honoured(memory: MemoryBackend) -> None:
    @traceable(run_type="llm", metadata={"base": 1}, tags=["t0"])
    def strict(x: int) -> int:  # no **kwargs: langsmith_extra must never reach it
        return x * 2

    with pytest.warns(CompatWarning, match=r"langsmith_extra\['run_id'\]") as caught:
        assert strict(3, langsmith_extra={"metadata": {"call": 2}, "tags": ["t1"],
                                          "name": "renamed", "run_id": "x"}) == 6
    assert caught[0].filename == __file__  # points at the caller
    assert strict(4) == 8
    first, second = spans(memory)
    assert (first.name, first.metadata, first.tags) == ("renamed", {"base": 1, "call": 2},
                                                        ["t0", "t1"])
    assert first.input == {"x": 3} and first.kind == "llm"
    assert (second.name, second.metadata, second.tags) == (strict.__qualname__, {"base": 1},
                                                         ["t0"])


def test_per_call_options_of_the_wrong_type_never_fail_the_call(memory: MemoryBackend) -> None:
    @traceable(run_type="llm", name="base", tags=["t0"])
    def double(x: int) -> int:
        return x * 2

    with pytest.warns(CompatWarning, match="per-call name, tags or metadata of the wrong type"):
        assert double(1, langsmith_extra={"metadata": ["not", "a", "mapping"]}) == 2
        assert double(2, langsmith_extra={"tags": 5}) == 4
    assert double(3, langsmith_extra={"tags": "solo", "name": 7}) == 6
    got = [(s.name, s.tags, s.metadata) for s in spans(memory)]
    assert got == [("base", ["t0"], {}), ("base", ["t0"], {}), ("7", ["t0", "solo"], {})]


def test_langfuse_call_keywords_are_popped(memory: MemoryBackend) -> None:
    @observe
    def strict(x: int) -> int:
        return x

    with pytest.warns(CompatWarning) as caught:
        assert strict(1, langfuse_trace_id="abc", langfuse_parent_observation_id="def") == 1
    assert len(caught) == 2 and all(w.filename == __file__ for w in caught)
    assert {"langfuse_trace_id", "langfuse_parent_observation_id"} == {
        str(w.message).split("'")[1] for w in caught}
    (span,) = spans(memory)
    assert span.input == {"x": 1}


def test_enabled_false_leaves_the_function_alone(memory: MemoryBackend) -> None:
    assert traceable(enabled=False)(answer) is answer
    answer("q")
    assert spans(memory) == []


def test_input_output_transforms_are_recorded(memory: MemoryBackend) -> None:
    def hide(inputs: dict[str, Any]) -> dict[str, Any]:
        return {**inputs, "question": "***"}

    traceable(process_inputs=hide, process_outputs=lambda o: {"len": len(o)})(answer)("secret")
    op(postprocess_inputs=hide, postprocess_output=lambda o: o["k"])(answer)("secret")
    a, b = spans(memory)
    assert (a.input, a.output) == ({"question": "***"}, {"len": 2})
    assert (b.input, b.output) == ({"question": "***"}, 3)


def test_a_failing_transform_records_nothing_and_never_breaks_the_call(
        memory: MemoryBackend) -> None:
    def broken(_: Any) -> Any:
        raise ValueError("transform bug")

    before = capture.internal_errors.get("compat.process_inputs", 0)
    fn = traceable(process_inputs=broken, process_outputs=broken)(answer)
    assert fn("secret") == {"answer": "SECRET", "k": 3}
    (span,) = spans(memory)
    assert span.input is None and span.output is None and span.status == "ok"
    assert capture.internal_errors["compat.process_inputs"] == before + 1


def test_output_transform_on_a_generator_records_no_output(memory: MemoryBackend) -> None:
    with pytest.warns(CompatWarning, match="process_outputs on a generator"):
        fn = traceable(process_outputs=lambda o: "hidden", process_inputs=lambda i: {"n": 0})(
            tokens)
    assert list(fn(3)) == ["t0", "t1", "t2"]
    (span,) = spans(memory)
    assert span.output is None and span.input == {"n": 0}


def test_langfuse_capture_default_follows_its_environment_variable(
        memory: MemoryBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LANGFUSE_OBSERVE_DECORATOR_IO_CAPTURE_ENABLED", "false")
    observe(answer)("q")
    observe(capture_input=True)(answer)("q")
    off, on = spans(memory)
    assert (off.input, off.output) == (None, None)
    assert on.input == {"question": "q"} and on.output is None


def test_wrapped_functions_keep_their_identity() -> None:
    for deco in (traceable, observe, op):
        fn = deco(answer)
        assert fn.__name__ == "answer" and fn.__wrapped__ is not None
        assert inspect.signature(fn) == inspect.signature(answer)
