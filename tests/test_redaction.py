"""The redactor's cache and screens change how fast it is, never what it returns."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from llmvigil.core.redaction import _CACHE_ENTRIES, _CACHED_CHARS, Redactor
from vigil_testing import redact_pattern_by_pattern


@settings(max_examples=500, deadline=None)
@given(st.text(st.sampled_from("0123456789 --x.\u0663\u0967"), max_size=40))
def test_card_screen_never_hides_a_card(text: str) -> None:
    """Digit runs with separators, ASCII and other scripts' digits (which ``\\d`` takes)."""
    redactor = Redactor(["credit_card"])
    assert redactor.text(text) == redact_pattern_by_pattern(text, ["credit_card"])


def test_planted_cards_are_masked_with_their_separators() -> None:
    redactor = Redactor(["credit_card", "email"])
    for card in ("4111111111111111", "4111 1111 1111 1111", "4111-1111-1111-1111",
                 "4-1-1-1-1-1-1-1-1-1-1-1-1-1-1-1", "378282246310005"):
        text = f"paid with {card}, thanks"
        assert redactor.text(text) == "paid with [CREDIT_CARD], thanks"
    assert redactor.text("order 1234 5678 9012 3456") == "order 1234 5678 9012 3456"  # no Luhn


def test_cache_stays_bounded_and_answers_like_a_fresh_redactor() -> None:
    redactor = Redactor(["api_key", "credit_card", "email"])
    fresh = Redactor(["api_key", "credit_card", "email"])
    lookup = redactor.text_function
    for i in range(_CACHE_ENTRIES * 2 + 7):
        text = f"mail user{i}@example.com about order {i}"
        assert lookup(text) == redactor.text(text) == f"mail [EMAIL] about order {i}"
        assert len(redactor._cache) <= _CACHE_ENTRIES
    long_text = "sk-ant-api03-" + "a1B2" * 6 + " " + "x" * _CACHED_CHARS
    assert redactor.text(long_text) == fresh.text(long_text)
    assert long_text not in redactor._cache  # too long to be remembered
    assert redactor.text("plain") == "plain" and redactor._cache["plain"] == "plain"
