"""The configuration of llmvigil: a YAML file, ``VIGIL_*`` environment variables, keywords.

Layers, lowest priority first: model defaults, the YAML file, the environment
(``VIGIL_`` prefix, ``__`` for nesting, JSON for lists and mappings), then keyword
overrides given to :func:`load_config`. Mappings merge deeply; lists replace.

Every invalid input raises one :class:`~llmvigil.core.errors.ConfigError` whose message
has one line per problem, each naming where it came from (``file:line``, the
environment variable or the keyword), the dotted key, what was found and what was
expected. Backend settings that look secret (``api_key``, ``secret_key``, ``token``...)
are held as :class:`pydantic.SecretStr` and never appear in reprs, dumps or errors.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from .errors import ConfigError

__all__ = [
    "REDACT_CATEGORIES",
    "BackendConfig",
    "CaptureConfig",
    "PipelineConfig",
    "RedactPattern",
    "ServiceConfig",
    "StoreConfig",
    "VigilConfig",
    "is_secret_key",
    "load_config",
]

RedactCategory = Literal["api_key", "credit_card", "email", "phone", "iban", "ip_address"]
#: The built-in PII categories ``capture.redact`` may name.
REDACT_CATEGORIES: tuple[str, ...] = get_args(RedactCategory)
_SECRET_WORDS = ("key", "secret", "token", "password", "authorization")
_INTERPOLATION = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:([kmgt])(i)?)?b?\s*$", re.IGNORECASE)
Loc = tuple[Any, ...]


def is_secret_key(key: str) -> bool:
    """Whether a setting named ``key`` holds a secret (its name mentions key, token...)."""
    low = key.lower()
    return any(word in low for word in _SECRET_WORDS)


def _hide(value: Any, secret: bool = False) -> Any:
    """Wrap every scalar under a secret-looking key in :class:`SecretStr`, recursively."""
    if isinstance(value, Mapping):
        return {k: _hide(v, secret or is_secret_key(str(k))) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_hide(v, secret) for v in value]
    if secret and isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return SecretStr(str(value))
    return value


def _reveal(value: Any) -> Any:
    """Undo :func:`_hide`: the plain values an adapter needs."""
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, Mapping):
        return {k: _reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_reveal(v) for v in value]
    return value


def _mask(value: Any, by_key: bool = False, secret: bool = False) -> Any:
    """Replace secrets by ``"***"``; with ``by_key``, also strings under secret-looking keys."""
    if isinstance(value, SecretStr) or (secret and isinstance(value, str)):
        return "***"
    if isinstance(value, Mapping):
        return {
            k: _mask(v, by_key, secret or (by_key and is_secret_key(str(k))))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask(v, by_key, secret) for v in value]
    return value


def _parse_size(value: Any) -> Any:
    """Accept a byte count as an integer or a string such as ``"500MB"``, ``"1GiB"``, ``"10k"``."""
    expected = "expected a positive size in bytes such as 1048576, '500MB' or '1GiB'"
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match is None:
            raise ValueError(expected)
        number, unit, binary = match.groups()
        power = " kmgt".index(unit.lower()) if unit else 0
        try:
            value = int(float(number) * (1024 if binary else 1000) ** power)
        except (OverflowError, ValueError):  # inf: hundreds of digits
            raise ValueError(expected) from None
    elif isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(expected)
    return value


class _Section(BaseModel):
    """Base of the config sections: immutable, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class ServiceConfig(_Section):
    """``service:`` who is being monitored, attached to every record."""

    name: str = Field(default="llm-app", min_length=1)
    environment: str | None = None
    release: str | None = None


class BackendConfig(BaseModel):
    """One ``backends:`` entry: a backend name plus its own settings.

    In YAML an entry is a bare name (``- local``) or a mapping with ``name`` and any
    backend-specific keys, which are kept and exposed through :attr:`settings`.
    ``redaction`` says how much content the backend gets: ``full`` (raw content after
    the global redaction), ``masked`` (PII categories masked) or ``none`` (inputs and
    outputs removed); unset, the adapter's own default applies (``full`` for the
    ``local`` and ``postgres`` stores, ``masked`` for every vendor).
    """

    model_config = ConfigDict(extra="allow", frozen=True, coerce_numbers_to_str=True)

    name: str = Field(min_length=1)
    enabled: bool = True
    redaction: Literal["full", "masked", "none"] | None = None
    timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _normalise(cls, data: Any) -> Any:
        """Turn a bare name into a mapping and wrap secret-looking settings."""
        if isinstance(data, str):
            return {"name": data}
        if isinstance(data, Mapping):
            return {
                k: v if k in cls.model_fields else _hide(v, is_secret_key(str(k)))
                for k, v in data.items()
            }
        return data

    @property
    def settings(self) -> dict[str, Any]:
        """The backend-specific settings (every extra key), secrets as plain strings."""
        return {k: _reveal(v) for k, v in (self.model_extra or {}).items()}

    @property
    def key(self) -> str:
        """The backend's unique label: ``name``, or ``name:instance`` when an ``instance``
        setting tells two backends of the same adapter apart."""
        instance = (self.model_extra or {}).get("instance")
        return self.name if instance is None else f"{self.name}:{_reveal(instance)}"


