"""Follow one request across the services by its id: every event on every protege topic
that carries it, in the order they were written.

    protege trace acme-1234                 # the last hour
    protege trace acme-1234 --minutes 1440 --tenant acme

Services key their records by request id, so most records match on the key alone; the
rest (the caller's own requests, harvested cases, dead letters) are matched on the
``request_id`` in their JSON. Undecodable payloads show as such: a trace of bad input ends
in a dead-letter topic with its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

from protege.settings import Settings
from protege.state import read_all

# topic attribute -> the service that writes it (requests: the caller)
WRITERS = {
    "requests": "caller",
    "requests_dlq": "ingestion",
    "ingested": "ingestion",
    "scored": "scorer",
    "decisions": "verifier",
    "teacher_requests": "verifier",
    "teacher_retry": "teacher",
    "teacher_results": "teacher",
    "responses": "verifier / teacher",
    "corrections": "teacher",
    "harvest": "harvester",
    "dlq": "any service",
}


@dataclass(frozen=True)
class Step:
    at_ms: int
    topic: str
    writer: str
    what: str
    event: dict[str, Any] | None


def _request_id(event: dict[str, Any]) -> tuple[str | None, str | None]:
    nested = event.get("request")
    inner: dict[str, Any] = nested if isinstance(nested, dict) else {}
    return (event.get("request_id") or inner.get("request_id"), event.get("tenant") or inner.get("tenant"))


def describe(name: str, e: dict[str, Any] | None) -> str:
    """One line on what a step says, from the fields its event has."""
    if e is None:
        return "(not JSON)"
    student = e.get("student") or {}
    parts = {
        "requests": lambda: f"task={e.get('task')} text={len(str(e.get('text', '')))} chars",
        "ingested": lambda: f"task={e.get('task')}",
        "scored": lambda: (
            f"student {student.get('label')} p={student.get('confidence', 0):.3f} "
            f"ood={student.get('ood', 0):.3f} {student.get('model_version')} batch={e.get('batch_size')}"
            if student
            else f"no student ({e.get('student_error') or 'cold start'})"
        ),
        "decisions": lambda: (
            f"{e.get('verdict')} -> {e.get('route')} policy={e.get('policy')} "
            f"reasons={','.join(e.get('reasons') or []) or '-'}"
        ),
        "teacher_requests": lambda: f"mode={e.get('mode')} reasons={','.join(e.get('reasons') or [])}",
        "teacher_retry": lambda: f"held ({e.get('held_because')}) attempt={e.get('attempt')}",
        "teacher_results": lambda: (
            f"{e.get('label')} by {e.get('teacher')} cost=${e.get('cost_usd', 0):.5f}"
            f"{' STAND-IN' if e.get('standin') else ''} agrees={e.get('agrees')}"
        ),
        "responses": lambda: f"{e.get('label')} route={e.get('route')} status={e.get('status')}",
        "corrections": lambda: f"{e.get('replaces')} -> {e.get('label')}",
        "harvest": lambda: f"case {e.get('label')} ({e.get('reason')}, label from {e.get('label_source')})",
        "requests_dlq": lambda: f"{e.get('reason')}: {e.get('detail')}",
        "dlq": lambda: f"{e.get('reason')} from {e.get('service')}: {e.get('detail')}",
    }
    return parts[name]() if name in parts else ""


def writer(name: str, event: dict[str, Any] | None, decided: bool) -> str:
    """Who wrote a step: where the event says so, the writer in its layout (``decided``: the
    request's scored event was decided by the scorer, as in the fused and one-hop layouts);
    else the topic's writer in ``WRITERS``."""
    event = event or {}
    if name == "requests_dlq" and isinstance(event.get("service"), str):
        return str(event["service"])  # ingestion, or the one-hop scorer
    if name == "ingested" and event.get("scored"):
        return "scorer (one hop)"
    if decided and (
        name in ("decisions", "teacher_requests") or (name == "responses" and event.get("route") == "student")
    ):
        return "scorer (decided there)"
    return WRITERS[name]


async def trace(settings: Settings, request_id: str, *, since_ms: int, tenant: str | None = None) -> list[Step]:
    topics = settings.topics
    steps: list[Step] = []
    for name in WRITERS:
        for r in await read_all(settings, getattr(topics, name), since_ms=since_ms):
            keyed = r.key is not None and r.key.decode(errors="replace") == request_id
            if not keyed and r.value is not None and request_id.encode() not in r.value:
                continue  # cheap filter before parsing
            try:
                event = json.loads(r.value) if r.value is not None else None
            except ValueError:
                event = None
            if not isinstance(event, dict):
                event = None
            found, of_tenant = _request_id(event) if event else (None, None)
            if not keyed and found != request_id:
                continue
            if tenant is not None and of_tenant is not None and of_tenant != tenant:
                continue
            steps.append(Step(r.timestamp, name, WRITERS[name], describe(name, event), event))
    decided = any(s.topic == "scored" and s.event and s.event.get("decided") for s in steps)
    steps = [replace(s, topic=s.topic.replace("_", "."), writer=writer(s.topic, s.event, decided)) for s in steps]
    return sorted(steps, key=lambda s: s.at_ms)
