"""Shared pieces of the operational monitors: rolling-window counters and settings parsing.

:class:`RollingCounters` keeps, for each key (a feature, a (feature, category)
pair...), the sums of a fixed set of fields over the last few time buckets. Memory is
a fixed ring per key and the number of keys is capped (least recently written key
evicted first, and counted), so a monitor's memory stays bounded whatever the traffic.

:func:`parse_settings` validates a monitor's plain config mapping with its pydantic
model and turns any problem into one :class:`~llmvigil.core.errors.ConfigError` whose
lines name the dotted key, what was found and what was expected.

:func:`merge_samples` merges uniform samples of several processes' outputs into one
uniform sample of their union, for monitors whose snapshots merge across a fleet.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from collections.abc import Hashable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ConfigError

__all__ = ["RollingCounters", "Settings", "merge_samples", "parse_settings"]

_M = TypeVar("_M", bound=BaseModel)
_T = TypeVar("_T")


class Settings(BaseModel):
    """Base of monitor and alert settings: immutable, unknown keys rejected."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_settings(model: type[_M], data: Mapping[str, Any] | _M | None, where: str) -> _M:
    """Validate ``data`` (a plain mapping, an instance or ``None`` for defaults).

    Raises:
        ConfigError: one line per problem, e.g.
            ``monitors.feedback.window_s: Input should be greater than 0, got -1``.
    """
    if isinstance(data, model):
        return data
    if data is not None and not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of settings, got {type(data).__name__}")
    try:
        return model.model_validate(dict(data or {}))
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"])
            if err["type"] == "extra_forbidden":
                valid = ", ".join(model.model_fields)
                lines.append(f"{where}{loc}: unknown key; valid keys: {valid}")
            elif err["type"] == "missing":
                lines.append(f"{where}{loc}: required key is missing")
            else:
                shown = repr(err.get("input"))
                shown = shown if len(shown) <= 60 else shown[:57] + "..."
                msg = str(err["msg"]).removeprefix("Value error, ")
                lines.append(f"{where}{loc}: {msg}, got {shown}")
        raise ConfigError("\n".join(lines)) from None


def merge_samples(parts: Sequence[tuple[int, Sequence[_T]]], size: int,
                  rng: np.random.Generator) -> tuple[int, list[_T]]:
    """Merge uniform samples of disjoint populations into a uniform sample of their union.

    Each part is ``(population, sample)``: how many items a process saw, and a uniform
    sample of them without replacement holding at least ``min(population, size)`` items
    (all of them when there are that few). Returns the union's size and a uniform sample
    of ``min(union, size)`` of its items: how many come from each part is multivariate
    hypergeometric in the population sizes, so a part that saw ten times more items
    contributes about ten times more, however large its sample. Deterministic given ``rng``.

    Raises:
        ValueError: a sample larger than its population, or smaller than
            ``min(population, size)``.
    """
    for n, sample in parts:
        if n < 0 or len(sample) > n or len(sample) < min(n, size):
            raise ValueError(f"a sample of {len(sample)} items cannot stand for {n} items "
                             f"(a sample holds min(population, {size}) to population items)")
    total = sum(n for n, _ in parts)
    if total <= size:
        return total, [item for _, sample in parts for item in sample]
    counts = rng.multivariate_hypergeometric([n for n, _ in parts], size)
    out: list[_T] = []
    for (_, sample), count in zip(parts, counts, strict=True):
        if count:
            picked = rng.choice(len(sample), size=int(count), replace=False)
            out.extend(sample[int(i)] for i in np.sort(picked))
    return total, out


class _Ring:
    """The buckets of one key: the epoch each slot holds and the slot's field sums."""

    __slots__ = ("epochs", "sums")

    def __init__(self, buckets: int, fields: int) -> None:
        self.epochs = array("q", [-1]) * buckets
        self.sums = array("d", [0.0]) * (buckets * fields)


