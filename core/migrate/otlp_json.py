"""The OTLP/JSON codec of export files: the ``otlp`` backend's encoding, both ways.

Writing is :mod:`.otlp_json_write`, reading :mod:`.otlp_json_read`; this codec
borrows the ``otlp`` backend they both build on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

from ..errors import MissingExtraError, PluginError
from ..model import Record
from . import Skipped
from .otlp_json_read import OtlpJsonReader
from .otlp_json_write import OtlpJsonWriter

__all__ = ["OtlpJsonCodec"]


class OtlpJsonCodec:
    """Encodes records as OTLP/JSON lines and decodes them back.

    The span building is the ``otlp`` backend's own (reached through the plugin
    manager, as core reaches every adapter), so a file holds exactly what that backend
    would send a collector, plus the hint attributes. Needs ``llmvigil[otlp]``.

    Raises:
        MissingExtraError: the OpenTelemetry packages are not installed.
        PluginError: no ``otlp`` adapter is registered, or it lacks the span builders.
    """

    _BUILDERS = ("_span", "_score", "_session_event", "_verdict", "_marker",
                 "_metrics_data", "_otel")

    def __init__(self, *, service: str = "llmvigil", pm: Any = None) -> None:
        from ...plugins.manager import get_adapter, new_plugin_manager

        try:
            from google.protobuf import json_format  # noqa: F401 - checks the extra
            from opentelemetry.exporter.otlp.proto.common.metrics_encoder import (
                encode_metrics,
            )
            from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
        except ModuleNotFoundError as exc:
            raise MissingExtraError("otlp-json files", "otlp", exc.name or "?") from exc
        info = get_adapter(pm if pm is not None else new_plugin_manager(), "otlp")
        backend: Any = info.factory({"endpoint": "http://127.0.0.1:9/v1/traces",
                                "service": service, "compression": "none"})
        missing = [name for name in self._BUILDERS if not hasattr(backend, name)]
        if missing:
            raise PluginError(f"the otlp adapter lacks {', '.join(missing)}, which "
                              "OTLP/JSON files are built with")
        self._backend: Any = backend
        self._writer = OtlpJsonWriter(backend, encode_spans, encode_metrics)
        self._reader = OtlpJsonReader(backend._otel.derived_trace_id)

    def close(self) -> None:
        """Release the otlp backend the codec borrowed its builders from."""
        with contextlib.suppress(Exception):
            self._backend.llmvigil_shutdown(timeout_s=1.0)

    def encode(self, records: Sequence[Record]) -> list[bytes]:
        """One OTLP/JSON line for the span-like records, one for the metrics (if any)."""
        return self._writer.encode(records)

    def decode_line(self, doc: Any, where: str) -> Iterator[Record | Skipped]:
        """Yield the records of one OTLP/JSON request (already parsed JSON)."""
        return self._reader.decode_line(doc, where)
