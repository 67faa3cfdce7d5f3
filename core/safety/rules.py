"""The rules of the synchronous safety check: seed content categories and PII detectors.

A *category* is what a verdict reports (``weapons``, ``self_harm``,
``child_sexual_content``, or one of the PII/secret categories of
:data:`llmvigil.core.redaction.CATEGORIES`: ``api_key``, ``credit_card``, ``email``,
``iban``, ``phone``, ``ip_address``), plus any category a user defines with phrases
or regexes. Each category maps to an action: ``block``, ``review`` or ``serve``.

Everything here must stay fast on the request path and linear on hostile input:

* Content rules run on the lowercased text and only when one of their trigger words
  is a word of it (one set intersection with the text's words, computed once per
  text), so ordinary text costs almost nothing. Their regexes have no nested
  unbounded quantifiers and their gaps are bounded; co-occurrence (a minor and explicit
  content within 60 characters of one sentence) is one pass over the terms, not a
  regex gap.
* PII detectors reuse the patterns and validators of :mod:`llmvigil.core.redaction`,
  run only where a cheap candidate scan says a match can be (a digit run, an ``@``,
  a key prefix), and give the same answer as :func:`~llmvigil.core.redaction.find_pii`
  (``tests/test_safety.py`` checks this property on random text).
* Every rule examines at most ``max_candidates`` candidates per text; a text with
  more (a dump of 10,000 card-like numbers) counts as a match, with a reason that
  says so, rather than an unbounded amount of checksum work.
* User regexes with nested unbounded quantifiers (``(a+)+``, ``(\\w+\\s?)*``) are
  rejected when the config is read.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from pydantic import BaseModel, ConfigDict, field_validator, model_validator

from ..redaction import CATEGORIES

__all__ = [
    "ACTIONS",
    "DEFAULT_ACTIONS",
    "DEFAULT_OFF",
    "OVERFLOW",
    "PII_CATEGORIES",
    "SEED_CATEGORIES",
    "SEED_RULES",
    "ContentRule",
    "Evaluation",
    "Hit",
    "PiiRule",
    "Rule",
    "RuleEngine",
    "RuleSetSettings",
    "nested_quantifier",
]

Action = Literal["serve", "review", "block"]


class Settings(BaseModel):
    """Base of the safety settings: immutable, unknown keys rejected.

    The same contract as :class:`llmvigil.core.monitors.windows.Settings`, defined here
    because importing :mod:`llmvigil.core.monitors` from this package would be circular.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)
Where = Literal["response", "prompt", "both"]

#: The actions, least severe first: a verdict takes the most severe action of its hits.
ACTIONS: tuple[str, ...] = ("serve", "review", "block")
_SEVERITY = {a: i for i, a in enumerate(ACTIONS)}

#: The built-in content categories.
SEED_CATEGORIES: tuple[str, ...] = ("weapons", "self_harm", "child_sexual_content")
#: The PII and secret categories, detected by :mod:`llmvigil.core.redaction`.
PII_CATEGORIES: tuple[str, ...] = tuple(CATEGORIES)

#: The action of each built-in category unless ``monitors.safety.actions`` says otherwise.
DEFAULT_ACTIONS: dict[str, str] = {
    "weapons": "block",
    "self_harm": "block",
    "child_sexual_content": "block",
    "api_key": "block",
    "credit_card": "review",
    "iban": "review",
    "email": "serve",
    "phone": "serve",
    "ip_address": "serve",
}
#: Built-in categories that are off unless ``monitors.safety.rules`` names them.
DEFAULT_OFF: frozenset[str] = frozenset({"ip_address"})
#: The action of a user-defined category that ``actions`` does not mention.
CUSTOM_DEFAULT_ACTION = "review"


