"""The shared spend ledger against real Redis servers.

The fleet tests use the Redis on 127.0.0.1:6379 (skipped with a message when it does
not answer), each under a random key prefix deleted afterwards. The outage tests
start a redis-server of their own on a free port (AOF with fsync on every write, so
a SIGKILL loses nothing) and kill or pause it mid-run.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from llmvigil.core.errors import ConfigError
from llmvigil.core.fleet.redis_state import RedisSpendLedger, ledger_from_config

redis = pytest.importorskip("redis", reason="pip install 'llmvigil[redis]'")

pytestmark = pytest.mark.fleet

URL = os.environ.get("VIGIL_REDIS_URL", "redis://127.0.0.1:6379/0")
NANO = 1_000_000_000


def _server_or_skip(url: str) -> Any:
    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {url} ({exc}); start one with `redis-server` or set "
                    "VIGIL_REDIS_URL")
    return client


def _shared() -> Iterator[tuple[Any, str]]:
    client = _server_or_skip(URL)
    prefix = f"vigil-test-{uuid.uuid4().hex[:12]}"
    yield client, prefix
    for key in client.scan_iter(match=f"{{{prefix}*", count=1000):  # prefix and prefix-*
        client.delete(key)
    client.close()


@pytest.fixture
def shared() -> Iterator[tuple[Any, str]]:
    """(client, random key prefix) on the machine's Redis; the prefix's keys are deleted."""
    yield from _shared()


@pytest.fixture(scope="module")
def shared_module() -> Iterator[tuple[Any, str]]:
    """Like ``shared``, for the whole module."""
    yield from _shared()


# -- several processes on the shared Redis ------------------------------------------------

_WORKER = r"""
import json, random, sys, time
import redis
from llmvigil.core.fleet.redis_state import RedisSpendLedger

url, prefix, seed, n, limit, t_ns = sys.argv[1:7]
seed, n, limit, t_ns = int(seed), int(n), float(limit), int(t_ns)
client = redis.Redis.from_url(url)
ledger = RedisSpendLedger(url, key_prefix=prefix, socket_timeout_s=5.0)
client.incr("{%s}:test:ready" % prefix)
while not client.exists("{%s}:test:go" % prefix):
    time.sleep(0.002)
rng = random.Random(seed)
adds, fired = [], []
for _ in range(n):
    user = "u%d" % rng.randrange(4)
    feature = rng.choice(["extract", "chat", None])
    usd = rng.uniform(0.0001, 0.01)
    fleet = ledger.add(user, feature, usd, t_ns)
    adds.append([user, feature, round(usd * 1e9), round(fleet.day_total_usd * 1e9),
                 round(fleet.user_window_usd * 1e9)])
    for level in (0.8, 1.0):
        if fleet.day_total_usd >= level * limit and ledger.fire_once(
                ledger.budget_key("global", level, t_ns)):
            fired.append([level, round(fleet.day_total_usd * 1e9)])
