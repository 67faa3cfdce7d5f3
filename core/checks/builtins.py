"""The built-in output checks, and what every check shares.

A :class:`Check` turns one span's output into a pass/fail (``True`` passes) or a
number; ``None`` means the check does not apply to that output (no date in it, the
field is missing...) and the output is not counted. Checks read a :class:`Subject`:
the span's output and input, with the JSON parse of the output done once and shared.

Built-in types (the ``type:`` of a YAML check): ``valid_date``, ``date_format``,
``json_parses``, ``json_schema``, ``regex``, ``length``, ``refusal``, ``language``,
``field_count`` and ``custom`` (a Python function named ``module:attr``). The
source-grounded types live in :mod:`.grounding`.

Every regular expression here is linear in its input: bounded repetitions, no nested
or overlapping unbounded quantifiers, and boundaries written as lookarounds of fixed
width (``tests/test_checks.py`` times each on adversarial 100 KB inputs). A user
pattern (``regex`` check) runs under Google RE2 when ``google-re2`` is installed;
otherwise patterns with nested or alternated unbounded repetitions are refused and
the text searched is capped at ``max_chars``.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import importlib
import json
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from ..model import Span
from ..monitors.windows import Settings, parse_settings

__all__ = [
    "BUILTIN_TYPES",
    "MISSING",
    "Check",
    "CheckSpec",
    "DateFormat",
    "Subject",
    "find_dates",
    "get_path",
    "is_truncated",
    "parse_path",
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
_UNPARSEABLE: Any = object()

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
    """``json.loads`` of ``text`` (code fences removed), or ``_UNPARSEABLE``."""
    try:
        return json.loads(_strip_fences(text) if strip_fences else text)
    except (ValueError, RecursionError):
        return _UNPARSEABLE


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

        ``_UNPARSEABLE`` when the output is a string that is not JSON (or was cut by
        the capture limits), ``MISSING`` when there is no output.
        """
        if self._parsed is MISSING:
            out = self.output
            if out is None:
                return MISSING
            if isinstance(out, str):
                self._parsed = (
                    _UNPARSEABLE if is_truncated(out) else parse_json_text(out)
                )
            else:
                self._parsed = out
        return self._parsed

    def select(self, path: tuple[Any, ...] | None) -> Any:
        """The whole output (no path) or the value at ``path`` in its JSON form."""
        if path is None:
            return MISSING if self.output is None else self.output
        data = self.parsed()
        if data is MISSING or data is _UNPARSEABLE:
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


# -- dates ---------------------------------------------------------------------------------

_MONTHS = [m.lower() for m in calendar.month_name[1:]]
_MONTH_ABBR = [m.lower() for m in calendar.month_abbr[1:]]
_MONTH_INDEX = {**{m: i + 1 for i, m in enumerate(_MONTHS)},
                **{m: i + 1 for i, m in enumerate(_MONTH_ABBR)}, "sept": 9}
_MONTH_ALT = "|".join(sorted(_MONTH_INDEX, key=len, reverse=True))
_DAY_ALT = "|".join(sorted({d.lower() for d in (*calendar.day_name, *calendar.day_abbr)},
                           key=len, reverse=True))

