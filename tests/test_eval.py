"""Golden-set evaluation: scorers, file validation, baseline and drop alert."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from llmvigil.adapters.local import LocalStore
from llmvigil.core.canary import History
from llmvigil.core.errors import InputFileError
from llmvigil.core.eval import (
    EvalOptions,
    contains,
    exact,
    json_fields,
    load_golden,
    numeric_tolerance,
    run_eval,
    token_f1,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

TARGETS = '''
import json, os

def extract(prompt):
    day, month, year = prompt.split()[-1].split("/")
    if os.environ.get("CZ_TRANSPOSE"):
        day, month = month, day
    return json.dumps({"date": f"{year}-{month}-{day}", "total": 10.0})

def echo(value):
    return value

def boom(value):
    raise RuntimeError("down")

def first_word(output, reference, bonus=0.0):
    return float(str(output).split()[0] == reference) * (1 - bonus) + bonus
'''

DATES = ["03/04/2024", "25/01/2024", "07/07/2024", "11/12/2023", "30/06/2024", "01/02/2024",
         "19/09/2024", "12/03/2024", "05/05/2024", "28/02/2024"]


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text).lstrip(), encoding="utf-8")
    return path


@pytest.fixture
def mods(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "mods"
    directory.mkdir()
    write(directory / "ev_targets.py", TARGETS)
    monkeypatch.syspath_prepend(str(directory))
    sys.modules.pop("ev_targets", None)
    return directory


def golden_jsonl(path: Path) -> Path:
    lines = []
    for i, date in enumerate(DATES):
        day, month, year = date.split("/")
        lines.append(json.dumps({"id": f"doc{i}", "input": f"Invoice dated {date}",
                                 "reference": {"date": f"{year}-{month}-{day}", "total": 10}}))
    path.write_text("\n".join(lines) + "\n")
    return path


def vigil(*args: str, cwd: Path, mods: Path,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llmvigil.core.cli_canary", *args], cwd=cwd,
        capture_output=True, text=True, timeout=120,
        env={**os.environ, "COLUMNS": "200", **(env or {}),
             "PYTHONPATH": os.pathsep.join([str(mods), os.environ.get("PYTHONPATH", "")])},
    )


# -- scorers against independent computations ----------------------------------------------


def reference_f1(pred: str, truth: str) -> float:
    """SQuAD's F1 as written in its evaluation script (lowercased whitespace tokens)."""
    p, t = pred.lower().split(), truth.lower().split()
    common = Counter(p) & Counter(t)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(t)
    return 2 * precision * recall / (precision + recall)


@pytest.mark.parametrize(("pred", "truth"), [
    ("the cat sat on the mat", "the cat is on the mat"),
    ("paris", "Paris France"),
    ("a a a b", "a b b"),
    ("nothing shared", "totally different"),
    ("same words here", "here same words"),
])
def test_token_f1_matches_squad(pred: str, truth: str) -> None:
    assert token_f1(pred, truth) == pytest.approx(reference_f1(pred, truth))


def test_token_f1_by_hand_and_best_reference() -> None:
    # "a a a b" vs "a b b": overlap {a:1, b:1} = 2; P = 2/4, R = 2/3; F1 = 4/7
    assert token_f1("a a a b", "a b b") == pytest.approx(4 / 7)
    assert token_f1("Paris, France!", ["Lyon", "paris france"]) == 1.0
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_other_builtin_scorers() -> None:
    assert exact("  Hello\n world ", "Hello world") == 1.0
    assert exact("hello world", "Hello world") == 0.0
    assert exact("hello world", "Hello world", ignore_case=True) == 1.0
    assert exact('{"a": 1, "b": [1, 2]}', {"b": [1, 2], "a": 1.0}) == 1.0
    assert exact("not json", {"a": 1}) == 0.0
    assert contains("red green blue", ["green", "yellow", "blue", "pink"]) == 0.5
    assert contains("Red", "red", ignore_case=True) == 1.0
    out = json.dumps({"date": "2024-04-03", "total": 12.5, "items": [{"q": 2}]})
    assert json_fields(out, {"date": "2024-04-03", "total": 12.5, "items[0].q": 3,
                             "nope": 1}) == 0.5
    assert json_fields("garbage", {"date": "x"}) == 0.0
    assert numeric_tolerance('{"total": 12.509}', 12.5, path="total", tolerance=0.01) == 1.0
    assert numeric_tolerance('{"total": 12.52}', 12.5, path="total", tolerance=0.01) == 0.0
    assert numeric_tolerance(" 95 ", "100", tolerance=0.05, relative=True) == 1.0
    assert numeric_tolerance("94.9", 100, tolerance=0.05, relative=True) == 0.0


# -- loading and validation ------------------------------------------------------------------


