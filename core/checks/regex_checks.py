"""The ``regex`` check: a user's regular expression, kept from backtracking exponentially.

A pattern runs under Google RE2 when ``google-re2`` is installed (linear time);
otherwise patterns with nested or alternated unbounded repetitions are refused
(:func:`backtracking_risk`) and the text searched is capped at ``max_chars``.
"""

from __future__ import annotations

import importlib
import re
from typing import Any, Literal

from pydantic import Field

from ..errors import ConfigError
from .base import CheckSpec, Evaluator, Subject, text_of

__all__ = ["RegexSpec", "backtracking_risk"]

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
