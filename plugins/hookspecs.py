"""Hook specifications: the whole extension surface of llmvigil.

These docstrings are the plugin documentation. Every hook name starts with
``llmvigil_`` so an unmarked implementation is still found by its prefix. Each
docstring says which thread calls the hook, whether it may block, and what its
return value means.

There are two kinds of plugin:

* **Providers** (a module or object registered once, built-in or from the
  ``llmvigil`` entry-point group) answer the *discovery* hooks: which backend
  adapters, importers, embedders, safety judges, alert sinks and price sources
  they offer.
* **Backend instances**, created from an :class:`AdapterInfo` factory for every
  backend named in the YAML ``backends:`` list, are registered as plugins of their
  own and implement the *export* hooks. llmvigil calls each instance's export hooks
  from that backend's own outbox thread, one backend at a time, so a slow vendor
  never delays another one.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from ..core.model import Alert, Metric, SafetyVerdict, Score, SessionEvent, Span
    from .types import (
        AdapterInfo,
        AlertSinkInfo,
        EmbedderInfo,
        ExportResult,
        ImporterInfo,
        Price,
        SafetyJudgeInfo,
    )

PROJECT_NAME = "llmvigil"
hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


# ---------------------------------------------------------------------------
# Discovery hooks (providers)
# ---------------------------------------------------------------------------


@hookspec
def llmvigil_adapters() -> Sequence[AdapterInfo]:
    """Return the backend adapters this plugin offers.

    **Called from:** the thread that runs :func:`llmvigil.init` or a CLI command,
    once per plugin manager. **May block:** no; import vendor SDKs lazily inside
    the factory, never here. **Returns:** a sequence of :class:`AdapterInfo`; the
    results of all plugins are concatenated. Two adapters with the same name are
    an error naming both plugins.
    """


@hookspec
def llmvigil_importers() -> Sequence[ImporterInfo]:
    """Return the importers (vendor history -> canonical records) this plugin offers.

    **Called from:** the CLI thread (``vigil migrate``/``vigil import``).
    **May block:** no. **Returns:** a sequence of :class:`ImporterInfo`.
    """


@hookspec
def llmvigil_embedders() -> Sequence[EmbedderInfo]:
    """Return text embedders for the drift monitor.

    **Called from:** the background worker at first use. **May block:** no.
    """


@hookspec
def llmvigil_safety_judges() -> Sequence[SafetyJudgeInfo]:
    """Return slow-path safety judges (e.g. an LLM judge), run sampled in the background.

    **Called from:** the background worker at first use. **May block:** no.
    """


@hookspec
def llmvigil_alert_sinks() -> Sequence[AlertSinkInfo]:
    """Return alert sinks (Slack, PagerDuty, a webhook, ...) that alerts can be routed to.

    **Called from:** the background worker at first use. **May block:** no.
    """


@hookspec(firstresult=True)
def llmvigil_price(model: str, provider: str | None) -> Price | None:
    """Return the price of ``model`` or ``None`` when this source does not know it.

    **Called from:** the background worker, once per new (model, provider) pair; the
    answer is cached. **May block:** briefly (a local table lookup); never network.
    **Returns:** the first non-``None`` :class:`Price` wins, so plugins registered
    later (user overrides) are asked first.
    """


# ---------------------------------------------------------------------------
# Export hooks (backend instances)
# ---------------------------------------------------------------------------


@hookspec(firstresult=True)
def llmvigil_export_spans(spans: Sequence[Span]) -> ExportResult | None:
    """Deliver a batch of finished, redacted spans to the backend.

    **Called from:** this backend's outbox thread only. **May block:** yes, up to
    the backend's configured ``timeout_s``; a call that hangs longer is abandoned
    and its batch journaled. **Returns:** :attr:`ExportResult.SUCCESS`,
    :attr:`~ExportResult.RETRY` (transient: the outbox retries with backoff, then
    journals) or :attr:`~ExportResult.FAILURE` (permanent: counted as dropped and
    logged). Raising counts as ``RETRY``. ``None`` means the backend does not hold
    spans (see its capabilities).
    """


@hookspec(firstresult=True)
def llmvigil_export_scores(scores: Sequence[Score]) -> ExportResult | None:
    """Deliver a batch of scores (feedback, evaluations, canary results).

    Same thread, blocking and return rules as :func:`llmvigil_export_spans`.
    """


@hookspec(firstresult=True)
def llmvigil_export_session_events(events: Sequence[SessionEvent]) -> ExportResult | None:
    """Deliver a batch of session events.

    Same thread, blocking and return rules as :func:`llmvigil_export_spans`.
    """


@hookspec(firstresult=True)
def llmvigil_export_metrics(metrics: Sequence[Metric]) -> ExportResult | None:
    """Deliver a batch of computed metrics (llmvigil's own self-metrics included).

    Same thread, blocking and return rules as :func:`llmvigil_export_spans`.
    """


@hookspec(firstresult=True)
def llmvigil_export_alerts(alerts: Sequence[Alert]) -> ExportResult | None:
    """Deliver a batch of alerts.

    Same thread, blocking and return rules as :func:`llmvigil_export_spans`.
    """


@hookspec(firstresult=True)
def llmvigil_export_safety_verdicts(verdicts: Sequence[SafetyVerdict]) -> ExportResult | None:
    """Deliver a batch of safety verdicts.

    Same thread, blocking and return rules as :func:`llmvigil_export_spans`.
    """


@hookspec(firstresult=True)
def llmvigil_flush(timeout_s: float) -> bool | None:
    """Push out anything the backend buffers itself; return ``True`` when done in time.

    **Called from:** this backend's outbox thread. **May block:** up to ``timeout_s``.
    """


@hookspec(firstresult=True)
def llmvigil_shutdown(timeout_s: float) -> None:
    """Release the backend's resources (connections, files, SDK threads).

    **Called from:** the thread running :func:`llmvigil.shutdown` or ``atexit``,
    after the last flush. **May block:** up to ``timeout_s``.
    """


@hookspec(firstresult=True)
def llmvigil_check(timeout_s: float) -> str | None:
    """Test connectivity and credentials without sending data (``vigil backends --check``).

    **Called from:** the CLI thread. **May block:** up to ``timeout_s``.
    **Returns:** ``None`` or a one-line description of the endpoint when healthy;
    raise an exception whose message says what to fix otherwise.
    """
