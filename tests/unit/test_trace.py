"""Who wrote each step of a trace, in each layout of the student path."""

from __future__ import annotations

from protege.trace import WRITERS, writer


def test_a_step_names_the_process_that_wrote_it_in_each_layout() -> None:
    # separate: the topic's own writer
    assert writer("ingested", {"request_id": "r"}, decided=False) == "ingestion"
    assert writer("decisions", {}, decided=False) == "verifier"
    assert writer("requests_dlq", None, decided=False) == WRITERS["requests_dlq"]
    # a dead letter says who refused; one hop marks its ingested events
    assert writer("requests_dlq", {"service": "scorer"}, decided=False) == "scorer"
    assert writer("ingested", {"scored": True}, decided=True) == "scorer (one hop)"
    # fused and one hop: the decision, the teacher request and the student's answer are the scorer's
    for name in ("decisions", "teacher_requests"):
        assert writer(name, {}, decided=True) == "scorer (decided there)"
    assert writer("responses", {"route": "student"}, decided=True) == "scorer (decided there)"
    assert writer("responses", {"route": "teacher"}, decided=True) == "verifier / teacher"
    assert writer("teacher_results", {}, decided=True) == "teacher"
