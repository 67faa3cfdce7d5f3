"""Test helpers importable from any test module (``tests/`` is on ``pythonpath``)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import llmvigil
from llmvigil.adapters.memory import MemoryBackend, get_memory_backend

_instances = itertools.count()


def start(tmp_path: Path, *, backends: list[Any] | None = None, **sections: Any) -> MemoryBackend:
    """Initialise llmvigil on a fresh memory backend (plus ``backends``) and return it."""
    name = f"mem{next(_instances)}"
    pipeline = {"journal_dir": str(tmp_path / "journal"), "flush_interval_s": 0.05,
                "backoff_initial_s": 0.01, "backoff_max_s": 0.05}
    pipeline.update(sections.pop("pipeline", {}))
    llmvigil.init(
        backends=[{"name": "memory", "instance": name, "redaction": "full"}, *(backends or [])],
        pipeline=pipeline,
        store={"path": str(tmp_path / "vigil.db")},
        **sections,
    )
    return get_memory_backend(name)


def redact_pattern_by_pattern(text: str, categories: list[str]) -> str:
    """The redaction as the detectors define it: every pattern in turn, no cache, hint
    or screen (what the redactor's shortcuts must never change)."""
    from llmvigil.core.redaction import CATEGORIES

    for name in categories:
        det = CATEGORIES[name]
        text = det.pattern.sub(
            lambda m, d=det: d.mask() if d.validate is None or d.validate(m.group())
            else m.group(), text)
    return text
