"""Source-grounded checks: dates, numbers and quotes checked against the input document."""

from __future__ import annotations

import calendar
import random
from typing import Any

from llmvigil.core.checks import build_check
from llmvigil.core.checks.grounding import extract_numbers, extract_quotes, number_keys
from llmvigil.core.model import Alert, Span, new_trace_id
from llmvigil.core.monitors.checks import CheckMonitor

T0 = 1_700_000_000 * 1_000_000_000
DOC = ("Contract no. 4471 signed in Lyon on 04/03/2024 between ACME SA and Widgets Ltd. "
       "The first payment of 1,234.50 EUR is due on 15/04/2024, the balance of 12,000 EUR "
       "on 2024-06-30. The supplier \u201cshall deliver within  30 days\u201d of the order.")
GROUNDED_DATES = {"name": "dates_in_source", "type": "grounded_dates", "source_field": "document"}


def check(**spec: Any) -> Any:
    return build_check({"name": "g", **spec})


# -- dates -------------------------------------------------------------------------------


def test_grounded_dates_catch_a_transposed_date_that_is_still_valid() -> None:
    grounded = build_check(GROUNDED_DATES)
    valid = build_check({"name": "v", "type": "valid_date", "format": "%d/%m/%Y"})
    source = {"document": DOC}
    assert grounded("signed 04/03/2024", source) is True
    transposed = "signed 03/04/2024"  # 3 April: a real date, but not the one signed
    assert valid(transposed) is True
    assert grounded(transposed, source) is False
    assert grounded("signed 2024-03-04, due 15/04/2024, balance 30/06/2024", source) is True
    assert grounded("due 04/15/2024", source) is False  # impossible under DD/MM
    assert grounded("no dates here", source) is None
    assert check(**GROUNDED_DATES, require=True)("no dates here", source) is False


def test_locales_and_output_formats() -> None:
    us = {"document": "Invoice dated 04/03/2024 (April 3)."}
    mdy = check(type="grounded_dates", source_field="document", locale="mdy")
    assert mdy("2024-04-03", us) is True and mdy("2024-03-04", us) is False
    # a source in DD/MM, an output in MM/DD: declare both
    cross = check(type="grounded_dates", source_field="document", output_locale="mdy")
    assert cross("03/04/2024", {"document": DOC}) is True
    iso = check(type="grounded_dates", source_field="document", output_format="%Y-%m-%d")
    assert iso({"date": "2024-03-04"}, {"document": DOC}) is True
    assert iso({"date": "2024-04-03"}, {"document": DOC}) is False
    no_year = check(type="grounded_dates", source_field="document", output_format="%d %B")
    assert no_year("due 15 April", {"document": DOC}) is True
    assert no_year("due 16 April", {"document": DOC}) is False


def test_missing_or_truncated_sources() -> None:
    grounded = build_check(GROUNDED_DATES)
    assert grounded("04/03/2024", {"other": DOC}) is None
    assert grounded("04/03/2024", None) is None
    cut = {"document": DOC[:60] + "...[truncated 900 chars]"}
    assert grounded("04/03/2024", cut) is True  # found before the cut
    assert grounded("01/01/2030", cut) is None  # may be after the cut: unknown
    nested = check(type="grounded_dates", source_field="messages[-1].content")
    msgs = {"messages": [{"role": "system", "content": "x"}, {"role": "user", "content": DOC}]}
    assert nested("04/03/2024", msgs) is True and nested("05/03/2024", msgs) is False


def _date_output(rng: random.Random) -> tuple[str, str, int, int]:
    year, month = rng.randint(2015, 2025), rng.randint(1, 12)
    day = rng.randint(1, calendar.monthrange(year, month)[1])
    return f"Signed on {day:02d}/{month:02d}/{year} in Paris.", f"{year}", day, month


def test_grounding_catches_every_transposition_validity_only_the_impossible_ones() -> None:
    rng = random.Random(4)
    grounded = build_check(GROUNDED_DATES)
    valid = build_check({"name": "v", "type": "valid_date", "format": "%d/%m/%Y"})
    caught_valid = caught_grounded = expected_valid = changed = 0
    for _ in range(2000):
        doc, year, day, month = _date_output(rng)
        output = {"date": f"{month:02d}/{day:02d}/{year}"}  # transposed
        if day == month:
            assert grounded(output, {"document": doc}) is True  # nothing changed
            continue
        changed += 1
        expected_valid += day > 12  # month field > 12: impossible
        caught_valid += valid(output) is False
        caught_grounded += grounded(output, {"document": doc}) is False
    assert caught_grounded == changed
    assert caught_valid == expected_valid
    share_still_valid = 1 - caught_valid / changed
    assert 0.3 < share_still_valid < 0.5  # days 1-12 of the month stay valid dates


