"""Canaries: expectations, file validation, the `canary run` command as a user runs it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from anthropic_server import AnthropicServer, Script
from llmvigil.adapters.local import LocalStore
from llmvigil.core.canary import History, evaluate, load_suite
from llmvigil.core.canary.expectations import Expect, get_path, parse_json
from llmvigil.core.canary.runner import CaseResult, compare
from llmvigil.core.cli_canary import parse_duration
from llmvigil.core.errors import InputFileError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

TARGETS = '''
import asyncio, json, os, time
import llmvigil

def _date():
    return "2024-03-04" if os.environ.get("CZ_TRANSPOSE") else "2024-04-03"

def extract(prompt):
    return json.dumps({"date": _date(), "total": 12.504, "items": [{"sku": "A1", "qty": 2}],
                       "prompt_len": len(prompt)})

async def async_extract(prompt):
    await asyncio.sleep(0.01)
    return {"date": _date(), "total": "12.50"}

def chat(messages):
    return " | ".join(f"{m['role']}:{m['content']}" for m in messages)

def boom(prompt):
    raise RuntimeError("backend down")

def slow(prompt):
    time.sleep(3)
    return "late"

def nested(prompt):
    with llmvigil.span("inner-step", kind="tool"):
        return "nested ok"

def has_date(output):
    return "date" in json.loads(output)

def never(output):
    return False, "never satisfied"

def explodes(output):
    raise ValueError("predicate bug")
'''


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture
def mods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temp module ``cz_targets`` with example targets, importable here and in the CLI."""
    directory = tmp_path / "mods"
    directory.mkdir()
    write(directory / "cz_targets.py", TARGETS)
    monkeypatch.syspath_prepend(str(directory))
    sys.modules.pop("cz_targets", None)
    return directory


