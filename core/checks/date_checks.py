"""The date checks ``valid_date`` and ``date_format``, and the date finding they share.

:class:`DateFormat` compiles a strftime-style format for finding and validating
dates in text; :func:`find_dates` finds dates of any common shape. Every repetition
of their regular expressions is bounded.
"""

from __future__ import annotations

import calendar
import datetime as _dt
import re
from collections.abc import Iterator, Mapping
from typing import Any, Literal

from pydantic import field_validator

from .base import CheckSpec, Evaluator, Subject, text_of

__all__ = ["DateFormat", "DateFormatSpec", "Locale", "ValidDateSpec", "find_dates"]

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
        first = lax[0] if lax else ""
        starts_with_digit = first.startswith(r"\d") or (
            first.startswith("(?P<") and first.split(">", 1)[1].startswith(r"\d"))
        # A lookahead on a digit changes no match and skips every other position fast.
        self._finder = re.compile((r"(?=\d)" if starts_with_digit else "") + before
                                  + "".join(lax) + after, re.I)
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
# The leading lookahead (a digit or a month's initial) changes no match; it lets the
# engine pass over every other position at once (4x faster on JSON outputs).
_GENERIC_DATE_RE = re.compile(
    r"(?=[\dadfjmnos])(?<![\w/.\-])(?:"
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
