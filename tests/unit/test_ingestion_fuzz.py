"""Property-based fuzz of ingestion: whatever bytes arrive on protege.requests, the
handler either accepts a valid request or dead-letters it with a known reason. It never
raises, and it never accepts the same request id twice."""

from __future__ import annotations

import asyncio
import json

from aiokafka import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protege.events import DeadLetter, Ingested
from protege.generator import triage_task
from protege.topics import Topics
from services.ingestion.handler import Ingestion, SeenIds

T = Topics("f.")
REASONS = {"invalid_utf8", "invalid_json", "not_an_object", "schema_violation", "unknown_task", "empty_text",
           "text_too_long", "duplicate_request_id"}

texts = st.one_of(st.text(max_size=300), st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=50),
                  st.just("x" * 5000), st.just(""))
ids = st.one_of(st.none(), st.sampled_from(["dup-1", "dup-2"]), st.text(max_size=140))
payload = st.fixed_dictionaries(
    {"tenant": st.one_of(st.just("acme"), st.text(max_size=20), st.integers()),
     "task": st.one_of(st.just("ticket-triage"), st.just("nope"), st.none()),
     "text": st.one_of(texts, st.integers(), st.none())},
    optional={"request_id": ids, "metadata": st.one_of(st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
                                                       st.integers()),
              "sent_at_ms": st.one_of(st.integers(), st.text(max_size=3)), "extra": st.integers()},
)
raw = st.one_of(payload.map(lambda d: json.dumps(d).encode()), st.binary(max_size=300),
                st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=10),
                             lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
                             max_leaves=10).map(lambda v: json.dumps(v).encode()))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(raw, min_size=1, max_size=20))
def test_any_bytes_are_accepted_or_dead_lettered_with_a_reason(values: list[bytes]) -> None:
    handler = Ingestion({"ticket-triage": triage_task()}, T, max_text_chars=4000, seen=SeenIds(1000))
    records = [ConsumerRecord(T.requests, 0, i, 0, 0, None, v, None, 0, len(v), []) for i, v in enumerate(values)]
    outs = asyncio.run(handler.handle(records))
    assert len(outs) == len(values)  # one outcome per record: nothing lost
    accepted = []
    for out in outs:
        if out.topic == T.ingested:
            accepted.append(Ingested.model_validate_json(out.value).request_id)
        else:
            assert out.topic == T.requests_dlq
            letter = DeadLetter.model_validate_json(out.value)
            assert letter.reason in REASONS and letter.detail
    assert len(accepted) == len(set(accepted))
