"""What a canary's output must satisfy, and the values it extracts to compare across runs.

An :class:`Expect` is the ``expect:`` mapping of one case. :func:`evaluate` checks an
output against it and returns an :class:`Evaluation`: the failed expectations with a
message each, and the *extracted values* (JSON fields, numbers, regex captures) that
the runner compares with the previous run, so a change is seen even when every
expectation still passes.

JSON expectations read the output as JSON: a ``dict``/``list`` output as it is, a
string parsed whole or, failing that, from the first fenced code block in it.
"""

from __future__ import annotations

import inspect
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

__all__ = [
    "Evaluation",
    "Expect",
    "Failure",
    "NotJSON",
    "NumberExpect",
    "as_text",
    "evaluate",
    "get_path",
    "json_equal",
    "parse_json",
    "parse_number",
    "values_differ",
]

_FENCE = re.compile(r"```[ \t]*(?:json|JSON)?[ \t]*\r?\n(.*?)```", re.DOTALL)
_PATH_TOKEN = re.compile(r"\[(-?\d+)\]|([^.\[\]]+)")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
#: The key of a value extracted from the whole output (a ``number`` without ``path``).
WHOLE_OUTPUT = "(output)"


def _as_list(value: Any) -> Any:
    """Accept one item where a list is expected; ``null`` means an empty list."""
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _compiles(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"invalid regular expression: {exc}") from None
    return pattern


def _import_path(value: str) -> str:
    if not _IMPORT_PATH.match(value):
        raise ValueError(f"expected an import path 'module:function', got {value!r}")
    return value


def _valid_schema(schema: dict[str, Any] | None) -> dict[str, Any] | None:
    if schema is None:
        return None
    try:
        import jsonschema
    except ImportError:
        raise ValueError("json_schema expectations need the 'jsonschema' package: "
                         "pip install jsonschema") from None

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(p) for p in exc.path)
        raise ValueError(
            f"invalid JSON schema{f' at {where}' if where else ''}: {exc.message}"
        ) from None
    return schema


