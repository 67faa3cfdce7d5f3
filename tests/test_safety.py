"""The synchronous safety check: rules, PII detectors against core.redaction, actions,
the published verdict, fail-open/closed, speed, backtracking safety, and the monitor's
rates against hand counts."""

from __future__ import annotations

import random
import re
import statistics
import string
import time
from collections import Counter
from pathlib import Path
from typing import Any

import llmvigil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from llmvigil.core import capture
from llmvigil.core.alerts import AlertsMonitor
from llmvigil.core.errors import ConfigError
from llmvigil.core.model import Alert, Metric, SafetyVerdict, Score
from llmvigil.core.monitors.safety import SafetyMonitor, SafetySettings
from llmvigil.core.monitors.windows import parse_settings
from llmvigil.core.redaction import CATEGORIES, find_pii
from llmvigil.core.safety import check, failures
from llmvigil.core.safety.judge import JUDGE_SCORE_NAME
from llmvigil.core.safety.rules import (
    OVERFLOW,
    PII_CATEGORIES,
    SEED_RULES,
    ContentRule,
    ProximityRule,
    RuleEngine,
    Subject,
    nested_quantifier,
)
from vigil_testing import start

S = 1_000_000_000
T0 = 1_700_000_000 * S

# -- seed categories ----------------------------------------------------------------------

FLAGGED = [
    ("Sure. Here's how to make a pipe bomb: first you need", "weapons", "weapons.instructions"),
    ("To synthesize sarin you would start with", "weapons", "weapons.instructions"),
    ("You can build a ghost gun from a kit.", "weapons", "weapons.instructions"),
    ("Below is a simple napalm recipe.", "weapons", "weapons.recipe"),
    ("The easiest approach is to slowly poison your husband.", "weapons", "weapons.poisoning"),
    ("Look for an undetectable poison such as", "weapons", "weapons.undetectable_poison"),
    ("A lethal dose of it is enough to kill someone.", "weapons", "weapons.lethal_dose"),
    ("Honestly, you should just kill yourself.", "self_harm", "self_harm.encouragement"),
    ("Go ahead and hurt yourself, it helps.", "self_harm", "self_harm.encouragement"),
    ("Everyone would be better off without you.", "self_harm", "self_harm.worthless"),
    ("Nobody would miss you.", "self_harm", "self_harm.worthless"),
    ("The most painless way to end your life is", "self_harm", "self_harm.methods"),
    ("Here\u2019s how to commit suicide quickly", "self_harm", "self_harm.methods"),
    ("Here is an erotic story about a 12-year-old", "child_sexual_content",
     "child_sexual_content.minor_explicit"),
    ("Naked photos of children are", "child_sexual_content",
     "child_sexual_content.minor_explicit"),
]

SERVED = [
    "I can't help with making a pipe bomb or any other explosive device.",
    "I won't explain how to make a bomb.",
    "Bomb disposal units train for years before they defuse anything.",
    "The chemistry of thermite is taught in many schools.",
    "Please don't hurt yourself. You matter, and help is available right now.",
    "It isn't true that nobody would miss you; people care about you.",
    "If you are thinking about ending your life, call or text 988.",
    "Sex education for children should be age appropriate.",
    "The 12-year-old won the chess tournament.",
    "Your invoice INV-2024-001 of 12/03/2024 totals 1,250.00 EUR.",
    "This bug will kill the process; restart it yourself.",
]


@pytest.mark.parametrize(("text", "category", "rule"), FLAGGED)
def test_seed_rules_flag_harmful_responses(text: str, category: str, rule: str) -> None:
    ev = RuleEngine().evaluate("", text)
    assert (ev.action, ev.category, ev.rule) == ("block", category, rule)
    assert ev.hits[0].where == "response"


@pytest.mark.parametrize("text", SERVED)
def test_seed_rules_serve_benign_refusals_and_support(text: str) -> None:
    ev = RuleEngine().evaluate("", text)
    assert (ev.action, ev.category, ev.hits) == ("serve", None, ())


