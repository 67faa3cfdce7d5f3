"""The canary file: its YAML model, validation with ``file:line`` errors, and loading.

A canary file is a mapping with ``cases:``, a list of cases, each with a ``name``, a
``prompt`` (or ``messages``), a target (``callable: "module:function"`` or
``model: <anthropic model>``) and an ``expect:`` mapping
(:class:`~llmvigil.core.canary.expectations.Expect`). ``defaults:`` gives target
settings every case inherits. :func:`load_suite` validates everything a person can
get wrong before anything runs (types, unknown keys, regexes, JSON schemas, import
paths, the API key's environment variable) and raises one
:class:`~llmvigil.core.errors.InputFileError` with a line per problem, such as
``canaries.yaml:14: cases[2].expect.regex[0]: invalid regular expression: ...``.

The helpers here (:func:`read_yaml`, :class:`Problems`, :func:`resolve_import`,
:class:`TargetSpec`) are shared with the golden-set evaluation (:mod:`..eval`).
"""

from __future__ import annotations

import datetime as dt
import difflib
import importlib
import importlib.util
import os
import sys
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from ..config import _dotted, _line, _show
from ..errors import InputFileError
from .expectations import Expect, ImportPath

__all__ = [
    "CanaryCase",
    "CanarySuite",
    "Case",
    "Message",
    "Problems",
    "SuiteFile",
    "TargetFields",
    "TargetSpec",
    "load_suite",
    "read_yaml",
    "resolve_import",
]

Loc = tuple[Any, ...]


# -- YAML and problems ------------------------------------------------------------------


def _plain_dates(value: Any) -> Any:
    """YAML reads ``2024-04-03`` as a date: turn dates back into ISO strings."""
    if isinstance(value, (dt.date, dt.datetime)):
        return value.isoformat()
    if isinstance(value, dict):
        return {k: _plain_dates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_dates(v) for v in value]
    return value


def read_yaml(path: Path, label: str | None = None) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file into data (dates as ISO strings) plus its node tree for lines.

    Raises:
        InputFileError: the file is missing, unreadable or not valid YAML
            (``file:line:column: invalid YAML: ...``).
    """
    label = label or str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(f"{label}: file not found") from None
    except IsADirectoryError:
        raise InputFileError(f"{label}: is a directory, not a file") from None
    except UnicodeDecodeError:
        raise InputFileError(f"{label}: not a UTF-8 text file") from None
    except OSError as exc:
        raise InputFileError(f"{label}: cannot read: {exc.strerror}") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        at = f"{label}:{mark.line + 1}:{mark.column + 1}" if mark else label
        problem = exc.problem or exc.context or "syntax error"
        if exc.context and exc.context_mark and exc.problem:
            problem += f" ({exc.context} at line {exc.context_mark.line + 1})"
        raise InputFileError(f"{at}: invalid YAML: {problem}") from None
    except yaml.YAMLError as exc:
        raise InputFileError(f"{label}: invalid YAML: {exc}") from None
    return _plain_dates(data), root


def _unwrap(annotation: Any) -> Any:
    """The model class inside ``X | None``, ``list[X]``, ``Annotated[X, ...]``."""
    for _ in range(6):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            return annotation
        if not args:
            return None
        annotation = args[0]
    return None


def _keys_at(model: type[BaseModel] | None, loc: Loc) -> list[str]:
    """The valid keys of the mapping at ``loc`` (which ends with the offending key)."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int) or current is None:
            continue
        fields = {f.alias or n: f for n, f in current.model_fields.items()}
        info = fields.get(part)
        current = _unwrap(info.annotation) if info is not None else None
    if current is None:
        return []
    return [f.alias or n for n, f in current.model_fields.items()]