class RedactPattern(_Section):
    """A user-defined redaction: ``pattern`` (a regex) is replaced by ``replacement``."""

    name: str = Field(min_length=1)
    pattern: str
    replacement: str = "[REDACTED]"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, value: str, info: ValidationInfo) -> str:
        """Reject a pattern that is not a valid regular expression."""
        try:
            re.compile(value)
        except (re.error, OverflowError, RecursionError) as exc:
            name = info.data.get("name", "?")
            raise ValueError(
                f"expected a valid regular expression for pattern {name!r} ({exc})"
            ) from None
        return value


class CaptureConfig(_Section):
    """``capture:`` what is recorded from each call, its size limits and redaction."""

    inputs: bool = True
    outputs: bool = True
    max_field_chars: int = Field(default=4096, gt=0)
    max_depth: int = Field(default=8, gt=0)
    max_items: int = Field(default=100, gt=0)
    sample_rate: float = Field(default=1.0, ge=0, le=1)
    stall_threshold_s: float = Field(default=1.0, gt=0)
    redact: list[RedactCategory] = ["api_key", "credit_card", "email"]
    redact_patterns: list[RedactPattern] = []
    redact_keys: list[str] = [
        "api_key", "apikey", "authorization", "password", "secret", "token", "x-api-key"
    ]


class PipelineConfig(_Section):
    """``pipeline:`` the hot-path queue, batching, retries, journal and circuit breaker."""

    queue_size: int = Field(default=100_000, gt=0)
    batch_size: int = Field(default=512, gt=0)
    flush_interval_s: float = Field(default=1.0, gt=0)
    on_full: Literal["drop", "spill"] = "drop"
    journal_dir: str = Field(default=".vigil/journal", min_length=1)
    journal_max_bytes: Annotated[int, BeforeValidator(_parse_size)] = 1 << 30
    max_retries: int = Field(default=5, ge=0)
    backoff_initial_s: float = Field(default=0.5, gt=0)
    backoff_max_s: float = Field(default=30.0, gt=0)
    outbox_max_records: int = Field(default=50_000, gt=0)
    breaker_failures: int = Field(default=5, gt=0)
    breaker_reset_s: float = Field(default=30.0, gt=0)
    self_metrics_interval_s: float = Field(default=60.0, gt=0)


class StoreConfig(_Section):
    """``store:`` the local SQLite store (``local`` uses it unless its settings give ``path``)."""

    path: str = Field(default=".vigil/vigil.db", min_length=1)


class VigilConfig(_Section):
    """The whole validated configuration; ``source`` is the YAML file used, if any.

    A section given as null in YAML (``monitors:`` with nothing under it) takes its
    defaults. ``monitors`` and ``alerts`` are kept as raw mappings.
    """

    source: str | None = None
    service: ServiceConfig = ServiceConfig()
    backends: list[BackendConfig] = [BackendConfig(name="local")]
    capture: CaptureConfig = CaptureConfig()
    pipeline: PipelineConfig = PipelineConfig()
    store: StoreConfig = StoreConfig()
    monitors: dict[str, Any] = {}
    alerts: dict[str, Any] = {}
    #: Shared fleet state: a ``redis://`` URL or a mapping (see docs/scaling-out.md).
    state: str | dict[str, Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _null_sections(cls, data: Any) -> Any:
        """Treat a section given as null as absent."""
        if isinstance(data, Mapping):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("backends")
    @classmethod
    def _unique_names(cls, backends: list[BackendConfig]) -> list[BackendConfig]:
        """Reject two backend entries with the same name (and ``instance``)."""
        seen: dict[str, int] = {}
        for i, backend in enumerate(backends):
            if backend.key in seen:
                raise PydanticCustomError(
                    "duplicate_backend",
                    "duplicate backend name {name!r} (give each an 'instance:' setting "
                    "to run one adapter twice)",
                    {"name": backend.key, "first": seen[backend.key], "second": i},
                )
            seen[backend.key] = i
        return backends

    def redacted_dict(self) -> dict[str, Any]:
        """Return the config as plain data for display, every secret shown as ``"***"``."""
        data: dict[str, Any] = _mask(self.model_dump())
        for section in ("monitors", "alerts"):
            data[section] = _mask(data[section], by_key=True)
        return data


class _EnvLayer(BaseSettings):
    """The ``VIGIL_*`` environment variables, read raw (validated with the other layers)."""

    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", env_nested_delimiter="__", extra="ignore"
    )

    service: dict[str, Any] | None = None
    backends: list[Any] | None = None
    capture: dict[str, Any] | None = None
    pipeline: dict[str, Any] | None = None
    store: dict[str, Any] | None = None
    monitors: dict[str, Any] | None = None
    alerts: dict[str, Any] | None = None


