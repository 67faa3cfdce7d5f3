"""Shared fixtures: a runtime on the in-memory backend, isolated in a temp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llmvigil
import pytest
from llmvigil.adapters.memory import MemoryBackend
from vigil_testing import start


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test runs in its own directory with no config from the environment."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("VIGIL_CONFIG", raising=False)
    yield
    llmvigil.shutdown(timeout=5)


@pytest.fixture
def memory(tmp_path: Path) -> MemoryBackend:
    """A runtime whose only backend is a fresh in-memory one."""
    return start(tmp_path)