def test_jsonl_errors_name_the_line(tmp_path: Path, mods: Path) -> None:
    path = tmp_path / "golden.jsonl"
    path.write_text('{"input": "a", "reference": "a"}\n\n{"input": "b"}\n{oops\n'
                    '{"input": "c", "reference": "c", "extra": 1}\n'
                    '{"id": 7, "input": "d", "reference": {"x": 1}}\n')
    with pytest.raises(InputFileError) as info:
        load_golden(path, EvalOptions(target="ev_targets:echo", scorer="token_f1"))
    assert str(info.value).splitlines() == [
        f"{path}:3: reference: required key is missing",
        f"{path}:4: invalid JSON: Expecting property name enclosed in double quotes: "
        "line 1 column 2 (char 1)",
        f"{path}:5: extra: unknown key; valid keys: id, input, reference, metadata",
        f"{path}:6: reference: expected a string or a list of strings, got a mapping",
    ]


def test_yaml_errors_and_command_line_errors(tmp_path: Path, mods: Path) -> None:
    path = write(tmp_path / "golden.yaml", """
        name: g
        callable: "ev_targets:echo"
        scorer: {name: numeric_tolerance, tolerance: -1}
        margin: 0.1
        items:
          - {input: 1, reference: 1}
    """)
    with pytest.raises(InputFileError, match=rf"^{path}:3: scorer.tolerance: Input should be "
                                             r"greater than or equal to 0, got -1$"):
        load_golden(path)
    path.write_text(path.read_text().replace("-1", "0.5").replace("reference: 1",
                                                                  "reference: lots"))
    with pytest.raises(InputFileError, match=rf"^{path}:6: items\[0\].reference: expected a "
                                             r"number, got 'lots'$"):
        load_golden(path)
    path.write_text(path.read_text().replace("lots", "2"))
    golden = load_golden(path)
    assert (golden.name, golden.margin, golden.scorer_params) == (
        "g", 0.1, {"path": None, "tolerance": 0.5, "relative": False})
    with pytest.raises(InputFileError, match=r"^command line: scorer: unknown scorer 'f2'"):
        load_golden(path, EvalOptions(scorer="f2"))
    with pytest.raises(InputFileError, match=r"^command line: target: give --target or --model"):
        load_golden(path, EvalOptions(target="a:b", model="m"))
    with pytest.raises(InputFileError, match=r"^command line: callable: cannot import module "
                                             r"'nomod_zz'"):
        load_golden(path, EvalOptions(target="nomod_zz:f"))
    jsonl = golden_jsonl(tmp_path / "g.jsonl")
    with pytest.raises(InputFileError, match=f"^{jsonl}: no target to evaluate"):
        load_golden(jsonl)


# -- running, in process ---------------------------------------------------------------------


def test_run_eval_baseline_margin_and_custom_scorer(tmp_path: Path, mods: Path,
                                                    memory: Any) -> None:
    path = write(tmp_path / "words.yaml", """
        name: words
        callable: "ev_targets:echo"
        scorer: {name: "ev_targets:first_word", bonus: 0.5}
        margin: 0.2
        items:
          - {id: a, input: "alpha beta", reference: alpha}
          - {id: b, input: "beta gamma", reference: beta}
          - {id: c, input: "gamma", reference: gamma}
          - {id: d, input: "delta", reference: delta}
    """)
    emitted: list[Any] = []
    with History(tmp_path / "h.db") as history:
        first = run_eval(load_golden(path), history, emit=emitted.append)
        assert first.mean == 1.0 and first.baseline_set and first.alert is None
        assert history.baseline("words").scores == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
        # one wrong item of four: (0.5 + 3) / 4 = 0.875, a drop of 0.125 < margin 0.2
        path.write_text(path.read_text().replace("reference: gamma", "reference: GAMMA"))
        second = run_eval(load_golden(path), history, emit=emitted.append)
        assert second.mean == pytest.approx(0.875) and second.alert is None
        assert second.regressed() == [("c", 1.0, 0.5)] and second.exit_code == 0
        # two wrong: 0.75, a drop of 0.25 > 0.2
        path.write_text(path.read_text().replace("reference: delta", "reference: x"))
        third = run_eval(load_golden(path), history, emit=emitted.append)
        assert third.mean == pytest.approx(0.75) and third.exit_code == 1
        assert third.alert is not None and third.alert.rule == "eval_regression"
        assert third.alert.threshold == pytest.approx(0.8)
        assert history.baseline("words").mean == 1.0  # a regression never moves it
        assert [round(m, 3) for _, m in history.eval_means("words")] == [1.0, 0.875, 0.75]
    scores = [r for r in emitted if type(r).__name__ == "Score"]
    assert len(scores) == 12 and {s.name for s in scores} == {"eval:words"}
    means = [r.value for r in emitted if type(r).__name__ == "Metric"]
    assert means == pytest.approx([1.0, 0.875, 0.75])