print(json.dumps({"adds": adds, "fired": fired}))
"""

N_PROCESSES = 3
N_ADDS = 300
LIMIT_USD = 3.0  # the fleet spends ~4.5 USD; each process ~1.5 USD, below 0.8 * limit


@pytest.fixture(scope="module")
def fleet_run(shared_module: tuple[Any, str]) -> tuple[list[dict[str, Any]], str, Any, int]:
    """Three processes add spend at once; returns their reports, prefix, client, time."""
    client, prefix = shared_module
    t_ns = time.time_ns()
    procs = [subprocess.Popen(
        [sys.executable, "-c", _WORKER, URL, prefix, str(seed), str(N_ADDS), str(LIMIT_USD),
         str(t_ns)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for seed in range(N_PROCESSES)]
    deadline = time.monotonic() + 60
    while int(client.get(f"{{{prefix}}}:test:ready") or 0) < N_PROCESSES:
        assert time.monotonic() < deadline, "workers did not start"
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
        time.sleep(0.01)
    client.set(f"{{{prefix}}}:test:go", 1)  # all adding at once from here
    reports = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        reports.append(json.loads(out))
    return reports, prefix, client, t_ns


def test_concurrent_processes_sum_exactly(fleet_run: tuple[list[dict[str, Any]], str, Any,
                                                            int]) -> None:
    reports, prefix, _, t_ns = fleet_run
    adds = [a for r in reports for a in r["adds"]]
    assert len(adds) == N_PROCESSES * N_ADDS
    ledger = RedisSpendLedger(URL, key_prefix=prefix)

    def nano(value: float | None) -> int:
        assert value is not None
        return round(value * NANO)

    assert nano(ledger.spend_today("global", now_ns=t_ns)) == sum(a[2] for a in adds)
    assert nano(ledger.spend("global", None, 60, now_ns=t_ns)) == sum(a[2] for a in adds)
    for feature in ("extract", "chat", None):
        expected = sum(a[2] for a in adds if a[1] == feature)
        assert nano(ledger.spend_today("feature", feature, now_ns=t_ns)) == expected
        assert nano(ledger.spend("feature", feature, 3600, now_ns=t_ns)) == expected
    for user in ("u0", "u1", "u2", "u3"):
        expected = sum(a[2] for a in adds if a[0] == user)
        assert nano(ledger.spend("user", user, 3600, now_ns=t_ns)) == expected
    status = ledger.status("u1", "chat", now_ns=t_ns)
    assert status is not None
    assert nano(status.user_window_usd) == sum(a[2] for a in adds if a[0] == "u1")

    # Each add saw the total right after its own increment: sorted, the totals step
    # up by exactly the amounts, so no two replicas ever read the same total.
    totals = sorted(a[3] for a in adds)
    steps = [b - a for a, b in zip([0, *totals], totals, strict=False)]
    assert sorted(steps) == sorted(a[2] for a in adds)
    per_user: dict[str, list[tuple[int, int]]] = {}
    for user, _, amount, _, window in adds:
        per_user.setdefault(user, []).append((window, amount))
    for rows in per_user.values():
        windows = sorted(w for w, _ in rows)
        steps = [b - a for a, b in zip([0, *windows], windows, strict=False)]
        assert sorted(steps) == sorted(amount for _, amount in rows)


def test_fleet_budget_fires_exactly_once(fleet_run: tuple[list[dict[str, Any]], str, Any,
                                                           int]) -> None:
    reports, _, _, _ = fleet_run
    fired = [f for r in reports for f in r["fired"]]
    assert sorted(level for level, _ in fired) == [0.8, 1.0]
    for level, seen_total in fired:
        assert seen_total >= level * LIMIT_USD * NANO
    # No replica alone ever reached the lower level: only the fleet sum crossed it.
    for r in reports:
        assert sum(a[2] for a in r["adds"]) < 0.8 * LIMIT_USD * NANO


# -- one process: windows, days, validation ----------------------------------------------


def test_window_reads_whole_buckets(shared: tuple[Any, str]) -> None:
    _, prefix = shared
    ledger = RedisSpendLedger(URL, key_prefix=prefix, bucket_s=60, retention_s=7200)
    now = 1_750_000_000 * NANO + 17 * NANO  # 17 s into a bucket
    spends = {now: 1.0, now - 1800 * NANO: 2.0, now - 3599 * NANO: 4.0,
              now - 3617 * NANO: 8.0, now - 5400 * NANO: 16.0}
    for t, usd in spends.items():
        assert ledger.add("alice", "f", usd, t) is not None
    for window in (60, 1800, 3600, 7200):
        buckets = -(-window // 60)
        newest = now // (60 * NANO)
        expected = sum(usd for t, usd in spends.items()
                       if newest - buckets < t // (60 * NANO) <= newest)
        assert ledger.spend("user", "alice", window, now_ns=now) == pytest.approx(expected)
    assert ledger.spend("user", "bob", 3600, now_ns=now) == 0.0
    with pytest.raises(ValueError, match="retention"):
        ledger.spend("user", "alice", 10_000, now_ns=now)


def test_budget_day_follows_the_time_zone(shared: tuple[Any, str]) -> None:
    _, prefix = shared
    utc = RedisSpendLedger(URL, key_prefix=prefix)
    paris = RedisSpendLedger(URL, key_prefix=prefix + "-paris", timezone="Europe/Paris")
    t = int(datetime(2025, 6, 1, 22, 30, tzinfo=timezone.utc).timestamp() * NANO)
    assert utc.day_of(t) == "2025-06-01"
    assert paris.day_of(t) == "2025-06-02"  # 00:30 in Paris (UTC+2 in June)
    assert paris.budget_key("feature:x", 0.8, t) == "budget:feature:x:2025-06-02:0.8"
    assert paris.fire_once(paris.budget_key("global", 1.0, t)) is True
    assert paris.fire_once(paris.budget_key("global", 1.0, t)) is False
    assert paris.fire_once(paris.budget_key("global", 1.0, t + 86_400 * NANO)) is True


def test_bad_input_is_refused() -> None:
    ledger = RedisSpendLedger("redis://127.0.0.1:1/0")
    for usd in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="finite amount"):
            ledger.add("u", "f", usd, time.time_ns())
    with pytest.raises(ConfigError, match=r"state\.url: expected a Redis URL"):
        ledger_from_config({"url": "http://localhost:6379"})
    with pytest.raises(ConfigError, match=r"state\.socket_timeout_s"):
        ledger_from_config({"url": URL, "socket_timeout_s": -1})
    with pytest.raises(ConfigError, match="exceeds retention_s"):
        ledger_from_config({"url": URL, "user_window_s": 9000, "retention_s": 3600})
    assert ledger_from_config(None) is None
    built = ledger_from_config("redis://:s3cret@127.0.0.1:6379/0")
    assert built is not None and "s3cret" not in built.url and "s3cret" not in repr(built)


# -- outages on a redis-server of our own ---------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class OwnRedis:
    """A redis-server subprocess on a free port; every write fsynced to its AOF."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.skip("redis-server is not installed (apt-get install redis-server)")
        self.proc = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.dir),
             "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url, socket_timeout=0.5)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.RedisError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.02)
        client.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path)
    server.start()
    yield server
    server.kill()


