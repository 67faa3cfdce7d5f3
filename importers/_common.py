"""What the vendor importers share: read errors, value parsers, read options, problem
counting and retried page reads.

Each importer (:mod:`~llmvigil.importers.langsmith`, :mod:`~llmvigil.importers.langfuse`,
:mod:`~llmvigil.importers.phoenix`, :mod:`~llmvigil.importers.helicone`,
:mod:`~llmvigil.importers.wandb`) maps its vendor's records on its own; the pieces
here are those that were the same logic in each of them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, TypeVar

from ..core.errors import InputFileError
from ..core.migrate import record_key, record_time
from ..plugins.types import RECORD_KINDS

__all__ = [
    "RETRY_STATUSES",
    "BadRecord",
    "Failure",
    "ImporterReadError",
    "PagedReadError",
    "Problems",
    "checked_str",
    "counts_summary",
    "finite_number",
    "http_status_of",
    "in_window",
    "is_transient",
    "iso_time_ns",
    "iso_time_us_ns",
    "json_object",
    "limited",
    "page_place",
    "past_resume_point",
    "resume_since",
    "setting",
    "str_or_none",
    "token_count",
    "wanted_kinds",
    "with_retries",
]

T = TypeVar("T")

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
#: HTTP statuses worth retrying besides 5xx (timeout, too early, too many requests).
RETRY_STATUSES = frozenset((408, 425, 429))
#: Example messages logged per problem reason (all are counted).
EXAMPLES_PER_REASON = 5
_FRACTION = re.compile(r"\.(\d+)")


# -- errors -------------------------------------------------------------------------------


class ImporterReadError(InputFileError):
    """Reading a vendor failed for good mid-stream (after retries, or a permanent error).

    What was read before it was yielded already, so a migration with a checkpoint
    resumes after it. Each importer raises its own subclass, which says where it stopped.
    """


class PagedReadError(ImporterReadError):
    """A read error of a paged HTTP API: the message names the request, the page and
    its cursor (or offset).

    Attributes:
        request: ``METHOD path`` of the failed request.
        page: the page's number (1 for the first; 0 for a request before any page).
        cursor: the page's cursor or offset, None for the first page.
        status: the HTTP status, None when there was no answer.
        records: how many records were read before it.
    """

    def __init__(self, message: str, *, request: str, page: int, cursor: str | None,
                 status: int | None, records: int) -> None:
        super().__init__(message)
        self.request = request
        self.page = page
        self.cursor = cursor
        self.status = status
        self.records = records


class BadRecord(Exception):
    """A record that cannot be mapped; the message is the reason, without the id."""


# -- value parsers (they raise BadRecord naming ``what``) ------------------------------------


def iso_time_ns(value: Any, what: str) -> int:
    """An ISO 8601 time (a datetime, or a string with up to nanoseconds) in epoch ns,
    exact to the nanosecond."""
    if value is None or value == "":
        raise BadRecord(f"{what} is missing")
    if isinstance(value, datetime):
        dt, extra_ns = value, 0
    elif isinstance(value, str):
        text = value.strip().replace("Z", "+00:00").replace("z", "+00:00")
        extra_ns = 0
        m = _FRACTION.search(text)
        if m is not None:  # keep digits past the microsecond that datetime drops
            digits = m.group(1)
            extra_ns = int((digits + "000000000")[:9]) % 1000
            text = text[:m.start()] + "." + (digits + "000000")[:6] + text[m.end():]
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise BadRecord(f"{what} is not an ISO 8601 time ({value!r})") from None
    else:
        raise BadRecord(f"{what} is not an ISO 8601 time ({value!r})")
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    delta = dt - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 10**9 + delta.microseconds * 1000 + extra_ns


def iso_time_us_ns(value: Any, what: str, *, clickhouse: bool = False,
                   described: str = "an ISO 8601 time") -> int:
    """An ISO 8601 time string in epoch ns, truncated to the microsecond; naive times
    are UTC. ``clickhouse`` also takes ClickHouse's ``YYYY-MM-DD hh:mm:ss.sss`` (and
    counts a blank string as missing); ``described`` names the format in messages."""
    if not isinstance(value, str) or not (value.strip() if clickhouse else value):
        raise BadRecord(f"{what} is missing" if value in (None, "") else
                        f"{what} is not {described} ({value!r})")
    text = value.strip()
    if clickhouse:
        text = text.replace(" ", "T", 1)
    text = text.replace("Z", "+00:00")
    # Python 3.10 parses only 3 or 6 fraction digits.
    text = _FRACTION.sub(lambda m: "." + (m.group(1) + "000000")[:6], text, count=1)
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise BadRecord(f"{what} is not {described} ({value!r})") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return (dt - EPOCH) // timedelta(microseconds=1) * 1000


def str_or_none(value: Any) -> str | None:
    """``str(value)``, None for null or an empty string."""
    return None if value is None or value == "" else str(value)


def checked_str(value: Any, what: str) -> str | None:
    """``str(value)``, None for null or an empty string; a JSON object or array is bad."""
    if value is None or value == "":
        return None
    if isinstance(value, (dict, list)):
        raise BadRecord(f"{what} is not a string ({type(value).__name__})")
    return str(value)


def finite_number(value: Any, what: str) -> float | None:
    """A finite number from a number, a boolean or a numeric string; None for null/""."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise BadRecord(f"{what} is not a number ({value!r})") from None
    if not math.isfinite(number):
        raise BadRecord(f"{what} is not a finite number ({value!r})")
    return number


