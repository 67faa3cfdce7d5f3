"""What every output check shares: :class:`Check`, its :class:`Subject`, the YAML spec.

A :class:`Check` turns one span's output into a pass/fail (``True`` passes) or a
number; ``None`` means the check does not apply to that output (no date in it, the
field is missing...) and the output is not counted. Checks read a :class:`Subject`:
the span's output and input, with the JSON parse of the output done once and shared.
A ``field`` selects a value inside the output by a JSON path (:func:`parse_path`).
Each YAML check ``type:`` is a :class:`CheckSpec` model; :func:`build_spec` validates
a mapping against one and builds its check.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from ..model import Span
from ..monitors.windows import Settings, parse_settings

__all__ = [
    "MISSING",
    "UNPARSEABLE",
    "WILDCARD",
    "Check",
    "CheckSpec",
    "Evaluator",
    "Kind",
    "Subject",
    "build_spec",
    "finite",
    "get_path",
    "is_truncated",
    "parse_json_text",
    "parse_path",
    "span_selector",
    "text_of",
]


class _Missing:
    """The absence of a value (distinct from JSON ``null``)."""

    _instance: ClassVar[_Missing | None] = None

    def __new__(cls) -> _Missing:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


#: Returned by :func:`get_path` and :meth:`Subject.select` when nothing is there.
MISSING: Any = _Missing()
#: What :meth:`Subject.parsed` and :func:`parse_json_text` return for text that is not JSON.
UNPARSEABLE: Any = object()

_TRUNCATED_RE = re.compile(r"\.\.\.\[truncated \d{1,12} chars\]\Z")


def is_truncated(text: str) -> bool:
    """Whether ``text`` was cut by the capture size limits (it ends with the marker)."""
    return text.endswith(" chars]") and _TRUNCATED_RE.search(text[-40:]) is not None


def _untruncated(text: str) -> str:
    if is_truncated(text):
        return text[: text.rindex("...[truncated ")]
    return text


# -- JSON paths ------------------------------------------------------------------------

WILDCARD: Any = object()
_PATH_TOKEN = re.compile(
    r"""\[(?:(-?\d{1,9})|(\*)|"([^"\]]{0,200})"|'([^'\]]{0,200})')\]|\.?([^.\[\]]{1,200})"""
)


def parse_path(path: str) -> tuple[Any, ...]:
    """Parse ``a.b[0].c``, ``a.0.c``, ``items[*].date``, ``["key.with.dots"]``.

    Integer steps index lists (negative from the end); ``*`` takes every item of a
    list (or every value of a mapping). Raises ``ValueError`` on malformed paths.
    """
    steps: list[Any] = []
    pos = 0
    path = path.strip()
    if not path:
        raise ValueError("empty path")
    while pos < len(path):
        m = _PATH_TOKEN.match(path, pos)
        if m is None or m.end() == pos:
            raise ValueError(f"malformed path {path!r} at character {pos + 1}")
        index, star, dq, sq, bare = m.groups()
        if index is not None:
            steps.append(int(index))
        elif star is not None or bare == "*":
            steps.append(WILDCARD)
        elif dq is not None or sq is not None:
            steps.append(dq if dq is not None else sq)
        else:
            steps.append(int(bare) if re.fullmatch(r"-?\d{1,9}", bare) else bare)
        pos = m.end()
    return tuple(steps)


def get_path(value: Any, steps: tuple[Any, ...]) -> Any:
    """The value at ``steps`` inside ``value`` (a list of values past a wildcard)."""
    if not steps:
        return value
    step, rest = steps[0], steps[1:]
    if step is WILDCARD:
        if isinstance(value, Mapping):
            items: list[Any] = list(value.values())
        elif isinstance(value, list):
            items = value
        else:
            return MISSING
        found = [get_path(item, rest) for item in items]
        return [v for v in found if v is not MISSING]
    if isinstance(step, int) and isinstance(value, list):
        if -len(value) <= step < len(value):
            return get_path(value[step], rest)
        return MISSING
    if isinstance(value, Mapping):
        key = str(step)
        if key in value:
            return get_path(value[key], rest)
    return MISSING


# -- text and JSON views of an output -------------------------------------------------


