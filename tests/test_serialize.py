"""to_safe's shortcut for lists of string dicts gives exactly what the general walk gives."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llmvigil.core.redaction import Redactor
from llmvigil.core.serialize import MASKED_VALUE, Limits, _rows, _Walk, to_safe

_REDACTOR = Redactor(["api_key", "credit_card", "email"], keys=["authorization", "api_key"])


def _walk(value: Any, limits: Limits, text: Any = None, masked: Any = ()) -> Any:
    """The general walk, as to_safe runs it when no shortcut applies."""
    try:
        return _Walk(limits, text, masked).convert(value, 0)
    except Exception as exc:
        return f"<unserialisable {type(value).__name__}: {type(exc).__name__}>"


def _both(value: Any, limits: Limits = Limits(), redact: bool = True) -> Any:
    text = _REDACTOR.text if redact else None
    masked = _REDACTOR.masked_keys if redact else ()
    fast = to_safe(value, limits, text=text, masked_keys=masked)
    assert fast == _walk(value, limits, text, masked)
    return fast


_MESSAGES = [{"role": "system", "content": "Extract the date."},
             {"role": "user", "content": "mail jane.doe@example.com, card 4111 1111 1111 1111"}]


def test_chat_messages_take_the_shortcut_and_are_redacted() -> None:
    limits = Limits()
    assert _rows(_MESSAGES, limits, _REDACTOR.text, _REDACTOR.masked_keys) is not None
    out = _both(_MESSAGES)
    assert out[1]["content"] == "mail [EMAIL], card [CREDIT_CARD]"
    assert out[0] is not _MESSAGES[0]  # a copy, never the caller's dict
    assert _both(_MESSAGES, redact=False) == _MESSAGES
    assert _both([]) == [] and _both([{}]) == [{}]


@pytest.mark.parametrize("value", [
    [{"role": "user", "content": None}],                       # a value that is not a str
    [{"role": "user", "content": 3}, {"role": "x"}],
    [{"role": "user", "content": ["nested", "list"]}],
    [{"role": "user", "content": "x" * 41}],                    # a string over max_chars
    [{"k" * 41: "v"}],                                          # a key over max_chars
    [{"role": "usér", "content": "café"}],                      # non-ASCII value
    [{"rôle": "user"}],                                         # non-ASCII key
    [{"role": "\ud800"}],                                       # a lone surrogate
    [{1: "one"}],                                               # a key that is not a str
    [{"a": "1", "b": "2", "c": "3", "d": "4"}],                 # more items than max_items
    [{"a": "1"}] * 4,                                           # more dicts than max_items
    [{"a": "1"}, "plain string"],                               # an item that is not a dict
    [{"a": "1"}, ["x"]],
])
def test_near_misses_fall_back_to_the_walk(value: Any) -> None:
    limits = Limits(max_chars=40, max_items=3)
    assert _rows(value, limits, _REDACTOR.text, _REDACTOR.masked_keys) is None
    _both(value, limits)
    _both(value, limits, redact=False)


def test_masked_keys_are_masked_whatever_their_value() -> None:
    value = [{"Authorization": "Bearer sk-ant-api03-" + "a1B2" * 6, "note": "hi"},
             {"api_key": object(), "x": "y"}, {"API_KEY": [1, {2: 3}]}]
    out = _both(value, Limits(max_chars=40, max_items=3))
    assert out == [{"Authorization": MASKED_VALUE, "note": "hi"},
                   {"api_key": MASKED_VALUE, "x": "y"}, {"API_KEY": MASKED_VALUE}]
    assert _both(value[:2], redact=False)[1]["api_key"].startswith("<object object at")


def test_limits_that_bite_fall_back_to_the_walk() -> None:
    rows = [{"a": "1", "b": "2"}] * 3
    for limits in (Limits(max_depth=1), Limits(max_depth=0), Limits(max_nodes=5),
                   Limits(max_nodes=0), Limits(max_items=2), Limits(max_chars=0)):
        out = _both(rows, limits)
        assert out != rows
    assert _both(rows, Limits(max_nodes=10)) == rows  # 1 list + 3 dicts + 6 strings


def test_a_failing_text_function_gives_the_walks_placeholder() -> None:
    def text(s: str) -> str:
        if s == "boom":
            raise ValueError(s)
        return s.upper()

    value = [{"a": "x"}, {"b": "boom"}]
    assert to_safe(value, text=text) == _walk(value, Limits(), text) == [
        {"a": "X"}, "<unserialisable dict: ValueError>"]


def test_shared_dicts_are_not_cycles() -> None:
    row = {"role": "user", "content": "hi"}
    assert _both([row, row, row]) == [row, row, row]


_ascii = st.text(st.characters(max_codepoint=0x7F), max_size=12)
_short = _ascii | st.text(max_size=6) | st.sampled_from(
    ["jane.doe@example.com", "4111 1111 1111 1111", "Authorization", "api_key", "x" * 20])
_leaf = _short | st.none() | st.integers() | st.floats() | st.binary(max_size=4)
_rows_like = st.lists(
    st.dictionaries(_short, _short | _leaf, max_size=5)
    | st.dictionaries(st.sampled_from(["role", "content", "name", "API_KEY"]), _short, max_size=3)
    | _leaf,
    max_size=5)
_string_rows = st.lists(st.dictionaries(
    _ascii | st.sampled_from(["role", "Authorization", "api_key"]),
    _ascii | st.sampled_from(["jane.doe@example.com", "4111 1111 1111 1111", "x" * 20]),
    max_size=4), max_size=4)


@settings(max_examples=300, deadline=None)
@given(_rows_like, st.integers(1, 4), st.sampled_from([1, 8, 4096]), st.integers(0, 30))
def test_shortcut_equals_walk_on_random_lists(value: list[Any], depth: int, chars: int,
                                              nodes: int) -> None:
    limits = Limits(max_chars=chars, max_depth=depth, max_items=4, max_nodes=nodes)
    for redact in (True, False):
        _both(value, limits, redact)


@settings(max_examples=300, deadline=None)
@given(_string_rows, st.sampled_from([2, 8]), st.sampled_from([16, 4096]),
       st.sampled_from([12, 10_000]))
def test_shortcut_equals_walk_on_string_rows(value: list[Any], depth: int, chars: int,
                                             nodes: int) -> None:
    limits = Limits(max_chars=chars, max_depth=depth, max_items=4, max_nodes=nodes)
    for redact in (True, False):
        _both(value, limits, redact)
