"""A local stand-in for a streaming LLM API: realistic timing, no network, no account.

:class:`FakeLLM` answers the demo service's three kinds of prompt (extract a date,
summarise, classify) by reading the document in the prompt, and streams the answer
in chunks the way a provider does: a time to first token that is log-normal and grows
with the prompt's length (prefill), then gamma-distributed gaps between tokens with
rare stalls. ``speed`` scales every wait (0.1 runs ten times faster than real time).

It serves one model *release* at a time. :meth:`FakeLLM.update` switches, silently,
to a release that reads DD/MM dates as MM/DD in a share of its answers
(``transpose_rate``): the model name clients request stays the same, and so does the
provider-reported id unless ``fingerprint_leak`` is set. Latency, token counts and
error rate do not change.

Every call draws its randomness from ``(seed, key)``, so a given request gets the same
answer and timing whatever the scheduling of concurrent calls.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

__all__ = ["Completion", "FakeLLM", "Release", "Timing", "count_tokens", "transpose"]

_DATE = re.compile(r"\b(\d{2})/(\d{2})/(\d{4})\b")
_DOCUMENT = re.compile(r"<document>\n?(.*?)\n?</document>", re.DOTALL)
_EXTRACT = re.compile(r'Extract the date labelled "([^"]{1,60})"', re.IGNORECASE)
_AFTER = re.compile(r"(\d{1,3}) days after the (.{1,40}?)(?:\.|$)", re.IGNORECASE)
_LABELS = ("invoice", "contract", "letter", "receipt")


def count_tokens(text: str) -> int:
    """About four characters a token, as for English text with common tokenizers."""
    return max(1, (len(text) + 3) // 4)


def transpose(text: str) -> str:
    """``text`` with every DD/MM/YYYY date written MM/DD/YYYY."""
    return _DATE.sub(lambda m: f"{m.group(2)}/{m.group(1)}/{m.group(3)}", text)


def _unit(*parts: object) -> float:
    """A deterministic uniform number in [0, 1) from ``parts``."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass(frozen=True)
class Release:
    """One release of the served model."""

    version: str
    #: The id the provider reports back for a requested model name.
    response_suffix: str
    #: Share of answers whose DD/MM/YYYY dates come back as MM/DD/YYYY.
    transpose_rate: float = 0.0


@dataclass(frozen=True)
class Timing:
    """Real-time latency profile (before scaling by ``speed``)."""

    ttft_median_s: float = 0.45
    ttft_sigma: float = 0.35
    prefill_tokens_per_s: float = 40_000.0
    tbt_mean_s: float = 0.02
    tbt_shape: float = 2.0
    stall_probability: float = 0.002
    stall_s: float = 1.2
    tokens_per_chunk: tuple[int, int] = (2, 5)


@dataclass(frozen=True)
class Completion:
    """A finished call: the text and what the provider reports about it."""

    text: str
    model: str
    response_model: str
    input_tokens: int
    output_tokens: int
    release: str
    transposed: bool


