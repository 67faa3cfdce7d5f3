"""Detectors for secrets and PII, and the redactor that masks them in records.

Every pattern here is linear-time on adversarial input: character classes with
bounded or single-class repetition, no nested quantifiers over overlapping
alternatives. Matches that have a checksum (card numbers: Luhn; IBAN: mod 97) are
validated before they count, so order numbers do not get masked as cards.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .serialize import MASKED_VALUE

__all__ = ["CATEGORIES", "Detector", "Redactor", "find_pii", "iban_valid", "luhn_valid"]


def luhn_valid(digits: str) -> bool:
    """Whether a string of digits passes the Luhn checksum (payment card numbers)."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """Whether ``text`` (spaces allowed) is an IBAN with a valid mod-97 check."""
    s = text.replace(" ", "").upper()
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


@dataclass(frozen=True)
class Detector:
    """A named pattern with an optional validator of each match.

    ``hints``: substrings of which every match holds one; a text holding none of them
    is not searched (a substring test costs a fraction of a regex scan). ``screen``,
    for a detector without hints: a cheaper test that is true of every text holding a
    match; a text for which it is false is not searched.
    """

    category: str
    pattern: re.Pattern[str]
    validate: Callable[[str], bool] | None = None
    replacement: str = ""
    hints: tuple[str, ...] = ()
    screen: Callable[[str], bool] | None = None

    def mask(self) -> str:
        """The text that replaces a match."""
        return self.replacement or f"[{self.category.upper()}]"


def _digits_luhn(match: str) -> bool:
    digits = re.sub(r"[ -]", "", match)
    return 13 <= len(digits) <= 19 and luhn_valid(digits)


_CARD_RUN = re.compile(r"\d[\d -]{12}")
#: Byte -> "1" for the characters of a card number in ASCII text ("0" for the others).
_CARD_CHARS = bytes(49 if chr(b) in "0123456789 -" else 48 for b in range(256))


def _may_hold_card(text: str) -> bool:
    """Whether ``text`` has the 13 characters in a row (digits, spaces, dashes) every
    card number match has; a byte table test, many times faster than the pattern."""
    if not text.isascii():
        return _CARD_RUN.search(text) is not None  # \d takes other scripts' digits too
    return b"1111111111111" in text.encode().translate(_CARD_CHARS)


#: Built-in detectors by category name (the names valid in ``capture.redact``).
CATEGORIES: dict[str, Detector] = {
    d.category: d
    for d in (
        Detector("api_key", re.compile(
            r"\b(?:sk-ant-[A-Za-z0-9_-]{16,}|sk-(?:proj-)?[A-Za-z0-9_-]{20,}"
            r"|sk-lf-[A-Za-z0-9-]{8,}|pk-lf-[A-Za-z0-9-]{8,}|lsv2_[a-z]{2}_[A-Za-z0-9_]{16,}"
            r"|sk-helicone-[A-Za-z0-9-]{8,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36}"
            r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35})"),
                 hints=("sk-", "pk-lf-", "lsv2_", "AKIA", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
                        "xox", "AIza")),
        Detector("credit_card", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"),
                 _digits_luhn, screen=_may_hold_card),
        Detector("email", re.compile(
            r"[A-Za-z0-9._%+-]{1,64}@[A-Za-z0-9-]{1,63}(?:\.[A-Za-z0-9-]{1,63}){1,8}"),
                 hints=("@",)),
        Detector("iban", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"), iban_valid),
        Detector("phone", re.compile(
            r"(?<![\w+(])(?<!\d[ .-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{2,4}\)|\d{2,4})[ .-]?\d{3,4}"
            r"[ .-]?\d{3,4}(?!\w|[ .-]\d)")),
        Detector("ip_address", re.compile(
            r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")),
    )
}


def find_pii(text: str, categories: Iterable[str] = tuple(CATEGORIES)) -> list[tuple[str, str]]:
    """Return ``(category, matched text)`` for every validated match in ``text``."""
    found = []
    for name in categories:
        det = CATEGORIES[name]
        for m in det.pattern.finditer(text):
            if det.validate is None or det.validate(m.group()):
                found.append((name, m.group()))
    return found


#: Texts up to this long are remembered with their redacted form (system prompts,
#: roles and tool names repeat on every call), in a table of at most this many.
_CACHED_CHARS = 1024
_CACHE_ENTRIES = 4096


_Replacement = str | Callable[[re.Match[str]], str]
_Step = tuple[str | Callable[[str], object] | None, re.Pattern[str], _Replacement]


def _step(det: Detector) -> _Step:
    """``(screen, pattern, replacement)``: the screen is the one hint (a substring
    test), a search for all of them as one literal pattern, or the detector's own."""
    hints = det.hints
    screen: str | Callable[[str], object] | None = det.screen
    if len(hints) == 1:
        screen = hints[0]
    elif hints:
        screen = re.compile("|".join(map(re.escape, hints))).search
    mask = det.mask()
    replacement: _Replacement = mask if det.validate is None else _validated_mask(
        det.validate, mask)
    return screen, det.pattern, replacement