class _Overflow:
    """The marker :meth:`Rule.find` returns when a text has too many candidates."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "OVERFLOW"


#: Returned by :meth:`Rule.find` instead of a span when ``max_candidates`` was exceeded.
OVERFLOW = _Overflow()
Found = tuple[int, int] | _Overflow | None


def _parser() -> Any:
    try:
        import re._parser as parser  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        import sre_parse as parser
    return parser


def _min_width(pattern: re.Pattern[str]) -> int:
    """The fewest characters a match of ``pattern`` can span."""
    return int(_parser().parse(pattern.pattern, pattern.flags).getwidth()[0])


_WORD = re.compile(r"\w+")
#: Card, phone and IP detectors run on the digit runs of a text: maximal runs of digits
#: and " .()-" from a digit to a digit, at least as long as the shortest match (less
#: one leading '+' or '(' just before the run).
_RUN_DETECTORS = ("credit_card", "phone", "ip_address")
_MIN_RUN = {c: max(2, _min_width(CATEGORIES[c].pattern) - 1) for c in _RUN_DETECTORS}
# Starting with \d lets the regex engine skip other characters in C.
_DIGIT_RUN = re.compile(rf"\d[\d .()-]{{{min(_MIN_RUN.values()) - 2},}}\d")
# Detector lookarounds read up to this many characters on each side of a match.
_CONTEXT = 2


def normalise(text: str) -> str:
    """The form content rules read: lowercase, typographic apostrophes made plain."""
    return text.lower().replace("\u2019", "'")


class Subject:
    """One text being checked, with the derived forms rules share (computed once)."""

    __slots__ = ("_runs", "_words", "low", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        self.low = normalise(text)
        self._words: set[str] | None = None
        self._runs: list[tuple[int, int]] | None = None

    @property
    def words(self) -> set[str]:
        """The maximal ``\\w+`` runs of the normalised text."""
        if self._words is None:
            self._words = set(_WORD.findall(self.low))
        return self._words

    @property
    def digit_runs(self) -> list[tuple[int, int]]:
        """Spans of the digit runs a card, phone or IP number can lie in."""
        if self._runs is None:
            self._runs = [m.span() for m in _DIGIT_RUN.finditer(self.text)]
        return self._runs


class Rule(Protocol):
    """One detector of one category."""

    @property
    def name(self) -> str:
        """The rule's name, e.g. ``weapons.instructions`` or ``pii.iban``."""
        ...

    @property
    def category(self) -> str:
        """The category it detects."""
        ...

    def find(self, subject: Subject, max_candidates: int) -> Found:
        """The span of the first match in the subject, :data:`OVERFLOW`, or ``None``."""
        ...


# ---------------------------------------------------------------------------------------
# Content rules
# ---------------------------------------------------------------------------------------

# A negation or refusal in the same clause, shortly before a match, cancels it for the
# rules marked ``negatable`` ("I can't tell you how to make a bomb").
_NEGATION = re.compile(
    r"\b(?:not|never|no|don't|do not|can't|cannot|won't|will not|wouldn't|would not"
    r"|shouldn't|should not|isn't|is not|aren't|refuse|unable)\b"
)
_CLAUSE_END = re.compile(r"[.!?;\n]")
_NEGATION_WINDOW = 60
_BEFORE_WINDOW = 40


def _negated(low: str, start: int) -> bool:
    before = low[max(0, start - _NEGATION_WINDOW):start]
    ends = [m.end() for m in _CLAUSE_END.finditer(before)]
    if ends:
        before = before[ends[-1]:]
    return _NEGATION.search(before) is not None


@dataclass(frozen=True)
class ContentRule:
    """A regex rule of a content category.

    ``words`` are lowercase words one of which every match contains as a whole word
    (a ``\\w+`` run of the text); the regex runs only when one of them is in the text,
    so ordinary text costs one set intersection. With ``lowered`` the regex reads the
    normalised text (its source must be lowercase), otherwise the original text.
    ``negatable`` rules skip a match preceded by a negation in the same clause.
    ``before``, when set, must match the normalised text just before a match (up to
    40 characters, anchored at the match with ``\\Z``): the regex itself starts at a
    rarer word, which keeps the scan fast.
    """

    name: str
    category: str
    pattern: re.Pattern[str]
    words: frozenset[str] = frozenset()
    lowered: bool = True
    negatable: bool = False
    before: re.Pattern[str] | None = None

    def find(self, subject: Subject, max_candidates: int) -> Found:
        """The span of the first (non-negated) match, :data:`OVERFLOW` or ``None``."""
        if self.words and self.words.isdisjoint(subject.words):
            return None
        low = subject.low
        target = low if self.lowered else subject.text
        search = self.pattern.search
        before = self.before
        pos = 0
        for _ in range(max_candidates):
            m = search(target, pos)
            if m is None:
                return None
            start = m.start()
            if ((before is None or before.search(low, max(0, start - _BEFORE_WINDOW), start))
                    and not (self.negatable and _negated(low, start))):
                return m.span()
            pos = max(m.end(), pos + 1)
        return OVERFLOW


