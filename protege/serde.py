"""Decoding bytes from a topic into a typed event; one error type, ``InvalidEvent``.

Requests come from outside and are checked against the published JSON Schema file
(``schemas/request.v1.schema.json``) before the typed model sees them, so the error a
caller gets names the schema path that failed.
"""

from __future__ import annotations

import json
import os
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from jsonschema import Draft202012Validator
from pydantic import ValidationError

from protege.errors import InvalidEvent
from protege.events import Event

E = TypeVar("E", bound=Event)

SCHEMAS = Path(os.environ.get("PROTEGE_SCHEMAS_DIR", Path(__file__).resolve().parents[1] / "schemas"))


@cache
def validator(name: str) -> Draft202012Validator:
    path = SCHEMAS / f"{name}.v1.schema.json"
    schema = json.loads(path.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def parse_json(raw: bytes | None) -> dict[str, Any]:
    if raw is None:
        raise InvalidEvent("empty", "the record has no value")
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise InvalidEvent("invalid_utf8", str(e)) from e
    except json.JSONDecodeError as e:
        raise InvalidEvent("invalid_json", str(e)) from e
    if not isinstance(data, dict):
        raise InvalidEvent("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    return data


def decode(model: type[E], raw: bytes | None, schema: str | None = None) -> E:
    """Decode ``raw`` into ``model``; with ``schema``, validate against that schema file first."""
    data = parse_json(raw)
    if schema is not None:
        errors = sorted(validator(schema).iter_errors(data), key=lambda e: list(e.absolute_path))
        if errors:
            first = errors[0]
            where = "/".join(str(p) for p in first.absolute_path) or "(root)"
            raise InvalidEvent("schema_violation", f"{where}: {first.message}"[:500])
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise InvalidEvent("schema_violation", str(e)[:500]) from e