def _timed(fn: Any, *args: Any) -> tuple[Any, float]:
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def test_outage_goes_local_only_and_recovers_exactly(own_redis: OwnRedis,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="llmvigil.fleet")
    ledger = RedisSpendLedger(own_redis.url, socket_timeout_s=0.05, retry_after_s=0.3)
    t = time.time_ns()
    amounts: list[tuple[str, float]] = []

    def add(user: str, usd: float) -> tuple[Any, float]:
        amounts.append((user, usd))
        return _timed(ledger.add, user, "f", usd, t)

    for i in range(20):
        assert add(f"u{i % 3}", 0.001 * (i + 1))[0] is not None

    own_redis.kill()
    slowest = 0.0
    for i in range(200):
        result, took = add(f"u{i % 3}", 0.0007 * (i + 1))
        assert result is None
        slowest = max(slowest, took)
        for call in (lambda: ledger.spend("global", None, 60, t),
                     lambda: ledger.status("u1", "f", t)):
            value, took = _timed(call)
            assert value is None
            slowest = max(slowest, took)
    assert ledger.fire_once("anything") is True  # local rule decides while Redis is away
    assert slowest < 0.15, f"a call blocked {slowest:.3f} s during the outage"
    assert not ledger.available
    warnings = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and "own counts" in warnings[0].getMessage()
    stats = ledger.stats()
    assert stats["failures"] == 1 and stats["skipped"] >= 599 and stats["uncertain"] == 0

    own_redis.start()  # same port, same AOF: the spend before the kill is back
    time.sleep(0.35)
    for i in range(5):
        assert add("u9", 0.002 * (i + 1))[0] is not None
    assert ledger.available and ledger.stats()["pending_keys"] == 0
    assert any("answers again" in r.getMessage() for r in caplog.records)

    total = sum(round(usd * NANO) for _, usd in amounts)
    spent = ledger.spend_today("global", now_ns=t)
    assert spent is not None and round(spent * NANO) == total
    for user in ("u0", "u1", "u2", "u9"):
        expected = sum(round(usd * NANO) for u, usd in amounts if u == user)
        got = ledger.spend("user", user, 3600, now_ns=t)
        assert got is not None and round(got * NANO) == expected


def test_hanging_redis_never_blocks_the_caller(own_redis: OwnRedis) -> None:
    ledger = RedisSpendLedger(own_redis.url, socket_timeout_s=0.05, retry_after_s=0.2)
    admin = redis.Redis.from_url(own_redis.url)
    t = time.time_ns()
    before = [0.01, 0.02, 0.03]
    for usd in before:
        assert ledger.add("u", "f", usd, t) is not None
    admin.execute_command("CLIENT", "PAUSE", 700, "ALL")  # accepts, never answers
    during = [0.004 * (i + 1) for i in range(50)]
    times = []
    for usd in during:
        result, took = _timed(ledger.add, "u", "f", usd, t)
        assert result is None
        times.append(took)
    assert max(times) < 0.2, f"a call blocked {max(times):.3f} s on a hanging Redis"
    assert sorted(times)[-2] < 0.05  # only the first call waited for its timeout
    assert ledger.stats()["uncertain"] == 1

    time.sleep(0.8)
    after = [0.05, 0.06]
    for usd in after:
        assert ledger.add("u", "f", usd, t) is not None
    spent = ledger.spend("user", "u", 3600, now_ns=t)
    assert spent is not None
    # The call that timed out may or may not have run once the pause ended; it is
    # never replayed, so it counts at most once. Everything else counts exactly.
    sure = sum(round(u * NANO) for u in [*before, *during[1:], *after])
    assert round(spent * NANO) in (sure, sure + round(during[0] * NANO))
    admin.close()
