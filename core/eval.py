"""Golden-set evaluation: score a target against reference outputs, alert on a drop.

A golden set is a list of ``{input, reference}`` items (JSON lines, or YAML with the
target and scorer settings). :func:`run_eval` runs the target on every input, scores
each output against its reference with a scorer (built-in or ``module:function``),
publishes a Score per item and the mean as the Metric ``eval.<name>.mean_score``,
and compares the mean with the stored baseline (the first run's, or the one set with
``set_baseline``): a drop larger than ``margin`` fires the Alert ``eval_regression``.

Built-in scorers, each returning a number in [0, 1]:

- ``exact``: 1 if the output equals the reference (text compared after trimming and
  collapsing whitespace; a non-string reference is compared with the JSON output).
- ``contains``: the share of the reference strings found in the output.
- ``json_fields``: the share of the reference's ``{path: value}`` fields the JSON
  output has with exactly that value.
- ``numeric_tolerance``: 1 if the number (at ``path``, or the whole output) is within
  ``tolerance`` of the reference number.
- ``token_f1``: SQuAD-style token F1 between output and reference (lowercased word
  tokens, multiset overlap); with a list of references, the best one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError

from . import capture
from .canary.expectations import (
    NotJSON,
    as_text,
    get_path,
    json_equal,
    parse_json,
    parse_number,
)
from .canary.history import Baseline, History
from .canary.runner import Targets
from .canary.spec import Problems, TargetFields, TargetSpec, read_yaml, resolve_import
from .config import _show
from .errors import InputFileError
from .model import Alert, Metric, Score, new_span_id, now_ns

__all__ = [
    "BUILTIN_SCORERS",
    "EvalOptions",
    "EvalReport",
    "GoldenItem",
    "GoldenSet",
    "ItemResult",
    "ScorerFn",
    "contains",
    "exact",
    "json_fields",
    "load_golden",
    "numeric_tolerance",
    "run_eval",
    "token_f1",
]

ScorerFn = Callable[..., Any]
_WORD = re.compile(r"\w+")
_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")


# -- scorers -------------------------------------------------------------------------


def _norm(text: str, ignore_case: bool) -> str:
    text = " ".join(text.split())
    return text.lower() if ignore_case else text


def exact(output: Any, reference: Any, *, ignore_case: bool = False) -> float:
    """1.0 if ``output`` equals ``reference``, else 0.0.

    Strings compare after trimming and collapsing whitespace (and case, with
    ``ignore_case``); any other reference compares with the output read as JSON.
    """
    if isinstance(reference, str):
        return float(_norm(as_text(output), ignore_case) == _norm(reference, ignore_case))
    try:
        return float(json_equal(parse_json(output), reference))
    except NotJSON:
        return 0.0


def contains(output: Any, reference: Any, *, ignore_case: bool = False) -> float:
    """The share of the reference string(s) that appear in the output."""
    needles = [reference] if isinstance(reference, str) else list(reference)
    if not needles:
        return 1.0
    text = _norm(as_text(output), ignore_case)
    return sum(_norm(str(n), ignore_case) in text for n in needles) / len(needles)


def json_fields(output: Any, reference: Mapping[str, Any]) -> float:
    """The share of ``{path: value}`` reference fields the JSON output matches exactly."""
    if not reference:
        return 1.0
    try:
        data = parse_json(output)
    except NotJSON:
        return 0.0
    hits = 0
    for path, expected in reference.items():
        with contextlib.suppress(KeyError):  # a missing field scores 0
            hits += json_equal(get_path(data, path), expected)
    return hits / len(reference)


def numeric_tolerance(output: Any, reference: Any, *, path: str | None = None,
                      tolerance: float = 0.0, relative: bool = False) -> float:
    """1.0 if the output's number is within ``tolerance`` of the reference number.

    ``path`` picks the number in the JSON output; without it the whole output is the
    number. ``relative`` makes ``tolerance`` a fraction of the reference.
    """
    expected = parse_number(reference)
    try:
        raw = get_path(parse_json(output), path) if path else (
            output if not isinstance(output, str) else output.strip())
        actual = parse_number(raw)
    except (NotJSON, KeyError, ValueError):
        return 0.0
    allowed = tolerance * abs(expected) if relative else tolerance
    return float(abs(actual - expected) <= allowed + 1e-9 * max(1.0, abs(expected)))


def _f1(predicted: list[str], truth: list[str]) -> float:
    if not predicted or not truth:
        return float(predicted == truth)
    overlap = sum((Counter(predicted) & Counter(truth)).values())
    if not overlap:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(truth)
    return 2 * precision * recall / (precision + recall)


def token_f1(output: Any, reference: Any) -> float:
    """Token-level F1 (lowercased ``\\w+`` tokens, counted with multiplicity); with a
    list of references, the best F1 among them."""
    predicted = _WORD.findall(as_text(output).lower())
    refs = reference if isinstance(reference, list) else [reference]
    return max(_f1(predicted, _WORD.findall(str(r).lower())) for r in refs) if refs else 0.0


class _Params(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class _CaseParams(_Params):
    ignore_case: bool = False


class _NumericParams(_Params):
    path: str | None = None
    tolerance: float = Field(default=0.0, ge=0)
    relative: bool = False


def _text_reference(ref: Any) -> str | None:
    if isinstance(ref, str) or (isinstance(ref, list) and all(isinstance(r, str) for r in ref)):
        return None
    return f"expected a string or a list of strings, got {_show(ref, ())}"


def _mapping_reference(ref: Any) -> str | None:
    if isinstance(ref, dict):
        return None
    return f"expected a mapping of JSON path -> value, got {_show(ref, ())}"


def _number_reference(ref: Any) -> str | None:
    try:
        parse_number(ref)
    except ValueError as exc:
        return str(exc)
    return None


@dataclass(frozen=True)
class _Builtin:
    fn: ScorerFn
    params: type[_Params]
    check_reference: Callable[[Any], str | None] | None = None


#: The built-in scorers by name: function, parameters model, reference check.
BUILTIN_SCORERS: dict[str, _Builtin] = {
    "exact": _Builtin(exact, _CaseParams),
    "contains": _Builtin(contains, _CaseParams, _text_reference),
    "json_fields": _Builtin(json_fields, _Params, _mapping_reference),
    "numeric_tolerance": _Builtin(numeric_tolerance, _NumericParams, _number_reference),
    "token_f1": _Builtin(token_f1, _Params, _text_reference),
}


# -- the golden-set file ---------------------------------------------------------------


def _scorer_mapping(value: Any) -> Any:
    return {"name": value} if isinstance(value, str) else value


class ScorerSpec(BaseModel):
    """``scorer:`` a name (``token_f1``, ``module:function``) or a mapping with ``name``
    and the scorer's parameters (``{name: numeric_tolerance, tolerance: 0.01}``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str = Field(min_length=1)

    @property
    def params(self) -> dict[str, Any]:
        """The scorer's parameters (every key but ``name``)."""
        return dict(self.model_extra or {})


