"""Source-grounded checks: each value the output extracted must be in the input document.

Where the span's input holds the source document (``source_field``, a JSON path
into ``span.input``, e.g. ``document`` for ``@trace def extract(document): ...``):

* ``grounded_dates``: every date in the output is the same calendar date as a date
  in the source, the source read under the declared ``locale`` (``dmy``: 04/03/2024
  is 4 March). A transposed date that is still a valid date (03/04 for 04/03)
  passes every validity check and fails this one.
* ``grounded_numbers``: every number in the output appears in the source (as a
  value: ``1,234.50`` in the source grounds ``1234.5``).
* ``grounded_quotes``: every quoted span of the output (or the ``field`` value)
  appears verbatim in the source, whitespace and quote style normalised.

A check does not apply (``None``) when the source is missing, and a value not found
in a source that the capture limits truncated is unknown rather than a failure.
Raise the capture size limits for inputs you ground against.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any, Literal

from pydantic import Field, field_validator

from .builtins import (
    MISSING,
    CheckSpec,
    DateFormat,
    Evaluator,
    Locale,
    Subject,
    find_dates,
    get_path,
    is_truncated,
    parse_path,
    text_of,
)

__all__ = [
    "GROUNDED_TYPES",
    "GroundedDatesSpec",
    "GroundedNumbersSpec",
    "GroundedQuotesSpec",
    "extract_numbers",
    "extract_quotes",
    "number_keys",
]


class _GroundedSpec(CheckSpec):
    """Keys shared by the grounded checks."""

    source_field: str

    @field_validator("source_field")
    @classmethod
    def _source_path(cls, v: str) -> str:
        parse_path(v)
        return v


def _source(subject: Subject, steps: tuple[Any, ...]) -> tuple[str, bool] | None:
    """The source text at ``steps`` in the input and whether it was truncated."""
    key = ("source", steps)
    if key in subject.memo:
        cached: tuple[str, bool] | None = subject.memo[key]
        return cached
    raw = get_path(subject.input, steps) if subject.input is not None else MISSING
    truncated = isinstance(raw, str) and is_truncated(raw)
    text = text_of(raw)
    out = None if text is None else (text, truncated)
    subject.memo[key] = out
    return out


def _memo(subject: Subject, key: Any, make: Callable[[], Any]) -> Any:
    if key not in subject.memo:
        subject.memo[key] = make()
    return subject.memo[key]


# -- dates -------------------------------------------------------------------------------


class GroundedDatesSpec(_GroundedSpec):
    """``grounded_dates``: each output date is a date of the source, read under ``locale``.

    Output dates are read with ``output_format`` (strftime, e.g. ``%Y-%m-%d``) when
    given, otherwise like the source under ``output_locale`` (default: ``locale``).
    An impossible output date fails. Outputs without dates are not counted unless
    ``require``.
    """

    locale: Locale = "dmy"
    output_format: str | None = None
    output_locale: Locale | None = None
    require: bool = False

    @field_validator("output_format")
    @classmethod
    def _fmt(cls, v: str | None) -> str | None:
        if v is not None:
            DateFormat(v)
        return v

    def evaluator(self, where: str) -> Evaluator:
        steps = parse_path(self.source_field)
        locale = self.locale
        out_locale: Locale = self.output_locale or locale
        fmt = DateFormat(self.output_format) if self.output_format else None
        by_day = fmt is not None and not fmt.has_year
        require = self.require

        def source_dates(text: str) -> set[Any]:
            dates = {d for _s, _e, _r, d in find_dates(text, locale) if d is not None}
            return {(d.month, d.day) for d in dates} if by_day else set(dates)

        def grounded_dates(value: Any, subject: Subject) -> bool | None:
            src = _source(subject, steps)
            if src is None:
                return None
            text = text_of(value)
            if text is None:
                return False if require else None
            found: list[_dt.date | None]
            if fmt is not None:
                found = [d for _s, _e, d in fmt.finditer(text)]
            else:
                found = [d for _s, _e, _r, d in find_dates(text, out_locale)]
            if not found:
                return False if require else None
            known = _memo(subject, ("dates", steps, locale, by_day),
                          lambda: source_dates(src[0]))
            unknown = False
            for d in found:
                if d is None:
                    return False  # not a calendar date at all
                if ((d.month, d.day) if by_day else d) not in known:
                    if not src[1]:
                        return False
                    unknown = True  # the source was cut: it may be further on
            return None if unknown else True

        return grounded_dates


# -- numbers -----------------------------------------------------------------------------

_NUMBER_RES = {
    ".": re.compile(r"(?<![\w.,])[-+]?(?P<int>\d{1,3}(?:,\d{3}){1,12}|\d{1,40})"
                    r"(?:\.(?P<frac>\d{1,40}))?(?!\w|[.,]\d)"),
    ",": re.compile(r"(?<![\w.,])[-+]?(?P<int>\d{1,3}(?:[.\u00a0\u202f]\d{3}){1,12}|\d{1,40})"
                    r"(?:,(?P<frac>\d{1,40}))?(?!\w|[.,]\d)"),
}


_SEPARATORS = str.maketrans("", "", ",.\u00a0\u202f")


def _blank_dates(text: str) -> str:
    pieces, last = [], 0
    for s, e, _r, _d in find_dates(text, "dmy"):
        pieces.append(text[last:s])
        pieces.append(" " * (e - s))
        last = e
    if not pieces:
        return text
    pieces.append(text[last:])
    return "".join(pieces)


def number_keys(text: str, decimal: Literal[".", ","] = ".", *, ignore_dates: bool = True,
                min_digits: int = 1, absolute: bool = True) -> list[str]:
    """The numbers written in ``text`` in a canonical form (``1,234.50`` -> ``1234.5``).

    With ``ignore_dates`` the digits of date-like substrings are not numbers.
    """
    if ignore_dates:
        text = _blank_dates(text)
    out: list[str] = []
    for m in _NUMBER_RES[decimal].finditer(text):
        whole = m.group("int").translate(_SEPARATORS)
        frac = m.group("frac") or ""
        if len(whole) + len(frac) < min_digits:
            continue
        whole = whole.lstrip("0") or "0"
        frac = frac.rstrip("0")
        key = f"{whole}.{frac}" if frac else whole
        if not absolute and m.group(0)[0] == "-" and key != "0":
            key = "-" + key
        out.append(key)
    return out


def extract_numbers(text: str, decimal: Literal[".", ","] = ".", *, ignore_dates: bool = True,
                    min_digits: int = 1, absolute: bool = True) -> list[Decimal]:
    """The numbers written in ``text`` as exact decimals (thousands separators removed)."""
    return [Decimal(k) for k in number_keys(text, decimal, ignore_dates=ignore_dates,
                                            min_digits=min_digits, absolute=absolute)]


class GroundedNumbersSpec(_GroundedSpec):
    """``grounded_numbers``: each number in the output appears in the source.

    ``decimal``: the decimal mark of both texts (``.``: ``1,234.5``; ``,``:
    ``1.234,5``). Signs are ignored unless ``absolute: false``; numbers with fewer
    than ``min_digits`` digits are not checked; digits inside dates are not numbers
    unless ``ignore_dates: false``.
    """

    decimal: Literal[".", ","] = "."
    ignore_dates: bool = True
    min_digits: int = Field(default=1, ge=1)
    absolute: bool = True
    require: bool = False

    def evaluator(self, where: str) -> Evaluator:
        steps = parse_path(self.source_field)
        opts: dict[str, Any] = {"decimal": self.decimal, "ignore_dates": self.ignore_dates,
                                "min_digits": 1, "absolute": self.absolute}
        min_digits, require = self.min_digits, self.require

        def grounded_numbers(value: Any, subject: Subject) -> bool | None:
            src = _source(subject, steps)
            if src is None:
                return None
            text = text_of(value)
            if text is None:
                return False if require else None
            found = number_keys(text, **{**opts, "min_digits": min_digits})
            if not found:
                return False if require else None
            known = _memo(subject, ("numbers", steps, tuple(opts.items())),
                          lambda: set(number_keys(src[0], **opts)))
            missing = [v for v in found if v not in known]
            if not missing:
                return True
            return None if src[1] else False

        return grounded_numbers


# -- quotes --------------------------------------------------------------------------------

# The body excludes both quote marks, so a run of opening quotes fails at once.
_QUOTE_RE = re.compile('"([^"\\n]{1,2000})"|\u201c([^\u201c\u201d\\n]{1,2000})\u201d')
_SPACE_RE = re.compile(r"\s+")
_QUOTE_CHARS = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"'})


def extract_quotes(text: str, min_chars: int = 1) -> list[str]:
    """The spans between straight or curly double quotes (one line, <= 2000 characters)."""
    out = []
    for m in _QUOTE_RE.finditer(text):
        quote = (m.group(1) if m.group(1) is not None else m.group(2)).strip()
        if len(quote) >= min_chars:
            out.append(quote)
    return out


def _normal(text: str, fold: bool) -> str:
    text = _SPACE_RE.sub(" ", text.translate(_QUOTE_CHARS)).strip()
    return text.casefold() if fold else text


class GroundedQuotesSpec(_GroundedSpec):
    """``grounded_quotes``: each quoted span of the output exists verbatim in the source.

    Without ``field``, the spans between double quotes in the output text (at least
    ``min_chars`` long); with ``field``, the field's string value(s) themselves.
    Whitespace runs and quote styles are normalised; ``ignore_case`` also folds case.
    """

    min_chars: int = Field(default=1, ge=1)
    ignore_case: bool = False

    def evaluator(self, where: str) -> Evaluator:
        steps = parse_path(self.source_field)
        whole_field = self.field is not None
        min_chars, fold = self.min_chars, self.ignore_case

        def grounded_quotes(value: Any, subject: Subject) -> bool | None:
            src = _source(subject, steps)
            if src is None or value is MISSING or value is None:
                return None
            if whole_field:
                items = value if isinstance(value, list) else [value]
                quotes = [v.strip() for v in items
                          if isinstance(v, str) and len(v.strip()) >= min_chars]
            else:
                text = text_of(value)
                quotes = extract_quotes(text, min_chars) if text else []
            if not quotes:
                return None
            source = _memo(subject, ("quotes", steps, fold), lambda: _normal(src[0], fold))
            if all(_normal(q, fold) in source for q in quotes):
                return True
            return None if src[1] else False

        return grounded_quotes


#: ``type:`` -> spec model of the source-grounded checks.
GROUNDED_TYPES: dict[str, type[CheckSpec]] = {
    "grounded_dates": GroundedDatesSpec,
    "grounded_numbers": GroundedNumbersSpec,
    "grounded_quotes": GroundedQuotesSpec,
}