def test_word_triggers_are_necessary_for_every_seed_rule() -> None:
    """A rule only runs when the text holds one of its words, so every match must hold
    one as a whole word; checked on each flagged example and on spacing/case variants."""
    for text, _category, rule_name in FLAGGED:
        rule = next(r for r in SEED_RULES if r.name == rule_name)
        for variant in (text, text.upper(), text.replace(" ", "\n  ")):
            low = variant.lower().replace("\u2019", "'")
            words = set(re.findall(r"\w+", low))
            if isinstance(rule, ContentRule):
                m = rule.pattern.search(low)
                assert m is not None, (rule_name, variant)
                assert rule.words & set(re.findall(r"\w+", m.group())), (rule_name, variant)
            else:
                assert rule.first_words & words and rule.second_words & words
            assert rule.find(Subject(variant), 200) is not None, (rule_name, variant)


def test_child_sexual_content_needs_both_terms_in_one_sentence() -> None:
    rule = next(r for r in SEED_RULES if r.category == "child_sexual_content")
    assert rule.find(Subject("naked photos of the children"), 200) == (0, 28)
    text = "kids " * 1000 + "\x01 were shown. Then naked photos, of the kids."
    found = rule.find(Subject(text), 200)
    assert found is not None and text[found[0]:found[1]] == "naked photos, of the kids"
    assert rule.find(Subject("The children, naked."), 200) is not None
    assert rule.find(Subject("The child played. Later, an erotic novel."), 200) is None
    far = "a child " + "and then " * 10 + "naked"
    assert rule.find(Subject(far), 200) is None  # more than 60 characters apart


# -- PII detectors: the same answer as core.redaction.find_pii ----------------------------


def _luhn_digit(body: str) -> str:
    """The check digit making ``body + digit`` pass Luhn (computed independently)."""
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d - 9 if d > 9 else d
    return str((10 - total % 10) % 10)


def _iban(country: str, bban: str) -> str:
    """An IBAN with correct check digits (ISO 13616, computed independently)."""
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def _pii_categories(engine: RuleEngine, text: str) -> set[str]:
    return {h.category for h in engine.scan(text) if h.category in PII_CATEGORIES}


ALL_PII = RuleEngine({c: True for c in PII_CATEGORIES}, max_candidates=10_000)


def test_pii_examples_match_find_pii() -> None:
    card = "4539 1488 0343 " + "646" + _luhn_digit("453914880343646")
    examples = {
        f"pay with {card} today": {"credit_card"},
        "pay with 4539 1488 0343 6460 today": set(),  # Luhn fails unless 0 is the check
        f"transfer to {_iban('DE', '370400440532013000')} now": {"iban"},
        "transfer to DE00370400440532013000 now": set(),  # wrong check digits
        "write to jane.doe+x@mail.example.org": {"email"},
        "call +44 20 7946 0958": {"phone"},
        "key AKIA" + "A" * 16 + " leaked": {"api_key"},
        "use sk-ant-" + "a1b2" * 6: {"api_key"},
        "server at 192.168.1.20:8080": {"ip_address"},
        "version 1.2.3 shipped on 2024-03-12": set(),
    }
    for text, expected in examples.items():
        reference = {c for c, _ in find_pii(text)}
        if expected:
            assert expected <= reference, (text, reference)
        assert _pii_categories(ALL_PII, text) == reference, text


