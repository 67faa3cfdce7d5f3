"""Fleet mode: one picture across many replicas of an application.

* :mod:`.redis_state`: rolling spend per user and feature shared on Redis, so budget
  checks and cost alerts see the whole fleet (``state: redis://...``);
* :mod:`.otlp_map`: OpenTelemetry GenAI / OpenInference / OpenLLMetry spans mapped to
  llmvigil :class:`~llmvigil.core.model.Span` records;
* :mod:`.collector`: ``vigil serve``, an OTLP/HTTP receiver that feeds those records
  through llmvigil's pipeline.

Nothing here is imported by ``import llmvigil``; each module imports its optional
dependency (``redis``, ``opentelemetry-proto``) itself.
"""

from __future__ import annotations
