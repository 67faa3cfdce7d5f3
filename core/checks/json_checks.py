"""The JSON checks ``json_parses``, ``json_schema`` and ``field_count``."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

from pydantic import model_validator

from ..errors import ConfigError
from .base import (
    MISSING,
    UNPARSEABLE,
    CheckSpec,
    Evaluator,
    Kind,
    Subject,
    is_truncated,
    parse_json_text,
)

__all__ = ["FieldCountSpec", "JsonParsesSpec", "JsonSchemaSpec"]

def _json_value(value: Any, subject: Subject, field: str | None, strip: bool) -> Any:
    """The JSON data a JSON check reads, ``UNPARSEABLE``, or ``MISSING``."""
    if value is MISSING or (value is None and field is None):
        return MISSING
    if isinstance(value, str):
        if is_truncated(value):
            return MISSING  # cut by the capture limits: cannot tell
        if field is None and strip:
            parsed = subject.parsed()
            return MISSING if parsed is MISSING else parsed
        return parse_json_text(value, strip)
    return value


class JsonParsesSpec(CheckSpec):
    """``json_parses``: the output (or field) is valid JSON (code fences allowed)."""

    strip_fences: bool = True

    def evaluator(self, where: str) -> Evaluator:
        field, strip = self.field, self.strip_fences

        def json_parses(value: Any, subject: Subject) -> bool | None:
            data = _json_value(value, subject, field, strip)
            if data is MISSING:
                return None
            return data is not UNPARSEABLE

        return json_parses


# "schema" shadows a deprecated BaseModel method; it is the natural key name here.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", "Field name \"schema\"", UserWarning)

    class JsonSchemaSpec(CheckSpec):
        """``json_schema``: the output (or field) parses and validates against a JSON schema.

        Give the schema inline (``schema:``) or as a file (``schema_file:``, JSON or
        YAML). Needs the ``jsonschema`` package.
        """

        schema: dict[str, Any] | None = None  # type: ignore[assignment]
        schema_file: str | None = None
        strip_fences: bool = True

        @model_validator(mode="after")
        def _one(self) -> JsonSchemaSpec:
            if (self.schema is None) == (self.schema_file is None):
                raise ValueError("give exactly one of schema or schema_file")
            return self

        def evaluator(self, where: str) -> Evaluator:
            try:
                import jsonschema
            except ImportError:
                raise ConfigError(f"{where}: json_schema checks need the 'jsonschema' package: "
                                  "pip install jsonschema") from None
            schema = self.schema
            if schema is None:
                schema = _load_schema_file(str(self.schema_file), where)
            cls = jsonschema.validators.validator_for(schema)
            try:
                cls.check_schema(schema)
            except jsonschema.SchemaError as exc:
                raise ConfigError(f"{where}.schema: invalid JSON schema: {exc.message}") from None
            validator = cls(schema)
            field, strip = self.field, self.strip_fences

            def json_schema(value: Any, subject: Subject) -> bool | None:
                data = _json_value(value, subject, field, strip)
                if data is MISSING:
                    return None
                if data is UNPARSEABLE:
                    return False
                return bool(validator.is_valid(data))

            return json_schema


def _load_schema_file(path: str, where: str) -> dict[str, Any]:
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{where}.schema_file: cannot read {path!r}: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{where}.schema_file: {path!r} does not hold a JSON schema object")
    return data


class FieldCountSpec(CheckSpec):
    """``field_count``: how many fields the output (or field) holds, as a number.

    A mapping counts its keys (``count: non_empty``: only keys whose value is not
    null, ``""``, ``[]`` or ``{}``); a list counts its items likewise. An output that
    is not JSON counts 0.
    """

    count: Literal["non_empty", "keys"] = "non_empty"
    strip_fences: bool = True
    result_kind: ClassVar[Kind] = "value"

    def evaluator(self, where: str) -> Evaluator:
        non_empty, field, strip = self.count == "non_empty", self.field, self.strip_fences

        def field_count(value: Any, subject: Subject) -> float | None:
            data = _json_value(value, subject, field, strip)
            if data is MISSING:
                return None
            if isinstance(data, Mapping):
                items: list[Any] = list(data.values())
            elif isinstance(data, list):
                items = data
            else:
                return 0.0
            if non_empty:
                return float(sum(1 for v in items if v not in (None, "", [], {})))
            return float(len(items))

        return field_count