def load_config(path: str | os.PathLike[str] | None = None, /, **overrides: Any) -> VigilConfig:
    """Load, merge and validate the configuration.

    Args:
        path: the YAML file; if None, ``$VIGIL_CONFIG`` if set, else ``./vigil.yaml`` if
            it exists, else defaults only.
        **overrides: top-level sections to override, e.g. ``capture={"inputs": False}``;
            mappings merge deeply into the lower layers, other values replace them.

    Returns:
        The validated, immutable :class:`VigilConfig`.

    Raises:
        ConfigError: anything invalid, one line per problem with file:line and key.
    """
    file = _discover(path)
    data, root = _read_yaml(file) if file is not None else ({}, None)
    label = str(file)
    missing: list[str] = []

    def substitute(value: str, loc: Loc) -> str:
        def one(match: re.Match[str]) -> str:
            escaped, var, default = match.groups()
            if escaped:
                return match.group()[1:]
            if os.environ.get(var):
                return os.environ[var]
            if default is not None:
                return default
            if var in os.environ:
                return ""
            missing.append(
                f"{label}:{_line(root, loc)}: {_dotted(loc)}: environment variable {var} "
                f"is not set (set it, or write ${{{var}:-default}})"
            )
            return ""

        return _INTERPOLATION.sub(one, value)

    data = _walk_strings(data, (), substitute)
    if missing:
        raise ConfigError("\n".join(missing))
    env = _read_env()
    merged = _merge(_merge(data, env), overrides)

    def where(loc: Loc) -> str:
        if _present(overrides, loc):
            return f"load_config({loc[0]}=...)"
        if _present(env, loc):
            return f"environment variable {_env_name(loc)}"
        return f"{label}:{_line(root, loc)}" if file is not None else "configuration"

    problems: list[Mapping[str, Any]] = []
    if "source" in merged:
        problems.append({"type": "extra_forbidden", "loc": ("source",), "input": None})
        del merged["source"]
    try:
        config = VigilConfig.model_validate(merged)
    except ValidationError as exc:
        problems.extend(exc.errors())
    if problems:
        problems.sort(key=lambda err: _line(root, tuple(err["loc"])))
        raise ConfigError("\n".join(_describe(err, where) for err in problems)) from None
    return config.model_copy(update={"source": None if file is None else label})


def _discover(path: str | os.PathLike[str] | None) -> Path | None:
    """Which YAML file to read, or None for defaults only."""
    if path is not None:
        return Path(path)
    env_path = os.environ.get("VIGIL_CONFIG")
    if env_path:
        if not Path(env_path).is_file():
            raise ConfigError(f"VIGIL_CONFIG={env_path}: config file not found")
        return Path(env_path)
    return Path("vigil.yaml") if Path("vigil.yaml").is_file() else None


