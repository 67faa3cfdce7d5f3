"""Many producers at once: every span delivered, every parent link right."""

from __future__ import annotations

import asyncio
import math
import threading
from pathlib import Path
from typing import Any

import llmvigil
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmvigil.adapters.memory import _instances
from llmvigil.core.model import decode, encode
from vigil_testing import start


def test_threads_and_tasks_produce_at_once(tmp_path: Path) -> None:
    mem = start(tmp_path, pipeline={"queue_size": 1_000_000})
    threads, per_thread, tasks = 8, 2_000, 1_000

    @llmvigil.trace(name="leaf")
    def leaf(i: int) -> int:
        return i

    def producer(t: int) -> None:
        for i in range(per_thread // 2):
            with llmvigil.span(f"t{t}"):
                leaf(i)

    async def task(i: int) -> None:
        with llmvigil.span(f"task{i}"):
            await asyncio.sleep(0)
            with llmvigil.span("inner"):
                await asyncio.sleep(0)

    async def all_tasks() -> None:
        await asyncio.gather(*(task(i) for i in range(tasks)))

    workers = [threading.Thread(target=producer, args=(t,)) for t in range(threads)]
    workers.append(threading.Thread(target=lambda: asyncio.run(all_tasks())))
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert llmvigil.flush(60)
    spans = mem.spans
    assert len(spans) == threads * per_thread + 2 * tasks
    assert len({s.id for s in spans}) == len(spans)
    by_id = {s.id: s for s in spans}
    for s in spans:
        if s.name in ("leaf", "inner"):
            parent = by_id[s.parent_id]  # type: ignore[index]
            assert parent.trace_id == s.trace_id
            assert parent.name.startswith("t" if s.name == "leaf" else "task")
        else:
            assert s.parent_id is None


async def test_async_generator_consumed_by_another_task_keeps_parent(tmp_path: Path) -> None:
    mem = start(tmp_path)

    @llmvigil.trace(name="agen")
    async def agen():  # type: ignore[no-untyped-def]
        for i in range(3):
            with llmvigil.span("step"):
                pass
            yield i

    with llmvigil.span("owner") as owner:
        stream = agen()

    async def consume() -> list[int]:
        with llmvigil.span("consumer"):
            return [i async for i in stream]

    assert await asyncio.create_task(consume()) == [0, 1, 2]
    assert llmvigil.flush(10)
    spans = {s.name: s for s in mem.spans}
    assert spans["agen"].parent_id == owner.span_id
    assert all(s.parent_id == spans["agen"].id for s in mem.spans if s.name == "step")


class _Evil:
    def __repr__(self) -> str:
        raise ValueError("no repr")

    def __str__(self) -> str:
        raise ValueError("no str")


awkward = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text()
    | st.binary() | st.builds(_Evil) | st.just(math.inf),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(
        st.text(max_size=5) | st.integers(), inner, max_size=5) | st.tuples(inner, inner),
    max_leaves=30,
)


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(args=st.lists(awkward, max_size=4), result=awkward)
def test_awkward_values_never_raise_and_are_always_recorded(
    tmp_path: Path, args: list[Any], result: Any
) -> None:
    if not llmvigil.core.runtime.is_initialized():  # one runtime for all examples
        start(tmp_path)
    seen = []

    @llmvigil.trace(name="awkward")
    def fn(*a: Any) -> Any:
        seen.append(llmvigil.current_span())
        return result

    assert fn(*args) is result
    assert llmvigil.flush(10)
    recorded = [s for inst in _instances.values() for s in inst.spans
                if s.id == seen[0].span_id]
    assert len(recorded) == 1, "a span is always recorded"
    assert decode(encode(recorded[0])) == recorded[0]  # plain, encodable data