def token_count(value: Any, what: str) -> int:
    """A token count: a whole non-negative JSON number; 0 for null."""
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or value < 0 or value != int(value):
        raise BadRecord(f"{what} is not a token count ({value!r})")
    return int(value)


def json_object(value: Any, what: str) -> dict[str, Any]:
    """A JSON object (a dict, or a string holding one) with string keys; ``{}`` for null."""
    if value is None:
        return {}
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRecord(f"{what} is malformed JSON") from None
    if not isinstance(value, dict):
        raise BadRecord(f"{what} is not a JSON object")
    return {str(k): v for k, v in value.items()}


# -- settings and read options -------------------------------------------------------------


def setting(settings: Mapping[str, Any], key: str, *env: str) -> str | None:
    """``settings[key]`` as text, else the first of the ``env`` variables set (stripped),
    else None; an empty value counts as unset."""
    value = settings.get(key)
    if value not in (None, ""):
        return str(value)
    for name in env:
        found = os.environ.get(name, "").strip()
        if found:
            return found
    return None


def wanted_kinds(options: Mapping[str, Any]) -> set[str]:
    """The record kinds a read asks for (``kinds``; all of them when not given)."""
    return set(options.get("kinds") or RECORD_KINDS)


def resume_since(options: Mapping[str, Any], kinds: Collection[str]) -> int | None:
    """The earliest time (ns) wanted of ``kinds``: ``since_ns``, raised to each kind's
    resume point (``after``); None when some kind is wanted from the start."""
    since = options.get("since_ns")
    after = options.get("after") or {}
    bounds = []
    for kind in kinds:
        mark = after.get(kind)
        bound = since if mark is None else max(since or 0, int(mark[0]))
        if bound is None:
            return None
        bounds.append(bound)
    return min(bounds) if bounds else since


def past_resume_point(record: Any, mark: Any) -> bool:
    """Whether ``record`` comes after the resume point ``mark`` (``after[kind]``, a
    ``(time, id)`` key), or there is none."""
    return mark is None or record_key(record) > tuple(mark)


def in_window(record: Any, options: Mapping[str, Any]) -> bool:
    """Whether ``record``'s time is in ``[since_ns, until_ns)``."""
    t = record_time(record)
    since, until = options.get("since_ns"), options.get("until_ns")
    return (since is None or t >= since) and (until is None or t < until)