def _leaves(value: Any, depth: int = 0) -> Iterator[str]:
    if depth > 32:
        return
    if isinstance(value, str):
        yield _untruncated(value)
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, (int, float)):
        yield repr(value) if isinstance(value, float) else str(value)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _leaves(v, depth + 1)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v, depth + 1)


def text_of(value: Any) -> str | None:
    """The text a text check reads: a string itself, or the leaves of a structure.

    The truncation marker of the capture limits is dropped. ``None`` for nothing.
    """
    if value is MISSING or value is None:
        return None
    if isinstance(value, str):
        return _untruncated(value)
    return "\n".join(_leaves(value))


def _strip_fences(text: str) -> str:
    """The body of a Markdown code fence around the whole text, if there is one."""
    s = text.strip()
    if s.startswith("```") and s.endswith("```") and len(s) >= 6:
        newline = s.find("\n")
        if newline != -1:
            return s[newline + 1: -3].strip()
    return s


def parse_json_text(text: str, strip_fences: bool = True) -> Any:
    """``json.loads`` of ``text`` (code fences removed), or ``UNPARSEABLE``."""
    try:
        return json.loads(_strip_fences(text) if strip_fences else text)
    except (ValueError, RecursionError):
        return UNPARSEABLE


class Subject:
    """One span's output and input as checks read them; the JSON parse is shared."""

    __slots__ = ("_parsed", "input", "memo", "output", "span")

    def __init__(self, output: Any, input: Any = None, span: Span | None = None) -> None:
        self.output = output
        self.input = input
        self.span = span
        self._parsed: Any = MISSING
        #: Per-subject cache for work several checks share (e.g. a parsed source).
        self.memo: dict[Any, Any] = {}

    @classmethod
    def of_span(cls, span: Span) -> Subject:
        """The subject of a span."""
        return cls(span.output, span.input, span)

    @property
    def truncated(self) -> bool:
        """Whether the output string was cut by the capture size limits."""
        return isinstance(self.output, str) and is_truncated(self.output)

    def parsed(self) -> Any:
        """The output as JSON data: structures as they are, strings parsed.

        ``UNPARSEABLE`` when the output is a string that is not JSON (or was cut by
        the capture limits), ``MISSING`` when there is no output.
        """
        if self._parsed is MISSING:
            out = self.output
            if out is None:
                return MISSING
            if isinstance(out, str):
                self._parsed = (
                    UNPARSEABLE if is_truncated(out) else parse_json_text(out)
                )
            else:
                self._parsed = out
        return self._parsed

    def select(self, path: tuple[Any, ...] | None) -> Any:
        """The whole output (no path) or the value at ``path`` in its JSON form."""
        if path is None:
            return MISSING if self.output is None else self.output
        data = self.parsed()
        if data is MISSING or data is UNPARSEABLE:
            return MISSING
        return get_path(data, path)


# -- the Check ---------------------------------------------------------------------------

Kind = Literal["rate", "value", "auto"]
Evaluator = Callable[[Any, Subject], "bool | float | None"]
_ON_RE = re.compile(r"\A(?:llm|root|any|name:.{1,200})\Z", re.S)


def span_selector(on: str) -> Callable[[Span], bool]:
    """The predicate of an ``on:`` setting: ``llm``, ``root``, ``any`` or ``name:<span name>``."""
    if on == "llm":
        return lambda s: s.kind == "llm"
    if on == "root":
        return lambda s: s.parent_id is None
    if on == "any":
        return lambda s: True
    if on.startswith("name:"):
        name = on[5:]
        return lambda s: s.name == name
    raise ValueError(f"on must be llm, root, any or name:<span name>, got {on!r}")