# directive -> (lax pattern for finding, strict pattern for the exact format shape)
_DIRECTIVES: dict[str, tuple[str, str]] = {
    "d": (r"(?P<d>\d{1,2})", r"\d{2}"),
    "m": (r"(?P<m>\d{1,2})", r"\d{2}"),
    "Y": (r"(?P<Y>\d{4})", r"\d{4}"),
    "y": (r"(?P<y>\d{2})", r"\d{2}"),
    "H": (r"(?P<H>\d{1,2})", r"\d{2}"),
    "I": (r"(?P<I>\d{1,2})", r"\d{2}"),
    "M": (r"(?P<M>\d{1,2})", r"\d{2}"),
    "S": (r"(?P<S>\d{1,2})", r"\d{2}"),
    "j": (r"(?P<j>\d{1,3})", r"\d{3}"),
    "f": (r"(?P<f>\d{1,6})", r"\d{1,6}"),
    "p": (r"(?P<p>[ap]\.?m\.?)", r"[ap]m"),
    "b": (rf"(?P<b>{'|'.join(_MONTH_ABBR)}|sept)", "|".join(_MONTH_ABBR)),
    "B": (rf"(?P<B>{'|'.join(sorted(_MONTHS, key=len, reverse=True))})",
          "|".join(sorted(_MONTHS, key=len, reverse=True))),
    "a": (rf"(?:{_DAY_ALT})", rf"(?:{_DAY_ALT})"),
    "A": (rf"(?:{_DAY_ALT})", rf"(?:{_DAY_ALT})"),
    "z": (r"(?P<z>[+-]\d{2}:?\d{2}|z)", r"[+-]\d{2}:?\d{2}|z"),
}
_DIRECTIVE_RE = re.compile(r"%(.)|(\s{1,50})|([^%\s])", re.S)


def _year_of(two_digits: int) -> int:
    """POSIX rule for ``%y``: 69-99 -> 1969-1999, 00-68 -> 2000-2068."""
    return 1900 + two_digits if two_digits >= 69 else 2000 + two_digits


class DateFormat:
    """A strftime-style date format compiled for finding and validating dates in text.

    :meth:`finditer` yields every substring shaped like a date of this format (digit
    widths relaxed: ``4/3/2024`` matches ``%d/%m/%Y``), with the calendar date it
    denotes or ``None`` for an impossible one (month 13, 31 February...);
    :meth:`matches_exactly` tells whether a string has exactly the format's shape
    (zero-padded widths unless ``zero_padded`` is false).

    Raises:
        ValueError: an unsupported or repeated directive, or no date directive.
    """

    def __init__(self, fmt: str, *, zero_padded: bool = True) -> None:
        self.format = fmt
        lax: list[str] = []
        strict: list[str] = []
        seen: set[str] = set()
        seps: set[str] = set()
        for m in _DIRECTIVE_RE.finditer(fmt):
            directive, space, literal = m.groups()
            if space is not None:
                lax.append(r"\s{1,8}")
                strict.append(re.escape(space))
            elif literal is not None:
                lax.append(re.escape(literal))
                strict.append(re.escape(literal))
                if not literal.isalnum():
                    seps.add(literal)
            elif directive == "%":
                lax.append("%")
                strict.append("%")
            else:
                if directive not in _DIRECTIVES:
                    raise ValueError(f"unsupported directive %{directive} in {fmt!r}; "
                                     f"supported: {', '.join('%' + d for d in _DIRECTIVES)}")
                if directive in seen and directive not in "aA":
                    raise ValueError(f"directive %{directive} repeated in {fmt!r}")
                seen.add(directive)
                loose, exact = _DIRECTIVES[directive]
                if not zero_padded and exact == r"\d{2}":
                    exact = r"\d{1,2}"
                lax.append(loose)
                strict.append(f"(?:{exact})")
        if not seen & set("dmYyjbB"):
            raise ValueError(f"format {fmt!r} has no date directive (%d, %m, %Y, %b...)")
        self.has_year = bool(seen & {"Y", "y"})
        self._plain = seen == {"d", "m", "Y"}
        sep_class = "".join(re.escape(c) for c in sorted(seps))
        before = rf"(?<![\w{sep_class}])" if sep_class else r"(?<!\w)"
        after = rf"(?!\w|[{sep_class}]\w)" if sep_class else r"(?!\w)"
        self._finder = re.compile(before + "".join(lax) + after, re.I)
        self._strict = re.compile("".join(strict), re.I)

    def finditer(self, text: str) -> Iterator[tuple[int, int, _dt.date | None]]:
        """``(start, end, date or None)`` for every date-shaped substring."""
        for m in self._finder.finditer(text):
            if self._plain:  # day, month, four-digit year only: the common case, fast
                try:
                    date: _dt.date | None = _dt.date(int(m["Y"]), int(m["m"]), int(m["d"]))
                except ValueError:
                    date = None
            else:
                date = self.date_of(m.groupdict())
            yield m.start(), m.end(), date

    def parse(self, text: str) -> _dt.date | None:
        """The date of a whole string in this format (``None``: not one, or impossible)."""
        m = self._finder.fullmatch(text.strip())
        return None if m is None else self.date_of(m.groupdict())

    def matches_exactly(self, text: str) -> bool:
        """Whether ``text`` has exactly this format's shape."""
        return self._strict.fullmatch(text) is not None

    def date_of(self, g: Mapping[str, str | None]) -> _dt.date | None:
        """The calendar date of a match's groups, or ``None`` if it cannot exist."""
        try:
            if g.get("Y"):
                year = int(g["Y"] or 0)
            elif g.get("y"):
                year = _year_of(int(g["y"] or 0))
            else:
                year = 2000  # a leap year, so 29 February without a year is possible
            if g.get("j"):
                day_of_year = int(g["j"] or 0)
                if not 1 <= day_of_year <= (366 if calendar.isleap(year) else 365):
                    return None
                return _dt.date(year, 1, 1) + _dt.timedelta(days=day_of_year - 1)
            month = 1
            if g.get("m"):
                month = int(g["m"] or 0)
            elif g.get("b") or g.get("B"):
                month = _MONTH_INDEX[(g.get("b") or g.get("B") or "").lower()]
            day = int(g["d"] or 0) if g.get("d") else 1
            hour = int(g["H"] or 0) if g.get("H") else 0
            if g.get("I"):
                hour = int(g["I"] or 0)
                if not 1 <= hour <= 12:
                    return None
            minute = int(g["M"] or 0) if g.get("M") else 0
            second = int(g["S"] or 0) if g.get("S") else 0
            if hour > 23 or minute > 59 or second > 61:
                return None
            return _dt.date(year, month, day)
        except (ValueError, KeyError, OverflowError):
            return None


