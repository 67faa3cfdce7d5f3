"""Spend shared by every replica on Redis: rolling sums per user and feature, daily totals.

Each replica's cost monitor counts what *its* process spent; a user's hourly spend
spread over ten pods is invisible to each of them. :class:`RedisSpendLedger` adds
every priced call to counters on Redis that the whole fleet shares, so
``llmvigil.budget.check`` and the cost alerts compare the *fleet's* spend with the
limits.

Layout (``P`` = ``{key_prefix}``, braces included: every key shares one Redis Cluster
hash slot, so the Lua scripts stay valid on a cluster):

* ``P:spend:<bucket_s>:<epoch>``: a hash per time bucket (default one minute) with
  fields ``g`` (everything), ``f:<feature>`` and ``u:<user id>``; it expires
  ``retention_s`` after its last write. A rolling window of ``w`` seconds sums the
  ``ceil(w / bucket_s)`` buckets ending with the current one (the current bucket is
  partial, as in :class:`~llmvigil.core.monitors.windows.RollingCounters`).
* ``P:spend:day:<YYYY-MM-DD>``: a hash of the day's totals (fields ``g`` and
  ``f:<feature>``), the day being the calendar day in ``timezone``; kept two days.
* ``P:fired:<key>``: set once (``SET NX``) by :meth:`RedisSpendLedger.fire_once`, so a
  fleet-wide alert fires on exactly one replica.

Amounts are stored as integer nano-dollars (``HINCRBY``), so concurrent increments
from any number of replicas add up exactly (a float ``INCRBYFLOAT`` would round).
One call to :meth:`~RedisSpendLedger.add` is one round trip: a Lua script increments
the bucket and the day and returns the fleet's totals after the increment, atomically.

Never blocking the application: every call has a short socket timeout (50 ms by
default) and no client-side retry. After a failure the ledger stops calling Redis
for ``retry_after_s`` seconds (a circuit breaker), logs one warning, and every call
answers ``None`` at once, meaning "use this process's own counts". Increments that
surely did not reach Redis (breaker open, connection refused) are kept (summed per
key, at most ``max_pending_keys`` keys; beyond that dropped and counted) and replayed
once Redis answers again, a chunk per :meth:`~RedisSpendLedger.add` call. An
increment sent without a reply (a timeout mid-call, one per thread at the start of
an outage) may or may not have been applied: it is not replayed, so it is never
counted twice, and :meth:`~RedisSpendLedger.stats` counts it as ``uncertain``.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import Field, field_validator

from ..errors import ConfigError
from ..monitors.windows import Settings, parse_settings

__all__ = ["FleetSpend", "RedisSpendLedger", "Scope", "StateSettings", "ledger_from_config"]

_log = logging.getLogger("llmvigil.fleet")

Scope = Literal["global", "feature", "user"]
_NANO = 1_000_000_000
_DAY_TTL_S = 2 * 86_400
_NO_FEATURE = "_none"
#: Bucket keys summed by one script call; Lua's unpack/stack limits sit far above.
_MAX_WINDOW_BUCKETS = 4_000
_OK, _NOT_SENT, _UNKNOWN = 0, 1, 2

# KEYS[1] day hash, KEYS[2] bucket hash the amount goes to, KEYS[3..] the user window.
# ARGV: amount (nano-USD; "0" reads only), bucket ttl, day ttl, feature field, user field.
_ADD_AND_READ = """
local amount = ARGV[1]
if amount ~= '0' then
  redis.call('HINCRBY', KEYS[2], 'g', amount)
  redis.call('HINCRBY', KEYS[2], ARGV[4], amount)
  if ARGV[5] ~= '' then redis.call('HINCRBY', KEYS[2], ARGV[5], amount) end
  redis.call('EXPIRE', KEYS[2], ARGV[2])
  redis.call('HINCRBY', KEYS[1], 'g', amount)
  redis.call('HINCRBY', KEYS[1], ARGV[4], amount)
  redis.call('EXPIRE', KEYS[1], ARGV[3])
end
local day = redis.call('HMGET', KEYS[1], 'g', ARGV[4])
local user = 0
if ARGV[5] ~= '' then
  for i = 3, #KEYS do
    local v = redis.call('HGET', KEYS[i], ARGV[5])
    if v then user = user + tonumber(v) end
  end