def _ws(source: str) -> str:
    """``source`` with each literal space outside a character class made ``\\s+``, so
    line breaks and repeated spaces do not split a phrase."""
    out, in_class, escaped = [], False, False
    for ch in source:
        if escaped:
            out.append(ch)
            escaped = False
        elif ch == "\\":
            out.append(ch)
            escaped = True
        elif ch == "[":
            in_class = True
            out.append(ch)
        elif ch == "]":
            in_class = False
            out.append(ch)
        elif ch == " " and not in_class:
            out.append(r"\s+")
        else:
            out.append(ch)
    return "".join(out)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


def _rule(name: str, category: str, source: str, words: str, *, negatable: bool = True,
          before: str | None = None) -> ContentRule:
    return ContentRule(name, category, re.compile(_ws(source)), _words(words), True,
                       negatable, re.compile(_ws(before) + r"\Z") if before else None)


_MAKE = (r"(?:make|making|build|building|assemble|assembling|construct|constructing"
         r"|synthesi[sz]e|synthesi[sz]ing|produce|producing|manufacture|manufacturing"
         r"|cook|cooking|brew|brewing|weaponi[sz]e|weaponi[sz]ing|3d[- ]print|3d[- ]printing)")
_WEAPON_NOUNS = (
    "pipe bomb", "nail bomb", "dirty bomb", "car bomb", "bomb", "explosive device",
    "improvised explosive", "explosive", "detonator", "nerve agent", "sarin", "tabun",
    "soman", "vx", "ricin", "abrin", "anthrax", "botulinum", "mustard gas", "chlorine gas",
    "phosgene", "napalm", "thermite", "molotov cocktail", "ghost gun", "untraceable gun",
    "untraceable firearm", "silencer", "suppressor", "chemical weapon", "biological weapon",
    "bioweapon", "bio-weapon",
)
_WEAPONS = "(?:" + "|".join(" ".join(re.escape(w) for w in n.split()) + "s?"
                            for n in _WEAPON_NOUNS) + ")"
# The last word of each noun, singular and plural: one is a whole word of any match.
_WEAPON_WORDS = " ".join(f"{n.split()[-1]} {n.split()[-1]}s" for n in _WEAPON_NOUNS)
_DETERMINER = r"(?:(?:a|an|the|some|your own|a homemade|homemade|a working|working)\s+)?"
_VICTIM = (r"(?:someone|somebody|a person|people|him|her|them"
           r"|your (?:husband|wife|partner|boss|neighbou?r|family|friend|coworker))")
_LEADS = r"(?:\bto|\bcan|\bcould|\bwill|'ll|\bthen|\bfirst,?)"

_SELF = r"(?:kill|hurt|harm|cut|starve|hang|shoot|poison)\s+yourself"
_AGE = r"[- ]?(?:years?|yrs?)[- ]old"
_MINOR_TERMS = (
    "child", "children", "kid", "kids", "minor", "minors", "underage", "under-age",
    "preteen", "preteens", "pre-teen", "pre-teens", "prepubescent", "toddler", "toddlers",
    "infant", "infants", r"little\s+girls?", r"little\s+boys?", "schoolgirls?", "schoolboys?",
    *(f"{age}{_AGE}" for age in range(1, 18)),
)
_EXPLICIT_TERMS = (
    "erotica", "erotic", "porno", "pornographic", "pornography", "porn", "nudes", "nude",
    "naked", r"sexually\s+explicit", r"explicit\s+sex(?:ual)?", r"sex\s+scenes?",
    r"sexual\s+roleplay", "intercourse", "aroused",
)