def _read_yaml(file: Path) -> tuple[dict[str, Any], yaml.Node | None]:
    """Parse ``file`` into data plus its node tree (for line numbers)."""
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{file}: config file not found") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not a UTF-8 text file") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read config file: {exc.strerror}") from None
    root: yaml.Node | None = None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"{file}:{mark.line + 1}:{mark.column + 1}" if mark else str(file)
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.context_mark and exc.problem:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise ConfigError(f"{at}: invalid YAML: {problem}") from None
    except yaml.reader.ReaderError as exc:  # e.g. a NUL character: a position, not a mark
        line = text.count("\n", 0, exc.position) + 1
        raise ConfigError(f"{file}:{line}: invalid YAML: character {exc.character!r} "
                          "is not allowed in a YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}:1: invalid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{file}:{_deep_line(text)}: invalid YAML: nested too deeply "
                          "(or an alias that contains itself)") from None
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        line = _bad_scalar_line(root) if root is not None else 1
        raise ConfigError(f"{file}:{line}: invalid YAML value: {exc}") from None
    cycle_line = _cycle_line(root) if root is not None else 0
    if cycle_line:
        raise ConfigError(f"{file}:{cycle_line}: an alias refers to the mapping or "
                          "list that contains it; configs must be trees") from None
    if data is None:
        return {}, root
    if not isinstance(data, dict):
        raise ConfigError(
            f"{file}:{_line(root, ())}: the top level must be a mapping of sections "
            f"({', '.join(k for k in VigilConfig.model_fields if k != 'source')}), "
            f"got {_show(data, ())}"
        )
    return data, root


def _read_env() -> dict[str, Any]:
    """The ``VIGIL_*`` layer as nested raw data; nested JSON values decoded."""
    try:
        layer = _EnvLayer()
    except ValidationError as exc:
        lines = [
            _describe(err, lambda loc: f"environment variable {_env_name(loc)}")
            for err in exc.errors()
        ]
        raise ConfigError("\n".join(lines)) from None
    except SettingsError as exc:
        raise ConfigError(f"environment: {exc}") from None

    def decode(value: str, loc: Loc) -> Any:
        if value.strip()[:1] in ("[", "{"):
            try:
                return json.loads(value)
            except ValueError:
                pass
        return value

    raw = {k: v for k, v in layer if v is not None}
    return {k: _walk_strings(v, (k,), decode) if isinstance(v, dict) else v for k, v in raw.items()}


def _deep_line(text: str, limit: int = 100) -> int:
    """The line where YAML nesting first gets deeper than ``limit`` (tokens, no recursion)."""
    depth = 0
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            name = type(token).__name__
            if name.endswith("StartToken") and name not in ("StreamStartToken",
                                                            "DocumentStartToken"):
                depth += 1
                if depth > limit:
                    return int(token.start_mark.line) + 1
            elif name in ("BlockEndToken", "FlowSequenceEndToken", "FlowMappingEndToken"):
                depth -= 1
    except yaml.YAMLError:
        pass
    return 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _bad_scalar_line(root: yaml.Node) -> int:
    """The line of the first scalar whose explicit tag (``!!int``...) cannot be built."""
    constructor = yaml.constructor.SafeConstructor()
    stack, seen = [root], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        if isinstance(node, yaml.ScalarNode):
            try:
                constructor.construct_object(node, deep=True)
            except Exception:
                return int(node.start_mark.line) + 1
        stack.extend(reversed(_children(node)))
    return 1


def _cycle_line(root: yaml.Node) -> int:
    """The line of a collection that contains itself through an alias, or 0."""
    path: set[int] = set()
    done: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, leaving = stack.pop()
        if leaving:
            path.discard(id(node))
            done.add(id(node))
            continue
        if id(node) in path:
            return int(node.start_mark.line) + 1
        if id(node) in done:
            continue
        path.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    return 0


