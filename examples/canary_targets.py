"""Example canary targets: a stand-in for a document-extraction service.

``extract_invoice`` reads the European date (DD/MM/YYYY) and the total of an
invoice text and answers JSON, like an LLM extraction prompt would. Set
``CANARY_SILENT_UPDATE=1`` to simulate the silent model update of the llmvigil
story: dates come back transposed (MM/DD read), everything else unchanged.

    vigil canary run examples/canaries.yaml
    CANARY_SILENT_UPDATE=1 vigil canary run examples/canaries.yaml   # changes caught
    vigil eval examples/golden.jsonl --target canary_targets:extract_invoice \\
        --scorer json_fields
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
from typing import Any

_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})/(\d{4})\b")
_TOTAL = re.compile(r"\btotal:?\s+(\d+(?:[.,]\d+)?)", re.IGNORECASE)


def _updated() -> bool:
    return os.environ.get("CANARY_SILENT_UPDATE", "") not in ("", "0")


def extract_invoice(prompt: str) -> str:
    """Extract ``{"date": "YYYY-MM-DD", "total": number, "currency": "EUR"}`` as JSON."""
    date = _DATE.search(prompt)
    total = _TOTAL.search(prompt)
    result: dict[str, Any] = {"date": None, "total": None, "currency": "EUR"}
    if date is not None:
        day, month, year = date.groups()
        if _updated():
            day, month = month, day  # the silent update reads DD/MM as MM/DD
        result["date"] = f"{year}-{int(month):02d}-{int(day):02d}"
    if total is not None:
        result["total"] = float(total.group(1).replace(",", "."))
    return json.dumps(result)


async def summarise(prompt: str) -> str:
    """An async target: a one-line 'summary' (the first sentence)."""
    await asyncio.sleep(0.01)
    text = prompt.split(":", 1)[-1].strip()
    return text.split(". ")[0].rstrip(".") + "."


def classify(messages: list[dict[str, Any]]) -> str:
    """A chat target: label the last user message as ``invoice``, ``complaint`` or ``other``."""
    last = next(m["content"] for m in reversed(messages) if m["role"] == "user")
    text = str(last).lower()
    if "invoice" in text or "payment" in text:
        return "invoice"
    if "refund" in text or "broken" in text:
        return "complaint"
    return "other"


def valid_iso_date(output: str) -> tuple[bool, str]:
    """A predicate: the ``date`` field is a real calendar date."""
    value = json.loads(output).get("date")
    try:
        dt.date.fromisoformat(str(value))
    except ValueError:
        return False, f"{value!r} is not a calendar date"
    return True, ""


def same_date(output: str, reference: dict[str, Any]) -> float:
    """A custom eval scorer: 1 when the extracted date is the reference date."""
    try:
        return float(json.loads(output).get("date") == reference.get("date"))
    except (ValueError, AttributeError):
        return 0.0
