"""The current span, carried by :mod:`contextvars`.

``asyncio`` copies the context into every task it creates, so ``gather`` and
``create_task`` see the span that was current when they were called. Plain
threads do not inherit a context: :func:`run_in_context` and
:class:`ContextExecutor` carry it across.
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .capture import SpanHandle

__all__ = ["ContextExecutor", "current_handle", "run_in_context"]

T = TypeVar("T")

_current: contextvars.ContextVar[SpanHandle | None] = contextvars.ContextVar(
    "llmvigil_current_span", default=None
)
current_handle = _current.get


def run_in_context(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Callable[[], T]:
    """Bind ``fn(*args, **kwargs)`` to a copy of the caller's context.

    Returns a zero-argument callable: hand it to ``threading.Thread(target=...)``,
    ``loop.run_in_executor`` or any pool, and spans created inside will be children
    of the span that was current when :func:`run_in_context` was called.

    >>> with llmvigil.span("request"):
    ...     t = threading.Thread(target=llmvigil.run_in_context(work, item))
    """
    ctx = contextvars.copy_context()

    def bound() -> T:
        return ctx.run(fn, *args, **kwargs)

    return bound


class ContextExecutor(ThreadPoolExecutor):
    """A :class:`~concurrent.futures.ThreadPoolExecutor` that runs each task in a copy
    of the submitter's context, so spans nest across the pool."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        """Schedule ``fn(*args, **kwargs)`` in a copy of the caller's context."""
        return super().submit(contextvars.copy_context().run, fn, *args, **kwargs)