def limited(total: int, options: Mapping[str, Any]) -> int:
    """``total`` capped at the read's ``limit``."""
    limit = options.get("limit")
    return min(total, int(limit)) if limit is not None else total


# -- problems -------------------------------------------------------------------------------


class Problems:
    """Counts problems (skipped or incomplete records) by reason into ``counts`` and logs
    the first :data:`EXAMPLES_PER_REASON` of each reason to ``log`` as
    ``"<prefix>: <where> <what>: <reason>"``.

    With ``once_per_record``, a record met again for the same reason (same ``where``)
    is counted once.
    """

    def __init__(self, log: logging.Logger, prefix: str, what: str,
                 counts: Counter[str] | None = None, *, once_per_record: bool = False) -> None:
        self.log = log
        self.prefix = prefix
        self.what = what
        self.counts: Counter[str] = Counter() if counts is None else counts
        self._seen: set[tuple[str, str]] | None = set() if once_per_record else None

    def add(self, reason: str, where: str) -> bool:
        """Count one; False (and nothing counted) when this record was already counted
        for this reason."""
        if self._seen is not None:
            if (reason, where) in self._seen:
                return False
            if len(self._seen) < 100_000:
                self._seen.add((reason, where))
        self.counts[reason] += 1
        n = self.counts[reason]
        if n <= EXAMPLES_PER_REASON:
            self.log.warning("%s: %s %s: %s", self.prefix, where, self.what, reason)
        if n == EXAMPLES_PER_REASON:
            self.log.warning("%s: further %s for %r are counted, not logged",
                             self.prefix, self.what, reason)
        return True


def counts_summary(counts: Counter[str]) -> str:
    """``"3 reason; 1 other reason"``, most frequent first."""
    return "; ".join(f"{n} {reason}" for reason, n in counts.most_common())


# -- retried page reads ---------------------------------------------------------------------


def is_transient(status: int | None) -> bool:
    """Whether a failure is worth retrying: no answer, 408/425/429 or a 5xx."""
    return status is None or status in RETRY_STATUSES or status >= 500


def http_status_of(exc: BaseException) -> int | None:
    """The HTTP status behind an SDK exception (its ``response.status_code``), found along
    its cause chain; None when no response is attached."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        status = getattr(getattr(cur, "response", None), "status_code", None)
        if isinstance(status, int):
            return status
        cur = cur.__cause__ or cur.__context__
    return None


def page_place(cursor: str | None) -> str:
    """How a read error names the page's cursor: ``cursor 'x'`` or ``first page``."""
    return f"cursor {cursor!r}" if cursor else "first page"


@dataclass
class Failure:
    """One failed attempt at a request: what went wrong, the HTTP status (None when
    there was no answer), whether to try again, and the least wait the server asked."""

    problem: str
    status: int | None = None
    retryable: bool = True
    retry_after: float = 0.0


def with_retries(attempt: Callable[[], T | Failure], *, max_retries: int, backoff_s: float,
                 give_up: Callable[[Failure, str], BaseException]) -> T:
    """``attempt()``'s result, calling it up to ``1 + max_retries`` times while it returns
    a retryable :class:`Failure`, waiting ``backoff_s`` (doubled each time, at most 30 s;
    longer when the server asked) in between.

    Raises:
        the exception ``give_up(failure, tries)`` builds, for the last failure; ``tries``
        is ``" after N attempts"`` when there were retries, else ``""``.
    """
    delay = backoff_s
    for n in range(1 + max_retries):
        result = attempt()
        if not isinstance(result, Failure):
            return result
        if not result.retryable or n == max_retries:
            raise give_up(result, f" after {n + 1} attempts" if n else "")
        time.sleep(max(delay, result.retry_after))
        delay = min(delay * 2, 30.0)
    raise AssertionError("unreachable")
