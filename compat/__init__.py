"""Drop-in replacements for vendor tracing decorators: migrating code is an import change.

* ``from llmvigil.compat.langsmith import traceable``
* ``from llmvigil.compat.langfuse import observe``
* ``from llmvigil.compat.weave import op``

Each accepts its vendor decorator's common arguments, bare or called, and records
exactly what ``@llmvigil.trace`` with the equivalent arguments records (same span
kind, name, tags and metadata); nothing is sent to the vendor unless its backend is
in ``backends:``. Arguments without an llmvigil equivalent are accepted and ignored,
with one :class:`CompatWarning` per argument per process. The vendor SDKs are never
imported. See ``docs/migration.md`` for the per-vendor tables.

Input/output transforms (LangSmith ``process_inputs``/``process_outputs``, Weave
``postprocess_inputs``/``postprocess_output``) are honoured: they run in the calling
thread, as the vendor SDKs run them, and a transform that fails records nothing
rather than the untransformed data.
"""

from __future__ import annotations

import functools
import inspect
import threading
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ..core.capture import CallArgs, current_span, internal_error, tag_list, trace

__all__ = ["CompatWarning", "Transform", "compat_trace", "warn_ignored"]

#: ``(value) -> value``: a vendor decorator's input or output transform.
Transform = Callable[[Any], Any]

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


class CompatWarning(UserWarning):
    """A vendor decorator argument that llmvigil accepts but does not honour."""


def warn_ignored(vendor: str, names: Iterable[str], why: str = "", *,
                 stacklevel: int = 3) -> None:
    """Warn once per process for each ignored argument of ``vendor``'s decorator.

    ``stacklevel`` counts from this function: 3 is the caller of the decorator
    factory that calls it directly.
    """
    for name in names:
        with _warned_lock:
            if (vendor, name) in _warned:
                continue
            _warned.add((vendor, name))
        warnings.warn(
            f"llmvigil.compat.{vendor}: argument {name!r} is accepted but ignored"
            + (f" ({why})" if why else "") + "; see docs/migration.md",
            CompatWarning, stacklevel=stacklevel,
        )


def _bound(signature: inspect.Signature | None, args: tuple[Any, ...],
           kwargs: dict[str, Any]) -> dict[str, Any]:
    return CallArgs(signature, args, kwargs).bound()


def _with_transforms(func: Callable[..., Any], process_inputs: Transform | None,
                     process_outputs: Transform | None) -> Callable[..., Any]:
    """``func`` recording transformed inputs/outputs on the current span."""
    if process_inputs is None and process_outputs is None:
        return func
    try:
        signature: inspect.Signature | None = inspect.signature(func)
    except (TypeError, ValueError):
        signature = None

    def set_input(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        handle = current_span()
        if handle is None or process_inputs is None:
            return
        try:
            handle.set_input(process_inputs(_bound(signature, args, kwargs)))
        except Exception as exc:
            handle.set_input(None)  # never the raw inputs the transform was to hide
            internal_error("compat.process_inputs", exc)

    def set_output(result: Any) -> None:
        handle = current_span()
        if handle is None or process_outputs is None:
            return
        try:
            handle.set_output(process_outputs(result))
        except Exception as exc:
            handle.set_output(None)
            internal_error("compat.process_outputs", exc)

    inner: Callable[..., Any]
    if inspect.iscoroutinefunction(func):
        async def inner(*args: Any, **kwargs: Any) -> Any:
            set_input(args, kwargs)
            result = await func(*args, **kwargs)
            set_output(result)
            return result
    elif inspect.isasyncgenfunction(func):
        async def inner(*args: Any, **kwargs: Any) -> Any:
            set_input(args, kwargs)
            async for item in func(*args, **kwargs):
                yield item
    elif inspect.isgeneratorfunction(func):
        def inner(*args: Any, **kwargs: Any) -> Any:
            set_input(args, kwargs)
            return (yield from func(*args, **kwargs))
    else:
        def inner(*args: Any, **kwargs: Any) -> Any:
            set_input(args, kwargs)
            result = func(*args, **kwargs)
            set_output(result)
            return result
    return functools.wraps(func)(inner)


def compat_trace(
    func: Callable[..., Any], *, vendor: str, name: str | None, kind: str,
    tags: Sequence[str] | None = None, metadata: Mapping[str, Any] | None = None,
    capture_input: bool = True, capture_output: bool = True,
    process_inputs: Transform | None = None, process_outputs: Transform | None = None,
    fields: Mapping[str, Any] | None = None,
    call_options: Callable[[dict[str, Any]], Mapping[str, Any] | None] | None = None,
) -> Callable[..., Any]:
    """``func`` traced as ``@llmvigil.trace`` would trace it with these arguments.

    Args:
        vendor: for warnings.
        process_inputs, process_outputs: transforms of the bound arguments and of the
            return value, recorded instead of them.
        fields: ``feature``/``user_id``/``session_id`` for ``trace``.
        call_options: pops the vendor's call-time keywords (``langsmith_extra``...)
            from a call's kwargs, so they never reach ``func``; returns per-call
            ``name``/``tags``/``metadata`` to apply, or ``None``.
    """
    is_generator = inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)
    if process_outputs is not None and is_generator:
        # The vendors transform the reduced stream; the items are not transformed
        # here, so record no output rather than what the transform was meant to hide.
        warn_ignored(vendor, ["process_outputs on a generator"],
                     "its output is not recorded", stacklevel=4)
        process_outputs, capture_output = None, False
    inner = _with_transforms(func, process_inputs, process_outputs)
    extra = dict(fields or {})

    def traced(call_name: str | None, call_tags: Sequence[str] | None,
               call_metadata: Mapping[str, Any] | None) -> Callable[..., Any]:
        return trace(name=call_name, kind=kind, tags=call_tags, metadata=call_metadata,
                     capture_input=capture_input, capture_output=capture_output,
                     **extra)(inner)

    default = traced(name, tags, metadata)
    if call_options is None:
        return default

    def pick(kwargs: dict[str, Any]) -> Callable[..., Any]:
        options = call_options(kwargs)
        if not options:
            return default
        try:
            call_tags = [*(tags or ()), *tag_list(options.get("tags") or ())] or None
            call_metadata = {**(metadata or {}), **(options.get("metadata") or {})} or None
            return traced(options.get("name") or name, call_tags, call_metadata)
        except (TypeError, ValueError) as exc:  # a call's options never fail the call
            warn_ignored(vendor, ["a per-call name, tags or metadata of the wrong type"],
                         f"{exc}; such calls are traced with the decorator's own",
                         stacklevel=4)
            return default

    wrapper: Callable[..., Any]
    if inspect.iscoroutinefunction(func):
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            return await pick(kwargs)(*args, **kwargs)
    else:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return pick(kwargs)(*args, **kwargs)
    return functools.wraps(func)(wrapper)