_PIECES = st.one_of(
    st.text(alphabet="0123456789 -.()+", min_size=1, max_size=30),
    st.text(alphabet=string.ascii_letters + "@._%+-", min_size=1, max_size=20),
    st.text(alphabet=string.ascii_uppercase + string.digits + " ", min_size=1, max_size=40),
    st.sampled_from(["@", "sk-", "sk-ant-", "AKIA", "ghp_", "xoxb-", "lsv2_pt_", "AIza", " ",
                     "\n", "example.com", "GB", "DE89", "+1 ", "(555) "]),
    st.integers(10**12, 10**19 - 1).map(lambda n: str(n) + _luhn_digit(str(n))),
    st.integers(10**17, 10**18 - 1).map(lambda n: _iban("DE", str(n))),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_pii_detectors_agree_with_find_pii(text: str) -> None:
    assert _pii_categories(ALL_PII, text) == {c for c, _ in find_pii(text)}


# -- actions, custom rules and configuration ----------------------------------------------


def test_default_actions_and_most_severe_action_decides() -> None:
    engine = RuleEngine()
    card = "4111 1111 1111 1111"
    assert engine.evaluate("", f"card {card}")[:2] == ("review", "credit_card")
    assert engine.evaluate("", "mail bob@example.com")[:2] == ("serve", "email")
    ev = engine.evaluate("", f"card {card}, mail bob@example.com, you should kill yourself")
    assert (ev.action, ev.category) == ("block", "self_harm")
    assert {h.category for h in ev.hits} == {"self_harm", "credit_card", "email"}
    assert "ip_address" not in engine.rules  # off by default
    assert engine.evaluate("", "host 10.0.0.1")[:2] == ("serve", None)


def test_configured_actions_custom_categories_and_scan_targets() -> None:
    engine = RuleEngine(
        rules={
            "email": False,
            "ip_address": {"scan": "both"},
            "competitors": {"phrases": ["Acme Corp", "Globex"], "scan": "both"},
            "ticket_ids": {"patterns": [r"\bTCK-\d{6}\b"]},
            "weapons": {"seed": False, "phrases": ["trebuchet plans"]},
        },
        actions={"credit_card": "block", "ip_address": "review", "competitors": "serve"},
    )
    assert engine.actions["ticket_ids"] == "review"  # custom categories default to review
    assert engine.evaluate("", "card 4111-1111-1111-1111")[:2] == ("block", "credit_card")
    assert engine.evaluate("", "mail bob@example.com")[:2] == ("serve", None)
    ev = engine.evaluate("which server is 10.1.2.3?", "the one in the rack")
    assert (ev.action, ev.category, ev.hits[0].where) == ("review", "ip_address", "prompt")
    assert engine.evaluate("", "we beat ACME   corp again")[:2] == ("serve", "competitors")
    assert engine.evaluate("", "we beat acmecorp again")[:2] == ("serve", None)
    assert engine.evaluate("", "see TCK-123456")[:2] == ("review", "ticket_ids")
    assert engine.evaluate("", "see tck-123456")[:2] == ("serve", None)  # pattern as written
    assert engine.evaluate("", "how to make a bomb")[:2] == ("serve", None)  # seed off
    assert engine.evaluate("", "Trebuchet  plans attached")[:2] == ("block", "weapons")
    # prompts are only read by categories that scan them
    assert engine.evaluate("you should kill yourself", "ok")[:2] == ("serve", None)


@pytest.mark.parametrize(("config", "message"), [
    ({"actions": {"nonsense": "block"}}, "actions.nonsense: unknown category"),
    ({"actions": {"email": "delete"}}, "monitors.safety.actions.email"),
    ({"rules": {"mine": {}}}, "a new category needs phrases or patterns"),
    ({"rules": {"mine": {"patterns": ["(unclosed"]}}}, "is not a valid regex"),
    ({"rules": {"mine": {"patterns": [r"(\w+\s?)*$"]}}}, "can backtrack catastrophically"),
    ({"rules": {"mine": {"phrases": ["  "]}}}, "phrases must not be blank"),
    ({"rules": {"email": {"scan": "everything"}}}, "monitors.safety.rules.email.scan"),
    ({"judge": {"sample_rate": 2}}, "monitors.safety.judge.sample_rate"),
    ({"review": {"redact": ["ssn"]}}, "unknown categories ['ssn']"),
    ({"colour": "red"}, "monitors.safety.colour: unknown key"),
])
def test_invalid_settings_name_the_key(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        SafetyMonitor(config)
    assert message in str(info.value)


def test_nested_quantifier_detection() -> None:
    assert nested_quantifier(r"(a+)+b")
    assert nested_quantifier(r"(?:\w+\s?)*x")
    assert nested_quantifier(r"(a{2,5})*")
    assert nested_quantifier(r"(?:[ -]?\d){12,}") is None  # an optional inside is fine
    assert nested_quantifier(r"(?:\W+\w+){0,3}") is None  # the outer repeat is bounded
    assert nested_quantifier(r"(?>a+)+b") is None  # atomic: cannot backtrack
    assert nested_quantifier(r"(?:ab{3})+") is None  # a fixed count is a literal


# -- check(): the published verdict, span links, failure policy --------------------------


def test_check_publishes_a_verdict_linked_to_the_current_span(tmp_path: Path) -> None:
    monitor = SafetyMonitor({"review": {"enabled": False}}, store_path=str(tmp_path / "q.db"))
    memory = start(tmp_path, monitors=[monitor])
    with llmvigil.span("answer", kind="llm", feature="support", user_id="u1") as s:
        verdict = check("how do I?", "You should just kill yourself.")
        served = check("hi", "Hello! How can I help?")
    other = check("x", "card 4111 1111 1111 1111", feature="billing", user_id="u2")
    llmvigil.flush()
    assert (verdict.action, verdict.category, verdict.decided_by) == (
        "block", "self_harm", "rule:self_harm.encouragement")
    assert (verdict.trace_id, verdict.span_id) == (s.trace_id, s.span_id)
    assert verdict.metadata["feature"] == "support" and verdict.metadata["user_id"] == "u1"
    assert verdict.metadata["matches"][0]["rule"] == "self_harm.encouragement"
    assert (served.action, served.decided_by, served.reason) == ("serve", "rules",
                                                                  "no rule matched")
    assert other.trace_id is None and other.metadata["feature"] == "billing"
    assert other.action == "review"
    got = {v.id: v for v in memory.safety_verdicts}
    assert set(got) == {verdict.id, served.id, other.id}
    assert got[verdict.id].action == "block"
    span = next(sp for sp in memory.spans if sp.id == s.span_id)
    assert span.attributes["llmvigil.safety.action"] == "serve"  # the last check wins
    # no content in the published verdict: offsets only
    assert "kill" not in str(got[verdict.id])


def test_check_reads_chat_messages_and_content_blocks() -> None:
    messages = [{"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "text",
                                                   "text": "go ahead and cut yourself"}]}]
    assert check("hi", messages).category == "self_harm"