# A date-like substring of any common shape: numeric y-m-d, d-m-y / m-d-y (separator
# repeated), and day-month-name or month-name-day forms. Every repetition is bounded.
_GENERIC_DATE_RE = re.compile(
    r"(?<![\w/.\-])(?:"
    r"(?P<iy>\d{4})(?P<s1>[\-/.])(?P<im>\d{1,2})(?P=s1)(?P<id>\d{1,2})"
    r"|(?P<a>\d{1,2})(?P<s2>[\-/.])(?P<b>\d{1,2})(?P=s2)(?P<c>\d{4}|\d{2})"
    r"|(?P<nd>\d{1,2})(?:st|nd|rd|th)?(?:\s{1,3}of)?\s{1,3}(?P<nm>" + _MONTH_ALT +
    r")\.?,?\s{1,3}(?P<ny>\d{4})"
    r"|(?P<mm>" + _MONTH_ALT + r")\.?\s{1,3}(?P<md>\d{1,2})(?:st|nd|rd|th)?,?\s{1,3}"
    r"(?P<my>\d{4})"
    r")(?!\w|[/.\-]\w)",
    re.I,
)

Locale = Literal["dmy", "mdy", "ymd"]


def _safe_date(year: int, month: int, day: int) -> _dt.date | None:
    try:
        return _dt.date(year, month, day)
    except ValueError:
        return None


