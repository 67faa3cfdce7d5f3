"""The text checks ``length``, ``refusal`` and ``language``."""

from __future__ import annotations

import re
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator

from ..errors import ConfigError
from .base import CheckSpec, Evaluator, Kind, Subject, text_of

__all__ = [
    "DEFAULT_REFUSALS",
    "STOPWORDS",
    "LanguageSpec",
    "LengthSpec",
    "RefusalSpec",
    "stopword_scores",
]

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