class Check:
    """A named check on outputs: pass/fail (``rate``) or a number (``value``).

    Args:
        name: the check's name (in metric names: ``checks.<name>.fail_rate``).
        evaluate: ``(value, subject) -> bool | float | None`` where ``value`` is the
            output or the ``field`` selected in it (``MISSING`` when absent).
        kind: ``rate`` (booleans; ``True`` passes), ``value`` (numbers) or ``auto``
            (decided by the first result).
        field: a JSON path into the output (``None``: the whole output).
        on: which spans of the feature the check reads (``None``: the monitor's).
        alternative: which change alerts: ``greater`` (more failures / larger
            values), ``less`` or ``two-sided``; default ``greater`` for rates,
            ``two-sided`` for values.
        expected_fail_rate: for rate checks, a known in-control failure rate: windows
            are tested against it (exact binomial test) and no baseline is learnt.
        type: the built-in type name, or ``custom``.
    """

    __slots__ = ("_evaluate", "alternative", "expected_fail_rate", "field", "kind", "name",
                 "on", "path", "type")

    def __init__(self, name: str, evaluate: Evaluator, *, kind: Kind = "auto",
                 field: str | None = None, on: str | None = None,
                 alternative: str | None = None, expected_fail_rate: float | None = None,
                 type: str = "custom") -> None:
        if not name or not re.fullmatch(r"[A-Za-z0-9_.\-]{1,100}", name):
            raise ValueError(f"check name {name!r}: use letters, digits, '_', '-', '.'")
        if kind not in ("rate", "value", "auto"):
            raise ValueError(f"kind must be rate, value or auto, got {kind!r}")
        if on is not None:
            span_selector(on)
        if alternative not in (None, "greater", "less", "two-sided"):
            raise ValueError(f"alternative must be greater, less or two-sided, got {alternative!r}")
        if expected_fail_rate is not None:
            if kind == "value":
                raise ValueError("expected_fail_rate applies to pass/fail checks only")
            if not 0.0 <= expected_fail_rate < 1.0:
                raise ValueError("expected_fail_rate must be in [0, 1)")
        self.name = name
        self._evaluate = evaluate
        self.kind: Kind = kind
        self.field = field
        self.path = parse_path(field) if field else None
        self.on = on
        self.alternative = alternative
        self.expected_fail_rate = expected_fail_rate
        self.type = type

    def __repr__(self) -> str:
        return f"Check({self.name!r}, type={self.type!r}, kind={self.kind!r})"

    def evaluate(self, subject: Subject) -> bool | float | None:
        """The check's result on one subject (exceptions propagate to the caller)."""
        return self._evaluate(subject.select(self.path), subject)

    def __call__(self, output: Any, input: Any = None) -> bool | float | None:
        """Evaluate on a bare output (and input), e.g. in a test or a canary."""
        return self.evaluate(Subject(output, input))


class CheckSpec(Settings):
    """The keys every YAML check takes (each type adds its own)."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]{1,100}$")
    type: str
    field: str | None = None
    on: str | None = None
    alternative: Literal["greater", "less", "two-sided"] | None = None
    expected_fail_rate: float | None = Field(default=None, ge=0, lt=1)
    enabled: bool = True

    result_kind: ClassVar[Kind] = "rate"

    @field_validator("field")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None:
            parse_path(v)
        return v

    @field_validator("on")
    @classmethod
    def _on(cls, v: str | None) -> str | None:
        if v is not None and not _ON_RE.match(v):
            raise ValueError("on must be llm, root, any or name:<span name>")
        return v

    @model_validator(mode="after")
    def _rate_only(self) -> CheckSpec:
        if self.expected_fail_rate is not None and self.result_kind == "value":
            raise ValueError(f"expected_fail_rate does not apply to {self.type} checks "
                             "(they measure a number)")
        return self

    def evaluator(self, where: str) -> Evaluator:
        """The function the check runs; ``where`` names the config key in errors."""
        raise NotImplementedError

    def build(self, where: str) -> Check:
        """The :class:`Check` this spec declares."""
        return Check(self.name, self.evaluator(where), kind=self.result_kind,
                     field=self.field, on=self.on, alternative=self.alternative,
                     expected_fail_rate=self.expected_fail_rate, type=self.type)


def build_spec(types: Mapping[str, type[CheckSpec]], data: Any, where: str) -> Check:
    """Validate one YAML check mapping and build its :class:`Check`.

    Raises:
        ConfigError: naming the key, e.g. ``monitors.checks.features.x[0].format``.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping with name and type, "
                          f"got {type(data).__name__}")
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in types:
        shown = "missing" if kind is None else repr(kind)
        raise ConfigError(f"{where}.type: {shown} is not a check type; "
                          f"known: {', '.join(sorted(types))}")
    spec = parse_settings(types[kind], data, where)
    try:
        return spec.build(where)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def finite(value: float) -> bool:
    """Whether a check's number can enter a test."""
    return math.isfinite(value)