def _whole_terms(terms: Sequence[str]) -> re.Pattern[str]:
    """One whole-word term of ``terms`` (regex sources), captured as group 1."""
    return re.compile(r"\b(" + "|".join(terms) + r")\b")


_REGEX_RULES: tuple[ContentRule, ...] = (
    _rule("weapons.instructions", "weapons", rf"{_MAKE}\s+{_DETERMINER}{_WEAPONS}\b",
          _WEAPON_WORDS, before=rf"{_LEADS}\s+"),
    _rule("weapons.recipe", "weapons",
          rf"\b{_WEAPONS}\s+(?:recipe|synthesis route|build instructions|assembly instructions"
          r"|blueprints?)\b", _WEAPON_WORDS),
    _rule("weapons.poisoning", "weapons", rf"poison\s+{_VICTIM}\b", "poison",
          before=rf"{_LEADS}\s+(?:(?:secretly|slowly|fatally)\s+)?"),
    _rule("weapons.undetectable_poison", "weapons",
          r"\b(?:undetectable|untraceable)\s+poisons?\b", "poison poisons"),
    _rule("weapons.lethal_dose", "weapons",
          rf"\b(?:lethal|fatal)\s+dose\b[^.!?]{{0,40}}?\bto\s+(?:kill|poison)\s+{_VICTIM}\b",
          "lethal fatal"),
    _rule("self_harm.encouragement", "self_harm", rf"{_SELF}\b", "yourself",
          before=r"\b(?:you should|you ought to|you need to|you might as well|go ahead and"
                 r"|why not|just)\s+(?:just\s+)?"),
    _rule("self_harm.worthless", "self_harm",
          r"\b(?:you(?:'d| would) be better off dead"
          r"|(?:everyone|the world|your family|they) (?:would|will) be better off without you"
          r"|(?:nobody|no one) (?:would|will) (?:miss|care about) you"
          r"|you (?:deserve|ought) to die|you should (?:just )?die)\b",
          "better miss care die"),
    _rule("self_harm.methods", "self_harm",
          r"\b(?:best|easiest|quickest|fastest|surest|most painless|most effective"
          r"|least painful)\s+(?:ways?|methods?)\s+(?:to|of)\s+(?:kill(?:ing)? yourself"
          r"|end(?:ing)? your (?:own )?life|commit(?:ting)? suicide|hurt(?:ing)? yourself"
          r"|self[- ]harm(?:ing)?)\b"
          r"|\bhere(?:'s| is) how (?:to|you can) (?:kill yourself|end your (?:own )?life"
          r"|commit suicide|hurt yourself)\b",
          "yourself life suicide harm harming"),
)

_PAIR_GAP = 60
# Around each term of the first kind the text gets \x01 marks, around each term of the
# second kind \x02 marks; a close pair is then a closing mark, a short gap without a
# sentence end or another term, and an opening mark of the other kind.
_CLOSE_PAIR = re.compile(rf"\x01[^.!?\x01\x02]{{0,{_PAIR_GAP}}}\x02"
                         rf"|\x02[^.!?\x01\x02]{{0,{_PAIR_GAP}}}\x01")


