"""``observe``: Langfuse's decorator, recording through ``@llmvigil.trace``.

Replace ``from langfuse import observe`` with
``from llmvigil.compat.langfuse import observe``; the decorated code is unchanged.

Honoured: ``name``, ``as_type`` (mapped by :data:`OBSERVATION_TYPES`, default
``span``), ``capture_input`` and ``capture_output`` (default: the
``LANGFUSE_OBSERVE_DECORATOR_IO_CAPTURE_ENABLED`` environment variable, else true,
as in Langfuse). llmvigil's own ``metadata``, ``tags``, ``feature``, ``user_id`` and
``session_id`` are accepted too. Ignored with one
:class:`~llmvigil.compat.CompatWarning` each: ``transform_to_string`` (a generator's
string items are joined, others kept as a list) and the call-time keywords
``langfuse_trace_id``, ``langfuse_parent_observation_id`` and
``langfuse_public_key``, which are popped so they never reach the function (llmvigil
links spans through the context, and the destination comes from ``backends:``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

from . import compat_trace, warn_ignored

__all__ = ["OBSERVATION_TYPES", "observe"]

#: Langfuse ``as_type`` -> llmvigil span kind; types llmvigil has no kind for are ``span``.
OBSERVATION_TYPES: Mapping[str, str] = {
    "generation": "llm", "embedding": "embedding", "span": "span", "agent": "agent",
    "tool": "tool", "chain": "chain", "retriever": "retriever", "evaluator": "span",
    "guardrail": "span",
}
_CALL_KEYWORDS = ("langfuse_trace_id", "langfuse_parent_observation_id", "langfuse_public_key")
_OURS = ("metadata", "tags", "feature", "user_id", "session_id")


def _default_capture() -> bool:
    value = os.environ.get("LANGFUSE_OBSERVE_DECORATOR_IO_CAPTURE_ENABLED", "true")
    return value.strip().lower() not in ("false", "0", "no", "off")


def _call_options(kwargs: dict[str, Any]) -> Mapping[str, Any] | None:
    popped = [k for k in _CALL_KEYWORDS if kwargs.pop(k, None) is not None]
    if popped:
        warn_ignored("langfuse", popped, "llmvigil links spans through the context",
                     stacklevel=5)
    return None


def observe(func: Callable[..., Any] | None = None, *, name: str | None = None,
            as_type: str | None = None, capture_input: bool | None = None,
            capture_output: bool | None = None, **kwargs: Any) -> Any:
    """Trace a function as Langfuse's ``@observe`` would, into llmvigil.

    Forms: ``@observe``, ``@observe()``, ``@observe(name="answer", as_type="generation")``.
    """
    kind = OBSERVATION_TYPES.get(as_type or "span")
    if kind is None:
        warn_ignored("langfuse", [f"as_type={as_type!r}"],
                     f"not a Langfuse observation type; recorded as kind 'span' (known: "
                     f"{', '.join(OBSERVATION_TYPES)})")
        kind = "span"
    ours = {k: kwargs.pop(k) for k in _OURS if k in kwargs}
    if kwargs:
        warn_ignored("langfuse", sorted(kwargs))
    default = _default_capture()
    fields = {k: v for k, v in ours.items() if k in ("feature", "user_id", "session_id")}

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        return compat_trace(
            fn, vendor="langfuse", name=name, kind=kind, tags=ours.get("tags"),
            metadata=ours.get("metadata"),
            capture_input=default if capture_input is None else capture_input,
            capture_output=default if capture_output is None else capture_output,
            fields=fields, call_options=_call_options,
        )

    return decorate(func) if func is not None else decorate
