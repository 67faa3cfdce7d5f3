"""The MMD two-sample test against direct computations, its calibration and power, the
measured blind spot (transposed dates), and the drift monitor around it."""

from __future__ import annotations

import random
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import llmvigil
import numpy as np
import pluggy
import pytest
from llmvigil.adapters.memory import get_memory_backend
from llmvigil.core.drift import mmd_test
from llmvigil.core.errors import ConfigError, PluginError
from llmvigil.core.model import Alert, Metric, Span, new_trace_id
from llmvigil.core.monitors.drift import DriftMonitor, embedder_infos, output_text
from llmvigil.plugins import hookspecs
from llmvigil.plugins.embedders import HashedEmbedder
from llmvigil.plugins.hookspecs import hookimpl
from llmvigil.plugins.types import EmbedderInfo
from scipy import stats
from scipy.spatial.distance import cdist, pdist

S = 1_000_000_000
T0 = 1_700_000_000 * S


# -- synthetic extraction outputs -----------------------------------------------------------

VENDORS = ["Müller GmbH", "Dupont SARL", "Rossi S.p.A.", "García y Hijos", "Jansen B.V.",
           "Nowak Sp. z o.o.", "Svensson AB", "O'Brien Ltd", "Costa Lda", "Novák s.r.o."]
DOCS = ["invoice", "purchase order", "delivery note", "contract", "credit note"]


def extraction(rnd: random.Random, transposed: bool = False) -> str:
    """One output of a document-extraction feature; dates DD/MM/YYYY (MM/DD if transposed)."""
    def date() -> str:
        day, month, year = rnd.randint(1, 28), rnd.randint(1, 12), rnd.randint(2019, 2025)
        first, second = (month, day) if transposed else (day, month)
        return f"{first:02d}/{second:02d}/{year}"

    doc, vendor = rnd.choice(DOCS), rnd.choice(VENDORS)
    issued, due = date(), date()
    amount = f"{rnd.randint(10, 99999)},{rnd.randint(0, 99):02d} EUR"
    ref = f"{doc[:3].upper()}-{rnd.randint(1000, 99999)}"
    style = rnd.randrange(3)
    if style == 0:
        return (f'{{"document_type": "{doc}", "reference": "{ref}", "issuer": "{vendor}", '
                f'"issue_date": "{issued}", "due_date": "{due}", "total": "{amount}"}}')
    if style == 1:
        return (f"The {doc} {ref} from {vendor} is dated {issued} and is due on {due}. "
                f"The total amount is {amount}.")
    return f"{doc.title()} {ref}\nIssuer: {vendor}\nDate: {issued}\nDue: {due}\nAmount: {amount}"


def outputs(n: int, seed: int, transposed: bool = False) -> list[str]:
    """``n`` outputs; output ``i`` with ``transposed`` is output ``i`` with its dates swapped."""
    return [extraction(random.Random(seed * 1_000_003 + i), transposed) for i in range(n)]


DISCLAIMER = " Please note that all amounts are estimates."


@pytest.fixture(scope="module")
def pool() -> dict[str, np.ndarray]:
    """Hashed embeddings of 6,000 outputs: clean, dates transposed, and with a disclaimer."""
    clean = outputs(6000, 1)
    emb = HashedEmbedder()
    return {"clean": emb(clean), "transposed": emb(outputs(6000, 1, transposed=True)),
            "disclaimer": emb([c + DISCLAIMER for c in clean])}