#: A ``module:function`` reference, checked for form (imported by the loader).
ImportPath = Annotated[str, AfterValidator(_import_path)]
Pattern = Annotated[str, AfterValidator(_compiles)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NumberExpect(_Strict):
    """``number:`` the number at ``path`` (the whole output when omitted) equals ``value``
    within ``tolerance`` (absolute, or a fraction of ``value`` when ``relative``)."""

    path: str | None = None
    value: float
    tolerance: float = Field(default=0.0, ge=0)
    relative: bool = False

    @property
    def key(self) -> str:
        """The name of the extracted value."""
        return self.path or WHOLE_OUTPUT

    def absolute_tolerance(self) -> float:
        """The tolerance as an absolute difference from ``value``."""
        return self.tolerance * abs(self.value) if self.relative else self.tolerance

    def allowed(self) -> float:
        """The largest accepted absolute difference from ``value``."""
        # Decimal inputs such as 12.51 - 12.5 land a hair above 0.01 in binary floats.
        return self.absolute_tolerance() + 1e-9 * max(1.0, abs(self.value))


class Expect(_Strict):
    """A case's ``expect:`` mapping. Every key is optional; a case passes when all hold.

    - ``fields``: JSON path -> exact value (``{date: "2024-04-03", "items[0].qty": 2}``).
    - ``regex``: pattern(s) that must match somewhere in the output text.
    - ``json_schema``: a JSON Schema the parsed output must validate against.
    - ``number``: numeric tolerance check(s), see :class:`NumberExpect`.
    - ``contains`` / ``not_contains``: substring(s) that must / must not appear.
    - ``predicate``: ``module:function`` reference(s) called with the output; a
      function returns a bool, or ``(bool, reason)``.
    - ``extract``: JSON paths whose values are only tracked for changes.
    """

    fields: dict[str, Any] = {}
    regex: Annotated[list[Pattern], BeforeValidator(_as_list)] = []
    json_schema: Annotated[dict[str, Any] | None, AfterValidator(_valid_schema)] = None
    number: Annotated[list[NumberExpect], BeforeValidator(_as_list)] = []
    contains: Annotated[list[str], BeforeValidator(_as_list)] = []
    not_contains: Annotated[list[str], BeforeValidator(_as_list)] = []
    predicate: Annotated[list[ImportPath], BeforeValidator(_as_list)] = []
    extract: Annotated[list[str], BeforeValidator(_as_list)] = []

    @property
    def needs_json(self) -> bool:
        """Whether any expectation reads the output as JSON."""
        return bool(self.fields or self.json_schema is not None or self.extract
                    or any(n.path for n in self.number))

    def tolerances(self) -> dict[str, float]:
        """Extracted numbers that count as unchanged within a tolerance, by key."""
        return {n.key: n.allowed() for n in self.number}


@dataclass(frozen=True)
class Failure:
    """One expectation that did not hold."""

    expectation: str
    message: str

    def as_dict(self) -> dict[str, str]:
        """Plain data for score metadata and history."""
        return {"expectation": self.expectation, "message": self.message}


@dataclass
class Evaluation:
    """The outcome of checking one output: failures and extracted values."""

    failures: list[Failure] = field(default_factory=list)
    values: dict[str, Any] = field(default_factory=dict)
    checked: int = 0

    @property
    def passed(self) -> bool:
        """True when no expectation failed."""
        return not self.failures

    def fail(self, expectation: str, message: str) -> None:
        """Note a failed expectation."""
        self.failures.append(Failure(expectation, message))


class NotJSON(ValueError):
    """The output cannot be read as JSON."""


def as_text(output: Any) -> str:
    """The output as text: strings as they are, JSON-able data as JSON, others by ``str``."""
    if isinstance(output, str):
        return output
    if isinstance(output, (bytes, bytearray)):
        return bytes(output).decode("utf-8", errors="replace")
    if output is None or isinstance(output, (dict, list, tuple, int, float, bool)):
        try:
            return json.dumps(output, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            pass
    return str(output)


def parse_json(output: Any) -> Any:
    """Read the output as JSON data.

    Raises:
        NotJSON: a string that is neither JSON nor holds a fenced JSON block.
    """
    if isinstance(output, (dict, list, int, float, bool)) or output is None:
        return output
    text = as_text(output).strip()
    try:
        return json.loads(text)
    except ValueError as exc:
        error = exc
    match = _FENCE.search(text)
    if match is not None:
        try:
            return json.loads(match.group(1))
        except ValueError as exc:
            error = exc
    shown = text if len(text) <= 80 else text[:77] + "..."
    raise NotJSON(f"output is not JSON ({error}): {shown!r}")


def get_path(data: Any, path: str) -> Any:
    """The value at a dotted path: ``a.b``, ``items[0].price``, ``items.0.price``.

    Raises:
        KeyError: the path does not exist in ``data``; the message says where it stops.
    """
    text = path.strip()
    text = text[2:] if text.startswith("$.") else text.lstrip("$")
    current, walked = data, "$"
    for index, name in _PATH_TOKEN.findall(text):
        part: Any = int(index) if index else name
        if isinstance(current, list) and not index and name.lstrip("-").isdigit():
            part = int(name)
        try:
            if isinstance(current, list) and isinstance(part, int):  # noqa: SIM114 - typing
                current = current[part]
            elif isinstance(current, dict) and isinstance(part, str):
                current = current[part]
            else:
                raise KeyError(part)
        except (IndexError, KeyError):
            kind = "list" if isinstance(current, list) else type(current).__name__
            raise KeyError(f"no {part!r} in {walked} (a {kind})") from None
        walked += f"[{part}]" if isinstance(part, int) else f".{part}"
    return current


def parse_number(value: Any) -> float:
    """A number from JSON data: an int or float, or a string holding one (``"12.50"``).

    Raises:
        ValueError: anything else (booleans included).
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a number, got {value!r}")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            number = float(value.strip().replace(",", ""))
        except ValueError:
            pass
        else:
            if math.isfinite(number):
                return number
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise ValueError(f"expected a number, got {shown}")


def json_equal(actual: Any, expected: Any) -> bool:
    """Equality of JSON values where ``true`` is not ``1`` and ``1`` equals ``1.0``."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return isinstance(actual, bool) and isinstance(expected, bool) and actual == expected
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            json_equal(actual[k], expected[k]) for k in actual)
    if isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(actual) == len(expected) and all(
            json_equal(a, e) for a, e in zip(actual, expected, strict=True))
    return bool(actual == expected)


def values_differ(before: Any, after: Any, tolerance: float | None = None) -> bool:
    """Whether an extracted value changed; numbers within ``tolerance`` count as equal."""
    if tolerance is not None:
        try:
            return abs(parse_number(before) - parse_number(after)) > tolerance
        except ValueError:
            pass
    return not json_equal(before, after)


def _short(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    return text if len(text) <= 80 else text[:77] + "..."


def evaluate(expect: Expect, output: Any,
             predicates: Mapping[str, Callable[..., Any]] | None = None) -> Evaluation:
    """Check ``output`` against every expectation of ``expect``.

    Args:
        expect: the case's expectations.
        output: what the target returned (text, or JSON-able data).
        predicates: the imported predicate functions by their ``module:function`` path.

    Returns:
        The failures (one per expectation that did not hold, named like
        ``fields.date`` or ``regex[1]``) and the extracted values.
    """
    result = Evaluation()
    text = as_text(output)
    data: Any = None
    json_error: str | None = None
    if expect.needs_json:
        try:
            data = parse_json(output)
        except NotJSON as exc:
            json_error = str(exc)

    def at_path(name: str, path: str) -> tuple[bool, Any]:
        if json_error is not None:
            result.fail(name, json_error)
            return False, None
        try:
            return True, get_path(data, path)
        except KeyError as exc:
            result.fail(name, f"path {path!r}: {exc.args[0]}")
            return False, None

    for path, expected in expect.fields.items():
        result.checked += 1
        name = f"fields.{path}"
        found, actual = at_path(name, path)
        if not found:
            continue
        result.values[path] = actual
        if not json_equal(actual, expected):
            result.fail(name, f"expected {_short(expected)}, got {_short(actual)}")

    for i, pattern in enumerate(expect.regex):
        result.checked += 1
        match = re.search(pattern, text)
        if match is None:
            result.fail(f"regex[{i}]", f"no match for {pattern!r}")
            continue
        named = match.groupdict()
        if named:
            result.values.update({k: v for k, v in named.items() if v is not None})
        else:
            result.values[f"regex[{i}]"] = match.group(1) if match.re.groups else match.group(0)

    if expect.json_schema is not None:
        result.checked += 1
        if json_error is not None:
            result.fail("json_schema", json_error)
        else:
            _check_schema(expect.json_schema, data, result)

    for i, number in enumerate(expect.number):
        result.checked += 1
        name = f"number[{i}]" if len(expect.number) > 1 else "number"
        if number.path is None:
            found, raw = True, output if not isinstance(output, str) else text.strip()
        else:
            found, raw = at_path(name, number.path)
        if not found:
            continue
        try:
            actual = parse_number(raw)
        except ValueError as exc:
            result.fail(name, f"{number.key}: {exc}")
            continue
        result.values[number.key] = actual
        if abs(actual - number.value) > number.allowed():
            result.fail(name, f"{number.key}: expected {number.value:g} ± "
                              f"{number.absolute_tolerance():g}, got {actual:g}")

    for i, needle in enumerate(expect.contains):
        result.checked += 1
        if needle not in text:
            result.fail(f"contains[{i}]", f"{needle!r} not found in the output")
    for i, needle in enumerate(expect.not_contains):
        result.checked += 1
        if needle in text:
            result.fail(f"not_contains[{i}]", f"{needle!r} found in the output")

    for i, ref in enumerate(expect.predicate):
        result.checked += 1
        fn = (predicates or {}).get(ref)
        name = f"predicate[{i}]"
        if fn is None:
            result.fail(name, f"{ref} was not loaded")
            continue
        _check_predicate(name, ref, fn, output, result)

    for path in expect.extract:
        if json_error is not None:
            result.fail(f"extract.{path}", json_error)
            continue
        try:
            result.values[path] = get_path(data, path)
        except KeyError as exc:
            result.fail(f"extract.{path}", f"path {path!r}: {exc.args[0]}")
    return result


def _check_schema(schema: dict[str, Any], data: Any, result: Evaluation) -> None:
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is not None:
        where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
        result.fail("json_schema", f"${where}: {error.message}")


def _check_predicate(name: str, ref: str, fn: Callable[..., Any], output: Any,
                     result: Evaluation) -> None:
    try:
        verdict = fn(output)
    except Exception as exc:
        result.fail(name, f"{ref} raised {type(exc).__name__}: {exc}")
        return
    if inspect.isawaitable(verdict):
        close = getattr(verdict, "close", None)
        if close is not None:
            close()  # never awaited: close it so Python does not warn
        result.fail(name, f"{ref} returned an awaitable; predicates must be synchronous")
        return
    reason = ""
    if isinstance(verdict, tuple) and len(verdict) == 2:
        verdict, reason = verdict
    if not isinstance(verdict, bool):
        result.fail(name, f"{ref} returned {type(verdict).__name__}, expected a bool "
                          "or (bool, reason)")
    elif not verdict:
        result.fail(name, f"{ref}: {reason}" if reason else f"{ref} returned False")