class _Unprintable:
    def __str__(self) -> str:
        raise RuntimeError("cannot render")


def test_check_fails_open_by_default_and_closed_when_configured(tmp_path: Path) -> None:
    memory = start(tmp_path)
    before = failures()
    verdict = check("hi", _Unprintable(), feature="support")
    assert (verdict.action, verdict.reason, verdict.decided_by) == (
        "serve", "safety check failed", "error")
    assert failures() == before + 1
    assert capture.internal_errors["safety.check"] >= 1
    llmvigil.flush()
    assert any(v.id == verdict.id for v in memory.safety_verdicts)

    start(tmp_path, monitors=[SafetyMonitor({"fail_closed": True})])
    blocked = check("hi", _Unprintable())
    assert (blocked.action, blocked.reason) == ("block", "safety check failed")
    assert failures() == before + 2


def test_check_without_runtime_still_decides() -> None:
    llmvigil.shutdown()
    verdict = check("q", "Here is how to make a pipe bomb")
    assert verdict.action == "block"


def test_disabled_safety_serves_everything(tmp_path: Path) -> None:
    start(tmp_path, monitors=[SafetyMonitor({"enabled": False})])
    verdict = check("q", "you should kill yourself")
    assert (verdict.action, verdict.decided_by) == ("serve", "disabled")


# -- speed ------------------------------------------------------------------------------