def _item_id(value: Any) -> Any:
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


class Item(BaseModel):
    """One golden item: ``input`` for the target, ``reference`` for the scorer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str | None, BeforeValidator(_item_id)] = None
    input: Any = Field()
    reference: Any = Field()
    metadata: dict[str, Any] = {}


class EvalFile(TargetFields):
    """A YAML golden-set file: the target (like a canary's), the scorer, the margin,
    and ``items`` or ``items_file`` (JSON lines, relative to this file)."""

    name: str | None = Field(default=None, min_length=1)
    feature: str = Field(default="eval", min_length=1)
    scorer: Annotated[ScorerSpec, BeforeValidator(_scorer_mapping)] = ScorerSpec(name="exact")
    margin: float = Field(default=0.05, ge=0)
    concurrency: int = Field(default=4, gt=0)
    items: list[Item] | None = None
    items_file: str | None = None


@dataclass(frozen=True)
class EvalOptions:
    """Command-line settings that override the file's."""

    target: str | None = None
    model: str | None = None
    base_url: str | None = None
    scorer: str | None = None
    scorer_params: Mapping[str, Any] = field(default_factory=dict)
    margin: float | None = None
    name: str | None = None
    concurrency: int | None = None


@dataclass(frozen=True)
class GoldenItem:
    """A validated item; ``id`` is its own or its position (``#1``...)."""

    id: str
    input: Any
    reference: Any
    where: str


@dataclass(frozen=True)
class GoldenSet:
    """A validated golden set, ready to evaluate."""

    name: str
    path: str
    feature: str
    target: TargetSpec
    scorer_name: str
    scorer: ScorerFn
    scorer_params: Mapping[str, Any]
    margin: float
    concurrency: int
    items: tuple[GoldenItem, ...]

    def score(self, output: Any, reference: Any) -> float:
        """Score one output; raises when the scorer fails or returns a non-number."""
        value = self.scorer(output, reference, **self.scorer_params)
        if isinstance(value, bool):
            return float(value)
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise TypeError(f"scorer {self.scorer_name} returned {value!r}, expected a "
                            "finite number")
        return float(value)


def _jsonl_items(path: Path, label: str, problems: Problems) -> list[tuple[int, Any]]:
    """``(line, item data)`` of a JSON-lines file; bad lines are noted in ``problems``."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputFileError(f"{label}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise InputFileError(f"{label}: cannot read: {exc}") from None
    out: list[tuple[int, Any]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((number, json.loads(line)))
        except ValueError as exc:
            bad = Problems(label, line=number)
            bad.add((), f"invalid JSON: {exc}")
            problems.extend(bad)
    return out


def _check_items(raw: Sequence[tuple[Problems, tuple[Any, ...], Any]],
                 check_reference: Callable[[Any], str | None] | None) -> list[GoldenItem]:
    """Validate item data; each comes with the Problems (file, line) and loc to report at."""
    items: list[GoldenItem] = []
    seen: dict[str, str] = {}
    for position, (problems, loc, data) in enumerate(raw, start=1):
        try:
            item = Item.model_validate(data)
        except ValidationError as exc:
            problems.add_validation(exc, Item, loc)
            continue
        item_id = item.id or f"#{position}"
        if item_id in seen:
            problems.add((*loc, "id"), f"duplicate item id {item_id!r}, already used at "
                                       f"{seen[item_id]}")
            continue
        seen[item_id] = problems.where(loc)
        if check_reference is not None:
            problem = check_reference(item.reference)
            if problem:
                problems.add((*loc, "reference"), problem)
                continue
        items.append(GoldenItem(item_id, item.input, item.reference, problems.where(loc)))
    return items


def load_golden(path: str | Path, options: EvalOptions | None = None) -> GoldenSet:
    """Read and validate a golden set: a ``.jsonl`` file of items (target and scorer
    from ``options``) or a YAML file with settings and items.

    Raises:
        InputFileError: anything wrong, one ``file:line: key: problem`` line each.
    """
    options = options or EvalOptions()
    file = Path(path)
    label = str(path)
    search = (str(file.resolve().parent),)
    problems = Problems(label, None)
    raw: list[tuple[Problems, tuple[Any, ...], Any]] = []
    if file.suffix.lower() in (".jsonl", ".ndjson"):
        spec = EvalFile()
        for line, data in _jsonl_items(file, label, problems):
            raw.append((Problems(label, None, line=line), (), data))
    else:
        data, root = read_yaml(file, label)
        problems = Problems(label, root)
        if isinstance(data, list):
            data = {"items": data}
        if not isinstance(data, dict):
            problems.add((), f"expected a mapping with 'items:' or a list of items, got "
                             f"{_show(data, ())}")
            raise problems.error()
        items_data = data.get("items")
        try:
            spec = EvalFile.model_validate({**data, "items": None})
        except ValidationError as exc:
            problems.add_validation(exc, EvalFile)
            raise problems.error() from None
        if (items_data is None) == (spec.items_file is None):
            problems.add((), "give exactly one of 'items' or 'items_file'")
        elif not isinstance(items_data, (list, type(None))):
            problems.add(("items",), f"expected a list of items, got {_show(items_data, ())}")
        elif items_data is not None:
            raw = [(problems, ("items", i), d) for i, d in enumerate(items_data)]
        elif spec.items_file is not None:
            items_path = (file.parent / spec.items_file)
            items_label = str(items_path)
            for line, d in _jsonl_items(items_path, items_label, problems):
                raw.append((Problems(items_label, None, line=line), (), d))
    scorer_name = options.scorer or spec.scorer.name
    params = {**(spec.scorer.params if not options.scorer else {}),
              **dict(options.scorer_params)}
    scorer_fn, check = _resolve_scorer(scorer_name, params, problems, search,
                                       from_cli=options.scorer is not None)
    items = _check_items(raw, check)
    target = _target(spec, options, label, problems, search)
    for sub in {id(p): p for p, _, _ in raw}.values():
        if sub is not problems:
            problems.extend(sub)
    if not problems and not items:
        problems.add((), "no items to evaluate")
    problems.raise_if_any()
    assert scorer_fn is not None
    return GoldenSet(
        name=options.name or spec.name or file.stem, path=label, feature=spec.feature,
        target=target, scorer_name=scorer_name, scorer=scorer_fn, scorer_params=params,
        margin=spec.margin if options.margin is None else options.margin,
        concurrency=options.concurrency or spec.concurrency, items=tuple(items),
    )


def _resolve_scorer(name: str, params: dict[str, Any], problems: Problems,
                    search: tuple[str, ...], *, from_cli: bool
                    ) -> tuple[ScorerFn | None, Callable[[Any], str | None] | None]:
    """The scorer function and its reference check; ``params`` are validated in place."""
    where = Problems("command line") if from_cli else problems
    loc: tuple[Any, ...] = ("scorer",)
    fn: ScorerFn | None = None
    check: Callable[[Any], str | None] | None = None
    builtin = BUILTIN_SCORERS.get(name)
    if builtin is not None and params and not builtin.params.model_fields:
        where.add(loc, f"the {name} scorer takes no parameters, got "
                       f"{', '.join(sorted(params))}")
    elif builtin is not None:
        try:
            valid = builtin.params.model_validate(params).model_dump()
        except ValidationError as exc:
            where.add_validation(exc, builtin.params, loc)
        else:
            params.clear()
            params.update(valid)
            fn, check = builtin.fn, builtin.check_reference
    elif not _IMPORT_PATH.match(name):
        where.add(loc, f"unknown scorer {name!r}; built-in scorers: "
                       f"{', '.join(BUILTIN_SCORERS)}, or 'module:function' for your own")
    else:
        try:
            fn = resolve_import(name, search)
        except ValueError as exc:
            where.add(loc, str(exc))
    if where is not problems:
        problems.extend(where)
    return fn, check


def _target(spec: EvalFile, options: EvalOptions, label: str, problems: Problems,
            search: tuple[str, ...]) -> TargetSpec:
    """The file's target with the command line's ``--target``/``--model``/``--base-url``."""
    target = TargetSpec.merge(spec)
    cli = Problems("command line")
    if options.target is not None and options.model is not None:
        cli.add(("target",), "give --target or --model, not both")
    elif options.target is not None and not _IMPORT_PATH.match(options.target):
        cli.add(("target",), f"expected 'module:function', got {options.target!r}")
    elif options.target is not None:
        target = _replace(target, callable=options.target, model=None)
    elif options.model is not None:
        target = _replace(target, model=options.model, callable=None)
    if options.base_url is not None:
        target = _replace(target, base_url=options.base_url)
    if cli:
        problems.extend(cli)
        return target
    if target.callable is None and target.model is None:
        problems.add((), "no target to evaluate: give 'callable:' or 'model:' in a YAML "
                         "golden file, or --target module:function / --model NAME")
        return target
    from_cli = options.target is not None or options.model is not None
    where = cli if from_cli else problems
    resolved = target.resolve((), where, search)
    problems.extend(cli)
    return resolved


def _replace(target: TargetSpec, **changes: Any) -> TargetSpec:
    from dataclasses import replace

    return replace(target, **changes)


# -- running ----------------------------------------------------------------------------


@dataclass
class ItemResult:
    """One item's score (0 when the target or the scorer failed, with the error)."""

    id: str
    score: float
    error: str | None = None
    output: str = ""
    duration_s: float = 0.0
    trace_id: str | None = None
    span_id: str | None = None


@dataclass
class EvalReport:
    """One evaluation run against the stored baseline."""

    name: str
    run_id: str
    scorer: str
    results: list[ItemResult]
    mean: float
    margin: float
    baseline: Baseline | None
    baseline_set: bool
    alert: Alert | None = None

    @property
    def errors(self) -> list[ItemResult]:
        """Items whose target or scorer failed."""
        return [r for r in self.results if r.error]

    @property
    def drop(self) -> float | None:
        """How far the mean fell below the baseline (negative: it rose)."""
        if self.baseline is None or self.baseline_set:
            return None
        return self.baseline.mean - self.mean

    def regressed(self) -> list[tuple[str, float, float]]:
        """``(item id, baseline score, score)`` of items that scored lower than in
        the baseline run, largest drop first."""
        if self.baseline is None or self.baseline_set:
            return []
        before = self.baseline.scores
        out = [(r.id, float(before[r.id]), r.score) for r in self.results
               if r.id in before and r.score < float(before[r.id]) - 1e-12]
        return sorted(out, key=lambda t: t[2] - t[1])

    @property
    def exit_code(self) -> int:
        """1 when the mean dropped past the margin or an item failed to run, else 0."""
        return 1 if self.alert is not None or self.errors else 0


async def _score_item(item: GoldenItem, golden: GoldenSet, targets: Targets) -> ItemResult:
    result = ItemResult(item.id, 0.0)
    start = time.perf_counter()
    try:
        with capture.span(f"eval:{golden.name}", kind="chain", feature=golden.feature) as span:
            result.trace_id, result.span_id = span.trace_id, span.span_id
            span.set_input(item.input)
            span.set(tags=["eval"], metadata={"eval.dataset": golden.name,
                                              "eval.item": item.id})
            output = await asyncio.wait_for(targets.call(golden.target, item.input),
                                            timeout=golden.target.timeout_s)
            span.set_output(output)
            result.output = as_text(output)
            result.score = golden.score(output, item.reference)
            span.set(metadata={"eval.score": result.score})
    except asyncio.TimeoutError:
        result.error = f"timed out after {golden.target.timeout_s:g}s"
    except Exception as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.duration_s = time.perf_counter() - start
    return result


async def score_items(golden: GoldenSet, *, concurrency: int | None = None,
                      on_result: Callable[[ItemResult], None] | None = None
                      ) -> list[ItemResult]:
    """Run and score every item, at most ``concurrency`` at once, in item order."""
    limit = asyncio.Semaphore(concurrency or golden.concurrency)

    async def one(item: GoldenItem, targets: Targets) -> ItemResult:
        async with limit:
            result = await _score_item(item, golden, targets)
        if on_result is not None:
            on_result(result)
        return result

    async with Targets() as targets:
        return list(await asyncio.gather(*(one(i, targets) for i in golden.items)))


def run_eval(golden: GoldenSet, history: History | None, *, set_baseline: bool = False,
             concurrency: int | None = None,
             on_result: Callable[[ItemResult], None] | None = None,
             emit: Callable[[Any], None] = capture.emit) -> EvalReport:
    """Evaluate the golden set, publish the scores and the mean, check the baseline.

    The baseline is stored on the first run without errors (a run where the target
    failed would make a poor reference) or whenever ``set_baseline`` is true; it
    then stays until set again. A mean more than ``margin`` below the baseline fires
    an ``eval_regression`` Alert.
    """
    run_id = new_span_id()
    time_ns = now_ns()
    results = asyncio.run(score_items(golden, concurrency=concurrency, on_result=on_result))
    mean = sum(r.score for r in results) / len(results)
    baseline = history.baseline(golden.name) if history is not None else None
    errors = any(r.error for r in results)
    store = history is not None and (set_baseline or (baseline is None and not errors))
    report = EvalReport(golden.name, run_id, golden.scorer_name, results, mean, golden.margin,
                        baseline, baseline_set=store)
    labels = {"feature": golden.feature, "dataset": golden.name, "scorer": golden.scorer_name}
    for result in results:
        metadata: dict[str, Any] = {"dataset": golden.name, "item": result.id,
                                    "scorer": golden.scorer_name, "run_id": run_id,
                                    "output": result.output[:500]}
        if result.error:
            metadata["error"] = result.error
        emit(Score(name=f"eval:{golden.name}", kind="eval", source="eval", value=result.score,
                   trace_id=result.trace_id, span_id=result.span_id, feature=golden.feature,
                   comment=result.error, metadata=metadata))
    emit(Metric(name=f"eval.{golden.name}.mean_score", value=mean, labels=labels))
    drop = report.drop
    if baseline is not None and drop is not None and drop > golden.margin + 1e-12:
        worst = ", ".join(item for item, _, _ in report.regressed()[:5])
        report.alert = Alert(
            rule="eval_regression", severity="error",
            message=(f"eval {golden.name}: mean {golden.scorer_name} score {mean:.4f} is "
                     f"{drop:.4f} below its baseline {baseline.mean:.4f} (margin "
                     f"{golden.margin:g})" + (f"; items that regressed most: {worst}"
                                              if worst else "")),
            value=mean, threshold=baseline.mean - golden.margin, labels=labels,
        )
        emit(report.alert)
    if history is not None:
        if store:
            history.set_baseline(Baseline(golden.name, mean, len(results),
                                          {r.id: r.score for r in results}, time_ns, run_id))
        history.record_eval(golden.name, run_id, time_ns, mean, len(results))
    return report