def _validated_mask(validate: Callable[[str], bool],
                    mask: str) -> Callable[[re.Match[str]], str]:
    def replace(match: re.Match[str]) -> str:
        return mask if validate(match.group()) else match.group()

    return replace


def _redact(text: str, steps: tuple[_Step, ...]) -> str:
    for screen, pattern, replacement in steps:
        if screen is not None:
            if isinstance(screen, str):
                if screen not in text:
                    continue
            elif not screen(text):
                continue
        text = pattern.sub(replacement, text)
    return text


class _Cache(dict[str, str]):
    """Texts with their redacted form: a hit is one dict lookup, a miss redacts (and
    remembers the text when it is short, emptying a full table first)."""

    __slots__ = ("steps",)

    def __init__(self, steps: tuple[_Step, ...]) -> None:
        super().__init__()
        self.steps = steps

    def __missing__(self, text: str) -> str:
        done = _redact(text, self.steps)
        if len(text) <= _CACHED_CHARS:
            if len(self) >= _CACHE_ENTRIES:
                self.clear()
            self[text] = done
        return done


class Redactor:
    """Masks secrets and PII in strings and, recursively, in JSON-like data.

    Args:
        categories: built-in detector names (see :data:`CATEGORIES`).
        patterns: extra ``(name, regex, replacement)`` triples.
        keys: mapping keys whose values are masked whole (``authorization``,
            ``api_key``...), compared case-insensitively.
    """

    __slots__ = ("_cache", "_detectors", "_keys", "_steps")

    def __init__(self, categories: Iterable[str] = (),
                 patterns: Iterable[tuple[str, str, str]] = (),
                 keys: Iterable[str] = ()) -> None:
        dets = [CATEGORIES[c] for c in categories]
        dets += [Detector(name, re.compile(rx), None, repl) for name, rx, repl in patterns]
        self._detectors = tuple(dets)
        self._steps = tuple(_step(d) for d in dets)
        self._keys = frozenset(k.lower() for k in keys)
        self._cache = _Cache(self._steps)

    def __bool__(self) -> bool:
        return bool(self._detectors or self._keys)

    @property
    def masked_keys(self) -> frozenset[str]:
        """The mapping keys (lower case) whose values are masked whole."""
        return self._keys

    def text(self, text: str) -> str:
        """Return ``text`` with every validated match replaced by its mask."""
        return self._cache[text]

    @property
    def text_function(self) -> Callable[[str], str]:
        """:meth:`text` as a plain function, for loops that call it on every string."""
        return self._cache.__getitem__

    def data(self, value: Any) -> Any:
        """Return a redacted copy of JSON-like ``value`` (strings, lists, dicts)."""
        kind = type(value)
        if kind is str:
            return self.text(value)
        if kind is list:
            return [self.data(v) for v in value]
        if kind is dict or isinstance(value, Mapping):
            return {
                k: MASKED_VALUE if isinstance(k, str) and k.lower() in self._keys
                else self.data(v)
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.data(v) for v in value]
        return value
