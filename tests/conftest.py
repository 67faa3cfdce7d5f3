"""Shared fixtures: a runtime on the in-memory backend, isolated in a temp dir."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import llmvigil
from llmvigil.adapters.memory import MemoryBackend, get_memory_backend

_instances = itertools.count()


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test runs in its own directory with no config from the environment."""
    monkeypatch.chdir(tmp_path)
    for var in ("VIGIL_CONFIG",):
        monkeypatch.delenv(var, raising=False)
    yield
    llmvigil.shutdown(timeout=5)


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


@pytest.fixture
def memory(tmp_path: Path) -> MemoryBackend:
    """A runtime whose only backend is a fresh in-memory one."""
    return start(tmp_path)
