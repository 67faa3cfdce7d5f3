"""A third-party backend: appends every span it receives to a JSON-lines file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from llmvigil.plugins.hookspecs import hookimpl
from llmvigil.plugins.types import AdapterInfo, Capabilities, ExportResult


class DemoBackend:
    def __init__(self, settings: Mapping[str, Any]) -> None:
        self.path = settings["path"]

    @hookimpl
    def llmvigil_export_spans(self, spans: Sequence[Any]) -> ExportResult:
        with open(self.path, "a") as fh:
            for s in spans:
                fh.write(json.dumps({"name": s.name, "trace_id": s.trace_id}) + "\n")
        return ExportResult.SUCCESS


@hookimpl
def llmvigil_adapters() -> list[AdapterInfo]:
    return [AdapterInfo(name="demo", factory=DemoBackend,
                        capabilities=Capabilities(holds={"spans": "lines in a file"}),
                        description="third-party demo backend")]