def find_dates(text: str, locale: Locale = "dmy"
               ) -> Iterator[tuple[int, int, str, _dt.date | None]]:
    """Every date-like substring of ``text``: ``(start, end, text, date or None)``.

    Numeric dates are read under ``locale`` (``dmy``: 04/03/2024 is 4 March; ``mdy``:
    April 3; ``ymd`` reads ``a/b/c`` as year-month-day only when ``a`` has four
    digits); ``yyyy-mm-dd`` and dates with month names read the same in every locale.
    The date is ``None`` when the substring cannot be a date under that reading.
    """
    for m in _GENERIC_DATE_RE.finditer(text):
        g = m.groupdict()
        date: _dt.date | None
        if g["iy"] is not None:
            date = _safe_date(int(g["iy"]), int(g["im"]), int(g["id"]))
        elif g["a"] is not None:
            a, b, c = int(g["a"]), int(g["b"]), g["c"]
            year = int(c) if len(c) == 4 else _year_of(int(c))
            if locale == "mdy":
                date = _safe_date(year, a, b)
            elif locale == "dmy":
                date = _safe_date(year, b, a)
            else:
                date = None
        elif g["nd"] is not None:
            date = _safe_date(int(g["ny"]), _MONTH_INDEX[g["nm"].lower()], int(g["nd"]))
        else:
            date = _safe_date(int(g["my"]), _MONTH_INDEX[g["mm"].lower()], int(g["md"]))
        yield m.start(), m.end(), m.group(0), date


def _date_format(fmt: str, zero_padded: bool = True) -> DateFormat:
    return DateFormat(fmt, zero_padded=zero_padded)


class ValidDateSpec(CheckSpec):
    """``valid_date``: every date-shaped substring of the format is a real date.

    Passes when each substring shaped like ``format`` denotes a calendar date that
    exists (fails on month 13, 31/04, 29/02 of a non-leap year...). Not applicable to
    outputs without such a substring, unless ``require`` (then they fail).
    """

    format: str
    require: bool = False

    @field_validator("format")
    @classmethod
    def _fmt(cls, v: str) -> str:
        DateFormat(v)
        return v

    def evaluator(self, where: str) -> Evaluator:
        fmt = DateFormat(self.format)
        require = self.require

        def valid_date(value: Any, subject: Subject) -> bool | None:
            text = text_of(value)
            if text is None:
                return False if require else None
            seen = False
            for _s, _e, date in fmt.finditer(text):
                if date is None:
                    return False
                seen = True
            if not seen:
                return False if require else None
            return True

        return valid_date


class DateFormatSpec(CheckSpec):
    """``date_format``: every date in the text is written in ``format``.

    The share of outputs passing is the share whose dates all have the format's exact
    shape (``2024-03-04`` or ``4/3/24`` fail ``%d/%m/%Y``; with ``zero_padded: false``
    ``4/3/2024`` passes). Not applicable to outputs without any date, unless
    ``require``.
    """

    format: str
    zero_padded: bool = True
    require: bool = False

    @field_validator("format")
    @classmethod
    def _fmt(cls, v: str) -> str:
        DateFormat(v)
        return v

    def evaluator(self, where: str) -> Evaluator:
        fmt = DateFormat(self.format, zero_padded=self.zero_padded)
        require = self.require

        def date_format(value: Any, subject: Subject) -> bool | None:
            text = text_of(value)
            if text is None:
                return False if require else None
            spans = [(s, e) for s, e, _d in fmt.finditer(text)]
            ok = all(fmt.matches_exactly(text[s:e]) for s, e in spans)
            seen = bool(spans)
            for s, e, raw, _d in find_dates(text):
                if any(a <= s and e <= b for a, b in spans):
                    continue
                seen = True
                ok = ok and fmt.matches_exactly(raw)
            if not seen:
                return False if require else None
            return ok

        return date_format


# -- JSON ----------------------------------------------------------------------------------


def _json_value(value: Any, subject: Subject, field: str | None, strip: bool) -> Any:
    """The JSON data a JSON check reads, ``_UNPARSEABLE``, or ``MISSING``."""
    if value is MISSING or (value is None and field is None):
        return MISSING
    if isinstance(value, str):
        if is_truncated(value):
            return MISSING  # cut by the capture limits: cannot tell
        if field is None and strip:
            parsed = subject.parsed()
            return MISSING if parsed is MISSING else parsed
        return parse_json_text(value, strip)
    return value