def vigil(*args: str, cwd: Path, mods: Path | None = None,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(p for p in (str(mods or ""), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [sys.executable, "-m", "llmvigil.core.cli_canary", *args], cwd=cwd,
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200", "PYTHONPATH": path, **(env or {})},
    )


def runs(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def store(cwd: Path) -> LocalStore:
    return LocalStore(cwd / ".vigil" / "vigil.db")


# -- expectations, in process ------------------------------------------------------------


def check(expect: dict[str, Any], output: Any) -> tuple[list[str], dict[str, Any]]:
    result = evaluate(Expect.model_validate(expect), output, {})
    return [f.expectation for f in result.failures], result.values


def test_fields_exact_on_json_output() -> None:
    out = json.dumps({"date": "2024-04-03", "n": 1, "flag": True, "items": [{"qty": 2}]})
    assert check({"fields": {"date": "2024-04-03", "items[0].qty": 2, "n": 1.0}}, out) == (
        [], {"date": "2024-04-03", "items[0].qty": 2, "n": 1})
    failed, values = check({"fields": {"date": "2024-03-04", "flag": 1, "missing": 0}}, out)
    assert failed == ["fields.date", "fields.flag", "fields.missing"]  # true is not 1
    assert values == {"date": "2024-04-03", "flag": True}
    fenced = "Here you go:\n```json\n{\"date\": \"2024-04-03\"}\n```"
    assert check({"fields": {"date": "2024-04-03"}}, fenced)[0] == []
    assert check({"fields": {"date": "2024-04-03"}}, "no json here")[0] == ["fields.date"]


def test_regex_captures_and_failures() -> None:
    failed, values = check({"regex": [r"(\d{4})-\d\d", r"(?P<month>\d\d)-(?P<day>\d\d)$",
                                      "^x"]}, "on 2024-04-03")
    assert failed == ["regex[2]"]
    assert values == {"regex[0]": "2024", "month": "04", "day": "03"}
    assert check({"regex": "^on"}, "on 2024")[1] == {"regex[0]": "on"}


def test_json_schema_numbers_contains_and_predicates() -> None:
    schema = {"type": "object", "required": ["total"],
              "properties": {"total": {"type": "number", "minimum": 0}}}
    assert check({"json_schema": schema}, {"total": 3})[0] == []
    result = evaluate(Expect(json_schema=schema), {"total": -1})
    assert [f.expectation for f in result.failures] == ["json_schema"]
    assert "$.total" in result.failures[0].message and "minimum" in result.failures[0].message
    # tolerance: 12.51 is within 0.01 of 12.5 despite binary rounding; 12.52 is not
    number = {"path": "total", "value": 12.5, "tolerance": 0.01}
    assert check({"number": number}, {"total": 12.51}) == ([], {"total": 12.51})
    assert check({"number": number}, {"total": "12.52"})[0] == ["number"]
    assert check({"number": {"value": 100, "tolerance": 0.05, "relative": True}}, " 104.9 ") == (
        [], {"(output)": 104.9})
    assert check({"number": {"path": "total", "value": 1}}, {"total": True})[0] == ["number"]
    assert check({"contains": ["a", "zz"], "not_contains": ["b", "q"]}, "abc") == (
        ["contains[1]", "not_contains[0]"], {})
    predicates = {"m:ok": lambda out: out == "abc", "m:why": lambda out: (False, "because"),
                  "m:bad": lambda out: 1 / 0, "m:weird": lambda out: "yes"}
    result = evaluate(Expect(predicate=list(predicates)), "abc", predicates)
    messages = {f.expectation: f.message for f in result.failures}
    assert set(messages) == {"predicate[1]", "predicate[2]", "predicate[3]"}
    assert messages["predicate[1]"] == "m:why: because"
    assert "ZeroDivisionError" in messages["predicate[2]"]
    assert "expected a bool" in messages["predicate[3]"]


def test_paths_and_json_parsing() -> None:
    data = {"a": {"b": [10, {"c": "x"}]}}
    assert get_path(data, "a.b[1].c") == get_path(data, "$.a.b.1.c") == "x"
    assert get_path(data, "a.b[-1]") == {"c": "x"}
    with pytest.raises(KeyError, match=r"no 'z' in \$\.a"):
        get_path(data, "a.z")
    assert parse_json(b'{"k": 1}') == {"k": 1}


def test_compare_sees_status_and_value_changes_with_tolerance() -> None:
    from llmvigil.core.canary import StoredResult

    previous = {
        "a": StoredResult("a", True, {"date": "2024-04-03", "total": 12.5}),
        "b": StoredResult("b", True, {"x": 1}),
        "c": StoredResult("c", False, {}, error="RuntimeError: down"),
    }
    now = [CaseResult("a", True, values={"date": "2024-03-04", "total": 12.509}),
           CaseResult("b", False, values={}),
           CaseResult("c", True, values={"y": 2}),
           CaseResult("new", True, values={"z": 3})]
    changes = compare(previous, now, {"a": {"total": 0.01}})
    assert [c.describe() for c in changes] == [
        'date: "2024-04-03" -> "2024-03-04"',   # the total moved less than its tolerance
        "status: pass -> fail",
        "x: 1 -> (missing)",
        "status: fail -> pass",                  # after an error only the status counts
    ]


# -- the canary file: validation with line numbers -----------------------------------------


def line_of(text: str, needle: str, nth: int = 1) -> int:
    """The 1-based line of the ``nth`` line containing ``needle``."""
    hits = [i for i, line in enumerate(text.splitlines(), 1) if needle in line]
    return hits[nth - 1]


BAD = '''
defaults:
  callable: "cz_targets:extract"
cases:
  - name: ok
    prompt: hi
  - name: second
    prompt: hi
    expect:
      contains: x
  - name: bad_regex
    prompt: hi
    expect:
      regex: ["fine", "(unclosed"]
      number: {path: total, tolerance: 0.1}
  - name: typo
    promt: hi
  - name: both
    prompt: hi
    model: claude-x
  - name: nothing
    callable: "cz_targets:nope"
  - name: ok
    messages: [{role: robot, content: hi}]
  - name: schema
    prompt: hi
    expect:
      json_schema: {type: objekt}
      predicate: "no_such_module_zz:fn"
'''


def test_bad_file_errors_name_file_line_and_key(tmp_path: Path, mods: Path) -> None:
    path = write(tmp_path / "canaries.yaml", BAD)
    text = path.read_text()
    with pytest.raises(InputFileError) as info:
        load_suite(path)
    lines = str(info.value).splitlines()
    p = str(path)
    assert lines[0] == (f"{p}:{line_of(text, '(unclosed')}: cases[2].expect.regex[1]: invalid "
                        "regular expression: missing ), unterminated subpattern at position 0")
    assert f"{p}:{line_of(text, 'number:')}: cases[2].expect.number[0].value: required key " \
           "is missing" in lines
    assert any(line.startswith(f"{p}:{line_of(text, 'promt')}: cases[3].promt: unknown key "
                               "(did you mean 'prompt'?)") for line in lines)
    assert any(line.startswith(f"{p}:{line_of(text, 'robot')}: cases[6].messages[0].role: "
                               "expected 'user', 'assistant' or 'system'") for line in lines)
    assert any(line.startswith(f"{p}:{line_of(text, 'objekt')}: cases[7].expect.json_schema: "
                               "invalid JSON schema") for line in lines)
    # pydantic stops at type errors; the semantic checks run on a valid file
    fixed = text.replace('"(unclosed"', '"(closed)"').replace("tolerance: 0.1", "value: 1") \
        .replace("promt", "prompt").replace("robot", "user").replace("objekt", "object")
    path.write_text(fixed)
    with pytest.raises(InputFileError) as info:
        load_suite(path)
    lines = str(info.value).splitlines()
    assert lines == [
        f"{p}:{line_of(fixed, 'name: both')}: cases[4]: give exactly one target, 'callable: "
        "module:function' or 'model: <anthropic model>' (found both)",
        f"{p}:{line_of(fixed, 'name: nothing')}: cases[5]: give exactly one of 'prompt' or "
        "'messages' (found neither)",
        f"{p}:{line_of(fixed, 'cz_targets:nope')}: cases[5].callable: module 'cz_targets' has "
        "no attribute 'nope'",
        f"{p}:{line_of(fixed, '- name: ok', nth=2)}: cases[6].name: duplicate case name 'ok', "
        f"already used by cases[0] at {p}:{line_of(fixed, '- name: ok')}",
        f"{p}:{line_of(fixed, 'no_such_module_zz')}: cases[7].expect.predicate[0]: cannot "
        "import module 'no_such_module_zz' (No module named 'no_such_module_zz'); is its "
        "directory on PYTHONPATH?",
    ]


def test_yaml_syntax_error_and_wrong_top_level(tmp_path: Path) -> None:
    path = write(tmp_path / "c.yaml", "cases:\n  - name: a\n    prompt: [unclosed\n")
    with pytest.raises(InputFileError, match=rf"^{path}:4:1: invalid YAML: "):
        load_suite(path)
    write(path, "- just a list\n")
    with pytest.raises(InputFileError, match=rf"^{path}:1: expected a mapping with a 'cases:'"):
        load_suite(path)
    write(path, "cases: []\n")
    with pytest.raises(InputFileError, match=rf"^{path}:1: cases: List should have at least 1"):
        load_suite(path)
    with pytest.raises(InputFileError, match=r"missing\.yaml: file not found"):
        load_suite(tmp_path / "missing.yaml")


def test_model_target_needs_its_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MY_KEY", raising=False)
    path = write(tmp_path / "c.yaml", """
        cases:
          - name: m
            model: claude-test
            api_key_env: MY_KEY
            prompt: hi
    """)
    with pytest.raises(InputFileError, match=r"c.yaml:3: cases\[0\].model: environment "
                                             r"variable MY_KEY is not set"):
        load_suite(path)
    monkeypatch.setenv("MY_KEY", "sk-ant-test")
    assert load_suite(path).cases[0].target.model == "claude-test"


def test_durations() -> None:
    assert [parse_duration(t) for t in ("30s", "15m", "1h", "1.5h", "2d", "500ms")] == [
        30, 900, 3600, 5400, 172800, 0.5]
    for bad in ("1x", "0s", "h", "-1s"):
        with pytest.raises(ValueError, match="30s, 15m, 1h"):
            parse_duration(bad)


# -- the command, as a subprocess ---------------------------------------------------------


ALL_KINDS = '''
defaults:
  callable: "cz_targets:extract"
cases:
  - name: fields_pass
    prompt: "Invoice issued 03/04/2024"
    expect: {fields: {date: "2024-04-03", "items[0].sku": A1}}
  - name: fields_fail
    prompt: p
    expect: {fields: {date: 2024-03-04}}
  - name: regex_pass
    prompt: p
    expect: {regex: '"date": "(\\d{4})-'}
  - name: regex_fail
    prompt: p
    expect: {regex: '\\d{2}/\\d{2}/\\d{4}'}
  - name: schema_pass
    prompt: p
    expect:
      json_schema: {type: object, required: [date, total], properties: {total: {type: number}}}
  - name: schema_fail
    prompt: p
    expect:
      json_schema: {type: object, required: [currency]}
  - name: number_pass
    callable: "cz_targets:async_extract"
    prompt: p
    expect: {number: {path: total, value: 12.5, tolerance: 0.01}}
  - name: number_fail
    prompt: p
    expect: {number: {path: total, value: 12.5, tolerance: 0.001}}
  - name: contains_pass
    callable: "cz_targets:chat"
    messages: [{role: system, content: be brief}, {role: user, content: hello}]
    expect: {contains: ["user:hello", "system:be brief"], not_contains: assistant}
  - name: contains_fail
    callable: "cz_targets:chat"
    messages: [{role: user, content: hello}]
    expect: {contains: goodbye}
  - name: not_contains_fail
    prompt: p
    expect: {not_contains: "2024"}
  - name: predicate_pass
    prompt: p
    expect: {predicate: "cz_targets:has_date"}
  - name: predicate_fail
    prompt: p
    expect: {predicate: ["cz_targets:has_date", "cz_targets:never", "cz_targets:explodes"]}
  - name: target_error
    callable: "cz_targets:boom"
    prompt: p
  - name: target_timeout
    callable: "cz_targets:slow"
    timeout_s: 0.3
    prompt: p
  - name: nested_spans
    callable: "cz_targets:nested"
    prompt: p
    expect: {contains: nested}
'''


def test_run_reports_each_expectation_kind(tmp_path: Path, mods: Path) -> None:
    write(tmp_path / "canaries.yaml", ALL_KINDS)
    result = vigil("canary", "run", "canaries.yaml", "--json", cwd=tmp_path, mods=mods)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    [run] = runs(result.stdout)
    by_case = {r["case"]: r for r in run["results"]}
    assert {c: r["result"] for c, r in by_case.items()} == {
        "fields_pass": "pass", "fields_fail": "fail", "regex_pass": "pass",
        "regex_fail": "fail", "schema_pass": "pass", "schema_fail": "fail",
        "number_pass": "pass", "number_fail": "fail", "contains_pass": "pass",
        "contains_fail": "fail", "not_contains_fail": "fail", "predicate_pass": "pass",
        "predicate_fail": "fail", "target_error": "error", "target_timeout": "error",
        "nested_spans": "pass",
    }

    def failed(case: str) -> list[str]:
        return [f["expectation"] for f in by_case[case]["failures"]]

    assert failed("fields_fail") == ["fields.date"]  # YAML date 2024-03-04 read as a string
    assert by_case["fields_fail"]["failures"][0]["message"] == \
        'expected "2024-03-04", got "2024-04-03"'
    assert failed("predicate_fail") == ["predicate[1]", "predicate[2]"]
    assert failed("number_fail") == ["number"]
    assert by_case["number_pass"]["values"] == {"total": 12.5}
    assert by_case["regex_pass"]["values"] == {"regex[0]": "2024"}
    assert by_case["target_error"]["error"] == "RuntimeError: backend down"
    assert by_case["target_timeout"]["error"] == "timed out after 0.3s"
    assert run["changes"] == [] and run["previous_time_ns"] is None

    s = store(tmp_path)
    scores = {sc.name: sc for sc in s.read("scores")}
    assert set(scores) == {f"canary:{c}" for c in by_case}
    for case, r in by_case.items():
        score = scores[f"canary:{case}"]
        assert (score.kind, score.source, score.feature) == ("canary", "canary", "canary")
        assert score.value == (1.0 if r["passed"] else 0.0)
        assert score.label == ("pass" if r["passed"] else "fail")
        assert score.metadata["failed"] == r["failures"]
        assert score.metadata["suite"] == "canaries"
    assert scores["canary:fields_pass"].metadata["values"] == {
        "date": "2024-04-03", "items[0].sku": "A1"}
    spans = list(s.read("spans"))
    canary = {sp.name: sp for sp in spans if sp.name.startswith("canary:")}
    assert set(canary) == {f"canary:{c}" for c in by_case}
    assert all(sp.kind == "chain" and sp.feature == "canary" for sp in canary.values())
    assert scores["canary:fields_pass"].span_id == canary["canary:fields_pass"].id
    assert canary["canary:target_error"].status == "error"
    inner = next(sp for sp in spans if sp.name == "inner-step")
    assert inner.parent_id == canary["canary:nested_spans"].id  # context crossed the thread
    [rate] = [m for m in s.read("metrics") if m.name == "canary.pass_rate"]
    assert rate.value == pytest.approx(7 / 16) and rate.labels["suite"] == "canaries"
    assert list(s.read("alerts")) == []


SUITE = '''
name: dates
cases:
  - name: exact_date
    callable: "cz_targets:extract"
    prompt: "Invoice issued 03/04/2024"
    expect: {fields: {date: "2024-04-03"}, number: {path: total, value: 12.5, tolerance: 0.01}}
  - name: any_iso_date
    callable: "cz_targets:async_extract"
    prompt: "Invoice issued 03/04/2024"
    expect: {regex: '"date": "(?P<date>[0-9-]+)"'}
  - name: steady
    callable: "cz_targets:chat"
    messages: [{role: user, content: hello}]
    expect: {contains: hello}
'''


def test_changes_between_runs_alert(tmp_path: Path, mods: Path) -> None:
    write(tmp_path / "canaries.yaml", SUITE)
    first = vigil("canary", "run", "canaries.yaml", cwd=tmp_path, mods=mods)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "first run of dates" in first.stdout and "3/3 passed" in first.stdout

    second = vigil("canary", "run", "canaries.yaml", cwd=tmp_path, mods=mods,
                   env={"CZ_TRANSPOSE": "1"})
    assert second.returncode == 1, second.stderr
    assert "changes since the last run" in second.stdout
    assert "2/3 passed, 1 failed, 2 changed, 2 alert(s) sent" in second.stdout
    alerts = {a.labels["case"]: a for a in store(tmp_path).read("alerts")}
    assert set(alerts) == {"exact_date", "any_iso_date"}
    assert alerts["exact_date"].rule == "canary_change"
    assert alerts["exact_date"].severity == "error"  # pass -> fail
    assert alerts["exact_date"].message == (
        'canary dates/exact_date changed since the last run: status: pass -> fail; '
        'date: "2024-04-03" -> "2024-03-04"')
    # still passing, but the extracted date moved: only the value comparison sees it
    assert alerts["any_iso_date"].severity == "warning"
    assert alerts["any_iso_date"].message.endswith('date: "2024-04-03" -> "2024-03-04"')
    assert alerts["any_iso_date"].labels["suite"] == "dates"

    scores = [sc for sc in store(tmp_path).read("scores") if sc.name == "canary:exact_date"]
    assert [sc.label for sc in scores] == ["pass", "fail"]
    assert scores[1].metadata["values"]["date"] == "2024-03-04"
    with History(tmp_path / ".vigil" / "vigil.db") as history:
        assert history.run_count("dates") == 2
        assert history.last_results("dates")["any_iso_date"].values == {"date": "2024-03-04"}


def test_bad_input_exits_2_with_the_line(tmp_path: Path, mods: Path) -> None:
    path = write(tmp_path / "canaries.yaml", BAD)
    result = vigil("canary", "run", "canaries.yaml", cwd=tmp_path, mods=mods)
    assert result.returncode == 2
    assert (f"canaries.yaml:{line_of(path.read_text(), '(unclosed')}: "
            "cases[2].expect.regex[1]: invalid regular expression") in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / ".vigil").exists()  # nothing ran, nothing was recorded


def test_model_target_against_a_local_messages_api(tmp_path: Path) -> None:
    with AnthropicServer(Script(chunks=['{"date": ', '"2024-04-03", "total": 12.5}'],
                                model="claude-test-20250101")) as server:
        write(tmp_path / "canaries.yaml", f"""
            name: model
            defaults:
              model: claude-test
              base_url: "{server.url}"
              max_tokens: 64
            cases:
              - name: via_model
                temperature: 0
                system: Answer with JSON only.
                prompt: "Invoice issued 03/04/2024, total 12.50"
                expect: {{fields: {{date: "2024-04-03"}}, number: {{path: total, value: 12.5}}}}
              - name: via_messages
                messages:
                  - {{role: system, content: Be terse.}}
                  - {{role: user, content: Hello}}
                expect: {{contains: "2024-04-04"}}
        """)
        result = vigil("canary", "run", "canaries.yaml", "--json", cwd=tmp_path,
                       env={"ANTHROPIC_API_KEY": "sk-ant-test"})
        requests = list(server.requests)
    assert result.returncode == 1, result.stderr
    [run] = runs(result.stdout)
    assert [r["result"] for r in run["results"]] == ["pass", "fail"]
    bodies = sorted((r.body for r in requests), key=lambda b: b["system"])
    assert bodies[0] == {"model": "claude-test", "max_tokens": 64, "temperature": 0.0,
                         "system": "Answer with JSON only.",
                         "messages": [{"role": "user",
                                       "content": "Invoice issued 03/04/2024, total 12.50"}]}
    assert bodies[1]["system"] == "Be terse." and "temperature" not in bodies[1]
    assert bodies[1]["messages"] == [{"role": "user", "content": "Hello"}]
    assert all(r.headers.get("x-api-key") == "sk-ant-test" or
               r.headers.get("authorization") == "Bearer sk-ant-test" for r in requests)
    spans = list(store(tmp_path).read("spans"))
    canary = next(sp for sp in spans if sp.name == "canary:via_model")
    llm = next(sp for sp in spans if sp.kind == "llm" and sp.parent_id == canary.id)
    assert llm.model == "claude-test" and llm.response_model == "claude-test-20250101"
    assert llm.feature == "canary"


def test_scheduler_runs_until_max_runs(tmp_path: Path, mods: Path) -> None:
    write(tmp_path / "canaries.yaml", SUITE)
    started = time.monotonic()
    result = vigil("canary", "run", "canaries.yaml", "--every", "1s", "--max-runs", "2",
                   "--json", cwd=tmp_path, mods=mods)
    assert result.returncode == 0, result.stderr
    first, second = runs(result.stdout)
    assert (second["time_ns"] - first["time_ns"]) / 1e9 >= 0.95
    assert time.monotonic() - started >= 1.0
    assert second["previous_time_ns"] == first["time_ns"] and second["changes"] == []
    assert len([sc for sc in store(tmp_path).read("scores") if sc.kind == "canary"]) == 6


def test_scheduler_stops_cleanly_on_ctrl_c(tmp_path: Path, mods: Path) -> None:
    write(tmp_path / "canaries.yaml", SUITE)
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmvigil.core.cli_canary", "canary", "run", "canaries.yaml",
         "--every", "1h", "--json"], cwd=tmp_path, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": f"{mods}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the first run finished; now it sleeps for an hour
        assert json.loads(line)["passed"] == 3
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped after 1 run(s)" in err and "Traceback" not in err
    assert len([sc for sc in store(tmp_path).read("scores") if sc.kind == "canary"]) == 3


def test_shipped_example_catches_the_silent_update(tmp_path: Path) -> None:
    example = str(EXAMPLES / "canaries.yaml")
    first = vigil("canary", "run", example, cwd=tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    second = vigil("canary", "run", example, "--json", cwd=tmp_path,
                   env={"CANARY_SILENT_UPDATE": "1"})
    assert second.returncode == 1
    [run] = runs(second.stdout)
    changed = {(c["case"], c["key"]): (c["before"], c["after"]) for c in run["changes"]}
    assert changed[("invoice_date_eu", "date")] == ("2024-04-03", "2024-03-04")
    assert changed[("invoice_date_late_month", "date")] == ("2023-12-11", "2023-11-12")


def test_concurrency_limit_holds_for_sync_and_async_targets(tmp_path: Path,
                                                           memory: Any) -> None:
    import asyncio
    import threading

    from llmvigil.core.canary import run_suite

    state = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def enter() -> None:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])

    def leave() -> None:
        with lock:
            state["now"] -= 1

    def sync_target(prompt: str) -> str:
        enter()
        time.sleep(0.15)
        leave()
        return prompt

    async def async_target(prompt: str) -> str:
        enter()
        await asyncio.sleep(0.15)
        leave()
        return prompt

    mod = type(sys)("cz_conc")
    mod.sync_target, mod.async_target = sync_target, async_target  # type: ignore[attr-defined]
    sys.modules["cz_conc"] = mod
    cases = "\n".join(f"  - {{name: c{i}, prompt: p{i}, callable: 'cz_conc:"
                      f"{'sync' if i % 2 else 'async'}_target', expect: {{contains: p{i}}}}}"
                      for i in range(8))
    suite = load_suite(write(tmp_path / "c.yaml", f"concurrency: 3\ncases:\n{cases}\n"))
    started = time.monotonic()
    results = asyncio.run(run_suite(suite))
    elapsed = time.monotonic() - started
    assert [r.passed for r in results] == [True] * 8
    assert state["peak"] == 3
    assert elapsed >= 3 * 0.15  # at most 3 at once: ceil(8/3) = 3 waves of 0.15 s
    state["peak"] = 0
    asyncio.run(run_suite(suite, concurrency=1))
    assert state["peak"] == 1
    del sys.modules["cz_conc"]
