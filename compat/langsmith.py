"""``traceable``: LangSmith's decorator, recording through ``@llmvigil.trace``.

Replace ``from langsmith import traceable`` with
``from llmvigil.compat.langsmith import traceable``; the decorated code is unchanged.

Honoured: ``run_type`` (also positional; mapped by :data:`RUN_TYPES`, default
``chain`` as in LangSmith), ``name``, ``metadata``, ``tags``, ``enabled=False`` (the
function is left undecorated), ``process_inputs``, ``process_outputs``, and at call
time ``langsmith_extra={"name", "metadata", "tags"}`` (popped, never passed to the
function). llmvigil's own ``feature``, ``user_id`` and ``session_id`` are accepted
too. Everything else (``client``, ``project_name``, ``reduce_fn``...) is ignored
with one :class:`~llmvigil.compat.CompatWarning` per argument: the destination and
its project come from the ``backends:`` config.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from . import compat_trace, warn_ignored

__all__ = ["RUN_TYPES", "traceable"]

#: LangSmith run_type -> llmvigil span kind; types llmvigil has no kind for are ``span``.
RUN_TYPES: Mapping[str, str] = {
    "llm": "llm", "chain": "chain", "tool": "tool", "retriever": "retriever",
    "embedding": "embedding", "prompt": "span", "parser": "span",
}
_HONOURED_EXTRA = ("name", "metadata", "tags")
_OURS = ("feature", "user_id", "session_id")


def _kind(run_type: Any) -> str:
    kind = RUN_TYPES.get(str(run_type))
    if kind is None:
        warn_ignored("langsmith", [f"run_type={run_type!r}"],
                     f"not a LangSmith run type; recorded as kind 'span' (known: "
                     f"{', '.join(RUN_TYPES)})", stacklevel=4)
        return "span"
    return kind


def _call_options(kwargs: dict[str, Any]) -> Mapping[str, Any] | None:
    extra = kwargs.pop("langsmith_extra", None)
    if not extra:
        return None
    if not isinstance(extra, Mapping):
        warn_ignored("langsmith", ["langsmith_extra (not a mapping)"], stacklevel=5)
        return None
    ignored = [f"langsmith_extra[{k!r}]" for k in extra if k not in _HONOURED_EXTRA]
    if ignored:
        warn_ignored("langsmith", ignored, stacklevel=5)
    return {k: extra[k] for k in _HONOURED_EXTRA if extra.get(k) is not None}


def traceable(*args: Any, **kwargs: Any) -> Any:
    """Trace a function as LangSmith's ``@traceable`` would, into llmvigil.

    Forms: ``@traceable``, ``@traceable()``, ``@traceable("llm")``,
    ``@traceable(run_type="tool", name="search", metadata={...}, tags=[...])``.
    """
    func: Callable[..., Any] | None = None
    if args and callable(args[0]) and not isinstance(args[0], str):
        func, args = args[0], args[1:]
    run_type = args[0] if args and isinstance(args[0], str) else kwargs.pop("run_type", None)
    if len(args) > 1:
        warn_ignored("langsmith", ["extra positional arguments"],
                     "only run_type may be positional")
    name = kwargs.pop("name", None)
    metadata = kwargs.pop("metadata", None)
    tags = kwargs.pop("tags", None)
    enabled = kwargs.pop("enabled", None)
    process_inputs = kwargs.pop("process_inputs", None)
    process_outputs = kwargs.pop("process_outputs", None)
    fields = {k: kwargs.pop(k) for k in _OURS if k in kwargs}
    if kwargs:
        warn_ignored("langsmith", sorted(kwargs))
    kind = _kind(run_type or "chain")

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if enabled is False:
            return fn
        return compat_trace(
            fn, vendor="langsmith", name=name, kind=kind, tags=tags, metadata=metadata,
            process_inputs=process_inputs, process_outputs=process_outputs, fields=fields,
            call_options=_call_options,
        )

    return decorate(func) if func is not None else decorate