class JsonParsesSpec(CheckSpec):
    """``json_parses``: the output (or field) is valid JSON (code fences allowed)."""

    strip_fences: bool = True

    def evaluator(self, where: str) -> Evaluator:
        field, strip = self.field, self.strip_fences

        def json_parses(value: Any, subject: Subject) -> bool | None:
            data = _json_value(value, subject, field, strip)
            if data is MISSING:
                return None
            return data is not _UNPARSEABLE

        return json_parses


# "schema" shadows a deprecated BaseModel method; it is the natural key name here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Field name \"schema\"", UserWarning)

    class JsonSchemaSpec(CheckSpec):
        """``json_schema``: the output (or field) parses and validates against a JSON schema.

        Give the schema inline (``schema:``) or as a file (``schema_file:``, JSON or
        YAML). Needs the ``jsonschema`` package.
        """

        schema: dict[str, Any] | None = None  # type: ignore[assignment]
        schema_file: str | None = None
        strip_fences: bool = True

        @model_validator(mode="after")
        def _one(self) -> JsonSchemaSpec:
            if (self.schema is None) == (self.schema_file is None):
                raise ValueError("give exactly one of schema or schema_file")
            return self

        def evaluator(self, where: str) -> Evaluator:
            try:
                import jsonschema
            except ImportError:
                raise ConfigError(f"{where}: json_schema checks need the 'jsonschema' package: "
                                  "pip install jsonschema") from None
            schema = self.schema
            if schema is None:
                schema = _load_schema_file(str(self.schema_file), where)
            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ConfigError(f"{where}.schema: invalid JSON schema: {exc.message}") from None
            validator = cls(schema)
            field, strip = self.field, self.strip_fences

            def json_schema(value: Any, subject: Subject) -> bool | None:
                data = _json_value(value, subject, field, strip)
                if data is MISSING:
                    return None
                if data is _UNPARSEABLE:
                    return False
                return bool(validator.is_valid(data))

            return json_schema


def _load_schema_file(path: str, where: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}.schema_file: cannot read {path!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}.schema_file: {path!r} does not hold a JSON schema object")
    return data


class FieldCountSpec(CheckSpec):
    """``field_count``: how many fields the output (or field) holds, as a number.

    A mapping counts its keys (``count: non_empty``: only keys whose value is not
    null, ``""``, ``[]`` or ``{}``); a list counts its items likewise. An output that
    is not JSON counts 0.
    """

    count: Literal["non_empty", "keys"] = "non_empty"
    strip_fences: bool = True
    result_kind: ClassVar[Kind] = "value"

    def evaluator(self, where: str) -> Evaluator:
        non_empty, field, strip = self.count == "non_empty", self.field, self.strip_fences

        def field_count(value: Any, subject: Subject) -> float | None:
            data = _json_value(value, subject, field, strip)
            if data is MISSING:
                return None
            if isinstance(data, Mapping):
                items: list[Any] = list(data.values())
            elif isinstance(data, list):
                items = data
            else:
                return 0.0
            if non_empty:
                return float(sum(1 for v in items if v not in (None, "", [], {})))
            return float(len(items))

        return field_count


# -- text --------------------------------------------------------------------------------


class LengthSpec(CheckSpec):
    """``length``: the output's length in tokens (whitespace-separated words) or characters."""

    unit: Literal["tokens", "chars"] = "tokens"
    result_kind: ClassVar[Kind] = "value"

    def evaluator(self, where: str) -> Evaluator:
        tokens = self.unit == "tokens"

        def length(value: Any, subject: Subject) -> float | None:
            text = text_of(value)
            if text is None:
                return None
            return float(len(text.split()) if tokens else len(text))

        return length


DEFAULT_REFUSALS: tuple[str, ...] = (
    "i'm sorry", "i am sorry", "i apologize", "i cannot", "i can't", "i can not",
    "i'm unable", "i am unable", "i'm not able to", "i am not able to", "as an ai",
    "as a language model", "i won't be able", "i must decline", "i'm not comfortable",
    "cannot assist with", "can't assist with", "cannot help with", "can't help with",
    "against my guidelines", "i'm afraid i can't",
)


