"""``instrument(client)``: automatic spans for a provider SDK client.

Each supported provider lives in ``core/providers/<name>.py`` and patches the
*instance* it is given (never the SDK's classes), so two clients in one process can
be instrumented independently and un-instrumented code is untouched.
"""

from __future__ import annotations

from typing import Any, TypeVar

__all__ = ["instrument"]

C = TypeVar("C")


def instrument(client: C, **fields: Any) -> C:
    """Record every model call made through ``client`` as an ``llm`` span.

    Supported: ``anthropic.Anthropic`` and ``anthropic.AsyncAnthropic``
    (``messages.create`` with and without ``stream=True``, and ``messages.stream``).
    ``fields`` (``feature=``, ``user_id=``, ``tags=``...) are set on every span.
    Returns the same client, instrumented in place.

    Raises:
        TypeError: the client's type is not supported; the message lists those that are.
    """
    module = type(client).__module__ or ""
    if module.startswith("anthropic"):
        from .providers import anthropic

        anthropic.instrument_client(client, fields)
        return client
    raise TypeError(
        f"llmvigil.instrument() does not support {type(client).__qualname__} from "
        f"{module!r}; supported: anthropic.Anthropic, anthropic.AsyncAnthropic"
    )
