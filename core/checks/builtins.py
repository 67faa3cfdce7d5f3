"""The built-in output checks, by YAML ``type:`` (:data:`BUILTIN_TYPES`).

Built-in types (the ``type:`` of a YAML check): ``valid_date``, ``date_format``,
``json_parses``, ``json_schema``, ``regex``, ``length``, ``refusal``, ``language``,
``field_count`` and ``custom`` (a Python function named ``module:attr``). The
source-grounded types live in :mod:`.grounding`.

What every check shares (:class:`Check`, :class:`Subject`, :class:`CheckSpec`, JSON
paths) is in :mod:`.base`; the checks by family in :mod:`.date_checks`,
:mod:`.json_checks`, :mod:`.text_checks`, :mod:`.regex_checks` and
:mod:`.custom_checks`. The names they define stay importable from here.

Every regular expression of these modules is linear in its input: bounded
repetitions, no nested or overlapping unbounded quantifiers, and boundaries written
as lookarounds of fixed width (``tests/test_checks.py`` times each on adversarial
100 KB inputs). A user pattern (``regex`` check) runs under Google RE2 when
``google-re2`` is installed; otherwise patterns with nested or alternated unbounded
repetitions are refused and the text searched is capped at ``max_chars``.
"""

from __future__ import annotations

# Every name below was defined here before the checks moved to modules of their own;
# code and tests import them from here. ``_x as _x`` re-exports a private one.
from .base import _PATH_TOKEN as _PATH_TOKEN
from .base import _TRUNCATED_RE as _TRUNCATED_RE
from .base import (
    MISSING,
    WILDCARD,
    Check,
    CheckSpec,
    Evaluator,
    Kind,
    Subject,
    build_spec,
    finite,
    get_path,
    is_truncated,
    parse_json_text,
    parse_path,
    span_selector,
    text_of,
)
from .custom_checks import CustomSpec
from .custom_checks import _call_user as _call_user
from .date_checks import _GENERIC_DATE_RE as _GENERIC_DATE_RE
from .date_checks import DateFormat, DateFormatSpec, Locale, ValidDateSpec, find_dates
from .json_checks import FieldCountSpec, JsonParsesSpec, JsonSchemaSpec
from .regex_checks import RegexSpec, backtracking_risk
from .regex_checks import _re2 as _re2
from .text_checks import _WORD_RE as _WORD_RE
from .text_checks import (
    DEFAULT_REFUSALS,
    STOPWORDS,
    LanguageSpec,
    LengthSpec,
    RefusalSpec,
    stopword_scores,
)

__all__ = [
    "BUILTIN_TYPES",
    "DEFAULT_REFUSALS",
    "MISSING",
    "STOPWORDS",
    "WILDCARD",
    "Check",
    "CheckSpec",
    "CustomSpec",
    "DateFormat",
    "DateFormatSpec",
    "Evaluator",
    "FieldCountSpec",
    "JsonParsesSpec",
    "JsonSchemaSpec",
    "Kind",
    "LanguageSpec",
    "LengthSpec",
    "Locale",
    "RefusalSpec",
    "RegexSpec",
    "Subject",
    "ValidDateSpec",
    "backtracking_risk",
    "build_spec",
    "find_dates",
    "finite",
    "get_path",
    "is_truncated",
    "parse_json_text",
    "parse_path",
    "span_selector",
    "stopword_scores",
    "text_of",
]

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