@dataclass(frozen=True)
class ProximityRule:
    """A term of one kind within 60 characters of a term of another kind, in either
    order, in one sentence (no ``.``, ``!`` or ``?`` between them).

    ``first`` and ``second`` each match one term, captured as group 1. It runs only when
    the text holds a word of each kind (``first_words``, ``second_words``, as for
    :class:`ContentRule`), and costs two ``split``/``join`` passes and one scan, all in
    C, however many terms the text repeats. Not negatable.
    """

    name: str
    category: str
    first: re.Pattern[str]
    second: re.Pattern[str]
    first_words: frozenset[str]
    second_words: frozenset[str]

    def find(self, subject: Subject, max_candidates: int) -> Found:
        """The span from the first term to the second of the first close pair, or ``None``."""
        words = subject.words
        if self.first_words.isdisjoint(words) or self.second_words.isdisjoint(words):
            return None
        low = subject.low
        if "\x01" in low or "\x02" in low:  # the marks must be ours (same length, no word)
            low = low.replace("\x01", " ").replace("\x02", " ")
        # split() with one group alternates text and terms; join() puts a mark between
        # every two pieces, that is on both sides of every term.
        marked = "\x01".join(self.first.split(low))
        marked = "\x02".join(self.second.split(marked))
        m = _CLOSE_PAIR.search(marked)
        if m is None:
            return None
        opening = marked.rfind(marked[m.start()], 0, m.start())
        closing = marked.find(marked[m.end() - 1], m.end())

        def original(i: int) -> int:
            return i - marked.count("\x01", 0, i) - marked.count("\x02", 0, i)

        return original(opening + 1), original(closing)


# A refusal that names the content is flagged too (not negatable): the safe side for
# this category.
CHILD_SEXUAL_CONTENT = ProximityRule(
    "child_sexual_content.minor_explicit", "child_sexual_content",
    _whole_terms(_MINOR_TERMS), _whole_terms(_EXPLICIT_TERMS),
    _words("child children kid kids minor minors underage under preteen preteens pre "
           "prepubescent toddler toddlers infant infants little schoolgirl schoolgirls "
           "schoolboy schoolboys old"),
    _words("erotica erotic porno pornographic pornography porn nudes nude naked explicit "
           "scene scenes roleplay intercourse aroused"),
)

#: The built-in rules of the seed categories (run on the normalised text).
SEED_RULES: tuple[ContentRule | ProximityRule, ...] = (*_REGEX_RULES, CHILD_SEXUAL_CONTENT)


def _phrase_source(phrase: str) -> str:
    return r"\s+".join(re.escape(w) for w in normalise(phrase).split())


def phrase_rule(category: str, phrases: Sequence[str]) -> ContentRule:
    """One rule matching any of ``phrases``: case-insensitive, whole words, any spacing."""
    body = "|".join(_phrase_source(p) for p in phrases)
    words: set[str] = set()
    for phrase in phrases:
        runs = _WORD.findall(normalise(phrase))
        if not runs:  # a phrase of punctuation only: no word to wait for
            words = set()
            break
        words.add(max(runs, key=len))
    return ContentRule(f"{category}.phrases", category,
                       re.compile(rf"(?<!\w)(?:{body})(?!\w)"), frozenset(words), True, False)


# ---------------------------------------------------------------------------------------
# PII and secret detectors (patterns and validators from core.redaction)
# ---------------------------------------------------------------------------------------

# A detector runs only where its matches can be: in the digit runs of the subject (card,
# phone, IP), from a place where an IBAN can start, around an '@', or once a key prefix
# occurs. What each finds is what core.redaction.find_pii finds (tests/test_safety.py).
_IBAN_START = re.compile(r"[A-Z][A-Z]\d\d")
# The characters an e-mail local part is made of (up to 64) before an '@', read on the
# reversed text so the scan runs in C.
_EMAIL_LOCAL_REVERSED = re.compile(r"[A-Za-z0-9._%+-]{0,64}")
_EMAIL_DOMAIN_MAX = 600


@dataclass(frozen=True)
class PiiRule:
    """A PII/secret detector of :data:`llmvigil.core.redaction.CATEGORIES`, run fast."""

    name: str
    category: str

    def find(self, subject: Subject, max_candidates: int) -> Found:
        """The span of the first validated match, :data:`OVERFLOW` or ``None``."""
        finder: Any = _FINDERS[self.category]
        found: Found = finder(subject, max_candidates)
        return found


