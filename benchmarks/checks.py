"""The property checks' latency: each built-in check, the monitor, the window tests.

1. **Per-output cost of each built-in check.** Every built-in type of
   ``core/checks/builtins.py`` (``valid_date``, ``date_format``, ``json_parses``,
   ``json_schema``, ``regex``, ``length``, ``refusal``, ``language``, ``field_count``,
   and a ``custom`` function), built from its YAML mapping as a user declares it and
   run through ``Check.evaluate`` on a fresh ``Subject`` per output (so a JSON check
   pays for its parse), on two sets of realistic outputs: document-extraction JSON
   (an invoice with dates DD/MM/YYYY, line items, a total; some in code fences, a
   few with an impossible or ISO date, cut off or missing a field) and prose answers
   about the same documents (dates as DD/MM/YYYY or "3 April 2025", a few refusals,
   a few in French or German). Beside each, a straightforward version of the same
   test written the obvious way (``json.loads`` + ``re`` + ``datetime.date`` for the
   date checks, a pre-built ``jsonschema`` validator, ``str.split`` for the length,
   substring search for refusals...), with the ratio and the number of outputs on
   which both give the same answer (pass, fail, number or not applicable).
2. **What the monitor costs the worker.** A ``CheckMonitor`` with seven checks on one
   feature (default baseline of 5,000 outputs, windows of 1,000): ``observe`` per
   span while the baseline is learnt and once windows are tested, beside the seven
   checks run alone on the same spans (their JSON parse shared, as in the monitor);
   single ``observe`` calls (99th percentile, longest, and the one that completes
   the baselines); and ``tick`` (it tests the windows closed since the last one)
   after every 1,000 spans: median and longest. The same with the per-output CUSUM
   on (its charts are designed when the baselines complete). Last, the tick when
   many windows close at once: ``--features`` features of seven checks each (their
   baselines given with ``set_baseline``, whose cost is printed too), every one
   with a window to test in the same tick.
3. **The window statistics** of ``core/checks/stats.py`` at several window sizes n
   (a window of n outputs against a baseline of 5n, the monitor's default ratio),
   beside scipy's test for the same call: ``fisher_exact`` (window failure rate 2%
   vs 1%) against ``scipy.stats.fisher_exact``, ``binom_test`` against
   ``scipy.stats.binomtest``, ``mann_whitney_u`` (output lengths) against
   ``scipy.stats.mannwhitneyu``, ``ks_2samp`` against ``scipy.stats.ks_2samp`` with
   the method llmvigil picks (exact up to n1 * n2 = 1e8, else asymptotic), then
   ``bh_adjust`` over k p-values against ``scipy.stats.false_discovery_control``
   (the smallest adjusted p-value is printed), the cost of designing a
   ``BernoulliCusum`` and of one chart update (no scipy counterpart). Both p-values
   are printed beside each timing.

    python benchmarks/checks.py [--quick] [--outputs 2000] [--features 20]
                                [--sections builtins,monitor,stats]

Other processes on the machine slow every figure down: the load average is printed
with the results, and each timing is the minimum (and median) over repeats, each
repeat long enough (at least 20 ms of calls) for the clock to resolve it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import random
import re
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from _bench import machine
from llmvigil.core.checks import Subject, build_check
from llmvigil.core.checks import stats as vstats
from llmvigil.core.checks.builtins import DEFAULT_REFUSALS
from llmvigil.core.model import Span, new_trace_id
from llmvigil.core.monitors.checks import CheckMonitor

# -- timing -------------------------------------------------------------------------------


def timed(fn: Callable[[], Any], repeats: int, min_s: float = 0.02) -> tuple[float, float]:
    """(min, median) seconds per call of ``fn`` over ``repeats`` repeats of enough calls."""
    t0 = time.perf_counter()
    fn()
    once = time.perf_counter() - t0
    loops = max(1, int(min_s / max(once, 1e-9)))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(loops):
            fn()
        times.append((time.perf_counter() - t0) / loops)
    return min(times), statistics.median(times)


def fmt_s(seconds: float) -> str:
    """A duration in the unit that suits it."""
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} us"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


# -- realistic outputs ------------------------------------------------------------------------

VENDORS = ["Müller GmbH", "Dupont SARL", "Rossi S.p.A.", "García y Hijos", "Jansen B.V.",
           "Nowak Sp. z o.o.", "Svensson AB", "O'Brien Ltd", "Costa Lda", "Novák s.r.o."]
ITEMS = ["Consulting services", "Software licence (annual)", "Maintenance contract",
         "Office chairs", "Laptop docking station", "Cloud hosting", "Translation, 12 pages",
         "Freight and handling", "Training workshop", "Printer toner"]
DOCS = ["invoice", "purchase order", "delivery note", "credit note"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
FILLER = [
    "Payment is expected by bank transfer to the account shown on the document.",
    "The document carries the issuer's VAT number and a purchase order reference.",
    "No discount for early payment is mentioned.",
    "The delivery address is the same as the billing address.",
    "A late payment fee of 1.5% per month applies after the due date.",
    "The amounts are shown net of VAT, with VAT listed separately at the standard rate.",
    "The contact for questions about this document is the accounts receivable team.",
]
FOREIGN = [
    "La facture {ref} de {vendor} est datée du {issued} et doit être payée avant le {due}. "
    "Le montant total est de {total} EUR, et le paiement se fait par virement bancaire.",
    "Die Rechnung {ref} von {vendor} ist auf den {issued} datiert und bis zum {due} zu "
    "bezahlen. Der Gesamtbetrag beträgt {total} EUR und wird per Überweisung beglichen.",
]
REFUSAL = ("I'm sorry, but I can't help with extracting data from this document: it appears "
           "to contain personal medical information.")


def dmy(d: dt.date) -> str:
    return f"{d.day:02d}/{d.month:02d}/{d.year}"


def random_date(rnd: random.Random) -> dt.date:
    return dt.date(2024, 1, 1) + dt.timedelta(days=rnd.randrange(600))


def impossible(d: dt.date) -> str:
    """A DD/MM/YYYY date that cannot exist: month 13 or 31 of a 30-day month."""
    return f"{d.day:02d}/13/{d.year}" if d.day % 2 else f"31/04/{d.year}"


def extraction_json(rnd: random.Random) -> str:
    """One extraction output: an invoice as JSON, with a share of realistic faults."""
    issued = random_date(rnd)
    due = issued + dt.timedelta(days=rnd.choice((14, 30, 45, 60)))
    items = [{"description": rnd.choice(ITEMS), "quantity": rnd.randint(1, 12),
              "unit_price": round(rnd.uniform(5, 900), 2),
              "service_date": dmy(issued - dt.timedelta(days=rnd.randrange(40)))}
             for _ in range(rnd.randint(1, 5))]
    doc: dict[str, Any] = {
        "document_type": rnd.choice(DOCS), "reference": f"INV-{rnd.randint(1000, 99999)}",
        "issuer": {"name": rnd.choice(VENDORS), "vat_id": f"EU{rnd.randint(10**8, 10**9)}"},
        "issue_date": dmy(issued), "due_date": dmy(due), "currency": "EUR",
        "total": round(sum(i["quantity"] * i["unit_price"] for i in items), 2),
        "line_items": items, "notes": rnd.choice(["", "", "Partial delivery."]),
    }
    fault = rnd.random()
    if fault < 0.02:
        doc["due_date"] = impossible(due)
    elif fault < 0.05:
        doc["issue_date"] = issued.isoformat()
    elif fault < 0.07:
        del doc["total"]
    text = json.dumps(doc, ensure_ascii=False, indent=rnd.choice((None, 2)))
    if 0.07 <= fault < 0.08:
        text = text[: len(text) * 2 // 3]  # the model stopped mid-answer
    if rnd.random() < 0.1:
        text = f"```json\n{text}\n```"
    return text


def prose(rnd: random.Random) -> str:
    """One prose answer about a document, with a share of realistic variations."""
    issued = random_date(rnd)
    due = issued + dt.timedelta(days=30)
    vendor, ref = rnd.choice(VENDORS), f"INV-{rnd.randint(1000, 99999)}"
    total = f"{rnd.randint(10, 9999)},{rnd.randint(0, 99):02d}"
    kind = rnd.random()
    if kind < 0.02:
        return REFUSAL
    if kind < 0.05:
        return rnd.choice(FOREIGN).format(ref=ref, vendor=vendor, issued=dmy(issued),
                                          due=dmy(due), total=total)
    written = (f"{issued.day} {MONTHS[issued.month - 1]} {issued.year}" if kind < 0.10
               else impossible(issued) if kind < 0.12 else dmy(issued))
    n_items = rnd.randint(1, 5)
    head = (f"The {rnd.choice(DOCS)} {ref} from {vendor} was issued on {written} and is "
            f"due on {dmy(due)}. It lists {n_items} item{'s' if n_items > 1 else ''}, "
            f"the largest being {rnd.choice(ITEMS).lower()}, and the total amount due is "
            f"{total} EUR.")
    return " ".join([head, *rnd.sample(FILLER, rnd.randint(1, 5))])


def outputs(kind: str, n: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    make = extraction_json if kind == "json" else prose
    return [make(rnd) for _ in range(n)]


# -- the checks, as a user declares them, and their straightforward versions -----------------

SCHEMA = {
    "type": "object",
    "required": ["document_type", "reference", "issue_date", "due_date", "total",
                 "line_items"],
    "properties": {
        "document_type": {"type": "string"}, "reference": {"type": "string"},
        "issue_date": {"type": "string", "pattern": r"^\d{2}/\d{2}/\d{4}$"},
        "due_date": {"type": "string", "pattern": r"^\d{2}/\d{2}/\d{4}$"},
        "total": {"type": "number", "minimum": 0},
        "line_items": {"type": "array", "items": {
            "type": "object", "required": ["description", "quantity", "unit_price"],
            "properties": {"quantity": {"type": "integer", "minimum": 1},
                           "unit_price": {"type": "number"}}}},
    },
}
REFERENCE = r"\bINV-\d{4,5}\b"


def positive_total(total: Any) -> bool:
    """The ``custom`` check: the extracted total is a positive number."""
    return isinstance(total, (int, float)) and total > 0


SPECS: list[dict[str, Any]] = [
    {"name": "date_valid", "type": "valid_date", "format": "%d/%m/%Y"},
    {"name": "due_date_valid", "type": "valid_date", "format": "%d/%m/%Y",
     "field": "due_date"},
    {"name": "date_format", "type": "date_format", "format": "%d/%m/%Y"},
    {"name": "json_parses", "type": "json_parses"},
    {"name": "json_schema", "type": "json_schema", "schema": SCHEMA},
    {"name": "reference", "type": "regex", "pattern": REFERENCE},
    {"name": "length", "type": "length"},
    {"name": "no_refusal", "type": "refusal"},
    {"name": "english", "type": "language", "language": "en"},
    {"name": "field_count", "type": "field_count"},
    {"name": "total_positive", "type": "custom", "function": f"{__name__}:positive_total",
     "field": "total", "kind": "rate"},
]

_NOT_JSON = object()
_DMY = re.compile(r"(?<![\d/])(\d{1,2})/(\d{1,2})/(\d{4})(?![\d/])")
_ANY_DATE = re.compile(
    r"(?<![\w/.\-])(?:\d{4}-\d{1,2}-\d{1,2}|\d{1,2}[/.\-]\d{1,2}[/.\-]\d{2,4}"
    r"|\d{1,2} (?:" + "|".join(MONTHS) + r") \d{4})(?![\w/.\-])", re.I)
_EXACT_DMY = re.compile(r"\d{2}/\d{2}/\d{4}")
_WORDS = re.compile(r"[^\W\d_]+")
_EN = frozenset(["the", "and", "of", "to", "in", "is", "it", "that", "for", "on", "with",
                 "as", "are", "be", "by", "this", "was", "from", "at", "an", "or", "have",
                 "has", "not", "which", "will", "would", "can", "you", "we", "they", "their",
                 "there", "been", "but", "what", "were", "if", "about"])
_REFUSALS = tuple(p.lower() for p in DEFAULT_REFUSALS)
_REFERENCE = re.compile(REFERENCE)


def loads(text: str) -> Any:
    """``json.loads`` of an output, a surrounding code fence removed; ``_NOT_JSON`` if not."""
    s = text.strip()
    if s.startswith("```"):
        s = s[s.find("\n") + 1: s.rfind("```")]
    try:
        return json.loads(s)
    except ValueError:
        return _NOT_JSON


def dates_valid(text: str) -> bool | None:
    found = False
    for d, m, y in _DMY.findall(text):
        try:
            dt.date(int(y), int(m), int(d))
        except ValueError:
            return False
        found = True
    return True if found else None


def field(text: str, key: str) -> Any:
    data = loads(text)
    return data.get(key) if isinstance(data, dict) else None


def baselines() -> dict[str, Callable[[str], Any]]:
    """Each check's straightforward version: ``output -> pass/fail, number or None``."""
    import jsonschema

    validator = jsonschema.Draft202012Validator(SCHEMA)

    def due_date_valid(text: str) -> bool | None:
        due = field(text, "due_date")
        return dates_valid(due) if isinstance(due, str) else None

    def date_format(text: str) -> bool | None:
        found = _ANY_DATE.findall(text)
        return all(_EXACT_DMY.fullmatch(d) for d in found) if found else None

    def json_schema(text: str) -> bool:
        data = loads(text)
        return data is not _NOT_JSON and validator.is_valid(data)

    def english(text: str) -> bool | None:
        words = _WORDS.findall(text.lower())
        return sum(w in _EN for w in words) >= 0.1 * len(words) if len(words) >= 5 else None

    def field_count(text: str) -> float:
        data = loads(text)
        values = (list(data.values()) if isinstance(data, dict)
                  else data if isinstance(data, list) else [])
        return float(sum(v not in (None, "", [], {}) for v in values))

    def total_positive(text: str) -> bool | None:
        data = loads(text)
        if not isinstance(data, dict) or "total" not in data:
            return None
        return positive_total(data["total"])

    return {
        "date_valid": dates_valid,
        "due_date_valid": due_date_valid,
        "date_format": date_format,
        "json_parses": lambda text: loads(text) is not _NOT_JSON,
        "json_schema": json_schema,
        "reference": lambda text: _REFERENCE.search(text) is not None,
        "length": lambda text: float(len(text.split())),
        "no_refusal": lambda text: not any(p in text[:1000].lower() for p in _REFUSALS),
        "english": english,
        "field_count": field_count,
        "total_positive": total_positive,
    }