def _walk_strings(value: Any, loc: Loc, fn: Callable[[str, Loc], Any]) -> Any:
    """Apply ``fn(string, loc)`` to every string value nested in mappings and lists."""
    if isinstance(value, str):
        return fn(value, loc)
    if isinstance(value, dict):
        return {k: _walk_strings(v, (*loc, k), fn) for k, v in value.items()}
    if isinstance(value, list):
        return [_walk_strings(v, (*loc, i), fn) for i, v in enumerate(value)]
    return value


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge ``top`` over ``base``: mappings merge, anything else replaces."""
    out = dict(base)
    for key, value in top.items():
        below = out.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            out[key] = _merge(below, value)
        else:
            out[key] = value
    return out


def _present(layer: Any, loc: Loc) -> bool:
    """Whether the value at ``loc`` after merging comes from ``layer``."""
    for part in loc:
        if not isinstance(layer, Mapping):
            return True  # a list or a scalar of this layer replaced the lower ones whole
        if part not in layer:
            return False
        layer = layer[part]
    return True


def _env_name(loc: Loc) -> str:
    """The environment variable that set the value at ``loc``."""
    present = {name.upper(): name for name in os.environ}
    keys = [str(p) for p in loc[: next((i for i, p in enumerate(loc) if not isinstance(p, str)),
                                       len(loc))]]
    for end in range(len(keys), 0, -1):
        name = "VIGIL_" + "__".join(keys[:end]).upper()
        if name in present:
            return present[name]
    return "VIGIL_" + "__".join(keys).upper()


def _line(root: yaml.Node | None, loc: Loc) -> int:
    """The 1-based line of the deepest YAML node on the path ``loc``."""
    if root is None:
        return 1
    node, line = root, root.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            hits = [(k, v) for k, v in node.value if getattr(k, "value", None) == str(part)]
            if not hits:
                break
            key, node = hits[-1]
            line = key.start_mark.line + 1
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int):
            if not 0 <= part < len(node.value):
                break
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line


def _dotted(loc: Loc) -> str:
    """``("backends", 0, "name")`` -> ``"backends[0].name"``."""
    out = ""
    for part in loc:
        if isinstance(part, str) and not part.isprintable():
            part = repr(part)  # a line break in a key must not split the message
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out or "(top level)"


def _field_at(loc: Loc) -> tuple[type[BaseModel] | None, FieldInfo | None]:
    """The model holding the last key of ``loc`` and that key's field, when known."""
    current: Any = VigilConfig
    model: type[BaseModel] | None = None
    field: FieldInfo | None = None
    for part in loc:
        if isinstance(part, int):
            args = get_args(current)
            current = args[0] if args else None
            continue
        if not (isinstance(current, type) and issubclass(current, BaseModel)):
            return None, None
        model, field = current, current.model_fields.get(part)
        current = field.annotation if field else None
    return model, field


_EXPECTED = {
    "int_parsing": "an integer", "int_type": "an integer", "int_from_float": "an integer",
    "float_parsing": "a number", "float_type": "a number",
    "bool_parsing": "true or false", "bool_type": "true or false",
    "string_type": "a string", "string_too_short": "a non-empty string",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping",
    "model_attributes_type": "a mapping",
}
_NUMERIC = {"int_parsing", "int_type", "int_from_float", "float_parsing", "float_type",
            "greater_than", "greater_than_equal", "less_than", "less_than_equal"}


def _number(field: FieldInfo) -> str:
    """Describe a numeric field with its bounds: "a positive integer", "a number between..."."""
    kind = "integer" if field.annotation is int else "number"
    bounds = {b: getattr(m, b) for m in field.metadata for b in ("gt", "ge", "le")
              if getattr(m, b, None) is not None}
    if "ge" in bounds and "le" in bounds:
        return f"a {kind} between {bounds['ge']} and {bounds['le']}"
    if bounds.get("gt") == 0:
        return f"a positive {kind}"
    article = "an" if kind == "integer" else "a"
    return f"{article} {kind} >= 0" if bounds.get("ge") == 0 else f"{article} {kind}"


def _show(value: Any, loc: Loc) -> str:
    """How a found value appears in a message: short, and never a secret."""
    if isinstance(value, SecretStr) or any(isinstance(p, str) and is_secret_key(p) for p in loc):
        return "a hidden value"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _describe(err: Mapping[str, Any], where: Callable[[Loc], str]) -> str:
    """One message line for one pydantic error dict."""
    kind, loc, ctx = err["type"], tuple(err["loc"]), err.get("ctx") or {}
    if kind == "duplicate_backend":
        first, second = ("backends", ctx["first"], "name"), ("backends", ctx["second"], "name")
        return (f"{where(second)}: {_dotted((*loc, ctx['second']))}: duplicate backend name "
                f"{ctx['name']!r}, already used by backends[{ctx['first']}] at {where(first)}")
    head = f"{where(loc)}: {_dotted(loc)}: "
    if kind == "missing":
        return head + "required key is missing"
    model, field = _field_at(loc)
    if kind == "extra_forbidden":
        valid = [k for k in (model.model_fields if model else ()) if k != "source"]
        close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        return head + f"unknown key{hint}; valid keys: {', '.join(valid)}"
    if kind in _NUMERIC and field is not None and field.annotation in (int, float):
        expected = f"expected {_number(field)}"
    elif kind == "literal_error":
        expected = f"expected {ctx['expected']}"
    elif kind == "value_error":
        expected = str(ctx.get("error", err.get("msg")))
    elif kind in _EXPECTED:
        expected = f"expected {_EXPECTED[kind]}"
    else:
        expected = str(err.get("msg", kind))
    return head + f"{expected}, got {_show(err.get('input'), loc)}"
