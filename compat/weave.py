"""``op``: the Weave (W&B) decorator, recording through ``@llmvigil.trace``.

Replace ``import weave`` ... ``@weave.op`` with
``from llmvigil.compat.weave import op`` ... ``@op``; the decorated code is unchanged.
The result is a plain traced function, not a Weave ``Op`` object (no ``.call()``,
``.calls()`` or versioning).

Honoured: ``name``, ``call_display_name`` when a string (it names the span; a
callable is ignored), ``kind`` (mapped by :data:`KINDS`, case-insensitive; default
``span``), ``postprocess_inputs`` and ``postprocess_output``. llmvigil's own
``metadata``, ``tags``, ``feature``, ``user_id`` and ``session_id`` are accepted too.
Ignored with one :class:`~llmvigil.compat.CompatWarning` each: ``tracing_sample_rate``
(use ``capture.sample_rate``), ``enable_code_capture``, ``accumulator``, ``color``
and anything else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import compat_trace, warn_ignored

__all__ = ["KINDS", "op"]

#: Weave op kind -> llmvigil span kind.
KINDS: Mapping[str, str] = {"llm": "llm", "tool": "tool", "agent": "agent",
                            "search": "retriever"}
_OURS = ("metadata", "tags", "feature", "user_id", "session_id")


def op(func: Callable[..., Any] | None = None, *, name: str | None = None,
       call_display_name: str | Callable[..., str] | None = None, kind: str | None = None,
       postprocess_inputs: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
       postprocess_output: Callable[[Any], Any] | None = None, **kwargs: Any) -> Any:
    """Trace a function as ``@weave.op`` would, into llmvigil.

    Forms: ``@op``, ``@op()``, ``@op(name="retrieve", kind="search")``.
    """
    span_kind = "span"
    if kind is not None:
        mapped = KINDS.get(str(kind).lower())
        if mapped is None:
            warn_ignored("weave", [f"kind={kind!r}"],
                         f"not a Weave op kind; recorded as kind 'span' (known: "
                         f"{', '.join(KINDS)})")
        else:
            span_kind = mapped
    span_name = name
    if isinstance(call_display_name, str):
        span_name = call_display_name
    elif call_display_name is not None:
        warn_ignored("weave", ["call_display_name (a callable)"],
                     "the span is named by 'name' or the function")
    ours = {k: kwargs.pop(k) for k in _OURS if k in kwargs}
    if kwargs:
        warn_ignored("weave", sorted(kwargs))
    fields = {k: v for k, v in ours.items() if k in ("feature", "user_id", "session_id")}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        return compat_trace(
            fn, vendor="weave", name=span_name, kind=span_kind, tags=ours.get("tags"),
            metadata=ours.get("metadata"), process_inputs=postprocess_inputs,
            process_outputs=postprocess_output, fields=fields,
        )

    return decorate(func) if func is not None else decorate