# -- 1. the built-in checks ---------------------------------------------------------------------


def builtin_checks(args: argparse.Namespace) -> None:
    checks = {spec["name"]: build_check(spec, spec["name"]) for spec in SPECS}
    plain = baselines()
    for kind, label in (("json", "extraction JSON"), ("prose", "prose answers")):
        outs = outputs(kind, args.outputs, args.seed)
        mean_chars = statistics.fmean(len(o) for o in outs)
        print(f"\n## 1. Per-output cost on {len(outs):,} {label} (mean {mean_chars:,.0f} "
              f"chars), min / median of {args.repeats} runs")
        print(f"{'check':16} {'type':12} {'llmvigil us':>15} {'straightforward us':>19} "
              f"{'ratio':>6}  {'same answer':>11}  {'pass / fail / n.a.':>18}")
        for name, check in checks.items():
            base = plain[name]

            def run_check(check: Any = check, outs: list[str] = outs) -> list[Any]:
                return [check.evaluate(Subject(o)) for o in outs]

            def run_base(base: Callable[[str], Any] = base,
                         outs: list[str] = outs) -> list[Any]:
                return [base(o) for o in outs]

            lo, med = timed(run_check, args.repeats)
            blo, bmed = timed(run_base, args.repeats)
            mine, theirs = run_check(), run_base()
            same = sum(a == b for a, b in zip(mine, theirs, strict=True))
            passes = sum(r is True for r in mine)
            fails = sum(r is False for r in mine)
            na = sum(r is None for r in mine)
            tally = (f"{passes}/{fails}/{na}" if check.kind != "value"
                     else f"numbers: {len(mine) - na}")
            n = len(outs)
            print(f"{name:16} {check.type:12} {lo / n * 1e6:6.2f} / {med / n * 1e6:6.2f} "
                  f"{blo / n * 1e6:8.2f} / {bmed / n * 1e6:6.2f} {lo / blo:5.2f}x  "
                  f"{same:5}/{n:<5}  {tally:>18}")


