"""Live accuracy from audits: the teacher's answers to a random share of accepted student
answers (``policy.audit_rate``), the one unbiased sample of what the student really serves.

    live = live_accuracy(results, "acme", "ticket-triage")   # version -> audits, agreed, interval
    live = await read_live_accuracy(settings, "acme", "ticket-triage")
    against_golden(live["v0003"], manifest.metrics)            # is the traffic as the golden rows said?

The teacher worker also counts them on ``/metrics`` (``protege_audits_total`` and
``protege_audits_agreed_total`` by tenant, task and version), for the ratio over replicas.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from statistics import NormalDist
from typing import Any

from aiokafka.errors import KafkaConnectionError

from protege.canary import expected
from protege.errors import BrokerError
from protege.events import TeacherResult
from protege.replay import wilson
from protege.settings import Settings
from protege.state import read_all


def live_accuracy(results: Iterable[TeacherResult], tenant: str, task: str) -> dict[str, dict[str, Any]]:
    """Per version: audits, how many the teacher agreed with, that share and its 95% interval."""
    counts: dict[str, list[int]] = {}
    seen: set[str] = set()
    for r in results:
        if r.mode != "audit" or (r.tenant, r.task) != (tenant, task) or r.request_id in seen:
            continue
        seen.add(r.request_id)  # one audit per request, however often its answer was written
        c = counts.setdefault(r.model_version or "none", [0, 0])
        c[0] += 1
        c[1] += r.student_label == r.label
    return {
        version: {"audits": n, "agreed": k, "accuracy": k / n, "interval95": wilson(k, n)}
        for version, (n, k) in sorted(counts.items())
    }


GOLDEN_CHECK_CONFIDENCE = 0.99  # one-sided: "surely below" — a check people read again and again


def against_golden(live: Mapping[str, Any] | None, metrics: Mapping[str, float]) -> dict[str, Any] | None:
    """A version's audits against what its trusted golden rows predicted they would find: the
    student's agreement with the teacher on the golden rows its rule accepts
    (``protege.canary.expected``: ``truth_agreement_on_accepted`` over ``truth_accepted_cases``,
    at least 50 of them). Audits of accepted answers are a uniform sample of what the rule
    accepts on live traffic; when they agree surely less often than the golden rows did (the
    difference's upper bound, at 99% one-sided, with both samples' error, below zero), the golden
    rows are easier than the traffic and the certified guarantee, which rests on them, may not
    hold there: ``easier`` True. None when either side is missing (no audits; no golden set, or a
    version from before the field)."""
    golden = expected(metrics)
    if not live or not live.get("audits") or golden is None:
        return None
    n, k = int(live["audits"]), int(live["agreed"])
    a = (k + 1) / (n + 2)  # Laplace-smoothed for the error, as the canary's
    se = math.sqrt(a * (1 - a) / n + golden.variance())
    d = k / n - golden.agreement
    high = d + NormalDist().inv_cdf(GOLDEN_CHECK_CONFIDENCE) * se
    return {
        "predicted": golden.agreement,
        "golden_rows": golden.cases,
        "live": round(k / n, 4),
        "audits": n,
        "difference": round(d, 4),
        "high": round(high, 4),
        "confidence": GOLDEN_CHECK_CONFIDENCE,
        "easier": high < 0,
    }


async def read_live_accuracy(settings: Settings, tenant: str, task: str) -> dict[str, dict[str, Any]]:
    """``live_accuracy`` over ``protege.teacher.results`` as it is now."""
    return live_accuracy(await read_audits(settings), tenant, task)


async def read_audits(settings: Settings) -> list[TeacherResult]:
    """The audit answers on ``protege.teacher.results`` as it is now, every tenant and task (read
    once for many: ``live_accuracy`` picks one)."""
    try:
        records = await read_all(settings, settings.topics.teacher_results)
    except KafkaConnectionError as e:
        raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers}: {e}") from None
    results = []
    for r in records:
        if r.value is not None and b'"audit"' in r.value:
            results.append(TeacherResult.model_validate_json(r.value))
    return results
