"""The ``custom`` check: a Python function, named in YAML or registered from code."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Literal

from pydantic import Field

from ..errors import ConfigError
from .base import MISSING, Check, CheckSpec, Evaluator, Subject

__all__ = ["CustomSpec"]

def _call_user(fn: Callable[..., Any], with_input: bool) -> Evaluator:
    def custom(value: Any, subject: Subject) -> bool | float | None:
        if value is MISSING:
            return None
        out = fn(value, subject.input) if with_input else fn(value)
        if out is None or isinstance(out, bool):
            return out
        if isinstance(out, (int, float)):
            return float(out)
        raise TypeError(f"a check must return bool, a number or None, got {type(out).__name__}")

    return custom


class CustomSpec(CheckSpec):
    """``custom``: a Python function ``module:attr`` returning bool (pass) or a number.

    Called as ``fn(output)`` (the field, when ``field`` is set), or
    ``fn(output, input)`` with ``with_input: true``.
    """

    function: str = Field(pattern=r"^[\w.]+:[\w.]+$")
    with_input: bool = False
    kind: Literal["auto", "rate", "value"] = "auto"

    def evaluator(self, where: str) -> Evaluator:
        module_name, _, attr = self.function.partition(":")
        try:
            obj: Any = importlib.import_module(module_name)
            for part in attr.split("."):
                obj = getattr(obj, part)
        except Exception as exc:
            raise ConfigError(f"{where}.function: cannot import {self.function!r}: "
                              f"{type(exc).__name__}: {exc}") from None
        if not callable(obj):
            raise ConfigError(f"{where}.function: {self.function!r} is not callable")
        return _call_user(obj, self.with_input)

    def build(self, where: str) -> Check:
        return Check(self.name, self.evaluator(where), kind=self.kind, field=self.field,
                     on=self.on, alternative=self.alternative,
                     expected_fail_rate=self.expected_fail_rate, type=self.type)