end
return {tonumber(day[1] or '0'), tonumber(day[2] or '0'), user}
"""

# KEYS: bucket hashes; ARGV[1]: the field. Returns the field's sum over the buckets.
_SUM = """
local total = 0
for i = 1, #KEYS do
  local v = redis.call('HGET', KEYS[i], ARGV[1])
  if v then total = total + tonumber(v) end
end
return total
"""


@dataclass(frozen=True)
class FleetSpend:
    """The fleet's spend as Redis holds it, in USD.

    ``feature`` is the feature asked about (``_none`` when none); ``user_window_usd``
    is the user's spend over the ledger's ``user_window_s`` (``None`` without a user).
    """

    day_total_usd: float
    feature: str
    day_feature_usd: float
    user_window_usd: float | None


class StateSettings(Settings):
    """``state:``: where replicas share spend (a ``redis://`` URL or this mapping)."""

    url: str = Field(min_length=1)
    key_prefix: str = Field(default="llmvigil", min_length=1)
    #: Width of one rolling-window bucket, seconds.
    bucket_s: int = Field(default=60, ge=1, le=3600)
    #: How long a bucket is kept after its last write (the longest readable window).
    retention_s: int = Field(default=7200, ge=60)
    #: The window of the per-user spend :meth:`RedisSpendLedger.add` returns.
    user_window_s: int = Field(default=3600, ge=1)
    socket_timeout_s: float = Field(default=0.05, gt=0, le=10)
    #: After a failure, Redis is not called again for this long (circuit breaker).
    retry_after_s: float = Field(default=30.0, gt=0)
    max_pending_keys: int = Field(default=10_000, ge=0)

    @field_validator("url")
    @classmethod
    def _redis_url(cls, value: str) -> str:
        """Only Redis URLs: ``redis://``, ``rediss://`` (TLS) or ``unix://``."""
        scheme = urlsplit(value).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ValueError("expected a Redis URL such as redis://127.0.0.1:6379/0 "
                             "(schemes: redis, rediss, unix)")
        return value


def ledger_from_config(value: str | Mapping[str, Any] | None, *, timezone: str = "UTC",
                       where: str = "state") -> RedisSpendLedger | None:
    """The ledger the ``state:`` config value describes, or ``None`` when it is empty.

    Raises:
        ConfigError: the value is invalid, or the ``redis`` package is missing.
    """
    if value is None or value == "":
        return None
    data = {"url": value} if isinstance(value, str) else value
    s = parse_settings(StateSettings, data, where)
    try:
        return RedisSpendLedger(
            s.url, key_prefix=s.key_prefix, bucket_s=s.bucket_s, retention_s=s.retention_s,
            user_window_s=s.user_window_s, timezone=timezone,
            socket_timeout_s=s.socket_timeout_s, retry_after_s=s.retry_after_s,
            max_pending_keys=s.max_pending_keys)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"{where}: a Redis state needs the {exc.name!r} package: "
                          "pip install 'llmvigil[redis]'") from None
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def safe_url(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, f"{user}:***@{host}", parts.path, parts.query,
                       parts.fragment))


