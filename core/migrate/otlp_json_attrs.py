"""The OTLP/JSON vocabulary shared by the writer and the reader of export files.

The hint attributes the writer adds (which attribute values are JSON, which were
derived for OpenTelemetry tools, ids that are not W3C hex...) so that a re-import
gives back the records that were written, and the span fields written as attributes.
See :mod:`llmvigil.core.migrate.files` and docs/migration.md.
"""

from __future__ import annotations

import re

import msgspec

from ..model import Span, Usage

HEX32 = re.compile(r"^[0-9a-fA-F]{32}$")
HEX16 = re.compile(r"^[0-9a-fA-F]{16}$")

# Hint attributes the writer adds.
H_JSON = "llmvigil.json_attributes"
H_DERIVED = "llmvigil.derived_attributes"
H_TYPE = "llmvigil.record.type"
H_TRACE, H_SPAN, H_PARENT = "llmvigil.trace.id", "llmvigil.span.id", "llmvigil.parent.id"
H_NAME, H_END, H_ERROR = "llmvigil.span.name", "llmvigil.span.end_ns", "llmvigil.error"
H_METRIC_NAME, H_METRIC_IDS = "llmvigil.metric.name", "llmvigil.record.ids"
META = "llmvigil.metadata."
STREAM = "llmvigil.stream."
ALERT = "llmvigil.alert."

#: Span fields that the OTLP span carries structurally, not as an attribute.
_STRUCTURAL = frozenset((
    "id", "trace_id", "parent_id", "name", "kind", "start_ns", "end_ns", "status", "error",
    "input", "output", "usage", "stream", "tags", "metadata", "attributes",
))
#: Attribute key -> Span field, for the fields written as attributes (the otlp rule:
#: a GenAI name when the encoded name has a dot, else ``llmvigil.<field>``).
SPAN_FIELDS: dict[str, str] = {
    (f.encode_name if "." in f.encode_name else f"llmvigil.{f.name}"): f.name
    for f in msgspec.structs.fields(Span) if f.name not in _STRUCTURAL
}
USAGE_FIELDS: dict[str, str] = {f.encode_name: f.name for f in msgspec.structs.fields(Usage)}
ALWAYS_DERIVED = ("gen_ai.provider.name", "gen_ai.input.messages", "gen_ai.output.messages",
                  "gen_ai.system_instructions")