class RefusalSpec(CheckSpec):
    """``refusal``: passes unless the output contains a refusal phrase (case-insensitive).

    ``phrases`` replaces the default list, ``extra_phrases`` adds to it; only the
    first ``scan_chars`` characters are read (refusals open the answer; later text is
    often quoted material).
    """

    phrases: list[str] | None = None
    extra_phrases: list[str] = []
    scan_chars: int = Field(default=1000, ge=1)

    def evaluator(self, where: str) -> Evaluator:
        base = list(DEFAULT_REFUSALS if self.phrases is None else self.phrases)
        phrases = tuple({_norm_quotes(p).lower() for p in (*base, *self.extra_phrases) if p})
        if not phrases:
            raise ConfigError(f"{where}.phrases: no refusal phrase left")
        limit = self.scan_chars

        def refusal(value: Any, subject: Subject) -> bool | None:
            text = text_of(value)
            if text is None:
                return None
            head = _norm_quotes(text[:limit]).lower()
            return not any(p in head for p in phrases)

        return refusal


def _norm_quotes(text: str) -> str:
    return text.replace("\u2019", "'").replace("\u2018", "'")


STOPWORDS: dict[str, frozenset[str]] = {
    "en": frozenset({
        "about", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "for",
        "from", "has", "have", "if", "in", "is", "it", "not", "of", "on", "or", "that", "the",
        "their", "there", "they", "this", "to", "was", "we", "were", "what", "which", "will",
        "with", "would", "you"
    }),
    "fr": frozenset({
        "au", "aux", "avec", "ce", "cette", "comme", "dans", "des", "du", "elle", "est", "et",
        "il", "ils", "la", "le", "les", "leur", "mais", "ne", "nous", "ou", "où", "par",
        "pas", "plus", "pour", "que", "qui", "sont", "sur", "très", "un", "une", "vous",
        "été", "être"
    }),
    "de": frozenset({
        "als", "an", "auch", "auf", "aus", "bei", "das", "dem", "den", "der", "des", "die",
        "ein", "eine", "es", "für", "hat", "ich", "im", "ist", "mit", "nach", "nicht", "noch",
        "nur", "oder", "sich", "sie", "sind", "und", "von", "wie", "wir", "wird", "zu", "über"
    }),
    "es": frozenset({
        "al", "como", "con", "cuando", "del", "el", "en", "entre", "es", "esta", "este",
        "está", "fue", "ha", "la", "las", "le", "lo", "los", "muy", "más", "no", "o", "para",
        "pero", "por", "que", "se", "son", "sus", "también", "un", "una", "y", "ya"
    }),
    "it": frozenset({
        "alla", "anche", "che", "come", "con", "da", "dei", "del", "della", "di", "e",
        "essere", "gli", "ha", "il", "la", "le", "lo", "loro", "ma", "nel", "nella", "non",
        "per", "più", "questa", "questo", "si", "sono", "suo", "un", "una", "è"
    }),
    "pt": frozenset({
        "a", "ao", "as", "com", "como", "da", "das", "de", "do", "dos", "e", "ela", "ele",
        "em", "está", "foi", "mais", "mas", "na", "no", "não", "o", "os", "para", "por",
        "que", "se", "seu", "sua", "são", "também", "um", "uma", "é"
    }),
    "nl": frozenset({
        "aan", "als", "bij", "dan", "dat", "de", "deze", "door", "een", "en", "er", "geen",
        "het", "hij", "in", "is", "maar", "met", "naar", "niet", "nog", "om", "ook", "op",
        "te", "van", "voor", "wat", "wel", "worden", "wordt", "ze", "zij", "zijn"
    }),
}
_WORD_RE = re.compile(r"[^\W\d_]{1,40}")


def stopword_scores(text: str) -> tuple[int, dict[str, int]]:
    """The number of words in ``text`` and the stopword hits of each known language."""
    words = _WORD_RE.findall(text.lower())
    return len(words), {lang: sum(1 for w in words if w in sw) for lang, sw in STOPWORDS.items()}