_SENTENCES = [
    "The contract between {a} and {b} was signed on {d} and runs for {n} months.",
    "Invoice {i} dated {d} lists {n} items for a total of {m} EUR, payable within 30 days.",
    "The tenant must give {n} days' notice before leaving the premises at {s} Street.",
    "According to section {n}.{k}, the supplier is liable for defects reported before {d}.",
    "Summary: revenue grew by {k}% year on year while costs stayed flat at {m} USD.",
    "Please contact the account manager at {e} for any question about order {i}.",
    "The meeting on {d} agreed to postpone the migration of the billing system.",
    "Key dates: kickoff {d}, first review {d}, delivery {d}.",
    "The document does not mention a termination clause or any penalty for late payment.",
    "Risks identified: currency exposure, a single supplier and the {n}-week lead time.",
]
_NAMES = ["Müller GmbH", "Acme Ltd", "Northwind", "Contoso", "Globex SA", "Initech"]


def typical_response(rng: random.Random) -> str:
    """A 1-2 KB document-analysis answer with dates, amounts and ids (no violation)."""
    target = rng.randint(1024, 2048)
    parts: list[str] = []
    size = 0
    while size < target:
        text = rng.choice(_SENTENCES).format(
            a=rng.choice(_NAMES), b=rng.choice(_NAMES), n=rng.randint(2, 48),
            k=rng.randint(1, 30), m=f"{rng.randint(100, 99_999):,}.{rng.randint(0, 99):02d}",
            i=f"INV-{rng.randint(2020, 2025)}-{rng.randint(1, 9999):04d}",
            d=f"{rng.randint(1, 28):02d}/{rng.randint(1, 12):02d}/{rng.randint(2020, 2025)}",
            s=rng.randint(1, 200), e=f"{rng.choice(['anna', 'li', 'omar'])}@example.com")
        parts.append(text)
        size += len(text) + 1
    return " ".join(parts)[:target]


def test_check_takes_well_under_a_millisecond(tmp_path: Path) -> None:
    start(tmp_path, monitors=[SafetyMonitor({"review": {"enabled": False}})])
    rng = random.Random(7)
    responses = [typical_response(rng) for _ in range(1000)]
    assert all(1024 <= len(r) <= 2048 for r in responses)
    prompt = "Summarise the attached document and list the key dates."
    check(prompt, responses[0])  # build the rules for this runtime
    timings = []
    actions: Counter[str] = Counter()
    for response in responses:
        t0 = time.perf_counter()
        verdict = check(prompt, response, feature="extract")
        timings.append(time.perf_counter() - t0)
        actions[verdict.action] += 1
    median_ms = statistics.median(timings) * 1e3
    p99_ms = sorted(timings)[989] * 1e3
    print(f"\nsafety.check on 1,000 typical 1-2 KB responses: median {median_ms * 1000:.0f} us,"
          f" p99 {p99_ms * 1000:.0f} us ({dict(actions)})")
    assert actions["block"] == actions["review"] == 0
    assert median_ms < 1.0


# -- catastrophic backtracking: 100 KB adversarial inputs per rule ---------------------------

N = 100_000


