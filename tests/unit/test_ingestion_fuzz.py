"""Property-based fuzz of ingestion with what an attacker sends: whatever bytes (and record
keys) arrive on protege.requests, the handler either accepts a valid request or
dead-letters it with a known reason. It never raises, and it never accepts the same
request id twice.

The strategies go past well-formed JSON: nesting thousands deep (the 10 KB request that
once crashed ingestion in a loop), integers of thousands of digits, floats past double
range, NaN, duplicate keys, other encodings (UTF-16/32, Latin-1, a BOM, overlong and
surrogate UTF-8), keys of 100,000 characters, and every field at and just past its limit.
"""

from __future__ import annotations

import asyncio
import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from protege_services.ingestion.__main__ import processor
from protege_services.ingestion.handler import Ingestion, SeenIds

from protege.events import DeadLetter, Ingested
from protege.kafka import record
from protege.settings import IngestionSettings

SETTINGS = IngestionSettings(topic_prefix="f.")
T = SETTINGS.topics
REASONS = {
    "empty",
    "too_large",
    "invalid_utf8",
    "invalid_json",
    "too_deep",
    "duplicate_key",
    "not_an_object",
    "schema_violation",
    "invalid_key",
    "unknown_task",
    "empty_text",
    "text_too_long",
    "duplicate_request_id",
}
HEAD = b'{"tenant":"acme","task":"ticket-triage",'

texts = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=50),
    st.just("x" * 5000),
    st.just(""),
    st.sampled_from(["x" * 100_000, "x" * 100_001, "\ud800x"]),
)
ids = st.one_of(st.none(), st.sampled_from(["dup-1", "dup-2", "a" * 128, "a" * 129]), st.text(max_size=140))
payload = st.fixed_dictionaries(
    {
        "tenant": st.one_of(st.just("acme"), st.text(max_size=20), st.integers()),
        "task": st.one_of(st.just("ticket-triage"), st.just("nope"), st.none()),
        "text": st.one_of(texts, st.integers(), st.none()),
    },
    optional={
        "request_id": ids,
        "metadata": st.one_of(
            st.dictionaries(st.text(max_size=5), st.text(max_size=5)),
            st.dictionaries(st.text(max_size=70), st.text(max_size=1100), min_size=30, max_size=34),
            st.integers(),
        ),
        "sent_at_ms": st.one_of(st.integers(), st.sampled_from([2**53 - 1, 2**53, 10**30]), st.text(max_size=3)),
        "extra": st.integers(),
    },
)
well_formed = payload.map(lambda d: json.dumps(d).encode())
nesting = st.tuples(st.integers(1, 20_000), st.sampled_from(["[", '{"a":'])).map(
    lambda t: (
        HEAD
        + b'"text":"x","metadata":'
        + (t[1] * t[0]).encode()
        + ("]" if t[1] == "[" else "1}").encode() * t[0]
        + b"}"
    )
)
numbers = st.one_of(
    st.integers(4_000, 6_000).map(lambda n: HEAD + b'"text":"x","sent_at_ms":' + b"9" * n + b"}"),
    st.sampled_from([b"1e999", b"-1e999", b"NaN", b"Infinity", b"-Infinity", b"1e-999", b"-0"]).map(
        lambda n: HEAD + b'"text":"x","sent_at_ms":' + n + b"}"
    ),
)
duplicates = st.lists(
    st.sampled_from(["tenant", "task", "text", "request_id", "metadata"]), min_size=2, max_size=8
).map(lambda keys: ("{" + ",".join(f'"{k}":"v{i}"' for i, k in enumerate(keys)) + "}").encode())
encodings = st.tuples(payload, st.sampled_from(["utf-16", "utf-32", "latin-1", "utf-8-sig", "cp1252"])).map(
    lambda t: json.dumps(t[0], ensure_ascii=False).encode(t[1], errors="replace")
)
bad_utf8 = st.sampled_from([b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xff", b"\x80"]).map(
    lambda b: HEAD + b'"text":"' + b + b'"}'
)
long_keys = st.integers(1_000, 200_000).map(lambda n: json.dumps({"k" * n: 1, "tenant": "acme"}).encode())
raw = st.one_of(
    well_formed,
    st.binary(max_size=300),
    nesting,
    numbers,
    duplicates,
    encodings,
    bad_utf8,
    long_keys,
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=5), c, max_size=3),
        max_leaves=10,
    ).map(lambda v: json.dumps(v).encode()),
)
record_keys = st.one_of(st.none(), st.binary(max_size=200), st.sampled_from([b"dup-1", b"key-1", b"k" * 129]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(st.tuples(raw, record_keys), min_size=1, max_size=20))
def test_any_bytes_are_accepted_or_dead_lettered_with_a_reason(values: list[tuple[bytes, bytes | None]]) -> None:
    handler = Ingestion(T, max_text_chars=4000, seen=SeenIds(1000))
    records = [record(T.requests, v, k, offset=i) for i, (v, k) in enumerate(values)]
    # What the service's loop does with a batch: decode (dead letters), then the handler.
    received, letters = processor(SETTINGS, {"ticket-triage"}, handler).decode(records)
    outs = letters + asyncio.run(handler.handle(received))
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