def _find_in_runs(category: str) -> Any:
    det = CATEGORIES[category]
    pattern, validate, shortest = det.pattern, det.validate, _MIN_RUN[category]

    def find(subject: Subject, max_candidates: int) -> Found:
        text = subject.text
        n = len(text)
        budget = max_candidates
        for start, end in subject.digit_runs:
            if end - start < shortest:
                continue
            budget -= 1
            if budget < 0:
                return OVERFLOW
            # From one character before the run (a leading '+' or '('), to _CONTEXT
            # after it: the detector's lookarounds see what they see in the whole text
            # (lookbehinds read before ``pos``; lookaheads stop at ``endpos``).
            for m in pattern.finditer(text, max(0, start - 1), min(n, end + _CONTEXT)):
                budget -= 1
                if budget < 0:
                    return OVERFLOW
                if validate is None or validate(m.group()):
                    return m.span()
        return None

    return find


def _find_iban(subject: Subject, max_candidates: int) -> Found:
    det = CATEGORIES["iban"]
    match, validate, text = det.pattern.match, det.validate, subject.text
    skip_to = 0
    for c in _IBAN_START.finditer(text):
        if c.start() < skip_to:
            continue
        max_candidates -= 1
        if max_candidates < 0:
            return OVERFLOW
        m = match(text, c.start())
        if m is not None:
            if validate is None or validate(m.group()):
                return m.span()
            skip_to = m.end()  # like finditer: the next match starts after this one
    return None


def _find_email(subject: Subject, max_candidates: int) -> Found:
    text = subject.text
    at = text.find("@")
    if at < 0:
        return None
    match = CATEGORIES["email"].pattern.match
    reversed_text = text[::-1]
    n = len(text)
    while at >= 0:
        max_candidates -= 1
        if max_candidates < 0:
            return OVERFLOW
        run = _EMAIL_LOCAL_REVERSED.match(reversed_text, n - at)
        local = run.end() - (n - at) if run is not None else 0
        if local:
            m = match(text, at - local, min(n, at + _EMAIL_DOMAIN_MAX))
            if m is not None:
                return m.span()
        at = text.find("@", at + 1)
    return None


def _find_api_key(subject: Subject, max_candidates: int) -> Found:
    text = subject.text
    # Every key format starts with one of these; most text has neither '_' nor 'sk-'.
    if not ("AKIA" in text or "AIza" in text
            or ("-" in text and ("sk-" in text or "pk-lf-" in text or "xox" in text))
            or ("_" in text and ("lsv2_" in text or "gh" in text))):
        return None
    m = CATEGORIES["api_key"].pattern.search(text)
    return m.span() if m is not None else None


_FINDERS: dict[str, Any] = {
    "credit_card": _find_in_runs("credit_card"),
    "phone": _find_in_runs("phone"),
    "ip_address": _find_in_runs("ip_address"),
    "iban": _find_iban,
    "email": _find_email,
    "api_key": _find_api_key,
}
_missing = set(CATEGORIES) - set(_FINDERS)
if _missing:  # a detector added to core.redaction without a fast path here
    raise ImportError(f"llmvigil.core.safety.rules: no finder for PII categories {_missing}")


# ---------------------------------------------------------------------------------------
# Regex safety of user patterns
# ---------------------------------------------------------------------------------------


def nested_quantifier(pattern: str) -> str | None:
    """Describe a nested unbounded quantifier in ``pattern`` (``(a+)+``), or ``None``.

    Such a pattern can take exponential time on a near-miss input. Repeats inside
    atomic groups or possessive repeats cannot backtrack and are allowed.
    """
    parser = _parser()
    unbounded = parser.MAXREPEAT

    def walk(items: Any, inside: bool) -> str | None:
        for op, av in items:
            name = str(op)
            if name in ("MAX_REPEAT", "MIN_REPEAT"):
                lo, hi, sub = av
                if inside and hi > 1 and hi != lo:
                    return "a repeated group contains another variable quantifier"
                found = walk(sub, inside or hi == unbounded)
            elif name in ("POSSESSIVE_REPEAT", "ATOMIC_GROUP"):
                found = None
            elif name == "SUBPATTERN":
                found = walk(av[-1], inside)
            elif name == "BRANCH":
                found = next((r for r in (walk(b, inside) for b in av[1]) if r), None)
            elif name in ("ASSERT", "ASSERT_NOT"):
                found = walk(av[1], inside)
            elif name == "GROUPREF_EXISTS":
                found = walk(av[1], inside) or (walk(av[2], inside) if av[2] else None)
            else:
                found = None
            if found:
                return found
        return None

    return walk(parser.parse(pattern), False)