class RedisSpendLedger:
    """Rolling and daily spend of the whole fleet on Redis (see the module docstring).

    Args:
        url: ``redis://[:password@]host:port/db``, ``rediss://...`` or ``unix://path``.
        key_prefix: namespace of every key (two fleets on one Redis use two prefixes).
        bucket_s: width of a rolling-window bucket, seconds.
        retention_s: how long buckets live, i.e. the longest window :meth:`spend` reads.
        user_window_s: the per-user window :meth:`add` and :meth:`status` report.
        timezone: the IANA zone whose midnight starts a budget day.
        socket_timeout_s: bound on connecting and on every reply.
        retry_after_s: how long Redis is left alone after a failure.
        max_pending_keys: increments kept for replay during an outage (distinct keys).
        client: a prepared ``redis.Redis`` (tests); ``url`` is then only shown in logs.

    Thread-safe: the application threads read (:meth:`spend`, :meth:`status`) while
    the worker writes (:meth:`add`). Nothing connects until the first call.
    """

    def __init__(self, url: str, *, key_prefix: str = "llmvigil", bucket_s: int = 60,
                 retention_s: int = 7200, user_window_s: int = 3600, timezone: str = "UTC",
                 socket_timeout_s: float = 0.05, retry_after_s: float = 30.0,
                 max_pending_keys: int = 10_000, client: Any = None) -> None:
        if bucket_s < 1 or retention_s < bucket_s or user_window_s < 1:
            raise ValueError("bucket_s >= 1, retention_s >= bucket_s and user_window_s >= 1 "
                             "are required")
        if user_window_s > retention_s:
            raise ValueError(f"user_window_s ({user_window_s}) exceeds retention_s "
                             f"({retention_s}): the window would read expired buckets")
        try:
            self._tz = ZoneInfo(timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {timezone!r}; use an IANA name such as "
                             "'UTC' or 'Europe/Paris'") from None
        self.url = safe_url(url)
        self.bucket_s = int(bucket_s)
        self.retention_s = int(retention_s)
        self.user_window_s = int(user_window_s)
        self.retry_after_s = float(retry_after_s)
        self.max_pending_keys = int(max_pending_keys)
        self._prefix = "{" + key_prefix + "}"
        if client is None:
            client = _client(url, socket_timeout_s)
        self._redis = client
        self._add_script = client.register_script(_ADD_AND_READ)
        self._sum_script = client.register_script(_SUM)
        self._lock = threading.Lock()
        self._probe = threading.Lock()
        self._down_until = 0.0  # monotonic time before which Redis is not called
        self._down_since: float | None = None
        self._pending: dict[tuple[str, str], list[int]] = {}  # (key, field) -> [nano, ttl]
        self._day: tuple[int, int, str] = (0, -1, "")  # [start, end) ns and its name
        self.calls = 0
        self.failures = 0
        self.skipped = 0
        self.replayed = 0
        self.pending_dropped = 0
        self.uncertain = 0
        self.last_error: str | None = None

    def __repr__(self) -> str:
        return f"<RedisSpendLedger {self.url} prefix={self._prefix}>"

    # -- keys ------------------------------------------------------------------------------

    def day_of(self, t_ns: int) -> str:
        """The budget day (``YYYY-MM-DD`` in the ledger's time zone) holding ``t_ns``."""
        start, end, name = self._day
        if start <= t_ns < end:
            return name
        day = datetime.fromtimestamp(t_ns / 1e9, self._tz).date()
        first = datetime(day.year, day.month, day.day, tzinfo=self._tz)
        after = datetime.combine(day + timedelta(days=1), first.timetz())
        self._day = (int(first.timestamp() * 1e9), int(after.timestamp() * 1e9),
                     day.isoformat())
        return self._day[2]

    def _bucket_key(self, epoch: int) -> str:
        return f"{self._prefix}:spend:{self.bucket_s}:{epoch}"

    def _day_key(self, t_ns: int) -> str:
        return f"{self._prefix}:spend:day:{self.day_of(t_ns)}"

    def _window_keys(self, t_ns: int, window_s: float) -> list[str]:
        count = max(1, math.ceil(window_s / self.bucket_s))
        if count > _MAX_WINDOW_BUCKETS or count * self.bucket_s > self.retention_s + \
                self.bucket_s:
            raise ValueError(f"window of {window_s:g} s exceeds the ledger's retention "
                             f"({self.retention_s} s)")
        newest = t_ns // (self.bucket_s * _NANO)
        return [self._bucket_key(e) for e in range(newest - count + 1, newest + 1)]

    @staticmethod
    def _field(scope: Scope, key: str | None) -> str:
        if scope == "global":
            return "g"
        if scope == "feature":
            return f"f:{key or _NO_FEATURE}"
        if scope == "user":
            if not key:
                raise ValueError("a user scope needs a user id")
            return f"u:{key}"
        raise ValueError(f"unknown scope {scope!r}; expected global, feature or user")

    def budget_key(self, scope: str, level: float, t_ns: int) -> str:
        """The :meth:`fire_once` key of a daily budget ``scope`` reaching ``level`` on
        the day of ``t_ns`` (e.g. ``budget:feature:extract:2025-06-01:0.8``)."""
        return f"budget:{scope}:{self.day_of(t_ns)}:{level:g}"

    # -- the breaker ---------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether Redis answered the last call (``False`` while the breaker is open)."""
        return self._down_since is None

    def _call(self, fn: Any) -> tuple[int, Any]:
        """Run ``fn()`` against Redis unless the breaker is open: ``(outcome, result)``.

        The outcome is ``_OK``, ``_NOT_SENT`` (breaker open, or the connection could
        not be made: nothing reached Redis) or ``_UNKNOWN`` (sent, no reply: Redis
        may or may not have run it).
        """
        probing = False
        if self._down_since is not None:
            if time.monotonic() < self._down_until or not self._probe.acquire(blocking=False):
                self.skipped += 1
                return _NOT_SENT, None
            probing = True
        try:
            self.calls += 1
            result = fn()
        except Exception as exc:  # redis errors, OSError, a broken script reply...
            self._failed(exc)
            return (_NOT_SENT if _connect_failure(exc) else _UNKNOWN), None
        finally:
            if probing:
                self._probe.release()
        if self._down_since is not None:
            self._recovered()
        return _OK, result

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_error = f"{type(exc).__name__}: {exc}"
        first = self._down_since is None
        now = time.monotonic()
        self._down_until = now + self.retry_after_s
        if first:
            self._down_since = now
            _log.warning(
                "llmvigil: Redis state %s is unreachable (%s); budgets and cost alerts use "
                "this process's own counts until it answers again (next try in %g s)",
                self.url, self.last_error, self.retry_after_s)

    def _recovered(self) -> None:
        since = self._down_since
        self._down_since = None
        self._down_until = 0.0
        outage = time.monotonic() - since if since is not None else 0.0
        _log.warning("llmvigil: Redis state %s answers again after %.1f s; fleet-wide "
                     "budgets resumed (%d increments to replay)", self.url, outage,
                     len(self._pending))

    # -- writes ----------------------------------------------------------------------------

    def add(self, user_id: str | None, feature: str | None, usd: float,
            t_ns: int) -> FleetSpend | None:
        """Add ``usd`` spent at ``t_ns`` by ``user_id`` on ``feature`` to the fleet's spend.

        Returns the fleet's totals right after this increment (atomically: two
        replicas never see the same total), or ``None`` when Redis is unavailable; the
        amount is then kept and replayed later.

        Raises:
            ValueError: ``usd`` is negative or not finite.
        """
        if not (usd >= 0 and math.isfinite(usd)):
            raise ValueError(f"spend must be a finite amount >= 0, got {usd!r}")
        nano = round(usd * _NANO)
        feature = feature or _NO_FEATURE
        day_key = self._day_key(t_ns)
        bucket = self._bucket_key(t_ns // (self.bucket_s * _NANO))
        user_field = f"u:{user_id}" if user_id else ""
        window = self._window_keys(t_ns, self.user_window_s) if user_id else []
        args = (nano, self.retention_s + self.bucket_s, _DAY_TTL_S, f"f:{feature}",
                user_field)
        outcome, reply = self._call(lambda: self._add_script(keys=[day_key, bucket, *window],
                                                             args=args))
        if outcome == _NOT_SENT and nano:
            self._keep(day_key, bucket, feature, user_field, nano)
        elif outcome == _UNKNOWN and nano:
            self.uncertain += 1  # replaying could count it twice
        if outcome != _OK:
            return None
        if self._pending:
            self._replay()
        day_total, day_feature, user = (int(v) for v in reply)
        return FleetSpend(day_total / _NANO, feature, day_feature / _NANO,
                          user / _NANO if user_id else None)

    def _keep(self, day_key: str, bucket: str, feature: str, user_field: str,
              nano: int) -> None:
        bucket_ttl = self.retention_s + self.bucket_s
        entries = [((bucket, "g"), bucket_ttl), ((bucket, f"f:{feature}"), bucket_ttl),
                   ((day_key, "g"), _DAY_TTL_S), ((day_key, f"f:{feature}"), _DAY_TTL_S)]
        if user_field:
            entries.append(((bucket, user_field), bucket_ttl))
        with self._lock:
            for key, ttl in entries:
                held = self._pending.get(key)
                if held is not None:
                    held[0] += nano
                elif len(self._pending) < self.max_pending_keys:
                    self._pending[key] = [nano, ttl]
                else:
                    self.pending_dropped += 1

    def _replay(self, chunk: int = 256) -> None:
        """Send up to ``chunk`` kept increments (the rest goes with the next calls)."""
        with self._lock:
            items = list(self._pending.items())[:chunk]
            for key, _ in items:
                del self._pending[key]

        def send() -> None:
            pipe = self._redis.pipeline(transaction=True)  # all or nothing
            for (key, field), (nano, ttl) in items:
                pipe.hincrby(key, field, nano)
                pipe.expire(key, ttl)
            pipe.execute()

        outcome, _ = self._call(send)
        if outcome == _OK:
            self.replayed += len(items)
            return
        if outcome == _UNKNOWN:
            self.uncertain += len(items)
            return
        with self._lock:  # not sent: keep them for the next recovery
            for key, (nano, ttl) in items:
                held = self._pending.get(key)
                if held is not None:
                    held[0] += nano
                else:
                    self._pending[key] = [nano, ttl]

    def fire_once(self, key: str, ttl_s: int = _DAY_TTL_S) -> bool:
        """Claim ``key`` for this replica: ``True`` for exactly one caller in the fleet.

        Use it to fire a fleet-wide alert once (e.g. with :meth:`budget_key`). While
        Redis is unavailable it answers ``True``: every replica then falls back on its
        own once-per-process rule (a duplicate alert beats a missed one).
        """
        outcome, reply = self._call(
            lambda: self._redis.set(f"{self._prefix}:fired:{key}", b"1", nx=True, ex=ttl_s))
        return bool(reply) if outcome == _OK else True

    # -- reads -----------------------------------------------------------------------------

    def spend(self, scope: Scope, key: str | None, window_s: float,
              now_ns: int | None = None) -> float | None:
        """USD the fleet spent in ``scope`` over the last ``window_s`` seconds.

        ``scope`` is ``global`` (``key`` ignored), ``feature`` (``key`` the feature,
        ``None`` for spend without one) or ``user``. ``None`` when Redis is unavailable.

        Raises:
            ValueError: unknown scope, or a window longer than the retention.
        """
        field = self._field(scope, key)
        keys = self._window_keys(time.time_ns() if now_ns is None else now_ns, window_s)
        outcome, reply = self._call(lambda: self._sum_script(keys=keys, args=[field]))
        return int(reply) / _NANO if outcome == _OK else None

    def spend_today(self, scope: Literal["global", "feature"], key: str | None = None,
                    now_ns: int | None = None) -> float | None:
        """USD the fleet spent today (``global``, or by ``feature``); ``None`` if unavailable."""
        if scope == "user":
            raise ValueError("daily spend is kept for global and feature scopes only")
        field = self._field(scope, key)
        day_key = self._day_key(time.time_ns() if now_ns is None else now_ns)
        outcome, reply = self._call(lambda: self._redis.hget(day_key, field))
        return int(reply or 0) / _NANO if outcome == _OK else None

    def status(self, user_id: str | None, feature: str | None,
               now_ns: int | None = None) -> FleetSpend | None:
        """Today's total and feature spend and the user's window spend, in one round trip
        (what ``budget.check`` needs); ``None`` when Redis is unavailable."""
        t = time.time_ns() if now_ns is None else now_ns
        feature = feature or _NO_FEATURE
        day_key = self._day_key(t)
        window = self._window_keys(t, self.user_window_s) if user_id else []
        args = (0, 0, 0, f"f:{feature}", f"u:{user_id}" if user_id else "")
        outcome, reply = self._call(lambda: self._add_script(keys=[day_key, day_key, *window],
                                                             args=args))
        if outcome != _OK:
            return None
        day_total, day_feature, user = (int(v) for v in reply)
        return FleetSpend(day_total / _NANO, feature, day_feature / _NANO,
                          user / _NANO if user_id else None)

    def check(self) -> str:
        """Ping Redis now, ignoring the breaker; a line describing it.

        Raises:
            ConnectionError: Redis did not answer.
        """
        try:
            info = self._redis.info("server")
        except Exception as exc:
            raise ConnectionError(f"Redis state {self.url} did not answer: {exc}") from None
        return f"Redis {info.get('redis_version', '?')} at {self.url}"

    def stats(self) -> dict[str, Any]:
        """Calls, failures, calls skipped by the open breaker, pending and replayed keys."""
        with self._lock:
            pending = len(self._pending)
        return {"available": self.available, "calls": self.calls, "failures": self.failures,
                "skipped": self.skipped, "pending_keys": pending, "replayed": self.replayed,
                "pending_dropped": self.pending_dropped, "uncertain": self.uncertain,
                "last_error": self.last_error}

    def close(self) -> None:
        """Release the connections."""
        try:
            self._redis.close()
        except Exception as exc:  # closing must never fail a shutdown
            _log.debug("llmvigil: closing Redis state failed: %r", exc)


def _connect_failure(exc: BaseException) -> bool:
    """Whether the error happened while connecting, i.e. before anything was sent."""
    text = str(exc)
    return "connecting to" in text or "Timeout connecting" in text


def _client(url: str, timeout_s: float) -> Any:
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # No client-side retry: one bounded attempt, then the breaker decides.
    return redis.Redis.from_url(url, socket_timeout=timeout_s,
                                socket_connect_timeout=timeout_s,
                                retry=Retry(NoBackoff(), 0), retry_on_timeout=False,
                                health_check_interval=0)