def test_run_with_errors_sets_no_first_baseline(tmp_path: Path, mods: Path,
                                                memory: Any) -> None:
    golden = load_golden(golden_jsonl(tmp_path / "g.jsonl"),
                         EvalOptions(target="ev_targets:boom", scorer="json_fields"))
    with History(tmp_path / "h.db") as history:
        report = run_eval(golden, history, emit=lambda r: None)
        assert report.mean == 0.0 and len(report.errors) == 10 and report.exit_code == 1
        assert report.errors[0].error == "RuntimeError: down"
        assert history.baseline("g") is None


def test_shipped_golden_example(tmp_path: Path, memory: Any,
                                monkeypatch: pytest.MonkeyPatch) -> None:
    options = EvalOptions(target="canary_targets:extract_invoice", scorer="json_fields")
    golden = load_golden(EXAMPLES / "golden.jsonl", options)
    with History(tmp_path / "h.db") as history:
        assert run_eval(golden, history, emit=lambda r: None).mean == 1.0
        monkeypatch.setenv("CANARY_SILENT_UPDATE", "1")
        report = run_eval(golden, history, emit=lambda r: None)
    # a transposed date costs half of an item's two fields, unless day == month
    items = [json.loads(line) for line in (EXAMPLES / "golden.jsonl").read_text().splitlines()]
    same = sum(i["reference"]["date"][5:7] == i["reference"]["date"][8:10] for i in items)
    assert report.mean == pytest.approx((len(items) - (len(items) - same) / 2) / len(items))
    assert report.alert is not None


# -- the command, as a subprocess -------------------------------------------------------------


def test_eval_command_baseline_then_drop_alert(tmp_path: Path, mods: Path) -> None:
    golden_jsonl(tmp_path / "golden.jsonl")
    args = ("eval", "golden.jsonl", "--target", "ev_targets:extract", "--scorer", "json_fields",
            "--json")
    first = vigil(*args, cwd=tmp_path, mods=mods)
    assert first.returncode == 0, first.stderr
    report = json.loads(first.stdout)
    assert report["mean"] == 1.0 and report["baseline_set"] and report["alert"] is None

    second = vigil(*args, "--margin", "0.1", cwd=tmp_path, mods=mods,
                   env={"CZ_TRANSPOSE": "1"})
    assert second.returncode == 1, second.stderr
    report = json.loads(second.stdout)
    # expected mean, computed from the data: a transposed date fails the date field (1 of 2)
    # unless day == month
    expected = sum(0.5 if d.split("/")[0] != d.split("/")[1] else 1.0 for d in DATES) / 10
    assert report["mean"] == pytest.approx(expected)
    assert report["drop"] == pytest.approx(1.0 - expected)
    assert "below its baseline 1.0000" in report["alert"]

    store = LocalStore(tmp_path / ".vigil" / "vigil.db")
    [alert] = list(store.read("alerts"))
    assert alert.rule == "eval_regression" and alert.labels["dataset"] == "golden"
    assert alert.value == pytest.approx(expected) and alert.threshold == pytest.approx(0.9)
    scores = [s for s in store.read("scores") if s.kind == "eval"]
    assert len(scores) == 20
    assert sorted(s.value for s in scores[10:]) == sorted(
        0.5 if d.split("/")[0] != d.split("/")[1] else 1.0 for d in DATES)
    metrics = [m for m in store.read("metrics") if m.name == "eval.golden.mean_score"]
    assert [m.value for m in metrics] == pytest.approx([1.0, expected])
    assert metrics[0].labels == {"feature": "eval", "dataset": "golden", "scorer": "json_fields"}

    human = vigil(*args[:-1], "--set-baseline", cwd=tmp_path, mods=mods,
                  env={"CZ_TRANSPOSE": "1"})
    assert human.returncode == 0, human.stderr
    assert "(stored as the baseline)" in human.stdout and "doc0" in human.stdout
    with History(tmp_path / ".vigil" / "vigil.db") as history:
        baseline = history.baseline("golden")
        assert baseline is not None and baseline.mean == pytest.approx(expected)


def test_eval_command_bad_input_exits_2(tmp_path: Path, mods: Path) -> None:
    (tmp_path / "golden.jsonl").write_text('{"input": "x"}\n')
    result = vigil("eval", "golden.jsonl", "--target", "ev_targets:echo", cwd=tmp_path,
                   mods=mods)
    assert result.returncode == 2
    assert "golden.jsonl:1: reference: required key is missing" in result.stderr
    assert "Traceback" not in result.stderr