# -- 2. the monitor -----------------------------------------------------------------------------

MONITOR_CHECKS = ["date_valid", "date_format", "json_parses", "json_schema", "field_count",
                  "no_refusal", "length"]


def monitor_config(features: Sequence[str], cusum: bool, **extra: Any) -> dict[str, Any]:
    specs = [s for s in SPECS if s["name"] in MONITOR_CHECKS]
    return {"features": {f: specs for f in features}, "cusum": {"enabled": cusum},
            **extra}


def root_spans(texts: Sequence[str], feature: str) -> list[Span]:
    now = time.time_ns()
    return [Span(trace_id=new_trace_id(), name="extract", kind="chain", feature=feature,
                 status="ok", start_ns=now + i, end_ns=now + i + 1_000, output=t)
            for i, t in enumerate(texts)]


def stream_cost(spans: Sequence[Span], cusum: bool) -> None:
    mon = CheckMonitor(monitor_config(["extract"], cusum))
    baseline = mon.settings.baseline_size
    chunk = mon.settings.window
    per_span: dict[str, list[float]] = {"learning": [], "testing": []}
    each: list[float] = []
    ticks: list[float] = []
    now = time.time_ns()
    for start in range(0, len(spans), chunk):
        part = spans[start:start + chunk]
        t_chunk = time.perf_counter()
        for s in part:
            t0 = time.perf_counter()
            mon.observe(s)
            each.append(time.perf_counter() - t0)
        elapsed = time.perf_counter() - t_chunk
        per_span["learning" if start + chunk <= baseline else "testing"].append(
            elapsed / len(part))
        now += 10**9
        t0 = time.perf_counter()
        mon.tick(now)
        ticks.append(time.perf_counter() - t0)
    tested = mon.stats()["windows_tested"]
    label = "CUSUM on " if cusum else "CUSUM off"
    for phase, values in per_span.items():
        if values:
            print(f"  {label}, observe while {phase:8}: {min(values) * 1e6:7.1f} / "
                  f"{statistics.median(values) * 1e6:7.1f} us per span (min / median of "
                  f"{len(values)} blocks of {chunk})")
    # Every check applies to every extraction output: span `baseline` completes them all.
    completing = f", the one completing the baselines {fmt_s(each[baseline - 1])}" if len(
        each) >= baseline else ""
    print(f"  {label}, one observe: 99th percentile {fmt_s(float(np.quantile(each, 0.99)))}"
          f", longest {fmt_s(max(each))}{completing}")
    print(f"  {label}, tick after every {chunk} spans: median "
          f"{fmt_s(statistics.median(ticks))}, longest {fmt_s(max(ticks))} ({tested} windows "
          f"tested in {len(ticks)} ticks)")