class LanguageSpec(CheckSpec):
    """``language``: the output is in ``language`` (a stopword heuristic; no model).

    Passes when the target language's stopwords are at least as frequent as any
    other known language's (en, fr, de, es, it, pt, nl) and make up at least
    ``min_ratio`` of the words. Outputs shorter than ``min_words`` are not counted.
    """

    language: str
    min_words: int = Field(default=5, ge=1)
    min_ratio: float = Field(default=0.1, ge=0, le=1)
    scan_chars: int = Field(default=5000, ge=1)

    @field_validator("language")
    @classmethod
    def _known(cls, v: str) -> str:
        v = v.lower()
        if v not in STOPWORDS:
            raise ValueError(f"unknown language; known: {', '.join(STOPWORDS)}")
        return v

    def evaluator(self, where: str) -> Evaluator:
        lang, min_words, min_ratio, limit = (self.language, self.min_words, self.min_ratio,
                                             self.scan_chars)

        def language(value: Any, subject: Subject) -> bool | None:
            text = text_of(value)
            if text is None:
                return None
            n, hits = stopword_scores(text[:limit])
            if n < min_words:
                return None
            best = max(hits.values())
            return hits[lang] >= best and hits[lang] >= min_ratio * n

        return language


# -- user regular expressions ----------------------------------------------------------------


def _re2() -> Any:
    try:
        import re2  # google-re2: guaranteed linear time
    except ImportError:
        return None
    return re2


def _sre_parse() -> Any:
    try:
        return importlib.import_module("re._parser")
    except ImportError:  # Python 3.10
        return importlib.import_module("sre_parse")


def backtracking_risk(pattern: str, flags: int = 0) -> str | None:
    """Why ``pattern`` may backtrack exponentially under Python's ``re``, or ``None``.

    Flags an unbounded repetition that contains another unbounded repetition
    (``(a+)+``) or an alternation (``(a|ab)*``), the shapes behind catastrophic
    backtracking.
    """
    parser = _sre_parse()
    consts = parser
    unbounded = {getattr(consts, "MAX_REPEAT", None), getattr(consts, "MIN_REPEAT", None)}
    maxrepeat = getattr(consts, "MAXREPEAT", 4294967295)
    poss = getattr(consts, "POSSESSIVE_REPEAT", None)
    atomic = getattr(consts, "ATOMIC_GROUP", None)
    branch, subpattern = getattr(consts, "BRANCH", None), getattr(consts, "SUBPATTERN", None)

    def children(op: Any, av: Any) -> list[Any]:
        if op in unbounded or op == poss:
            return [av[2]]
        if op == subpattern:
            return [av[-1]]
        if op == branch:
            return list(av[1])
        if op == atomic:
            return [av]
        if isinstance(av, tuple):
            return [x for x in av if hasattr(x, "data") or isinstance(x, list)]
        return []

    literal = getattr(consts, "LITERAL", None)

    def is_unbounded(av: Any) -> bool:
        return bool(av[1] == maxrepeat or av[1] > 100)

    def first_literal(seq: Any) -> Any:
        for op, av in seq:
            if op == literal:
                return av
            if op == subpattern:
                return first_literal(av[-1])
            return None
        return None

    def ambiguous(av: Any) -> bool:
        """Whether two branches of an alternation may start alike."""
        firsts = [first_literal(b) for b in av[1]]
        return None in firsts or len(set(firsts)) < len(firsts)

    def risky_inside(seq: Any) -> bool:
        for op, av in seq:
            if op in unbounded and is_unbounded(av):
                return True
            if op == branch and ambiguous(av):
                return True
            if any(risky_inside(c) for c in children(op, av)):
                return True
        return False

    def walk(seq: Any) -> str | None:
        for op, av in seq:
            if op in unbounded and is_unbounded(av) and risky_inside(av[2]):
                return ("an unbounded repetition contains another repetition or an "
                        "alternation whose branches may match alike")
            for c in children(op, av):
                why = walk(c)
                if why:
                    return why
        return None

    return walk(parser.parse(pattern, flags))


