"""Decoding bytes from a topic into a typed event; one error type, ``InvalidEvent``.

Every byte that reaches a topic is treated as hostile until it has decoded. Whatever a
record holds, ``decode`` returns a valid event or raises ``InvalidEvent`` with a stable
reason code; it never raises anything else. The limits, checked in this order:

====================  ==========================================================
reason                what was refused
====================  ==========================================================
``empty``             a record with no value (a tombstone)
``too_large``         more than ``MAX_BYTES`` bytes (1 MiB, Kafka's default record size)
``invalid_utf8``      not UTF-8 (UTF-16, Latin-1, overlong forms, lone surrogates)
``invalid_json``      not JSON, a byte-order mark, NaN or Infinity, a number that does not
                      fit (over 4,300 digits, or a float beyond double range)
``too_deep``          arrays and objects nested more than ``MAX_DEPTH`` (8) deep
``duplicate_key``     an object that names a key twice (parsers disagree on which wins)
``not_an_object``     JSON that is not an object
``schema_violation``  the event's JSON Schema or typed model refused it
====================  ==========================================================

Requests come from outside and are checked against their published JSON Schema
(``schemas/request.v1.schema.json``, generated from the model; a test keeps the file and
the model equal, so the schema is built from the model here and no file is read at run
time) before the typed model sees them: the error a caller gets names the path that failed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from functools import cache
from typing import Any, TypeVar

from jsonschema import Draft202012Validator
from pydantic import ValidationError

from protege.errors import InvalidEvent
from protege.events import Event, schema_of

E = TypeVar("E", bound=Event)

MAX_BYTES = 1024 * 1024  # Kafka's default max.message.bytes is 1 MiB too
MAX_DEPTH = 8  # the deepest event (a decision's top-3 pairs inside a scored event) nests 4


@cache
def validator(name: str) -> Draft202012Validator:
    schema = schema_of(name)
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise InvalidEvent("duplicate_key", f"the key {dup[:64]!r} appears more than once in one object")
    return out


def _constant(name: str) -> Any:
    raise InvalidEvent("invalid_json", f"{name} is not JSON")


def _float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise InvalidEvent("invalid_json", f"the number {text[:40]} does not fit in a double")
    return value


def depth(value: Any) -> int:
    """How deeply arrays and objects nest in a decoded value (a scalar is 0), without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        node, level = stack.pop()
        if isinstance(node, dict):
            children: Iterable[Any] = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        deepest = max(deepest, level)
        stack.extend((c, level + 1) for c in children if isinstance(c, dict | list))
    return deepest


def parse_json(raw: bytes | None, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> dict[str, Any]:
    """A JSON object from untrusted bytes, or ``InvalidEvent``; never another exception."""
    if raw is None:
        raise InvalidEvent("empty", "the record has no value")
    if len(raw) > max_bytes:
        raise InvalidEvent("too_large", f"{len(raw)} bytes > limit {max_bytes}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidEvent("invalid_utf8", f"{e.reason} at byte {e.start} (events are UTF-8 JSON)") from e
    try:
        data = json.loads(text, object_pairs_hook=_object, parse_constant=_constant, parse_float=_float)
    except InvalidEvent:
        raise
    except RecursionError as e:
        raise InvalidEvent("too_deep", f"nested deeper than the parser can follow (limit {max_depth})") from e
    except json.JSONDecodeError as e:
        raise InvalidEvent("invalid_json", str(e)[:300]) from e
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise InvalidEvent("invalid_json", str(e)[:300]) from e
    if not isinstance(data, dict):
        raise InvalidEvent("not_an_object", f"expected a JSON object, got {type(data).__name__}")
    if (d := depth(data)) > max_depth:
        raise InvalidEvent("too_deep", f"nested {d} deep > limit {max_depth}")
    return data


def decode(model: type[E], raw: bytes | None, schema: str | None = None) -> E:
    """Decode ``raw`` into ``model``; with ``schema`` (by default the model's ``schema_name``),
    validate against that published schema first."""
    data = parse_json(raw)
    schema = schema or model.schema_name
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