class FakeLLM:
    """A streaming model that answers the demo's prompts, with a switchable release.

    Args:
        seed: makes every call's answer and timing reproducible (with its ``key``).
        speed: time scale of every wait (1.0 is real time).
        transpose_rate: the share of answers the updated release transposes.
        fingerprint_leak: the updated release reports a new model id.
        base_error_rate: share of documents the model always gets wrong (it answers
            with another date of the document): deterministic, as at temperature 0.
    """

    def __init__(self, *, seed: int, speed: float = 1.0, transpose_rate: float = 0.05,
                 fingerprint_leak: bool = False, base_error_rate: float = 0.005,
                 timing: Timing | None = None) -> None:
        if speed <= 0:
            raise ValueError("speed must be positive")
        self.seed = seed
        self.speed = speed
        self.timing = timing or Timing()
        self.base_error_rate = base_error_rate
        self.releases = (
            Release("2025-10-01", "20251001"),
            Release("2026-02-11", "20260211" if fingerprint_leak else "20251001",
                    transpose_rate),
        )
        self._release = self.releases[0]
        self.calls = 0

    @property
    def release(self) -> Release:
        """The release serving new calls."""
        return self._release

    @property
    def updated(self) -> bool:
        """Whether the silent update happened."""
        return self._release is self.releases[1]

    def update(self) -> None:
        """Switch new calls to the updated release (calls in flight keep theirs)."""
        self._release = self.releases[1]

    # -- answering ---------------------------------------------------------------------

    def answer(self, prompt: str, *, key: str, release: Release | None = None) -> tuple[str, bool]:
        """The text the model answers to ``prompt`` and whether it transposed dates."""
        release = release or self._release
        match = _DOCUMENT.findall(prompt)
        document = match[-1] if match else prompt
        instruction = prompt.split("<document>", 1)[0]
        if "Summarise" in instruction:
            text = _summary(document)
        elif "Classify" in instruction:
            text = _label(document)
        else:
            wanted = _EXTRACT.search(instruction)
            field = wanted.group(1) if wanted else "date"
            reference = document.lstrip().split("\n", 1)[0].split(" ")[-1]
            text = json.dumps({"document": reference, "field": field,
                               "date": self._extract(document, field)})
        transposed = False
        if release.transpose_rate and _DATE.search(text) and \
                _unit(self.seed, key, "transpose") < release.transpose_rate:
            swapped = transpose(text)
            transposed = swapped != text
            text = swapped
        return text, transposed

    def _extract(self, document: str, label: str) -> str | None:
        lines = document.splitlines()
        dates = _DATE.findall(document)
        found: str | None = None
        for line in lines:
            head, _, rest = line.partition(":")
            if head.strip().lower() == label.lower():
                m = _DATE.search(rest)
                found = m.group(0) if m else _computed(rest, document)
                break
        if found is None and dates:
            found = "/".join(dates[0])
        if found is not None and len(dates) > 1 and \
                _unit("hard", document) < self.base_error_rate:
            found = "/".join(dates[0]) if found != "/".join(dates[0]) else "/".join(dates[1])
        return found

    # -- streaming ----------------------------------------------------------------------

    async def stream(self, model: str, prompt: str, *, key: str
                     ) -> AsyncIterator[str | Completion]:
        """Stream the answer to ``prompt`` in text chunks, then one :class:`Completion`."""
        self.calls += 1
        release = self._release
        rng = random.Random(f"{self.seed}:{key}")
        text, transposed = self.answer(prompt, key=key, release=release)
        t = self.timing
        input_tokens = count_tokens(prompt) + 12
        ttft = (rng.lognormvariate(math.log(t.ttft_median_s), t.ttft_sigma)
                + input_tokens / t.prefill_tokens_per_s)
        pieces = _tokens(text)
        start = time.perf_counter()
        due = ttft
        i = 0
        while i < len(pieces):
            take = rng.randint(*t.tokens_per_chunk)
            chunk = "".join(pieces[i:i + take])
            if i:
                for _ in range(min(take, len(pieces) - i)):
                    due += rng.gammavariate(t.tbt_shape, t.tbt_mean_s / t.tbt_shape)
                if rng.random() < t.stall_probability:
                    due += t.stall_s
            i += take
            await self._wait_until(start, due)
            yield chunk
        yield Completion(text=text, model=model,
                         response_model=f"{model}-{release.response_suffix}",
                         input_tokens=input_tokens, output_tokens=len(pieces),
                         release=release.version, transposed=transposed)

    async def _wait_until(self, start: float, due_s: float) -> None:
        # Waits are scheduled against the start so short gaps add up without drift,
        # and gaps below a millisecond are not slept (the event loop cannot honour them).
        delay = start + due_s * self.speed - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)

    async def complete(self, model: str, prompt: str, *, key: str) -> Completion:
        """The whole answer at once (the non-streaming call)."""
        done: Completion | None = None
        async for item in self.stream(model, prompt, key=key):
            if isinstance(item, Completion):
                done = item
        assert done is not None
        return done


def _tokens(text: str) -> list[str]:
    """``text`` in pieces of about four characters (what the stream counts as tokens)."""
    return [text[i:i + 4] for i in range(0, len(text), 4)] or [""]


def _summary(document: str) -> str:
    body = [line for line in document.splitlines()[1:] if line and ":" not in line[:30]]
    sentences = re.split(r"(?<=\.)\s+", " ".join(body))
    return " ".join(sentences[:2]).strip() or document[:200]


def _label(document: str) -> str:
    first = document.lstrip().split("\n", 1)[0].lower()
    for label in _LABELS:
        if label in first:
            return label
    return "letter"


def _computed(rest: str, document: str) -> str | None:
    """A date the document states relative to another one ("30 days after the ...")."""
    m = _AFTER.search(rest)
    if not m:
        return None
    days, anchor = int(m.group(1)), m.group(2).strip().lower()
    for line in document.splitlines():
        head, _, value = line.partition(":")
        if head.strip().lower() == anchor:
            d = _DATE.search(value)
            if d:
                base = dt.date(int(d.group(3)), int(d.group(2)), int(d.group(1)))
                return (base + dt.timedelta(days=days)).strftime("%d/%m/%Y")
    return None