class RegexSpec(CheckSpec):
    """``regex``: the output (or field) matches ``pattern``.

    ``mode``: ``search`` (anywhere) or ``fullmatch``; ``fail_when``: ``no_match``
    (the output must match) or ``match`` (it must not). Under Python's ``re`` the
    first ``max_chars`` characters are read and risky patterns are refused.
    """

    pattern: str
    mode: Literal["search", "fullmatch"] = "search"
    fail_when: Literal["no_match", "match"] = "no_match"
    ignore_case: bool = False
    max_chars: int = Field(default=20_000, ge=1)

    def evaluator(self, where: str) -> Evaluator:
        re2 = _re2()
        flags = re.I if self.ignore_case else 0
        try:
            if re2 is not None:
                opts = re2.Options()
                opts.case_sensitive = not self.ignore_case
                compiled: Any = re2.compile(self.pattern, options=opts)
            else:
                why = backtracking_risk(self.pattern, flags)
                if why:
                    raise ConfigError(
                        f"{where}.pattern: {why}, which can take exponential time on some "
                        "outputs; rewrite it (e.g. (a+)+ -> a+) or pip install google-re2")
                compiled = re.compile(self.pattern, flags)
        except re.error as exc:
            raise ConfigError(f"{where}.pattern: invalid regular expression: {exc}") from None
        limit = None if re2 is not None else self.max_chars
        fullmatch = self.mode == "fullmatch"
        want_match = self.fail_when == "no_match"

        def regex(value: Any, subject: Subject) -> bool | None:
            text = text_of(value)
            if text is None:
                return None
            if limit is not None:
                text = text[:limit]
            found = (compiled.fullmatch(text) if fullmatch else compiled.search(text))
            return (found is not None) == want_match

        return regex


# -- custom ---------------------------------------------------------------------------------


def _call_user(fn: Callable[..., Any], with_input: bool) -> Evaluator:
    def custom(value: Any, subject: Subject) -> bool | float | None:
        if value is MISSING:
            return None
        out = fn(value, subject.input) if with_input else fn(value)
        if out is None or isinstance(out, bool):
            return out
        if isinstance(out, (int, float)):
            return float(out)
        raise TypeError(f"a check must return bool, a number or None, got {type(out).__name__}")

    return custom


class CustomSpec(CheckSpec):
    """``custom``: a Python function ``module:attr`` returning bool (pass) or a number.

    Called as ``fn(output)`` (the field, when ``field`` is set), or
    ``fn(output, input)`` with ``with_input: true``.
    """

    function: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    with_input: bool = False
    kind: Literal["auto", "rate", "value"] = "auto"

    def evaluator(self, where: str) -> Evaluator:
        module_name, _, attr = self.function.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise ConfigError(f"{where}.function: cannot import {self.function!r}: "
                              f"{type(exc).__name__}: {exc}") from None
        if not callable(obj):
            raise ConfigError(f"{where}.function: {self.function!r} is not callable")
        return _call_user(obj, self.with_input)

    def build(self, where: str) -> Check:
        return Check(self.name, self.evaluator(where), kind=self.kind, field=self.field,
                     on=self.on, alternative=self.alternative,
                     expected_fail_rate=self.expected_fail_rate, type=self.type)


#: ``type:`` -> spec model of the built-in checks.
BUILTIN_TYPES: dict[str, type[CheckSpec]] = {
    "valid_date": ValidDateSpec,
    "date_format": DateFormatSpec,
    "json_parses": JsonParsesSpec,
    "json_schema": JsonSchemaSpec,
    "regex": RegexSpec,
    "length": LengthSpec,
    "refusal": RefusalSpec,
    "language": LanguageSpec,
    "field_count": FieldCountSpec,
    "custom": CustomSpec,
}


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
