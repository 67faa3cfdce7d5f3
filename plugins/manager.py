"""The plugin manager: built-in plugins and entry-point plugins, one registry.

Built-in adapters register through the same path as third-party ones (pytest's
``default_plugins`` pattern): :data:`BUILTIN_PLUGINS` names modules that implement
the discovery hooks, and ``load_setuptools_entrypoints("llmvigil")`` adds the rest.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Iterable
from typing import Any

import pluggy

from ..core.errors import PluginError, UnknownBackendError
from . import hookspecs
from .types import AdapterInfo, ImporterInfo

__all__ = [
    "BUILTIN_PLUGINS",
    "ENTRY_POINT_GROUP",
    "adapter_infos",
    "backend_hooks",
    "get_adapter",
    "importer_infos",
    "new_plugin_manager",
]

_log = logging.getLogger("llmvigil.plugins")

ENTRY_POINT_GROUP = "llmvigil"

#: Modules registered as plugins before any entry point; each implements discovery hooks.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "llmvigil.adapters.local",
    "llmvigil.adapters.console",
    "llmvigil.adapters.memory",
    "llmvigil.adapters.langsmith",
    "llmvigil.adapters.langfuse",
    "llmvigil.adapters.wandb",
    "llmvigil.adapters.helicone",
    "llmvigil.adapters.otlp",
    "llmvigil.adapters.phoenix",
    "llmvigil.adapters.postgres",
    "llmvigil.core.alerts",
    "llmvigil.core.migrate.files",
    "llmvigil.plugins.embedders",
    "llmvigil.plugins.judges",
    "llmvigil.importers.langsmith",
    "llmvigil.importers.langfuse",
    "llmvigil.importers.phoenix",
    "llmvigil.importers.helicone",
    "llmvigil.importers.wandb",
)


def new_plugin_manager(
    *, load_entrypoints: bool = True, blocked: Iterable[str] = ()
) -> pluggy.PluginManager:
    """Return a plugin manager with the hookspecs, built-in plugins and entry points.

    Args:
        load_entrypoints: also load third-party plugins from the ``llmvigil``
            entry-point group.
        blocked: plugin names (module names for built-ins, entry-point names for
            third-party plugins) not to register.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    for name in blocked:
        pm.set_blocked(name)
    for modname in BUILTIN_PLUGINS:
        if pm.is_blocked(modname):
            continue
        try:
            module = importlib.import_module(modname)
        except ImportError as exc:  # a built-in missing is a packaging bug; say so
            raise PluginError(f"built-in plugin {modname} failed to import: {exc}") from exc
        pm.register(module, name=modname)
    if load_entrypoints:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
    return pm


def backend_hooks(instance: object, name: str) -> pluggy.HookRelay:
    """Return the hooks of one backend instance, isolated from every other plugin.

    Each active backend gets a plugin manager of its own holding only that instance,
    so its outbox calls exactly its export hooks (validated against the hookspecs)
    and never another backend's.

    Raises:
        PluginError: the instance's hook implementations do not match the specs.
    """
    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    try:
        pm.register(instance, name=name)
    except pluggy.PluginValidationError as exc:
        raise PluginError(f"backend {name!r}: {exc}") from exc
    return pm.hook


def adapter_infos(pm: pluggy.PluginManager) -> dict[str, AdapterInfo]:
    """Return every backend adapter offered by the registered plugins, by name.

    Raises:
        PluginError: two plugins offer the same adapter name, or a plugin returned
            something that is not an :class:`AdapterInfo`.
    """
    found: dict[str, AdapterInfo] = {}
    for impl, result in _collect(pm, "llmvigil_adapters"):
        for info in result:
            if not isinstance(info, AdapterInfo):
                raise PluginError(
                    f"plugin {impl!r}: llmvigil_adapters() returned {info!r}, "
                    "expected AdapterInfo"
                )
            if info.name in found:
                raise PluginError(f"plugin {impl!r}: backend name {info.name!r} is taken")
            found[info.name] = info
    return found


def importer_infos(pm: pluggy.PluginManager) -> dict[str, ImporterInfo]:
    """Return every importer offered by the registered plugins, by name."""
    found: dict[str, ImporterInfo] = {}
    for _impl, result in _collect(pm, "llmvigil_importers"):
        for info in result:
            found.setdefault(info.name, info)
    return found


def get_adapter(pm: pluggy.PluginManager, name: str, *, where: str = "") -> AdapterInfo:
    """Return the adapter called ``name``.

    Raises:
        UnknownBackendError: no plugin offers ``name``; the message lists the known ones.
    """
    infos = adapter_infos(pm)
    try:
        return infos[name]
    except KeyError:
        raise UnknownBackendError(name, list(infos), where) from None


def _collect(pm: pluggy.PluginManager, hook_name: str) -> list[tuple[str, list[Any]]]:
    """Call a discovery hook on each plugin separately so an error names the plugin."""
    out: list[tuple[str, list[Any]]] = []
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        try:
            result = impl.function()
        except Exception as exc:
            raise PluginError(f"plugin {impl.plugin_name!r}: {hook_name}() raised {exc!r}") from exc
        out.append((impl.plugin_name, list(result or ())))
    return out