def test_monitor_alerts_on_valid_transpositions_only_through_grounding() -> None:
    rng = random.Random(5)
    mon = CheckMonitor({"baseline_size": 1000, "window": 500, "alpha": 0.01,
                        "features": {"extract": [
                            {"name": "date_valid", "type": "valid_date", "format": "%d/%m/%Y",
                             "field": "date"},
                            {**GROUNDED_DATES, "field": "date"}]}})

    def out(transposed: bool) -> Span:
        doc, year, day, month = _date_output(rng)
        if transposed:
            day, month = rng.randint(1, 12), rng.randint(1, 12)
            while day == month:
                month = rng.randint(1, 12)
            doc = f"Signed on {day:02d}/{month:02d}/{year}."
            day, month = month, day  # still valid: both parts <= 12
        return Span(trace_id=new_trace_id(), name="extract", feature="extract",
                    input={"document": doc}, output={"date": f"{day:02d}/{month:02d}/{year}"},
                    start_ns=T0, end_ns=T0)

    for _ in range(1000):
        mon.observe(out(False))
    mon.tick(T0)
    for i in range(500):
        mon.observe(out(i % 33 == 0))  # 3% transposed, all still valid dates
    fired = {a.labels["check"]: a for a in mon.tick(T0 + 1) if isinstance(a, Alert)}
    assert set(fired) == {"dates_in_source"}
    assert fired["dates_in_source"].labels["n"] == "500"


# -- numbers ---------------------------------------------------------------------------------


def test_number_extraction_and_normalisation() -> None:
    assert [str(n) for n in extract_numbers("1,234.50 EUR, -3, 10% on 2024-01-01, 007")] == [
        "1234.5", "3", "10", "7"]
    assert number_keys("1.234,50 et 3,5", ",") == ["1234.5", "3.5"]
    assert number_keys("version 3,5 or 12,000", ".") == ["12000"]  # 3,5 is no '.' number
    assert number_keys("-5 and 5", absolute=False) == ["-5", "5"]
    assert number_keys("04/03/2024", ignore_dates=False) == ["4", "3", "2024"]


def test_grounded_numbers() -> None:
    numbers = check(type="grounded_numbers", source_field="document")
    source = {"document": DOC}
    assert numbers({"amount": 1234.5, "balance": "12000"}, source) is True
    assert numbers("first payment 1234.50, contract 4471", source) is True
    assert numbers("first payment 1243.50", source) is False
    assert numbers("signed 04/03/2024", source) is None  # date digits are not numbers
    assert numbers("signed 05/03/2024", source) is None
    big = check(type="grounded_numbers", source_field="document", min_digits=3)
    assert big("item 7 of 1,234.50", source) is True  # 7 is too short to check
    comma = check(type="grounded_numbers", source_field="document", decimal=",")
    assert comma("3,5 kg", {"document": "poids: 3,5 kg"}) is True
    assert comma("3,6 kg", {"document": "poids: 3,5 kg"}) is False
    cut = {"document": "total 100 ...[truncated 500 chars]"}
    assert numbers("100", cut) is True and numbers("250", cut) is None


# -- quotes ------------------------------------------------------------------------------------


def test_grounded_quotes() -> None:
    quotes = check(type="grounded_quotes", source_field="document")
    source = {"document": DOC}
    assert quotes('The supplier agreed to "shall deliver within 30 days".', source) is True
    assert quotes("It says \u201cshall deliver within 30 days\u201d.", source) is True
    assert quotes('It says "shall deliver within 20 days".', source) is False
    assert quotes("No quotes at all.", source) is None
    folded = check(type="grounded_quotes", source_field="document", ignore_case=True)
    assert folded('"SHALL DELIVER"', source) is True and quotes('"SHALL DELIVER"', source) is False
    field = check(type="grounded_quotes", source_field="document", field="evidence")
    assert field({"evidence": ["signed in Lyon", "ACME SA"]}, source) is True
    assert field({"evidence": ["signed in Paris"]}, source) is False
    assert field({"other": 1}, source) is None
    assert extract_quotes('"a" and "bcd" and \u201cef\u201d', min_chars=2) == ["bcd", "ef"]
