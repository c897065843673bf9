from __future__ import annotations

import asyncio
import base64
import json

import pytest
import structlog
from protege_services.ingestion.__main__ import processor
from protege_services.ingestion.handler import Ingestion, SeenIds

from protege.events import DeadLetter, Ingested
from protege.kafka import Out, Record, record
from protege.settings import IngestionSettings

SETTINGS = IngestionSettings(topic_prefix="x.")
T = SETTINGS.topics


def handler() -> Ingestion:
    return Ingestion(T, max_text_chars=100, seen=SeenIds(10))


def through(h: Ingestion, records: list[Record], commit: bool = True) -> list[Out]:
    """A batch as the service's loop takes it, without Kafka: decode (dead letters), handle, commit."""
    received, letters = processor(SETTINGS, {"ticket-triage"}, h).decode(records)
    outs = letters + asyncio.run(h.handle(received))
    if commit:
        asyncio.run(h.committed(received))
    return outs


def ingest(value: bytes | dict, h: Ingestion | None = None, offset: int = 0, key: bytes | None = None) -> Out:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    [out] = through(h or handler(), [record(T.requests, raw, key, offset=offset)])
    return out


def reason(out) -> str:
    assert out.topic == T.requests_dlq
    letter = DeadLetter.model_validate_json(out.value)
    return letter.reason


GOOD = {"tenant": "acme", "task": "ticket-triage", "text": "  where\tis my\u200b order  "}


def test_valid_request_is_normalised_and_stamped() -> None:
    out = ingest(GOOD, offset=5)
    assert out.topic == T.ingested
    ev = Ingested.model_validate_json(out.value)
    assert ev.text == "where is my order"
    assert ev.request_id.startswith("req-") and out.key == ev.request_id.encode()
    assert ingest(GOOD, offset=5).key == out.key  # deterministic in the record's coordinates
    assert ingest(GOOD, offset=6).key != out.key


def test_bad_inputs_get_reasons_and_keep_the_bytes() -> None:
    out = ingest(b"\xff\xfe")
    assert reason(out) == "invalid_utf8"
    assert base64.b64decode(DeadLetter.model_validate_json(out.value).value_b64) == b"\xff\xfe"
    assert reason(ingest(b"not json")) == "invalid_json"
    assert reason(ingest(b"[1, 2]")) == "not_an_object"
    assert reason(ingest({"tenant": "acme", "task": "ticket-triage"})) == "schema_violation"
    assert reason(ingest({**GOOD, "text": 5})) == "schema_violation"
    assert reason(ingest({**GOOD, "tenant": "bad tenant!"})) == "schema_violation"
    assert reason(ingest({**GOOD, "task": "nope"})) == "unknown_task"
    assert reason(ingest({**GOOD, "text": "\u200b \x00 "})) == "empty_text"
    assert reason(ingest({**GOOD, "text": "x" * 101})) == "text_too_long"


def test_duplicate_request_id_is_rejected() -> None:
    h = handler()
    assert ingest({**GOOD, "request_id": "dup-1"}, h).topic == T.ingested
    out = ingest({**GOOD, "request_id": "dup-1"}, h)
    assert reason(out) == "duplicate_request_id"
    assert DeadLetter.model_validate_json(out.value).request_id == "dup-1"


def test_the_record_key_is_the_request_id_when_the_body_has_none() -> None:
    out = ingest(GOOD, key=b"backend-42")
    assert Ingested.model_validate_json(out.value).request_id == "backend-42" and out.key == b"backend-42"
    body_wins = ingest({**GOOD, "request_id": "body-1"}, key=b"backend-43")
    assert Ingested.model_validate_json(body_wins.value).request_id == "body-1"
    h = handler()
    assert ingest(GOOD, h, key=b"k-1").topic == T.ingested
    dup = ingest(GOOD, h, offset=1, key=b"k-1")
    assert reason(dup) == "duplicate_request_id" and "record key" in DeadLetter.model_validate_json(dup.value).detail


@pytest.mark.parametrize("key", [b"not an id!", b"\xff\xfe", b"k" * 129, b""])
def test_a_key_that_cannot_be_an_id_is_refused_when_the_body_has_no_id(key: bytes) -> None:
    out = ingest(GOOD, key=key)
    assert reason(out) == "invalid_key"
    assert "request_id" in DeadLetter.model_validate_json(out.value).detail
    assert ingest({**GOOD, "request_id": "ok-1"}, key=key).topic == T.ingested  # the body's id needs no key


def test_duplicates_within_a_batch_and_only_committed_ids_are_remembered() -> None:
    h = handler()
    body = json.dumps({**GOOD, "request_id": "same"}).encode()
    outs = through(h, [record(T.requests, body, offset=0), record(T.requests, body, offset=1)], commit=False)
    assert [o.topic for o in outs] == [T.ingested, T.requests_dlq]
    # The batch was not committed (the loop aborted it): handled again, it is not its own duplicate.
    assert [o.topic for o in through(h, [record(T.requests, body)])] == [T.ingested]
    assert reason(through(h, [record(T.requests, body, offset=2)])[0]) == "duplicate_request_id"


def test_seen_ids_forget_the_oldest() -> None:
    seen = SeenIds(2)
    assert seen.add("a") and seen.add("b") and seen.add("c")
    assert seen.add("a") and not seen.add("c")


def test_an_accepted_request_is_logged_at_debug_by_id_never_by_text() -> None:
    """With PROTEGE_LOG_LEVEL=debug each service logs one line per request, keyed by its id,
    so a request can be followed with grep (``protege trace`` follows it on the topics)."""
    with structlog.testing.capture_logs() as logs:
        out = ingest({**GOOD, "request_id": "acme-77"})
    assert out.topic == T.ingested
    [line] = [e for e in logs if e["event"] == "ingested"]
    assert (line["log_level"], line["request_id"], line["service"], line["tenant"]) == (
        "debug",
        "acme-77",
        "ingestion",
        "acme",
    )
    assert "order" not in json.dumps(logs)  # no text