def window_pair(pool: dict[str, np.ndarray], n: int, rng: np.random.Generator,
                changed: str | None = None, share: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """A baseline and a recent window of ``n`` outputs each, disjoint; ``share`` of the recent
    one replaced by the ``changed`` version of the same outputs."""
    idx = rng.choice(len(pool["clean"]), 2 * n, replace=False)
    x, y = pool["clean"][idx[:n]], pool["clean"][idx[n:]].copy()
    k = round(share * n)
    if changed and k:
        y[:k] = pool[changed][idx[n:n + k]]
    return x, y


def detection_rate(pool: dict[str, np.ndarray], pairs: int, n: int, seed: int, alpha: float,
                   changed: str | None = None, share: float = 0.0,
                   **options: Any) -> tuple[float, list[float]]:
    rng = np.random.default_rng(seed)
    p_values = [mmd_test(*window_pair(pool, n, rng, changed, share), rng=rng,
                         **options).p_value for _ in range(pairs)]
    return float(np.mean(np.array(p_values) < alpha)), p_values


# -- the statistic against direct computations ----------------------------------------------


def direct_mmd2(x: np.ndarray, y: np.ndarray, sigma: float) -> float:
    """Unbiased MMD² with a Gaussian kernel, straight from the definition."""
    def k(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.exp(-cdist(a, b, "sqeuclidean") / (2 * sigma ** 2))

    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return float((kxx.sum() - np.trace(kxx)) / (n * (n - 1))
                 + (kyy.sum() - np.trace(kyy)) / (m * (m - 1)) - 2 * kxy.mean())


def test_mmd2_and_bandwidth_match_the_definitions() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(0.0, 1.0, (80, 16))
    y = rng.normal(0.3, 1.2, (60, 16))
    res = mmd_test(x, y, rng=1, max_blocks=1000)
    assert (res.n_x, res.n_y, res.block_size, res.method) == (80, 60, 1, "kernel")
    pooled = np.vstack([x, y])
    assert res.bandwidth == pytest.approx(np.sqrt(np.median(pdist(pooled, "sqeuclidean"))),
                                          rel=1e-5)
    assert res.mmd2 == pytest.approx(direct_mmd2(x, y, res.bandwidth), rel=1e-4)
    fixed = mmd_test(x, y, bandwidth=2.5, rng=1)
    assert fixed.mmd2 == pytest.approx(direct_mmd2(x, y, 2.5), rel=1e-4)


def test_blocks_leave_the_statistic_unchanged_when_no_point_is_left_out() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(0, 1, (600, 8)), rng.normal(0.1, 1, (600, 8))
    res = mmd_test(x, y, bandwidth=3.0, max_blocks=300, rng=2)
    assert (res.block_size, res.n_x, res.n_y) == (4, 600, 600)
    assert res.mmd2 == pytest.approx(direct_mmd2(x, y, 3.0), rel=1e-4)
    odd = mmd_test(x[:599], y[:597], bandwidth=3.0, max_blocks=300, rng=2)
    assert (odd.n_x, odd.n_y) == (596, 596), "points that do not fill a block are left out"
    lopsided = mmd_test(x[:5], y, rng=2)
    assert (lopsided.block_size, lopsided.n_x) == (2, 4), "each sample keeps two blocks"


def test_p_value_matches_scipy_permutation_test() -> None:
    """Same statistic, independent permutations: the p-values agree within Monte Carlo error."""
    rng = np.random.default_rng(5)
    for shift in (0.12, 0.2, 0.3):
        x, y = rng.normal(0, 1, (60, 8)), rng.normal(shift, 1, (60, 8))
        mine = mmd_test(x, y, bandwidth=3.0, permutations=3000, rng=6)
        kern = np.exp(-cdist(np.vstack([x, y]), np.vstack([x, y]), "sqeuclidean") / 18.0)

        def statistic(ix: np.ndarray, iy: np.ndarray, kern: np.ndarray = kern) -> float:
            a, b = ix.astype(int), iy.astype(int)
            kxx, kyy = kern[np.ix_(a, a)], kern[np.ix_(b, b)]
            return float((kxx.sum() - len(a)) / (len(a) * (len(a) - 1))
                         + (kyy.sum() - len(b)) / (len(b) * (len(b) - 1))
                         - 2 * kern[np.ix_(a, b)].mean())

        ref = stats.permutation_test((np.arange(60.0), np.arange(60.0, 120.0)), statistic,
                                     permutation_type="independent", vectorized=False,
                                     n_resamples=3000, alternative="greater", rng=7)
        assert mine.mmd2 == pytest.approx(ref.statistic, rel=1e-4)
        assert abs(mine.p_value - ref.pvalue) < 0.035, (shift, mine.p_value, ref.pvalue)


def test_rff_approximates_the_kernel_statistic() -> None:
    rng = np.random.default_rng(8)
    x, y = rng.normal(0, 1, (1500, 16)), rng.normal(0.4, 1, (1500, 16))
    exact = mmd_test(x, y, bandwidth=4.0, method="kernel", rng=1)
    approx = mmd_test(x, y, bandwidth=4.0, method="rff", rff_frequencies=4096, rng=1)
    assert approx.method == "rff" and exact.method == "kernel"
    assert approx.mmd2 == pytest.approx(exact.mmd2, rel=0.1)
    assert approx.p_value == exact.p_value == 1 / 501
    auto = mmd_test(x, y, rng=1, kernel_max_n=2000)
    assert auto.method == "rff", "auto switches to RFF above kernel_max_n pooled points"


def test_degenerate_and_malformed_input() -> None:
    same = np.ones((50, 4))
    res = mmd_test(same, same.copy(), rng=0)
    assert (res.mmd2, res.p_value) == (0.0, 1.0)
    with pytest.raises(ValueError, match="NaN"):
        mmd_test(np.full((10, 3), np.nan), np.zeros((10, 3)))
    with pytest.raises(ValueError, match="widths"):
        mmd_test(np.zeros((10, 3)), np.zeros((10, 4)))
    with pytest.raises(ValueError, match="2-D"):
        mmd_test(np.zeros(10), np.zeros((10, 1)))


# -- calibration, power, and the blind spot ---------------------------------------------------


@pytest.mark.parametrize("n, method", [(300, "kernel"), (500, "rff")])
def test_false_alarm_rate_is_calibrated(pool: dict[str, np.ndarray], n: int,
                                        method: str) -> None:
    """200 pairs of clean windows from one distribution: about 5% of p-values below 0.05."""
    rate, p_values = detection_rate(pool, 200, n, seed=11, alpha=0.05, method=method)
    assert 0.02 <= rate <= 0.09, rate
    assert stats.kstest(p_values, "uniform").pvalue > 0.001, "p-values are uniform under H0"


def test_power_on_a_strong_shift(pool: dict[str, np.ndarray]) -> None:
    """A fifth of the outputs gaining a disclaimer sentence is found every time."""
    rate, _ = detection_rate(pool, 20, 1000, seed=12, alpha=0.05, changed="disclaimer",
                             share=0.2)
    assert rate >= 0.95, rate
    rate_rff, _ = detection_rate(pool, 20, 1000, seed=13, alpha=0.05, changed="disclaimer",
                                 share=0.2, method="rff")
    assert rate_rff >= 0.95, rate_rff


def test_transposed_dates_in_three_percent_of_outputs_go_unnoticed(
        pool: dict[str, np.ndarray]) -> None:
    """The measured blind spot (docs/monitors/drift.md): 3% of outputs with DD/MM swapped
    in 1,000-output windows are detected about as often as nothing at all (the default
    ``auto`` method: the exact kernel at this size)."""
    rate, _ = detection_rate(pool, 100, 1000, seed=14, alpha=0.05, changed="transposed",
                             share=0.03)
    assert rate < 0.15, rate
    everything, _ = detection_rate(pool, 5, 1000, seed=15, alpha=0.05, changed="transposed",
                                   share=1.0)
    assert everything == 1.0, "when every output is transposed the shift is plain to see"


# -- the monitor --------------------------------------------------------------------------------


def llm_span(text: Any, feature: str | None = "extract", *, kind: str = "llm",
             parent: str | None = None) -> Span:
    return Span(trace_id=new_trace_id(), parent_id=parent, name="call", kind=kind,
                feature=feature, output=text, start_ns=T0, end_ns=T0)


def feed(mon: DriftMonitor, texts: Sequence[Any], feature: str | None = "extract") -> None:
    for text in texts:
        assert list(mon.observe(llm_span(text, feature))) == []


def by_name(out: Sequence[Any]) -> dict[str, list[Metric]]:
    got: dict[str, list[Metric]] = {}
    for rec in out:
        if isinstance(rec, Metric):
            got.setdefault(rec.name, []).append(rec)
    return got


SMALL = {"baseline_size": 200, "window_size": 200, "min_window": 100, "min_new": 50,
         "interval_s": 60, "alpha": 0.01, "background": False, "seed": 1}


def test_monitor_alerts_on_a_shift_with_cooldown() -> None:
    mon = DriftMonitor(SMALL)
    clean, later = outputs(400, 2), outputs(400, 3)
    feed(mon, clean[:200])
    assert list(mon.tick(T0)) == [], "baseline only: nothing to test"
    assert mon.baseline_size("extract") == 200
    feed(mon, [c + DISCLAIMER for c in later[:200]])
    out = list(mon.tick(T0 + 60 * S))
    metrics = by_name(out)
    assert set(metrics) == {"drift.p_value", "drift.p_value.n", "drift.mmd2"}
    assert metrics["drift.p_value"][0].value == pytest.approx(1 / 501)
    assert metrics["drift.p_value.n"][0].value == 200
    assert metrics["drift.mmd2"][0].value > 0
    assert all(m.labels == {"feature": "extract"} and m.time_ns == T0 + 60 * S
               for ms in metrics.values() for m in ms)
    alerts = [a for a in out if isinstance(a, Alert)]
    assert len(alerts) == 1
    a = alerts[0]
    assert (a.rule, a.severity, a.labels) == ("drift.detected", "warning", {"feature": "extract"})
    assert a.value == pytest.approx(1 / 501) and a.threshold == 0.01
    assert "extract" in a.message and "hashed" in a.message

    feed(mon, [c + DISCLAIMER for c in later[200:300]])
    assert list(mon.tick(T0 + 90 * S)) == [], "not due before interval_s"
    again = list(mon.tick(T0 + 121 * S))
    assert by_name(again)["drift.p_value"][0].value < 0.01
    assert not [x for x in again if isinstance(x, Alert)], "cooldown: no repeat"
    feed(mon, [c + DISCLAIMER for c in later[300:400]])
    late = list(mon.tick(T0 + 3800 * S))
    assert len([x for x in late if isinstance(x, Alert)]) == 1, "after the cooldown it fires again"
    assert mon.stats()["tests"] == 3 and mon.stats()["alerts"] == 2


def test_monitor_stays_quiet_without_a_shift() -> None:
    mon = DriftMonitor(SMALL)
    feed(mon, outputs(400, 4))
    out = list(mon.tick(T0))
    assert by_name(out)["drift.p_value"][0].value >= 0.01
    assert not [x for x in out if isinstance(x, Alert)]


def test_monitor_tests_exactly_what_mmd_test_sees() -> None:
    """The published statistic is the test of the baseline against the recent window."""
    mon = DriftMonitor({**SMALL, "baseline_size": 150, "window_size": 100, "min_window": 100,
                        "min_new": 1})
    base, recent = outputs(150, 5), outputs(250, 6)
    feed(mon, base + recent)
    out = by_name(mon.tick(T0))
    emb = HashedEmbedder()
    expected = mmd_test(emb(base), emb(recent[-100:]), rng=np.random.default_rng(1))
    assert out["drift.mmd2"][0].value == pytest.approx(expected.mmd2, rel=1e-5)
    assert out["drift.p_value"][0].value == expected.p_value
    assert mon.stats()["superseded"] == 150, "the window keeps the last window_size outputs"


def test_background_mode_never_blocks_tick() -> None:
    calls: list[int] = []

    def slow_factory(settings: Any) -> Callable[[Sequence[str]], np.ndarray]:
        inner = HashedEmbedder()

        def embed(texts: Sequence[str]) -> np.ndarray:
            calls.append(len(texts))
            time.sleep(0.5)
            return inner(texts)
        return embed

    pm = _manager(EmbedderInfo("slow", slow_factory))
    mon = DriftMonitor({**SMALL, "background": True, "embedder": "slow"}, plugin_manager=pm)
    feed(mon, outputs(200, 7) + outputs(200, 8))
    started = time.perf_counter()
    assert list(mon.tick(T0)) == []
    assert time.perf_counter() - started < 0.1, "tick hands the work to the drift thread"
    assert mon.stats()["job_running"]
    assert list(mon.tick(T0 + 1 * S)) == [] and mon.stats()["busy_skips"] == 1
    assert mon.wait_idle(10)
    out = list(mon.tick(T0 + 2 * S))
    metrics = by_name(out)
    assert metrics["drift.p_value"][0].time_ns == T0, "results carry the time of their window"
    assert calls == [200, 200]
    mon.close()


def _manager(*infos: EmbedderInfo) -> pluggy.PluginManager:
    class Plugin:
        @hookimpl
        def llmvigil_embedders(self) -> list[EmbedderInfo]:
            return list(infos)

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(Plugin())
    return pm


def test_embedder_is_chosen_by_name_through_the_hook() -> None:
    seen: list[dict[str, Any]] = []

    def factory(settings: Any) -> Callable[[Sequence[str]], np.ndarray]:
        seen.append(dict(settings))
        return lambda texts: np.array([[len(t), 1.0] for t in texts])

    pm = _manager(EmbedderInfo("lengths", factory))
    mon = DriftMonitor({**SMALL, "embedder": "lengths", "embedder_options": {"k": 1}},
                       plugin_manager=pm)
    assert seen == [{"k": 1}]
    feed(mon, ["short"] * 200 + ["a much longer output than before"] * 200)
    assert by_name(mon.tick(T0))["drift.p_value"][0].value < 0.01
    with pytest.raises(ConfigError, match=r"unknown embedder 'nope'; known embedders: "
                                          r"hashed, lengths, provider, sentence-transformers"):
        DriftMonitor({"embedder": "nope"}, plugin_manager=pm, where="cfg.yaml: monitors.drift")
    with pytest.raises(PluginError, match="'hashed' is taken"):
        DriftMonitor({}, plugin_manager=_manager(EmbedderInfo("hashed", factory)))


def test_builtin_embedders_registered_as_a_plugin_do_not_clash() -> None:
    """Once plugins/embedders.py is a built-in plugin, its hook returns the same infos."""
    from llmvigil.plugins import embedders

    pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    pm.add_hookspecs(hookspecs)
    pm.register(embedders, name="llmvigil.plugins.embedders")
    assert sorted(embedder_infos(pm)) == ["hashed", "provider", "sentence-transformers"]
    assert DriftMonitor({}, plugin_manager=pm).settings.embedder == "hashed"


@pytest.mark.parametrize("config, match", [
    ({"embedder_options": {"dim": 2}}, r"monitors\.drift: embedder_options\.dim"),
    ({"windw_size": 5}, r"monitors\.drift\.windw_size: unknown key"),
    ({"min_window": 500, "window_size": 100}, "min_window must be at most window_size"),
    ({"alpha": 1.5}, r"monitors\.drift\.alpha"),
    ({"embedder": "provider", "embedder_options": {"url": "ftp://x"}}, "url must start"),
])
def test_bad_settings_name_the_key(config: dict[str, Any], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        DriftMonitor(config)


def test_sampling_is_deterministic_by_span_id() -> None:
    mon = DriftMonitor({**SMALL, "sample_rate": 0.3, "baseline_size": 5000})
    spans = [llm_span(f"output {i}") for i in range(3000)]
    for s in spans:
        mon.observe(s)
    expected = sum(zlib.crc32(s.id.encode()) < int(0.3 * 2 ** 32) for s in spans)
    assert mon.stats()["sampled"] == expected
    assert mon.stats()["sampled_out"] == 3000 - expected
    assert abs(expected / 3000 - 0.3) < 0.04


def test_which_spans_are_watched() -> None:
    def watched(mode: str) -> int:
        mon = DriftMonitor({**SMALL, "spans": mode})
        for s in (llm_span("a"), llm_span("b", kind="chain"),
                  llm_span("c", kind="llm", parent="0123456789abcdef"), llm_span(None)):
            mon.observe(s)
        mon.observe(Metric(name="x", value=1.0))
        return int(mon.stats()["sampled"])

    assert (watched("llm"), watched("root"), watched("all")) == (2, 2, 3)


def test_set_and_reset_baseline() -> None:
    mon = DriftMonitor(SMALL)
    assert mon.set_baseline("extract", outputs(500, 9)) == 200, "subsampled to baseline_size"
    assert mon.baseline_size("extract") == 200
    feed(mon, [o + DISCLAIMER for o in outputs(100, 10)])
    out = list(mon.tick(T0))
    assert by_name(out)["drift.p_value"][0].value < 0.01, "every output went to the window"
    assert mon.stats()["queued_texts"] == 0
    with pytest.raises(ValueError, match="at least 10"):
        mon.set_baseline("extract", ["x"] * 9)
    mon.reset_baseline("extract")
    assert mon.baseline_size("extract") == 0
    feed(mon, outputs(200, 11))
    assert list(mon.tick(T0 + 61 * S)) == [], "the next outputs rebuild the baseline"
    assert mon.baseline_size("extract") == 200


def test_features_are_separate_and_bounded() -> None:
    mon = DriftMonitor({**SMALL, "max_features": 2})
    feed(mon, outputs(400, 12), feature="a")
    feed(mon, [o + DISCLAIMER for o in outputs(200, 13)] + outputs(200, 14), feature=None)
    out = list(mon.tick(T0))
    p = {m.labels["feature"]: m.value for m in by_name(out)["drift.p_value"]}
    assert set(p) == {"a", "_none"} and p["a"] >= 0.01 and p["_none"] < 0.01
    feed(mon, outputs(10, 15), feature="c")
    assert mon.stats()["features"] == 2 and mon.stats()["features_evicted"] == 1


def test_embedder_failures_are_counted_and_release_the_baseline() -> None:
    fail = {"on": True}
    inner = HashedEmbedder()

    def flaky(texts: Sequence[str]) -> np.ndarray:
        if fail["on"]:
            raise ConnectionError("embedding service down")
        return inner(texts)

    mon = DriftMonitor({**SMALL, "embedder": "flaky"},
                        plugin_manager=_manager(EmbedderInfo("flaky", lambda s: flaky)))
    feed(mon, outputs(150, 16))
    assert list(mon.tick(T0)) == []
    assert mon.stats()["embed_errors"] == 1 and mon.baseline_size("extract") == 0
    fail["on"] = False
    feed(mon, outputs(200, 17))
    mon.tick(T0 + 61 * S)
    assert mon.baseline_size("extract") == 200, "lost outputs do not hold a baseline slot"


def test_output_text() -> None:
    assert output_text(None, 100) is None
    assert output_text("abcdef", 3) == "abc"
    assert output_text({"b": 1, "a": "é"}, 100) == '{"a": "é", "b": 1}'
    assert output_text([1, 2], 100) == "[1, 2]"


def test_disabled_monitor_builds_no_embedder() -> None:
    mon = DriftMonitor({"enabled": False, "embedder": "sentence-transformers"})
    assert mon.embed is None
    mon.observe(llm_span("x"))
    assert list(mon.tick(T0)) == [] and mon.stats()["sampled"] == 0


def test_end_to_end_through_the_pipeline(tmp_path: Path) -> None:
    mon = DriftMonitor({"baseline_size": 40, "window_size": 40, "min_window": 20,
                        "min_new": 20, "interval_s": 0.5, "seed": 3})
    llmvigil.init(backends=[{"name": "memory", "instance": "drift-e2e"}],
                  pipeline={"journal_dir": str(tmp_path / "j"), "flush_interval_s": 0.05},
                  store={"path": str(tmp_path / "v.db")}, monitors=[mon])

    @llmvigil.trace(kind="llm", feature="summary")
    def summarise(i: int, shifted: bool) -> str:
        if shifted:
            return f"Résumé numéro {i}: le document traite de la livraison des marchandises."
        return f"Summary {i}: the document is about the delivery of goods."

    for i in range(40):
        summarise(i, False)
    for i in range(40):
        summarise(i, True)
    assert llmvigil.flush(5)
    backend = get_memory_backend("drift-e2e")
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        with backend.lock:
            alerts = [a for a in backend.alerts if a.rule == "drift.detected"]
        if alerts:
            break
        time.sleep(0.1)
    with backend.lock:
        p_values = [m for m in backend.metrics if m.name == "drift.p_value"]
    assert alerts and alerts[0].labels == {"feature": "summary"}
    assert p_values and p_values[0].value < 0.01
    mon.close()
