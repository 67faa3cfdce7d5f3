"""Secrets and PII never leave the process unless the config says so."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import llmvigil
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llmvigil.adapters.memory import get_memory_backend
from llmvigil.core import runtime
from llmvigil.core.model import encode
from llmvigil.core.redaction import Redactor, find_pii, iban_valid, luhn_valid
from vigil_testing import redact_pattern_by_pattern, start

PLANTED = "sk-ant-api03-PLANTEDsecretKEY0123456789abcdef"


def _everything_written(root: Path) -> bytes:
    return b"".join(p.read_bytes() for p in root.rglob("*") if p.is_file())


def test_planted_key_never_reaches_records_journal_or_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("VENDOR_KEY", PLANTED)
    caplog.set_level(logging.DEBUG)
    mem = start(tmp_path, backends=[
        {"name": "memory", "instance": "down", "fail": "raise", "api_key": "${VENDOR_KEY}"},
    ])

    @llmvigil.trace(kind="llm")
    def call(prompt: str, api_key: str, headers: dict[str, str]) -> str:
        return f"here is the key you asked for: {PLANTED}"

    call("summarise", api_key=PLANTED, headers={"Authorization": f"Bearer {PLANTED}"})
    with pytest.raises(RuntimeError), llmvigil.span("failing"):
        raise RuntimeError(f"upstream rejected {PLANTED}")
    llmvigil.feedback(None, "correction", correction=f"use {PLANTED}", comment=PLANTED)
    assert llmvigil.flush(10)
    rt = runtime.get_runtime()
    assert rt is not None
    config_repr = repr(rt.config) + str(rt.config) + str(rt.config.model_dump())
    llmvigil.shutdown()

    records = b"".join(encode(r) for r in [*mem.spans, *mem.scores])
    assert records and PLANTED.encode() not in records
    assert b"[API_KEY]" in records or b"[REDACTED]" in records
    down = get_memory_backend("down")
    assert down.spans == []  # everything for it went to the journal...
    journal = _everything_written(tmp_path / "journal")
    assert journal and PLANTED.encode() not in journal  # ...redacted
    assert PLANTED.encode() not in _everything_written(tmp_path / "status")
    assert PLANTED not in caplog.text
    assert PLANTED not in config_repr


def test_per_backend_levels_full_masked_none(tmp_path: Path) -> None:
    email = "jane.doe@example.com"
    start(tmp_path, capture={"redact": []}, backends=[
        {"name": "memory", "instance": "saas", "redaction": "masked"},
        {"name": "memory", "instance": "blind", "redaction": "none"},
    ])
    full_name = runtime.get_runtime().config.backends[0].settings["instance"]  # type: ignore[union-attr]

    @llmvigil.trace
    def reply(text: str) -> str:
        return f"contact {email}"

    reply(f"from {email}")
    assert llmvigil.flush(10)
    full, saas, blind = (get_memory_backend(n).spans[0] for n in (full_name, "saas", "blind"))
    assert email in encode(full).decode()
    assert email not in encode(saas).decode() and "[EMAIL]" in saas.output
    assert blind.input is None and blind.output is None and blind.name == full.name


def test_files_are_private(tmp_path: Path) -> None:
    start(tmp_path, backends=[{"name": "local"},
                              {"name": "memory", "instance": "down", "fail": "retry"}],
          pipeline={"max_retries": 0})
    with llmvigil.span("x"):
        pass
    assert llmvigil.flush(10)
    llmvigil.shutdown()
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert any(p.suffix == ".batch" for p in written) and any(p.suffix == ".db" for p in written)
    for path in written:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path


def test_detectors_validate_checksums() -> None:
    assert luhn_valid("4111111111111111") and not luhn_valid("4111111111111112")
    assert iban_valid("GB82 WEST 1234 5698 7654 32")
    assert not iban_valid("GB82 WEST 1234 5698 7654 33")
    found = dict(find_pii("card 4111 1111 1111 1111, order 4111 1111 1111 1112, "
                          "mail a.b@c.io, iban GB82WEST12345698765432"))
    assert found == {"credit_card": "4111 1111 1111 1111", "email": "a.b@c.io",
                     "iban": "GB82WEST12345698765432"}


def test_phone_numbers_in_common_formats() -> None:
    text = "call +44 20 7946 0958, (555) 123-4567 or 555.123.4567; not 2024-01-15 or 3.14159"
    assert [m for _, m in find_pii(text, ["phone"])] == [
        "+44 20 7946 0958", "(555) 123-4567", "555.123.4567"]


@pytest.mark.parametrize("text", [
    "a" * 100_000, "1" * 100_000, "1 " * 50_000, "@" * 100_000, "a@" * 50_000,
    "a." * 50_000, "sk-" * 33_000, "+1 " * 33_000, "GB82 " * 20_000, "1." * 50_000,
])
def test_redaction_is_linear_on_adversarial_input(text: str) -> None:
    import time

    redactor = Redactor(["api_key", "credit_card", "email", "iban", "phone", "ip_address"])
    t0 = time.perf_counter()
    redactor.text(text)
    assert time.perf_counter() - t0 < 1.0


def test_cached_and_hinted_redaction_equals_every_pattern_in_turn() -> None:
    import random

    from llmvigil.core.redaction import CATEGORIES

    rng = random.Random(3)
    planted = ["sk-ant-api03-" + "a1B2" * 6, "lsv2_pt_" + "x9" * 10, "ghp_" + "Z" * 36,
               "AKIA" + "ABCDEFGHIJKLMNOP", "jane.doe@example.com", "4111 1111 1111 1111",
               "GB82 WEST 1234 5698 7654 32", "+44 20 7946 0958", "10.0.0.12", "order 1234"]
    words = ["the", "invoice", "dated", "03/04/2025", "total", "12.50", "EUR", "sk", "@", "gh"]
    categories = list(CATEGORIES)
    redactor = Redactor(categories)
    for _ in range(500):
        text = " ".join(rng.choice(words + planted) for _ in range(rng.randrange(1, 12)))
        expected = redact_pattern_by_pattern(text, categories)
        assert redactor.text(text) == expected
        assert redactor.text(text) == expected  # the second time from the cache


def test_unset_levels_default_to_full_for_own_stores_and_masked_for_the_rest(
        tmp_path: Path) -> None:
    from llmvigil.adapters.local import LocalStore

    email = "jane.doe@example.com"
    start(tmp_path, capture={"redact": []}, backends=["local", {"name": "memory",
                                                                "instance": "vendor"}])

    @llmvigil.trace
    def reply(text: str) -> str:
        return f"contact {email}"

    reply("hello")
    assert llmvigil.flush(10)
    vendor = get_memory_backend("vendor").spans[0]
    assert email not in encode(vendor).decode() and "[EMAIL]" in vendor.output
    with LocalStore(tmp_path / "vigil.db") as store:
        (stored,) = list(store.read("spans"))
    assert stored.output == f"contact {email}"


_secretish = st.sampled_from(["jane.doe@example.com", "sk-ant-api03-" + "a1B2" * 6,
                              "4111 1111 1111 1111", "plain words", "Authorization"])
_json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | _secretish,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["authorization", "Api_Key", "note", "x"]) | st.text(max_size=8),
        inner, max_size=4),
    max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_json_like)
def test_one_pass_redaction_equals_bounding_then_redacting(value: object) -> None:
    """Materialize redacts while it bounds; the result is what the two passes gave."""
    from llmvigil.core.serialize import Limits, to_safe

    redactor = Redactor(["api_key", "credit_card", "email"], keys=["authorization", "api_key"])
    limits = Limits(max_chars=40, max_items=3)
    one_pass = to_safe(value, limits, text=redactor.text, masked_keys=redactor.masked_keys)
    assert one_pass == redactor.data(to_safe(value, limits))