# ---------------------------------------------------------------------------------------
# Configuration and the engine
# ---------------------------------------------------------------------------------------


class RuleSetSettings(Settings):
    """``monitors.safety.rules.<category>``: one category's rules.

    ``true``/``false`` alone stands for ``{enabled: ...}``. ``seed: false`` drops the
    built-in rules (or detector) of the category and keeps only ``phrases`` (whole
    words, any case and spacing) and ``patterns`` (regexes on the original text, as
    written: add ``(?i)`` for case-insensitive). ``scan`` says which text is checked.
    """

    enabled: bool = True
    seed: bool = True
    phrases: list[str] = []
    patterns: list[str] = []
    scan: Where = "response"

    @model_validator(mode="before")
    @classmethod
    def _shorthand(cls, data: Any) -> Any:
        """Accept a bare boolean for ``enabled``."""
        return {"enabled": data} if isinstance(data, bool) else data

    @field_validator("phrases")
    @classmethod
    def _phrases(cls, value: list[str]) -> list[str]:
        """Reject blank phrases."""
        for phrase in value:
            if not phrase.split():
                raise ValueError("phrases must not be blank")
        return value

    @field_validator("patterns")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        """Reject patterns that do not compile or that could backtrack catastrophically."""
        for i, source in enumerate(value):
            try:
                re.compile(source)
            except re.error as exc:
                raise ValueError(f"pattern {i} ({source!r}) is not a valid regex: {exc}") from None
            problem = nested_quantifier(source)
            if problem:
                raise ValueError(
                    f"pattern {i} ({source!r}) can backtrack catastrophically: {problem}; "
                    "rewrite it without a quantifier inside a repeated group, or make the "
                    "inner repeat possessive (a++) or atomic ((?>...))"
                )
        return value


class Hit(NamedTuple):
    """One category found in one text."""

    category: str
    rule: str
    where: str
    start: int
    end: int
    overflow: bool = False


class Evaluation(NamedTuple):
    """What the rules decided for one (prompt, response) pair."""

    action: str
    category: str | None
    rule: str | None
    reason: str
    hits: tuple[Hit, ...]
    truncated: bool = False


_NO_HITS = Evaluation("serve", None, None, "no rule matched", ())


def _as_settings(value: RuleSetSettings | Mapping[str, Any] | bool) -> RuleSetSettings:
    if isinstance(value, RuleSetSettings):
        return value
    return RuleSetSettings.model_validate(value)