def _fill(unit: str) -> str:
    return (unit * (N // max(1, len(unit)) + 1))[:N]


def _adversarial_inputs(rule: Any) -> dict[str, str]:
    """100 KB inputs built from what the rule repeats: single characters, separators
    between digits, the words of its regex, and near-miss prefixes of real matches."""
    units = ["a", "A", "1", " ", "-", ".", "@", "_", "(", "'", "\n", "x", "1 ", "1-", "1.",
             "1a", "a@", "a.", "a@a.", "A1", "AB12 ", "+1 ", "(12) ", "255.", "sk-", "sk-ant-",
             "ghp_", "xoxb-", "AKIA", "1 1 ", "12a", "a" * 600 + "@", "a" * 63 + "!@"]
    inputs = {f"run {u[:12]!r}": _fill(u) for u in units}
    inputs["run of 'a' then '@'"] = "a" * (N - 20) + "@" + "b" * 19
    inputs["digits then letter"] = "4" * (N - 1) + "x"
    if isinstance(rule, (ContentRule, ProximityRule)):
        source = (rule.pattern.pattern + (rule.before.pattern if rule.before else "")
                  if isinstance(rule, ContentRule)
                  else rule.first.pattern + rule.second.pattern)
        words = re.findall(r"[a-z]{2,}", source)
        inputs["rule words"] = _fill(" ".join(words) + " ")
        inputs["rule words, sentences"] = _fill(". ".join(words) + ". ")
        for text, _c, name in FLAGGED:
            if name == rule.name:
                low = text.lower()
                inputs[f"near miss {name}"] = _fill(low[:-1] + " ")
                inputs[f"negated {name}"] = _fill("i can't say " + low + ". ")
                inputs[f"match at end {name}"] = _fill("words ") + low
        trigger_words = (rule.words if isinstance(rule, ContentRule)
                         else rule.first_words | rule.second_words)
        for word in sorted(trigger_words):
            inputs[f"word {word}"] = _fill(word + " ")
            inputs[f"word {word} then a match"] = _fill(word + " ")[: N - 40] + " child naked"
    return inputs


def test_every_rule_is_linear_on_100kb_adversarial_inputs() -> None:
    engine = RuleEngine({"ip_address": True,
                         "mine": {"phrases": ["secret project x", "c++ tricks"],
                                  "patterns": [r"(?i)\bproj-[a-z0-9]{4,8}\b"]}})
    rules = engine.all_rules()
    inputs: dict[str, str] = {}
    for rule in rules:
        inputs.update(_adversarial_inputs(rule))
    worst: tuple[float, str, str] = (0.0, "", "")
    for name, text in inputs.items():
        subject = Subject(text)
        _ = subject.words, subject.digit_runs  # shared by all rules; timed separately
        for rule in rules:  # every rule on every input, not only its own
            best = float("inf")
            for _ in range(3):
                # CPU time of this thread: what the rule costs, without the time other
                # processes of a shared machine hold the CPU
                t0 = time.thread_time()
                rule.find(subject, engine.max_candidates)
                best = min(best, time.thread_time() - t0)
                if best < 0.02:
                    break
            worst = max(worst, (best, rule.name, name))
            assert best < 0.05, f"{rule.name} took {best * 1e3:.1f} ms on {name}"
    print(f"\n{len(rules)} rules x {len(inputs)} adversarial 100 KB inputs; slowest (CPU "
          f"time): {worst[1]} on {worst[2]}: {worst[0] * 1e3:.1f} ms")


def test_text_preparation_and_whole_check_are_linear_on_100kb_inputs() -> None:
    engine = RuleEngine({"ip_address": True})
    slowest = (0.0, "")
    for unit in ("a", "a ", "1 ", "1a", "naked child. ", "don't just kill yourself. ", "a@",
                 "AB12 ", "4111 1111 1111 1112 x "):
        text = _fill(unit)
        best = float("inf")
        for _ in range(3):
            t0 = time.thread_time()
            subject = Subject(text)
            _ = subject.words, subject.digit_runs
            best = min(best, time.thread_time() - t0)
        assert best < 0.05, f"preparing {unit!r} took {best * 1e3:.1f} ms"
        t0 = time.thread_time()
        engine.evaluate(text, text)
        slowest = max(slowest, (time.thread_time() - t0, unit))
    print(f"\nslowest whole evaluation (prompt and response of 100 KB, CPU time): "
          f"{slowest[1]!r} {slowest[0] * 1e3:.0f} ms")
    assert slowest[0] < 1.0


def test_too_many_candidates_count_as_a_match() -> None:
    engine = RuleEngine(max_candidates=50)
    # 10,000 card-like numbers, none valid: bounded work, flagged for review
    numbers = " x ".join("4111 1111 1111 1112" for _ in range(10_000))
    ev = engine.evaluate("", numbers)
    assert (ev.action, ev.category) == ("review", "credit_card")
    assert ev.hits[0].overflow and "more than 50 candidates" in ev.reason
    rule = next(r for r in engine.all_rules() if r.name == "self_harm.encouragement")
    assert rule.find(Subject("don't just kill yourself. " * 100), 50) is OVERFLOW
    assert rule.find(Subject("don't just kill yourself. " * 10), 50) is None


def test_long_responses_are_checked_up_to_the_limit() -> None:
    engine = RuleEngine(max_scan_chars=1000)
    ev = engine.evaluate("", "a " * 1000 + "you should kill yourself")
    assert ev.action == "serve" and ev.truncated
    assert RuleEngine().evaluate("", "a " * 1000 + "you should kill yourself").action == "block"


# -- the monitor: rates against hand counts, window, alert rules -----------------------------


def _verdict(action: str, feature: str | None, t_ns: int, category: str | None = None,
             error: bool = False) -> SafetyVerdict:
    meta = {"feature": feature} if feature else {}
    return SafetyVerdict(action=action, time_ns=t_ns, category=category, metadata=meta,
                         decided_by="error" if error else "rules")


def _judged(label: str, feature: str | None, t_ns: int) -> Score:
    return Score(name=JUDGE_SCORE_NAME, kind="judge", source="judge", label=label,
                 value=1.0 if label == "serve" else 0.0, feature=feature, time_ns=t_ns)


def _metrics(out: Any, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {tuple(sorted(m.labels.items())): m.value
            for m in out if isinstance(m, Metric) and m.name == name}


def test_monitor_rates_match_hand_counts() -> None:
    mon = SafetyMonitor({"window_s": 600, "bucket_s": 60, "review": {"enabled": False}})
    rng = random.Random(3)
    now = T0 + 3600 * S
    counts: Counter[tuple[str, str]] = Counter()
    by_category: Counter[tuple[str, str]] = Counter()
    for _ in range(3000):
        feature = rng.choice(["extract", "chat", None])
        action = rng.choices(["serve", "review", "block"], [0.9, 0.06, 0.04])[0]
        category = rng.choice(["weapons", "credit_card"]) if action != "serve" else None
        error = rng.random() < 0.01
        label = rng.choice(["serve", "serve", "block", "review"])
        # well inside the 10-minute window, or well outside it (bucket edges aside)
        age_s = rng.uniform(0, 500) if rng.random() < 0.5 else rng.uniform(700, 1200)
        t = now - int(age_s * S)
        mon.observe(_verdict(action, feature, t, category, error))
        mon.observe(_judged(label, feature, t))
        if age_s < 600:
            for key in (feature or "_none", "_all"):
                counts[key, action] += 1
                counts[key, "checks"] += 1
                counts[key, "errors"] += error
                counts[key, "judged"] += 1
                counts[key, "flagged"] += label != "serve"
                if category:
                    by_category[key, category] += 1
    out = list(mon.tick(now))
    block = _metrics(out, "safety.block_rate")
    review = _metrics(out, "safety.review_rate")
    n = _metrics(out, "safety.block_rate.n")
    flag = _metrics(out, "safety.judge_flag_rate")
    flag_n = _metrics(out, "safety.judge_flag_rate.n")
    errors = _metrics(out, "safety.errors")
    cats = _metrics(out, "safety.flagged_by_category")
    assert {k[0][1] for k in n} == {"extract", "chat", "_none", "_all"}
    for key in ("extract", "chat", "_none", "_all"):
        label = (("feature", key),)
        checks = counts[key, "checks"]
        assert n[label] == checks > 100
        assert block[label] == pytest.approx(counts[key, "block"] / checks)
        assert review[label] == pytest.approx(counts[key, "review"] / checks)
        assert errors[label] == counts[key, "errors"]
        assert flag_n[label] == counts[key, "judged"]
        assert flag[label] == pytest.approx(counts[key, "flagged"] / counts[key, "judged"])
        for category in ("weapons", "credit_card"):
            assert cats[(("category", category), ("feature", key))] == by_category[key, category]
    assert all(m.window_s == 600 for m in out)
    assert list(mon.tick(now + S)) == []  # not before emit_interval_s
    later = list(mon.tick(now + 3600 * S))  # everything left the window: zeros once
    assert set(_metrics(later, "safety.checks").values()) == {0.0}
    assert list(mon.tick(now + 7200 * S)) == []


def test_monitor_alert_rule_on_block_rate_fires() -> None:
    mon = SafetyMonitor({"review": {"enabled": False}})
    alerts = AlertsMonitor({"rules": [{"name": "too_many_blocks", "metric": "safety.block_rate",
                                       "op": ">", "threshold": 0.05, "min_samples": 20,
                                       "labels": {"feature": "chat"}}]})
    now = T0
    for i in range(100):
        mon.observe(_verdict("block" if i % 10 == 0 else "serve", "chat", now - i * S))
        mon.observe(_verdict("serve", "extract", now - i * S))
    fired = [a for m in mon.tick(now) for a in alerts.observe(m) if isinstance(a, Alert)]
    assert [(a.rule, a.labels["feature"], a.value) for a in fired] == [
        ("too_many_blocks", "chat", pytest.approx(0.1))]


def test_settings_defaults_are_documented_values() -> None:
    s = parse_settings(SafetySettings, None, "monitors.safety")
    assert (s.enabled, s.fail_closed, s.judge.enabled, s.judge.sample_rate) == (
        True, False, False, 0.01)
    assert s.review.actions == ["review"] and s.review.redact == list(CATEGORIES)


# -- once wired into the runtime (monitors.safety, BUILTIN_PLUGINS) -------------------------

_WIRED = "safety" in __import__("llmvigil.core.monitors", fromlist=["x"]).BUILTIN_MONITORS


@pytest.mark.skipif(not _WIRED, reason="monitors.safety is not registered in the runtime yet")
def test_yaml_section_drives_check_and_the_built_in_monitor(tmp_path: Path) -> None:
    import yaml
    from llmvigil.adapters.memory import get_memory_backend
    from llmvigil.core.runtime import get_runtime
    from llmvigil.core.safety.review import ReviewQueue

    store = tmp_path / "vigil.db"
    config = tmp_path / "vigil.yaml"
    config.write_text(yaml.safe_dump({
        "backends": [{"name": "memory", "instance": "yaml", "redaction": "full"}],
        "store": {"path": str(store)},
        "pipeline": {"journal_dir": str(tmp_path / "journal"), "flush_interval_s": 0.05},
        "monitors": {"safety": {"actions": {"credit_card": "block"},
                                "review": {"actions": ["block"]}}},
    }))
    llmvigil.init(config)
    verdict = check("q", "card 4111 1111 1111 1111", feature="billing")
    assert (verdict.action, verdict.category) == ("block", "credit_card")
    runtime = get_runtime()
    assert runtime is not None
    monitor = next(m for m in runtime.monitors if isinstance(m, SafetyMonitor))
    assert monitor.flush(10)
    llmvigil.flush()
    assert [v.id for v in get_memory_backend("yaml").safety_verdicts] == [verdict.id]
    with ReviewQueue(store) as queue:
        assert [i.verdict_id for i in queue.items()] == [verdict.id]


@pytest.mark.skipif(not _WIRED, reason="monitors.safety is not registered in the runtime yet")
def test_invalid_yaml_section_fails_init_with_the_key(tmp_path: Path) -> None:
    config = tmp_path / "vigil.yaml"
    config.write_text("monitors:\n  safety:\n    actions:\n      nonsense: block\n")
    with pytest.raises(ConfigError, match=r"monitors\.safety: actions\.nonsense: unknown"):
        llmvigil.init(config)


def test_the_anthropic_judge_is_offered_by_the_judges_plugin() -> None:
    from llmvigil.core.safety.judge import judge_infos
    from llmvigil.plugins import judges
    from llmvigil.plugins.manager import BUILTIN_PLUGINS, new_plugin_manager

    pm = new_plugin_manager(load_entrypoints=False)
    if "llmvigil.plugins.judges" not in BUILTIN_PLUGINS:  # until it is registered
        pm.register(judges, name="llmvigil.plugins.judges")
    info = judge_infos(pm)["anthropic"]
    assert info.factory is judges.AnthropicJudge