class Problems:
    """Problems found in one input file, each reported as ``file:line: key: message``.

    Args:
        label: how the file is named in messages (the path as the user gave it).
        root: the YAML node tree (for line numbers); ``None`` for other input.
        line: the line to report when ``root`` is ``None`` (a JSON-lines record);
            with neither, messages carry no line (``--scorer: ...``).
    """

    def __init__(self, label: str, root: yaml.Node | None = None,
                 line: int | None = None) -> None:
        self.label = label
        self.root = root
        self.line = line
        self.items: list[tuple[int, str]] = []

    def _line_of(self, loc: Loc) -> int | None:
        if self.root is not None:
            return _line(self.root, loc)
        return self.line

    def where(self, loc: Loc) -> str:
        """``file:line`` of the value at ``loc`` (just ``file`` without line numbers)."""
        line = self._line_of(loc)
        return self.label if line is None else f"{self.label}:{line}"

    def add(self, loc: Loc, message: str) -> None:
        """Note a problem with the value at ``loc``."""
        key = f"{_dotted(loc)}: " if loc else ""
        self.items.append((self._line_of(loc) or 0, f"{self.where(loc)}: {key}{message}"))

    def extend(self, other: Problems) -> None:
        """Take the problems noted in ``other`` (another file, the command line)."""
        self.items.extend(other.items)

    def add_validation(self, exc: ValidationError, model: type[BaseModel] | None,
                       base: Loc = ()) -> None:
        """Note every error of a pydantic validation of the data at ``base``."""
        for err in exc.errors():
            loc = (*base, *err["loc"])
            kind, ctx = err["type"], err.get("ctx") or {}
            if kind == "missing":
                message = "required key is missing"
            elif kind == "extra_forbidden":
                valid = _keys_at(model, tuple(err["loc"]))
                close = difflib.get_close_matches(str(loc[-1]), valid, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                message = f"unknown key{hint}; valid keys: {', '.join(valid)}"
            elif kind == "value_error":
                message = str(ctx.get("error", err["msg"]))
            elif kind == "literal_error":
                message = f"expected {ctx.get('expected')}, got {_show(err.get('input'), loc)}"
            else:
                message = f"{err['msg']}, got {_show(err.get('input'), loc)}"
            self.add(loc, message)

    def __bool__(self) -> bool:
        return bool(self.items)

    def error(self) -> InputFileError:
        """One error with a line per problem, in file order."""
        return InputFileError("\n".join(text for _, text in sorted(self.items)))

    def raise_if_any(self) -> None:
        """Raise :meth:`error` when any problem was noted."""
        if self.items:
            raise self.error()


def resolve_import(ref: str,
                   search: tuple[str | os.PathLike[str], ...] = ()) -> Callable[..., Any]:
    """Import ``module:function`` (the function may be dotted: ``module:Class.method``).

    The current directory is importable, as with ``python -m``, and so are the
    ``search`` directories (the input file's own); they are appended to ``sys.path``,
    so they never shadow installed modules.

    Raises:
        ValueError: the module or attribute cannot be imported, or is not callable;
            the message says which and why.
    """
    module_name, _, attr = ref.partition(":")
    for directory in (os.getcwd(), *(os.fspath(d) for d in search)):
        if directory and directory not in sys.path and not (
                directory == os.getcwd() and "" in sys.path):
            sys.path.append(directory)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} ({exc}); is its directory "
                         "on PYTHONPATH?") from None
    except Exception as exc:
        raise ValueError(f"importing module {module_name!r} failed: "
                         f"{type(exc).__name__}: {exc}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ValueError(f"module {module_name!r} has no attribute {attr!r}") from None
    if not callable(obj):
        raise ValueError(f"{ref} is a {type(obj).__name__}, not a callable")
    return typing.cast(Callable[..., Any], obj)


# -- targets ------------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class TargetFields(_Strict):
    """What a case (or the golden set) runs: a Python callable or an Anthropic model.

    ``callable`` is called with the prompt (or the messages list) plus ``kwargs``;
    it may be sync (run in a thread pool) or async. ``model`` calls the Messages API
    with the real ``anthropic`` SDK: the key is read from the environment variable
    named by ``api_key_env``, ``base_url`` defaults to the SDK's
    (``ANTHROPIC_BASE_URL`` or the public API); ``temperature`` is sent only when set
    (recent models reject sampling parameters).
    """

    callable_: ImportPath | None = Field(default=None, alias="callable")
    model: str | None = Field(default=None, min_length=1)
    base_url: str | None = None
    api_key_env: str = Field(default="ANTHROPIC_API_KEY", min_length=1)
    max_tokens: int = Field(default=1024, gt=0)
    temperature: float | None = Field(default=None, ge=0, le=1)
    system: str | None = None
    kwargs: dict[str, Any] = {}
    timeout_s: float = Field(default=120.0, gt=0)


_TARGET_KEYS = tuple(TargetFields.model_fields)


@dataclass(frozen=True)
class TargetSpec:
    """The effective target of a case: its own settings over the file's ``defaults``.

    ``fn`` is the imported callable (``None`` for a model target).
    """

    callable: str | None = None
    model: str | None = None
    base_url: str | None = None
    api_key_env: str = "ANTHROPIC_API_KEY"
    max_tokens: int = 1024
    temperature: float | None = None
    system: str | None = None
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    timeout_s: float = 120.0
    fn: Callable[..., Any] | None = None

    @property
    def label(self) -> str:
        """How the target is shown: the import path or ``model:<name>``."""
        return self.callable or f"model:{self.model}"

    @classmethod
    def merge(cls, own: TargetFields, defaults: TargetFields | None = None) -> TargetSpec:
        """Each setting from ``own`` if it set it, else from ``defaults``."""
        values: dict[str, Any] = {}
        for name in _TARGET_KEYS:
            source = own if defaults is None or name in own.model_fields_set else defaults
            values[name.rstrip("_")] = getattr(source, name)
        return cls(**values)

    def resolve(self, loc: Loc, problems: Problems,
                search: tuple[str | os.PathLike[str], ...] = ()) -> TargetSpec:
        """Check the target can run here (one kind, importable callable, SDK and API
        key present) and return it with ``fn`` set; problems are noted at ``loc``."""
        if (self.callable is None) == (self.model is None):
            which = "both" if self.callable else "neither"
            problems.add(loc, f"give exactly one target, 'callable: module:function' or "
                              f"'model: <anthropic model>' (found {which})")
            return self
        if self.callable is not None:
            try:
                return _replace(self, fn=resolve_import(self.callable, search))
            except ValueError as exc:
                problems.add((*loc, "callable"), str(exc))
                return self
        if importlib.util.find_spec("anthropic") is None:
            problems.add((*loc, "model"), "model targets need the 'anthropic' package: "
                                          "pip install 'llmvigil[anthropic]'")
            return self
        if not os.environ.get(self.api_key_env):
            problems.add((*loc, "model"), f"environment variable {self.api_key_env} is not "
                                          "set (it holds the Anthropic API key; "
                                          "'api_key_env' names another variable)")
        return self


def _replace(spec: TargetSpec, **changes: Any) -> TargetSpec:
    from dataclasses import replace

    return replace(spec, **changes)


# -- the canary file -------------------------------------------------------------------


def _text_or_parts(value: Any) -> Any:
    if isinstance(value, str) or (
            isinstance(value, list) and all(isinstance(p, dict) for p in value)):
        return value
    raise ValueError(f"expected a string or a list of content blocks, got "
                     f"{_show(value, ())}")


class Message(_Strict):
    """One chat message: ``role`` and ``content`` (text or a list of content blocks)."""

    role: Literal["user", "assistant", "system"]
    content: Annotated[Any, BeforeValidator(_text_or_parts)]


class Case(TargetFields):
    """One ``cases:`` entry."""

    name: str = Field(min_length=1)
    prompt: str | None = None
    messages: list[Message] | None = Field(default=None, min_length=1)
    expect: Expect = Expect()
    feature: str | None = None


class SuiteFile(_Strict):
    """The whole canary file.

    ``name`` identifies the suite in the history and in records (default: the file
    name without extension); ``concurrency`` how many cases run at once.
    """

    name: str | None = Field(default=None, min_length=1)
    feature: str = Field(default="canary", min_length=1)
    concurrency: int = Field(default=4, gt=0)
    defaults: TargetFields = TargetFields()
    cases: list[Case] = Field(min_length=1)


@dataclass(frozen=True)
class CanaryCase:
    """A validated case, ready to run: its input, target, expectations, predicates."""

    name: str
    input: Any
    target: TargetSpec
    expect: Expect
    predicates: Mapping[str, Callable[..., Any]]
    feature: str
    where: str = ""


@dataclass(frozen=True)
class CanarySuite:
    """A validated canary file."""

    name: str
    path: str
    feature: str
    concurrency: int
    cases: tuple[CanaryCase, ...]


def load_suite(path: str | os.PathLike[str]) -> CanarySuite:
    """Read, validate and resolve a canary file.

    Raises:
        InputFileError: anything wrong, one ``file:line: key: problem`` line each.
    """
    file = Path(path)
    label = str(path)
    data, root = read_yaml(file, label)
    problems = Problems(label, root)
    if not isinstance(data, dict):
        problems.add((), f"expected a mapping with a 'cases:' list, got {_show(data, ())}")
        raise problems.error()
    try:
        spec = SuiteFile.model_validate(data)
    except ValidationError as exc:
        problems.add_validation(exc, SuiteFile)
        raise problems.error() from None
    search = (str(file.resolve().parent),)
    cases: list[CanaryCase] = []
    first_seen: dict[str, int] = {}
    for i, case in enumerate(spec.cases):
        loc: Loc = ("cases", i)
        if case.name in first_seen:
            problems.add((*loc, "name"), f"duplicate case name {case.name!r}, already used "
                                         f"by cases[{first_seen[case.name]}] at "
                                         f"{problems.where(('cases', first_seen[case.name]))}")
        first_seen.setdefault(case.name, i)
        if (case.prompt is None) == (case.messages is None):
            which = "both" if case.prompt is not None else "neither"
            problems.add(loc, f"give exactly one of 'prompt' or 'messages' (found {which})")
        target = TargetSpec.merge(case, spec.defaults).resolve(loc, problems, search)
        predicates: dict[str, Callable[..., Any]] = {}
        for j, ref in enumerate(case.expect.predicate):
            try:
                predicates[ref] = resolve_import(ref, search)
            except ValueError as exc:
                problems.add((*loc, "expect", "predicate", j), str(exc))
        value: Any = case.prompt if case.messages is None else [
            m.model_dump() for m in case.messages]
        cases.append(CanaryCase(
            name=case.name, input=value, target=target, expect=case.expect,
            predicates=predicates, feature=case.feature or spec.feature,
            where=problems.where(loc),
        ))
    problems.raise_if_any()
    return CanarySuite(name=spec.name or file.stem, path=label, feature=spec.feature,
                       concurrency=spec.concurrency, cases=tuple(cases))