class RuleEngine:
    """The configured rules: which categories are on, their rules and their actions.

    Args:
        rules: ``monitors.safety.rules``: category -> :class:`RuleSetSettings` (or its
            mapping, or a boolean). Built-in categories not named keep their defaults
            (all on except :data:`DEFAULT_OFF`); a new name defines a custom category.
        actions: ``monitors.safety.actions``: category -> ``block``/``review``/``serve``,
            over :data:`DEFAULT_ACTIONS`; custom categories default to ``review``.
        max_scan_chars: longer texts are checked up to this many characters (the
            evaluation says ``truncated``).
        max_candidates: the most candidates one rule examines in one text before it
            counts the text as a match.

    Raises:
        ValueError: an action names an unknown category or is not an action, or a
            custom category has no phrases or patterns.
    """

    def __init__(self, rules: Mapping[str, RuleSetSettings | Mapping[str, Any] | bool]
                 | None = None, actions: Mapping[str, str] | None = None, *,
                 max_scan_chars: int = 200_000, max_candidates: int = 200) -> None:
        configured = {k: _as_settings(v) for k, v in (rules or {}).items()}
        self.max_scan_chars = max_scan_chars
        self.max_candidates = max_candidates
        self.settings: dict[str, RuleSetSettings] = {}
        for category in (*SEED_CATEGORIES, *PII_CATEGORIES):
            default = RuleSetSettings(enabled=category not in DEFAULT_OFF)
            self.settings[category] = configured.pop(category, default)
        for category, rs in configured.items():
            if not (rs.phrases or rs.patterns):
                raise ValueError(
                    f"rules.{category}: a new category needs phrases or patterns "
                    f"(built-in categories: {', '.join((*SEED_CATEGORIES, *PII_CATEGORIES))})"
                )
            self.settings[category] = rs
        self.actions: dict[str, str] = {}
        for category in self.settings:
            self.actions[category] = DEFAULT_ACTIONS.get(category, CUSTOM_DEFAULT_ACTION)
        for category, action in (actions or {}).items():
            if category not in self.settings:
                raise ValueError(
                    f"actions.{category}: unknown category; known: {', '.join(self.settings)}"
                )
            if action not in _SEVERITY:
                raise ValueError(f"actions.{category}: expected one of {', '.join(ACTIONS)}, "
                                 f"got {action!r}")
            self.actions[category] = action
        self.rules: dict[str, list[Rule]] = {c: self._build(c, rs)
                                             for c, rs in self.settings.items() if rs.enabled}
        self._response = self._for("response")
        self._prompt = self._for("prompt")

    @staticmethod
    def _build(category: str, rs: RuleSetSettings) -> list[Rule]:
        built: list[Rule] = []
        if rs.seed:
            if category in CATEGORIES:
                built.append(PiiRule(f"pii.{category}", category))
            built.extend(r for r in SEED_RULES if r.category == category)
        if rs.phrases:
            built.append(phrase_rule(category, rs.phrases))
        for i, source in enumerate(rs.patterns):
            built.append(ContentRule(f"{category}.pattern{i}", category, re.compile(source),
                                     frozenset(), False, False))
        return built

    def _for(self, where: str) -> list[tuple[str, list[Rule]]]:
        # Most severe categories first, so the deciding hit is found early.
        chosen = [(c, r) for c, r in self.rules.items()
                  if r and self.settings[c].scan in (where, "both")]
        chosen.sort(key=lambda item: -_SEVERITY[self.actions[item[0]]])
        return chosen

    def all_rules(self) -> list[Rule]:
        """Every enabled rule (for tests and tooling)."""
        return [r for rules in self.rules.values() for r in rules]

    def scan(self, text: str, where: str = "response") -> list[Hit]:
        """The first hit of each enabled category in ``text`` read as ``where``."""
        return list(self._scan(text, self._response if where == "response" else self._prompt,
                               where))

    def _scan(self, text: str, chosen: list[tuple[str, list[Rule]]], where: str) -> list[Hit]:
        hits: list[Hit] = []
        if not text or not chosen:
            return hits
        subject = Subject(text)
        limit = self.max_candidates
        for category, rules in chosen:
            for rule in rules:
                found = rule.find(subject, limit)
                if found is None:
                    continue
                if isinstance(found, _Overflow):
                    hits.append(Hit(category, rule.name, where, 0, 0, True))
                else:
                    hits.append(Hit(category, rule.name, where, found[0], found[1]))
                break
        return hits

    def evaluate(self, prompt: str, response: str) -> Evaluation:
        """Run the rules on both texts and decide: the most severe action of any hit."""
        limit = self.max_scan_chars
        truncated = len(response) > limit or len(prompt) > limit
        if truncated:
            response, prompt = response[:limit], prompt[:limit]
        hits = self._scan(response, self._response, "response")
        if self._prompt and prompt:
            hits += self._scan(prompt, self._prompt, "prompt")
        if not hits:
            return _NO_HITS._replace(truncated=True) if truncated else _NO_HITS
        actions = self.actions
        top = max(hits, key=lambda h: _SEVERITY[actions[h.category]])
        action = actions[top.category]
        if top.overflow:
            reason = (f"{top.category}: more than {self.max_candidates} candidates in the "
                      f"{top.where}, treated as a match")
        else:
            reason = f"{top.category} detected in the {top.where} (rule {top.rule})"
        return Evaluation(action, top.category, top.rule, reason, tuple(hits), truncated)