def checks_alone(spans: Sequence[Span], repeats: int) -> float:
    """Seconds per span for the monitor's checks alone, one shared Subject per span."""
    checks = [build_check(s, s["name"]) for s in SPECS if s["name"] in MONITOR_CHECKS]

    def run() -> None:
        for span in spans:
            subject = Subject.of_span(span)
            for c in checks:
                c.evaluate(subject)

    return timed(run, repeats)[0] / len(spans)


def many_windows(n_features: int, seed: int) -> None:
    """The longest tick: every feature's every check closes a window at once."""
    features = [f"feature-{i:03d}" for i in range(n_features)]
    mon = CheckMonitor(monitor_config(features, cusum=False, baseline_size=1000))
    texts = outputs("json", 2000, seed)
    t0 = time.perf_counter()
    for f in features:
        mon.set_baseline(f, texts[:1000])
    setup_s = time.perf_counter() - t0
    spans = [s for f in features for s in root_spans(texts[1000:], f)]
    for s in spans:
        mon.observe(s)
    pending = mon.stats()["pending_windows"]
    t0 = time.perf_counter()
    out = list(mon.tick(time.time_ns()))
    tick_s = time.perf_counter() - t0
    print(f"  {n_features} features x {len(MONITOR_CHECKS)} checks, every window closed "
          f"at once: one tick tested {pending} windows of 1,000 against baselines of "
          f"1,000 in {fmt_s(tick_s)} ({len(out)} metrics and alerts); set_baseline took "
          f"{fmt_s(setup_s / n_features)} per feature")


