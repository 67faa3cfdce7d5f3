"""The plugin registry: built-ins, entry-point plugins, unknown names, bad plugins."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import llmvigil
import pluggy
import pytest
from llmvigil.core.errors import ConfigError, MissingExtraError, PluginError, UnknownBackendError
from llmvigil.plugins.hookspecs import hookimpl
from llmvigil.plugins.manager import adapter_infos, backend_hooks, new_plugin_manager
from llmvigil.plugins.types import AdapterInfo, Capabilities

PLUGIN_PKG = Path(__file__).parent / "plugin_pkg"


def test_builtin_adapters_are_registered_like_any_plugin() -> None:
    infos = adapter_infos(new_plugin_manager(load_entrypoints=False))
    assert {"local", "console", "memory"} <= set(infos)
    assert infos["local"].capabilities.can_hold("spans")


def test_blocked_builtin_is_not_registered() -> None:
    pm = new_plugin_manager(load_entrypoints=False, blocked=["llmvigil.adapters.console"])
    assert "console" not in adapter_infos(pm)


def test_unknown_backend_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(UnknownBackendError) as info:
        llmvigil.init(backends=["langsmyth"], pipeline={"journal_dir": str(tmp_path / "j")})
    message = str(info.value)
    assert "unknown backend 'langsmyth'" in message
    assert "local" in message and "memory" in message and "console" in message


def test_duplicate_adapter_names_from_two_plugins_are_an_error() -> None:
    class Clash:
        @hookimpl
        def llmvigil_adapters(self) -> list[AdapterInfo]:
            return [AdapterInfo("local", dict, Capabilities(holds={}))]

    pm = new_plugin_manager(load_entrypoints=False)
    pm.register(Clash(), name="clash")
    with pytest.raises(PluginError, match="'local' is taken"):
        adapter_infos(pm)


def test_backend_with_a_misspelt_hook_argument_is_rejected() -> None:
    class Bad:
        @hookimpl
        def llmvigil_export_spans(self, spanz):  # type: ignore[no-untyped-def]
            return None

    with pytest.raises(PluginError, match="spanz"):
        backend_hooks(Bad(), "bad")


def test_missing_vendor_sdk_names_the_extra(tmp_path: Path) -> None:
    def factory(settings: object) -> object:
        import vigil_sdk_that_does_not_exist  # type: ignore[import-not-found]  # noqa: F401

        return object()

    class Vendor:
        @hookimpl
        def llmvigil_adapters(self) -> list[AdapterInfo]:
            return [AdapterInfo("vendorx", factory, Capabilities(holds={"spans": "x"}),
                                extra="vendorx")]

    pm = new_plugin_manager(load_entrypoints=False)
    pm.register(Vendor(), name="vendor")
    with pytest.raises(MissingExtraError, match=r"pip install 'llmvigil\[vendorx\]'"):
        llmvigil.init(backends=["vendorx"], plugin_manager=pm,
                      pipeline={"journal_dir": str(tmp_path / "j")})


def test_adapter_factory_error_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"store\.path"):
        llmvigil.init(backends=[{"name": "local", "path": "/proc/nope/vigil.db"}],
                      pipeline={"journal_dir": str(tmp_path / "j")})


def test_third_party_plugin_installed_with_pip_receives_records(tmp_path: Path) -> None:
    """Install the package in tests/plugin_pkg (its own entry point) and use it."""
    target = tmp_path / "site"
    build = tmp_path / "src"
    import shutil

    shutil.copytree(PLUGIN_PKG, build)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--target", str(target), str(build)],
        check=True, timeout=300,
    )
    out = tmp_path / "demo.jsonl"
    (tmp_path / "vigil.yaml").write_text(textwrap.dedent(f"""
        backends:
          - name: demo
            path: {out}
        pipeline:
          journal_dir: {tmp_path / "journal"}
    """))
    script = textwrap.dedent("""
        import llmvigil
        llmvigil.init()

        @llmvigil.trace
        def answer(q):
            return 42

        with llmvigil.span("request"):
            answer("life")
        llmvigil.shutdown()
    """)
    env = {**os.environ, "PYTHONPATH": str(target), "COLUMNS": "250"}
    subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, check=True,
                   timeout=60)
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert sorted(x["name"] for x in lines) == ["answer", "request"]
    assert len({x["trace_id"] for x in lines}) == 1
    listing = subprocess.run([sys.executable, "-m", "llmvigil.core.cli", "backends"],
                             cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert "demo" in listing.stdout and "third-party demo backend" in listing.stdout


def test_pluggy_is_the_registry() -> None:
    assert isinstance(new_plugin_manager(load_entrypoints=False), pluggy.PluginManager)
