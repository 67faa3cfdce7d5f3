"""The exceptions llmvigil raises at its boundaries.

::

    VigilError
     ├── ConfigError              a config file, env var or keyword is invalid
     │    └── UnknownBackendError a backend name no plugin provides
     ├── MissingExtraError        a vendor SDK extra is not installed
     ├── PluginError              a plugin misbehaves at registration
     ├── InputFileError           an import/canary/eval file is malformed
     └── BudgetExceeded           a hard budget limit is hit (``budget.check``)

Nothing under this tree is ever raised into user code from the capture path:
``@trace``, ``span()``, ``feedback()`` and friends log, count and carry on. These
errors come from calls a person makes on purpose: ``init()``, the CLI, ``budget.check``.
"""

from __future__ import annotations

__all__ = [
    "BudgetExceeded",
    "ConfigError",
    "InputFileError",
    "MissingExtraError",
    "PluginError",
    "UnknownBackendError",
    "VigilError",
]


class VigilError(Exception):
    """Base of every exception llmvigil raises on purpose."""


class ConfigError(VigilError):
    """The configuration is invalid; the message names the file, line, key and fix."""


class UnknownBackendError(ConfigError):
    """A backend named in the config is provided by no registered plugin."""

    def __init__(self, name: str, known: list[str], where: str = "") -> None:
        self.name = name
        self.known = sorted(known)
        prefix = f"{where}: " if where else ""
        super().__init__(
            f"{prefix}unknown backend {name!r}; known backends: {', '.join(self.known)}"
            " (a third-party backend registers through the 'llmvigil' entry-point group)"
        )


class MissingExtraError(VigilError):
    """A backend's vendor SDK is not installed."""

    def __init__(self, backend: str, extra: str, module: str) -> None:
        self.backend = backend
        self.extra = extra
        super().__init__(
            f"backend {backend!r} needs the {module!r} package: "
            f"pip install 'llmvigil[{extra}]'"
        )


class PluginError(VigilError):
    """A plugin failed validation or returned something malformed."""


class InputFileError(VigilError):
    """A file given to llmvigil (import, canary, eval) is malformed; names file and record."""


class BudgetExceeded(VigilError):
    """A hard budget limit was hit by ``llmvigil.budget.check``."""

    def __init__(self, message: str, *, scope: str, spent_usd: float, limit_usd: float) -> None:
        self.scope = scope
        self.spent_usd = spent_usd
        self.limit_usd = limit_usd
        super().__init__(message)
