"""schemas/ is the published contract: it must match the models, and every example must
validate against both the schema file and the model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from protege.events import EVENTS, schema_of

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_schema_file_matches_model(name: str) -> None:
    on_disk = json.loads((SCHEMAS / f"{name}.v1.schema.json").read_text())
    assert on_disk == json.loads(json.dumps(schema_of(name))), f"run `protege schemas export`: {name} drifted"


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_example_validates_against_schema_and_model(name: str) -> None:
    example = json.loads((SCHEMAS / "examples" / f"{name}.json").read_text())
    schema = json.loads((SCHEMAS / f"{name}.v1.schema.json").read_text())
    Draft202012Validator.check_schema(schema)
    errors = list(Draft202012Validator(schema).iter_errors(example))
    assert not errors, errors[0].message
    EVENTS[name].model_validate(example)


def test_every_schema_has_an_example_and_no_strays() -> None:
    assert {p.name.split(".")[0] for p in SCHEMAS.glob("*.schema.json")} == set(EVENTS)
    assert {p.stem for p in (SCHEMAS / "examples").glob("*.json")} == set(EVENTS)


def test_schema_rejects_what_the_model_rejects() -> None:
    schema = json.loads((SCHEMAS / "request.v1.schema.json").read_text())
    v = Draft202012Validator(schema)
    assert not v.is_valid({"tenant": "acme", "task": "t"})  # no text
    assert not v.is_valid({"tenant": "acme", "task": "t", "text": "hi", "extra": 1})
    assert not v.is_valid({"tenant": "acme", "task": "t", "text": ""})
    assert v.is_valid({"tenant": "acme", "task": "t", "text": "hi"})


@pytest.mark.parametrize("name", sorted(EVENTS))
def test_nullable_fields_have_defaults(name: str) -> None:
    """Events go on the wire without their None fields, so each must be optional to read back."""
    for field, info in EVENTS[name].model_fields.items():
        if info.is_required():
            assert "None" not in str(info.annotation), f"{name}.{field} is nullable but required"