def monitor_cost(args: argparse.Namespace) -> None:
    n = args.monitor_spans
    spans = root_spans(outputs("json", n, args.seed + 1), "extract")
    print(f"\n## 2. CheckMonitor cost to the worker: {len(MONITOR_CHECKS)} checks on one "
          f"feature ({', '.join(MONITOR_CHECKS)}), {n:,} extraction outputs, baseline "
          "5,000, windows of 1,000")
    alone = checks_alone(spans[:2000], args.repeats)
    print(f"  the {len(MONITOR_CHECKS)} checks alone on the same outputs (parse shared): "
          f"{alone * 1e6:.1f} us per span (min of {args.repeats} runs)")
    stream_cost(spans, cusum=False)
    stream_cost(spans, cusum=True)
    many_windows(args.features, args.seed)


# -- 3. the window statistics -------------------------------------------------------------------


def stats_row(name: str, n: int, mine: Callable[[], float], theirs: Callable[[], float],
              repeats: int) -> None:
    lo, med = timed(mine, repeats)
    p = mine()
    blo, bmed = timed(theirs, repeats)
    q = theirs()
    print(f"  {name:28} {n:>8,} {fmt_s(lo):>10} / {fmt_s(med):>10} {fmt_s(blo):>10} / "
          f"{fmt_s(bmed):>10} {lo / blo:6.2f}x  p = {p:.4g} / {q:.4g}")


