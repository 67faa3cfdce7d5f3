"""Prices of model calls: YAML overrides, then price plugins, then ``genai-prices``.

:class:`PriceBook` answers "what did this call cost?" for a span's
:class:`~llmvigil.core.model.Usage`. It asks, in order, and keeps the first answer
per (model, provider):

1. the ``monitors.cost.prices`` overrides (fine-tuned or private models), matched on
   ``provider/model`` then ``model``, exactly or as a shell-style pattern;
2. the ``llmvigil_price`` hook of registered plugins (first non-``None`` wins);
3. the maintained `genai-prices <https://github.com/pydantic/genai-prices>`_ data
   bundled with the installed package (never fetched from the network), including
   its long-context price tiers and date-dependent prices.

A model none of them knows is *unpriced*: :meth:`PriceBook.cost` returns ``None``,
never zero.

Token semantics: llmvigil's ``Usage.input_tokens`` counts the *uncached* input only,
as Anthropic reports it (cache reads and cache writes are separate counts, and
``Usage.total_tokens`` adds all four). ``genai-prices`` counts ``input_tokens`` as
*all* input tokens, cached ones included, and prices the uncached remainder; so the
call is translated with ``input_tokens = input + cache_read + cache_write``. Each
of the four counts is priced at its own rate. An override or plugin price without a
cache rate prices cache tokens at its input rate.

Prices from ``genai-prices`` are evaluated with plain floats from rates resolved once
per model (``calc_price`` costs ~100 microseconds a call); the fast path is checked
against ``genai_prices.calc_price`` for probe usages when a model is resolved, and
any model whose prices it cannot reproduce (per-request fees, exotic units) is priced
by ``calc_price`` itself.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pluggy
from pydantic import Field

from ...plugins.types import Price
from ..model import Usage
from .windows import Settings

__all__ = ["CostResult", "PriceBook", "PriceOverride", "Resolution", "genai_prices_version"]

_log = logging.getLogger("llmvigil.cost")

GENAI_PRICES = "genai-prices"
OVERRIDE = "config"

#: OpenTelemetry ``gen_ai.system`` values -> genai-prices provider ids.
_PROVIDER_ALIASES = {
    "az.ai.openai": "azure", "azure.ai.openai": "azure", "az.ai.inference": "azure",
    "aws.bedrock": "aws", "gcp.vertex_ai": "google", "gcp.gemini": "google",
    "gcp.gen_ai": "google", "vertex_ai": "google", "gemini": "google",
    "mistral_ai": "mistral", "x_ai": "x-ai", "xai": "x-ai",
}
_PRICE_KEYS = ("input_mtok", "output_mtok", "cache_read_mtok", "cache_write_mtok")
_PROBES = ((1_000, 200, 300, 100), (0, 0, 0, 1), (250_000, 4_000, 60_000, 30_000),
           (3, 1, 0, 0), (1_200_000, 9_000, 0, 0))


class PriceOverride(Settings):
    """One entry of ``monitors.cost.prices``: USD per million tokens."""

    input_per_mtok: float = Field(ge=0)
    output_per_mtok: float = Field(ge=0)
    cache_read_per_mtok: float | None = Field(default=None, ge=0)
    cache_write_per_mtok: float | None = Field(default=None, ge=0)
    version: str | None = None

    def to_price(self) -> Price:
        """The override as a plugin-style :class:`Price` (source ``config``)."""
        return Price(self.input_per_mtok, self.output_per_mtok, self.cache_read_per_mtok,
                     self.cache_write_per_mtok, source=OVERRIDE, version=self.version)


@dataclass(frozen=True)
class CostResult:
    """The cost of one call and where its prices came from."""

    cost_usd: float
    source: str
    version: str | None


def genai_prices_version() -> str | None:
    """The installed ``genai-prices`` version (its bundled data), or ``None``."""
    try:
        import genai_prices
    except ImportError:
        return None
    return str(genai_prices.__version__)


# -- rate evaluation ---------------------------------------------------------------------

# A rate: (base USD/Mtok, ((threshold input tokens, USD/Mtok), ...)); a tier applies to
# all tokens of a call whose total input exceeds its threshold (genai-prices semantics).
_Rate = tuple[float, tuple[tuple[int, float], ...]]


def _rate_of(value: Any) -> _Rate | None:
    if value is None:
        return None
    tiers = getattr(value, "tiers", None)
    if tiers is not None:
        return float(value.base), tuple((int(t.start), float(t.price)) for t in tiers)
    return float(value), ()


def _apply(rate: _Rate | None, tokens: int, total_input: int) -> float:
    if rate is None or not tokens:
        return 0.0
    price = rate[0]
    for start, tier_price in reversed(rate[1]):
        if total_input > start:
            price = tier_price
            break
    return price * tokens


def _rates_cost(rates: tuple[_Rate | None, ...], inp: int, out: int, read: int,
                write: int) -> float:
    total_input = inp + read + write
    # Cache tokens without a rate of their own are input tokens (genai-prices semantics).
    read_rate = rates[2] if rates[2] is not None else rates[0]
    write_rate = rates[3] if rates[3] is not None else rates[0]
    return (_apply(rates[0], inp, total_input) + _apply(rates[1], out, total_input)
            + _apply(read_rate, read, total_input) + _apply(write_rate, write, total_input)) / 1e6


# A tariff: the tier thresholds of every rate of a model, ascending, and for each
# k = 0..len(thresholds) the (input, output, cache read, cache write) prices of a call
# whose total input exceeds exactly the first k thresholds: what _apply picks for each
# rate, so a call costs the same as by _rates_cost without walking the tiers.
_Tariff = tuple[tuple[int, ...], tuple[tuple[float, float, float, float], ...]]


def _tariff_of(rates: tuple[_Rate | None, ...]) -> _Tariff | None:
    """The tariff of ``rates``; ``None`` when the input or output rate is missing."""
    read = rates[2] if rates[2] is not None else rates[0]
    write = rates[3] if rates[3] is not None else rates[0]
    if rates[0] is None or rates[1] is None or read is None or write is None:
        return None
    four = (rates[0], rates[1], read, write)
    starts = tuple(sorted({start for rate in four for start, _ in rate[1]}))
    prices = tuple(
        (_price_above(four[0], bound), _price_above(four[1], bound),
         _price_above(four[2], bound), _price_above(four[3], bound))
        for bound in (None, *starts)
    )
    return starts, prices


def _price_above(rate: _Rate, bound: int | None) -> float:
    """The price :func:`_apply` picks when the call's total input exceeds the thresholds
    up to ``bound`` (none when ``None``) and no other."""
    if bound is not None:
        for start, tier_price in reversed(rate[1]):
            if start <= bound:
                return tier_price
    return rate[0]


class Resolution:
    """Where a (model, provider) price comes from: a flat price, genai-prices, or nothing.

    ``source`` is ``None`` when the model is unpriced.
    """

    __slots__ = ("_flat", "_tariff", "expires", "genai", "price", "rates", "source",
                 "version")

    def __init__(self, *, source: str | None = None, version: str | None = None,
                 price: Price | None = None, rates: tuple[_Rate | None, ...] | None = None,
                 genai: tuple[Any, Any] | None = None, expires: float = math.inf) -> None:
        self.source = source
        self.version = version
        self.price = price
        self.rates = rates
        self.genai = genai
        self.expires = expires
        self._flat: tuple[float, float, float, float] | None = None
        if price is not None:
            in_rate = price.input_per_mtok
            self._flat = (
                in_rate, price.output_per_mtok,
                price.cache_read_per_mtok if price.cache_read_per_mtok is not None else in_rate,
                price.cache_write_per_mtok if price.cache_write_per_mtok is not None
                else in_rate,
            )
        self._tariff = _tariff_of(rates) if rates is not None else None

    def cost_usd(self, usage: Usage) -> float | None:
        """The cost of a call with ``usage`` at these prices, or ``None`` when unpriced
        (or when genai-prices rejects the usage)."""
        flat = self._flat
        if flat is not None:
            return (usage.input_tokens * flat[0] + usage.output_tokens * flat[1]
                    + usage.cache_read_tokens * flat[2]
                    + usage.cache_write_tokens * flat[3]) / 1e6
        tariff = self._tariff
        if tariff is not None:
            inp, out = usage.input_tokens, usage.output_tokens
            read, write = usage.cache_read_tokens, usage.cache_write_tokens
            starts, prices = tariff
            k = 0
            if starts:
                total_input = inp + read + write
                for start in starts:
                    if total_input > start:
                        k += 1
                    else:
                        break
            p_in, p_out, p_read, p_write = prices[k]
            return ((p_in * inp if inp else 0.0) + (p_out * out if out else 0.0)
                    + (p_read * read if read else 0.0)
                    + (p_write * write if write else 0.0)) / 1e6
        if self.source is None:
            return None
        inp, out = usage.input_tokens, usage.output_tokens
        read, write = usage.cache_read_tokens, usage.cache_write_tokens
        if self.rates is not None:
            return _rates_cost(self.rates, inp, out, read, write)
        assert self.genai is not None
        try:
            return _genai_calc(self.genai, inp, out, read, write)
        except Exception as exc:  # e.g. usage genai-prices rejects as inconsistent
            _log.debug("llmvigil: genai-prices cannot price %r: %r",
                       getattr(self.genai[1], "id", self.genai[1]), exc)
            return None


def _genai_calc(found: tuple[Any, Any], inp: int, out: int, read: int, write: int) -> float:
    from genai_prices import Usage as GenaiUsage

    provider, model_info = found
    calc = model_info.calc_price(
        GenaiUsage(input_tokens=inp + read + write, output_tokens=out,
                   cache_read_tokens=read, cache_write_tokens=write),
        provider,
    )
    return float(calc.total_price)


class PriceBook:
    """Resolves and caches prices per (model, provider) and costs a call's usage.

    Thread-safe. Answers are cached for ``refresh_s`` seconds (prices in
    ``genai-prices`` can change on a date).

    Args:
        overrides: model name or pattern -> :class:`PriceOverride` (or its mapping).
        pm: a plugin manager whose ``llmvigil_price`` hook is asked after the overrides.
        use_genai_prices: fall back to the ``genai-prices`` data.
    """

    def __init__(self, overrides: Mapping[str, PriceOverride | Mapping[str, Any]] | None = None,
                 *, pm: pluggy.PluginManager | None = None, use_genai_prices: bool = True,
                 refresh_s: float = 3600.0) -> None:
        self._exact: dict[str, Price] = {}
        self._patterns: list[tuple[str, Price]] = []
        for name, value in (overrides or {}).items():
            entry = value if isinstance(value, PriceOverride) else PriceOverride(**value)
            key = name.lower()
            if any(ch in key for ch in "*?["):
                self._patterns.append((key, entry.to_price()))
            else:
                self._exact[key] = entry.to_price()
        self.pm = pm
        self.use_genai_prices = use_genai_prices
        self.refresh_s = refresh_s
        self._cache: dict[tuple[str, str | None, str | None], Resolution] = {}
        self._lock = threading.Lock()
        self._genai_version = genai_prices_version() if use_genai_prices else None

    # -- public ---------------------------------------------------------------------------

    def cost(self, usage: Usage, model: str, provider: str | None = None, *,
             fallback_model: str | None = None) -> CostResult | None:
        """The cost of one call, or ``None`` when no source knows the model's price.

        ``fallback_model`` is a second name for the same model (e.g. the requested
        name when ``model`` is the dated name the provider answered with); each source
        is asked about both names before the next source is asked.
        """
        res = self.resolve(model, provider, fallback_model=fallback_model)
        usd = res.cost_usd(usage)
        if usd is None or res.source is None:
            return None
        return CostResult(usd, res.source, res.version)

    def price(self, model: str, provider: str | None = None) -> Price | None:
        """The base (lowest-tier) price of ``model`` as a :class:`Price`, or ``None``."""
        res = self.resolve(model, provider)
        if res.price is not None:
            return res.price
        if res.rates is None:
            return None
        base = [r[0] if r is not None else None for r in res.rates]
        return Price(base[0] or 0.0, base[1] or 0.0, base[2], base[3], source=res.source or "",
                     version=res.version)

    def resolve(self, model: str, provider: str | None = None, *,
                fallback_model: str | None = None) -> Resolution:
        """Where the price of ``model`` (or ``fallback_model``) comes from (cached)."""
        key = (model, fallback_model, provider)
        res = self._cache.get(key)
        now = time.monotonic()
        if res is not None and res.expires > now:
            return res
        names = (model,) if not fallback_model or fallback_model == model else (
            model, fallback_model)
        with self._lock:
            res = self._resolve(names, provider)
            res.expires = now + self.refresh_s
            if len(self._cache) > 10_000:
                self._cache.clear()
            self._cache[key] = res
        return res

    # -- sources -----------------------------------------------------------------------------

    def _resolve(self, names: tuple[str, ...], provider: str | None) -> Resolution:
        for source in (self._override, self._plugin):
            for name in names:
                price = source(name, provider)
                if price is not None:
                    return Resolution(source=price.source, version=price.version, price=price)
        if self.use_genai_prices and self._genai_version is not None:
            for name in names:
                res = self._genai(name, provider)
                if res.source is not None:
                    return res
        return Resolution()

    def _override(self, model: str, provider: str | None) -> Price | None:
        names = [model.lower()]
        if provider:
            names.insert(0, f"{provider.lower()}/{names[0]}")
        for name in names:
            if name in self._exact:
                return self._exact[name]
        for name in names:
            for pattern, price in self._patterns:
                if fnmatch.fnmatchcase(name, pattern):
                    return price
        return None

    def _plugin(self, model: str, provider: str | None) -> Price | None:
        if self.pm is None:
            return None
        try:
            price = self.pm.hook.llmvigil_price(model=model, provider=provider)
        except Exception as exc:
            _log.warning("llmvigil: a llmvigil_price plugin failed for %r: %r", model, exc)
            return None
        if price is not None and not isinstance(price, Price):
            _log.warning("llmvigil: a llmvigil_price plugin returned %r for %r, expected a "
                         "Price; ignored", price, model)
            return None
        return price

    def _genai(self, model: str, provider: str | None) -> Resolution:
        from genai_prices import data_snapshot

        snapshot = data_snapshot.get_snapshot()
        provider_id = _PROVIDER_ALIASES.get(provider.lower(), provider) if provider else None
        try:
            found = snapshot.find_provider_model(model, None, provider_id, None)
        except LookupError:
            if provider_id is None:
                return Resolution()
            try:  # an unknown provider name: let genai-prices infer it from the model
                found = snapshot.find_provider_model(model, None, None, None)
            except LookupError:
                return Resolution()
        version = self._genai_version
        if snapshot.from_auto_update:
            version = f"{version}+data.{snapshot.timestamp.isoformat()}"
        model_price = found[1].get_prices(datetime.now(tz=timezone.utc))
        rates = tuple(_rate_of(getattr(model_price, key, None)) for key in _PRICE_KEYS)
        fast = Resolution(source=GENAI_PRICES, version=version, rates=rates, genai=found)

        def agrees(inp: int, out: int, read: int, write: int) -> bool:
            usd = fast.cost_usd(Usage(input_tokens=inp, output_tokens=out,
                                      cache_read_tokens=read, cache_write_tokens=write))
            return usd is not None and math.isclose(
                usd, _genai_calc(found, inp, out, read, write), rel_tol=1e-9, abs_tol=1e-15)

        try:
            exact = all(agrees(*probe) for probe in _PROBES)
        except Exception:  # a probe genai-prices rejects: price every call through it
            exact = False
        return fast if exact else Resolution(source=GENAI_PRICES, version=version, genai=found)
