"""Live accuracy per version from the audits on record."""

from __future__ import annotations

import pytest

from protege.audits import against_golden, live_accuracy
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


def test_audits_read_against_what_the_golden_rows_predicted() -> None:
    """The audits of accepted answers are a uniform sample of what the rule accepts on live
    traffic: surely fewer agreements than the golden rows it accepts had means those rows are
    easier than the traffic (a golden file that is not a sample of it)."""
    told = {"truth_agreement_on_accepted": 0.95, "truth_accepted_cases": 600.0}
    same = against_golden({"audits": 400, "agreed": 376}, told)  # 94%: within both samples' error
    assert same is not None and not same["easier"] and same["difference"] == -0.01 and same["high"] > 0
    easier = against_golden({"audits": 400, "agreed": 352}, told)  # 88%
    assert easier is not None and easier["easier"] and easier["high"] < 0 and easier["predicted"] == 0.95
    few = against_golden({"audits": 20, "agreed": 17}, told)  # 85% of 20: too few to say
    assert few is not None and not few["easier"]
    assert against_golden({"audits": 400, "agreed": 352}, {"truth_agreement_on_accepted": 0.95}) is None
    assert against_golden({"audits": 400, "agreed": 352}, told | {"truth_accepted_cases": 12.0}) is None
    assert against_golden(None, told) is None and against_golden({"audits": 0, "agreed": 0}, told) is None


def test_models_list_shows_the_prediction_beside_the_audits_and_flags_a_shortfall() -> None:
    from protege.cli.models import live_text

    told = {"truth_agreement_on_accepted": 0.95, "truth_accepted_cases": 600.0}
    assert live_text(None, told) == "-"
    assert live_text({"audits": 400, "agreed": 376, "accuracy": 0.94}, {}) == "0.940 (400)"
    assert live_text({"audits": 400, "agreed": 376, "accuracy": 0.94}, told) == "0.940 (400) vs 0.950 golden"
    flagged = live_text({"audits": 400, "agreed": 352, "accuracy": 0.88}, told)
    assert flagged == "[yellow]0.880 (400) vs 0.950 golden: golden rows easier than traffic[/]"