def window_stats(args: argparse.Namespace) -> None:
    from scipy import stats as sstats

    rng = np.random.default_rng(args.seed)
    sizes = [100, 1000, 10_000] if args.quick else [100, 1000, 10_000, 100_000]
    print(f"\n## 3. Window tests: a window of n against a baseline of 5n, llmvigil beside "
          f"scipy (min / median of {args.repeats} runs)")
    print(f"  {'test':28} {'n':>8} {'llmvigil':>23} {'scipy':>23} {'ratio':>7}  "
          "p-values (llmvigil / scipy)")
    for n in sizes:
        m = 5 * n
        a, c = round(0.02 * n), round(0.01 * m)
        table = [[a, n - a], [c, m - c]]
        stats_row("fisher_exact (greater)", n,
                  lambda t=table: vstats.fisher_exact(t, "greater"),
                  lambda t=table: float(sstats.fisher_exact(t, alternative="greater")[1]),
                  args.repeats)
        stats_row("binom_test (greater)", n,
                  lambda k=a, n=n: vstats.binom_test(k, n, 0.01, "greater"),
                  lambda k=a, n=n: float(sstats.binomtest(k, n, 0.01,
                                                           alternative="greater").pvalue),
                  args.repeats)
        x = np.round(rng.lognormal(4.0, 0.5, n))
        y = np.round(rng.lognormal(3.98, 0.5, m))
        stats_row("mann_whitney_u (two-sided)", n,
                  lambda x=x, y=y: vstats.mann_whitney_u(x, y)[1],
                  lambda x=x, y=y: float(sstats.mannwhitneyu(x, y).pvalue), args.repeats)
        xs, ys = rng.lognormal(4.0, 0.5, n), rng.lognormal(3.98, 0.5, m)
        method = "exact" if n * m <= 10**8 else "asymp"
        stats_row(f"ks_2samp ({method})", n,
                  lambda x=xs, y=ys: vstats.ks_2samp(x, y)[1],
                  lambda x=xs, y=ys, method=method: float(
                      sstats.ks_2samp(x, y, method=method).pvalue), args.repeats)
    print(f"\n  {'':28} {'k':>8}")
    for k in (7, 100, 1000):
        ps = rng.uniform(0, 1, k)
        stats_row("bh_adjust", k, lambda ps=ps: min(vstats.bh_adjust(list(ps))),
                  lambda ps=ps: float(sstats.false_discovery_control(ps).min()),
                  args.repeats)
    print()
    for p0, p1 in ((0.01, 0.02), (0.001, 0.002)):
        lo, med = timed(lambda p0=p0, p1=p1: vstats.BernoulliCusum(p0, p1, 1e6),
                        args.repeats)
        h = vstats.BernoulliCusum(p0, p1, 1e6).h
        print(f"  BernoulliCusum design, p0 {p0:.1%} -> p1 {p1:.1%}, a false alarm per 1e6 "
              f"outputs: {fmt_s(lo)} / {fmt_s(med)} (threshold h = {h:,}; once per baseline)")
    chart = vstats.BernoulliCusum(0.01, 0.02, 1e6)
    flips = [bool(v) for v in rng.random(10_000) < 0.01]

    def updates() -> float:
        for failed in flips:
            chart.update(failed)
        return 0.0

    lo, _med = timed(updates, args.repeats)
    print(f"  BernoulliCusum.update: {lo / len(flips) * 1e9:.0f} ns per output "
          f"(threshold h = {chart.h}, in-control run length {chart.arl0:,.0f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer outputs and sizes")
    parser.add_argument("--outputs", type=int, default=2000,
                        help="outputs of each kind for section 1")
    parser.add_argument("--monitor-spans", type=int, default=20_000,
                        help="spans streamed through the monitor in section 2")
    parser.add_argument("--features", type=int, default=20,
                        help="features closing windows at once in section 2")
    parser.add_argument("--repeats", type=int, default=7, help="timing repeats")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sections", default="builtins,monitor,stats",
                        help="comma-separated subset of builtins, monitor, stats")
    args = parser.parse_args()
    if args.quick:
        args.outputs = min(args.outputs, 500)
        args.monitor_spans = min(args.monitor_spans, 8000)
        args.features = min(args.features, 5)
        args.repeats = min(args.repeats, 3)
    import jsonschema  # noqa: F401  (json_schema checks need it: fail early, not mid-run)
    import scipy

    print(machine())
    print(f"numpy {np.__version__}, scipy {scipy.__version__}; threads "
          f"{threading.active_count()}")
    sections = {"builtins": builtin_checks, "monitor": monitor_cost, "stats": window_stats}
    for section in args.sections.split(","):
        sections[section.strip()](args)
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
