"""Live accuracy per version from the audits on record."""

from __future__ import annotations

import pytest

from protege.audits import live_accuracy
from protege.events import TeacherResult, Usage
from protege.replay import wilson


def result(i: int, *, version: str, agrees: bool, mode: str = "audit", tenant: str = "acme") -> TeacherResult:
    return TeacherResult(
        request_id=f"r{i}",
        tenant=tenant,
        task="t",
        text="x",
        label="a",
        teacher="m",
        standin=False,
        usage=Usage(input_tokens=1, output_tokens=1),
        cost_usd=0.001,
        latency_ms=1,
        attempts=1,
        mode=mode,  # type: ignore[arg-type]
        student_label="a" if agrees else "b",
        agrees=agrees,
        model_version=version,
        answered_at_ms=i,
    )


def test_live_accuracy_per_version_counts_each_audit_once() -> None:
    results = [result(i, version="v1", agrees=i % 4 != 0) for i in range(40)]  # 30 of 40 right
    results += [result(i, version="v1", agrees=True) for i in range(5)]  # the same audits written again
    results += [result(100 + i, version="v2", agrees=True) for i in range(3)]
    results += [
        result(200, version="v1", agrees=False, mode="answer"),
        result(300, version="v1", agrees=False, tenant="globex"),
    ]
    live = live_accuracy(results, "acme", "t")
    assert live["v1"]["audits"] == 40 and live["v1"]["agreed"] == 30
    assert live["v1"]["accuracy"] == pytest.approx(0.75) and live["v1"]["interval95"] == wilson(30, 40)
    assert live["v2"] == {"audits": 3, "agreed": 3, "accuracy": 1.0, "interval95": wilson(3, 3)}
