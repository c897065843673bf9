"""The hot path's serialisation, per record: what decoding and encoding the student path's
events costs with protege's codec, beside faster ways on the same models, in one run.

    python benchmarks/codec.py --json reports/benchmark-codec.json

The events a request's student path decodes and encodes, as the pipeline writes them (a
request, its ingested event, scored event, decision and response; generated tickets, a
real student output shape). Decoding, per record:

- ``protege``: ``protege.serde.decode`` as every service runs it (UTF-8 and JSON checks:
  duplicate keys, NaN, depth; the request's JSON Schema; then the pydantic model),
- ``pydantic json``: the model's own ``model_validate_json`` (Rust parser; takes the last of
  duplicate keys, so it alone would not refuse them),
- ``orjson + pydantic``: ``orjson.loads`` then ``model_validate`` (same caveat),
- ``json only``: ``json.loads`` without the model: the floor of any checked decode in Python.

Encoding: ``Event.dumps`` (``model_dump_json``) beside ``orjson.dumps(model_dump())``. Per
request, the sum over the events its student path decodes and encodes, and that sum as a
share of the CPU the whole pipeline spends per answered request when ``--cpu-ms`` (from
``loadtests/stream_rates.py``'s CPU table) is given.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from protege.events import Decision, Event, Ingested, Request, Response, Scored, StudentOutput
from protege.generator import generate, triage_task
from protege.harness import machine
from protege.policy import router_for
from protege.serde import decode
from protege.settings import REPO


def events(n: int) -> dict[type[Event], list[bytes]]:
    """``n`` requests' student-path events, encoded as the services encode them."""
    router = router_for(triage_task())
    out: dict[type[Event], list[bytes]] = {Request: [], Ingested: [], Scored: [], Decision: [], Response: []}
    for i, row in enumerate(generate(n, seed=7)):
        request = Request(request_id=f"r-{i}", tenant="acme", task="ticket-triage", text=row["text"], sent_at_ms=1)
        ingested = Ingested(
            request_id=f"r-{i}", tenant="acme", task="ticket-triage", text=row["text"], received_at_ms=2
        )
        top = [(row["label"], 0.91), ("billing", 0.05), ("other", 0.02)]
        student = StudentOutput(
            model_version="v0001-abcdef12", label=row["label"], confidence=0.91, margin=0.86, ood=0.21, top=top
        )
        scored = Scored(request=ingested, student=student, scored_at_ms=3, batch_size=8)
        decision = router.decide(scored, 4)
        response = Response(
            request_id=f"r-{i}", tenant="acme", task="ticket-triage", label=row["label"], route="student",
            answered_by=student.model_version, confidence=0.91, sent_at_ms=1, received_at_ms=2, answered_at_ms=4,
        )  # fmt: skip
        for event in (request, ingested, scored, decision, response):
            out[type(event)].append(event.dumps())
    return out


def per_record_us(fn: Callable[[Any], Any], items: list[Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        for item in items:
            fn(item)
        best = min(best, (time.perf_counter() - started) / len(items))
    return best * 1e6


def main() -> None:
    import orjson

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5, help="best of this many passes")
    ap.add_argument("--cpu-ms", type=float, default=None, help="the pipeline's CPU ms per answered request")
    ap.add_argument("--json", type=Path, default=REPO / "reports" / "benchmark-codec.json")
    args = ap.parse_args()
    where = machine()
    print(f"machine: {where['cpu']}, {where['cores']} cores; {args.requests} requests, best of {args.rounds}")
    data = events(args.requests)
    rows: list[dict[str, Any]] = []
    for model, raws in data.items():
        decoded = [model.model_validate_json(r) for r in raws]
        ways: dict[str, Callable[[Any], Any]] = {
            "protege": partial(decode, model),
            "pydantic json": model.model_validate_json,
            "orjson + pydantic": lambda r, m=model: m.model_validate(orjson.loads(r)),  # type: ignore[misc]
            "json only": json.loads,
        }
        row: dict[str, Any] = {"event": model.__name__, "bytes": sum(map(len, raws)) / len(raws)}
        row["decode_us"] = {name: per_record_us(fn, raws, args.rounds) for name, fn in ways.items()}
        row["encode_us"] = {
            "protege (model_dump_json)": per_record_us(lambda e: e.dumps(), decoded, args.rounds),
            "orjson": per_record_us(
                lambda e: orjson.dumps(e.model_dump(mode="json", exclude_none=True)), decoded, args.rounds
            ),
        }
        rows.append(row)
    # Per request on the student path: every event decoded once by the service after it (the
    # response by the caller) and encoded once.
    total = {
        "protege": sum(r["decode_us"]["protege"] + r["encode_us"]["protege (model_dump_json)"] for r in rows),
        "fastest": sum(
            min(r["decode_us"]["pydantic json"], r["decode_us"]["orjson + pydantic"]) + min(r["encode_us"].values())
            for r in rows
        ),
    }
    print(
        f"\n{'event':10s} {'bytes':>6s} "
        + " ".join(f"{k:>18s}" for k in rows[0]["decode_us"])
        + "   encode: dumps / orjson (µs)"
    )
    for r in rows:
        dec = " ".join(f"{v:18.1f}" for v in r["decode_us"].values())
        enc = " / ".join(f"{v:.1f}" for v in r["encode_us"].values())
        print(f"{r['event']:10s} {r['bytes']:6.0f} {dec}   {enc}")
    print(f"\nper request, student path: protege {total['protege']:.0f} µs, fastest way {total['fastest']:.0f} µs")
    if args.cpu_ms:
        print(
            f"share of the pipeline's {args.cpu_ms:.1f} CPU ms per answered request: protege "
            f"{100 * total['protege'] / 1000 / args.cpu_ms:.1f}%, the fastest way would save "
            f"{100 * (total['protege'] - total['fastest']) / 1000 / args.cpu_ms:.1f} points"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "machine": where,
                "requests": args.requests,
                "events": rows,
                "per_request_us": total,
                "cpu_ms": args.cpu_ms,
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
