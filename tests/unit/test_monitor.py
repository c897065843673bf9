"""The monitor's window operation: counts added once per source record, whatever is read
again after a restart or forwarded twice (the broker test is tests/integration/test_monitor.py)."""

from __future__ import annotations

from protege_services.monitor.app import counted, decision_fields


def test_a_record_at_or_below_the_mark_is_not_counted_again() -> None:
    op = counted(decision_fields)
    window: dict = {}
    for p, o, verdict in [(0, 0, "accept"), (0, 1, "escalate"), (1, 0, "accept"), (0, 1, "escalate"), (1, 0, "accept")]:
        window = op(
            window, {"p": p, "o": o, "verdict": verdict, "route": "student" if verdict == "accept" else "teacher"}
        )
    assert (window["decided"], window["escalated"], window["student"], window["skipped"]) == (3, 1, 2, 2)
    assert window["marks"] == {"0": 1, "1": 0}
    # A restart that restored this window reads from an older committed offset: skipped.
    again = op(window, {"p": 0, "o": 0, "verdict": "accept", "route": "student"})
    assert again["decided"] == 3 and again["skipped"] == 3
    assert window["skipped"] == 2  # the op returns a new value; the stored one is not mutated