class RollingCounters:
    """Per-key sums of ``fields`` over a sliding window of ``buckets`` buckets of ``bucket_s``.

    A record is counted in the bucket holding its own timestamp; a record older than
    the oldest live bucket is ignored (and counted in :attr:`too_old`). Reads at
    ``now_ns`` cover the bucket holding ``now_ns`` (partial) and the ones before it,
    so a window of ``k`` buckets spans between ``(k - 1) * bucket_s`` and
    ``k * bucket_s`` seconds.

    Args:
        fields: names of the summed fields, in the order :meth:`totals` returns them.
        bucket_s: width of one bucket in seconds.
        buckets: how many buckets each key keeps (the longest readable window).
        max_keys: keys beyond this evict the least recently written one.
    """

    def __init__(self, fields: Sequence[str], *, bucket_s: float, buckets: int,
                 max_keys: int = 1000) -> None:
        if bucket_s <= 0 or buckets <= 0 or max_keys <= 0 or not fields:
            raise ValueError("bucket_s, buckets, max_keys and fields must be positive")
        self.fields = tuple(fields)
        self.bucket_ns = max(1, int(bucket_s * 1e9))
        self.buckets = int(buckets)
        self.max_keys = int(max_keys)
        self.evicted = 0
        self.too_old = 0
        self._index = {name: i for i, name in enumerate(self.fields)}
        self._width = len(self.fields)
        self._rings: OrderedDict[Hashable, _Ring] = OrderedDict()

    @classmethod
    def spanning(cls, fields: Sequence[str], *, window_s: float, bucket_s: float,
                 max_keys: int = 1000) -> RollingCounters:
        """Counters whose buckets cover ``window_s`` (rounded up to whole buckets)."""
        return cls(fields, bucket_s=bucket_s, buckets=max(1, math.ceil(window_s / bucket_s)),
                   max_keys=max_keys)

    def __len__(self) -> int:
        return len(self._rings)

    def __contains__(self, key: object) -> bool:
        return key in self._rings

    def live_keys(self) -> Iterator[Hashable]:
        """The live keys, least recently written first (a snapshot, safe to mutate under)."""
        return iter(list(self._rings))

    def epoch(self, t_ns: int) -> int:
        """The bucket number holding time ``t_ns``."""
        return t_ns // self.bucket_ns

    def add(self, key: Hashable, t_ns: int, **amounts: float) -> bool:
        """Add ``amounts`` (field name -> amount) to ``key`` at time ``t_ns``.

        Returns ``False`` when the time is older than every bucket the key can hold.
        """
        slot = self._slot(key, t_ns)
        if slot is None:
            return False
        sums, base = slot
        index = self._index
        for name, amount in amounts.items():
            sums[base + index[name]] += amount
        return True

    def incr(self, key: Hashable, t_ns: int, field: str, amount: float = 1.0) -> bool:
        """Add ``amount`` to one field of ``key`` at ``t_ns``; like :meth:`add`, faster."""
        slot = self._slot(key, t_ns)
        if slot is None:
            return False
        sums, base = slot
        sums[base + self._index[field]] += amount
        return True

    def _slot(self, key: Hashable, t_ns: int) -> tuple[array[float], int] | None:
        """The sums of ``key`` and the offset of the bucket holding ``t_ns`` (reset if stale)."""
        rings = self._rings
        ring = rings.get(key)
        nf = self._width
        if ring is None:
            ring = rings[key] = _Ring(self.buckets, nf)
            if len(rings) > self.max_keys:
                rings.popitem(last=False)
                self.evicted += 1
        else:
            rings.move_to_end(key)
        epoch = t_ns // self.bucket_ns
        slot = epoch % self.buckets
        epochs = ring.epochs
        held = epochs[slot]
        base = slot * nf
        if held != epoch:
            if held > epoch:
                self.too_old += 1
                return None
            epochs[slot] = epoch
            sums = ring.sums
            for i in range(base, base + nf):
                sums[i] = 0.0
        return ring.sums, base

    def totals(self, key: Hashable, now_ns: int, *, buckets: int | None = None,
               skip: int = 0) -> list[float]:
        """Sums of every field for ``key`` over ``buckets`` buckets (all by default).

        ``skip`` leaves out that many most recent buckets first, so a baseline can be
        read just before a recent window. An unknown key sums to zeros.
        """
        nf = len(self.fields)
        out = [0.0] * nf
        ring = self._rings.get(key)
        if ring is None:
            return out
        count = self.buckets if buckets is None else min(buckets, self.buckets)
        newest = now_ns // self.bucket_ns - skip
        oldest = newest - count + 1
        epochs, sums = ring.epochs, ring.sums
        for slot in range(self.buckets):
            epoch = epochs[slot]
            if oldest <= epoch <= newest:
                base = slot * nf
                for i in range(nf):
                    out[i] += sums[base + i]
        return out

    def is_stale(self, key: Hashable, now_ns: int) -> bool:
        """Whether ``key`` holds nothing inside the readable window at ``now_ns``."""
        ring = self._rings.get(key)
        if ring is None:
            return True
        oldest = now_ns // self.bucket_ns - self.buckets + 1
        return all(epoch < oldest for epoch in ring.epochs)

    def discard(self, key: Hashable) -> None:
        """Forget ``key``."""
        self._rings.pop(key, None)

    def prune(self, now_ns: int) -> int:
        """Forget every key with nothing left in its window; return how many went."""
        stale = [key for key in self._rings if self.is_stale(key, now_ns)]
        for key in stale:
            del self._rings[key]
        return len(stale)
