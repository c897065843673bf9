"""`protege bench drift`'s bookkeeping, without a broker: the split of the stream, the
windows, when the new intents catch up, and the release checks (the run itself needs
BANKING77 and the whole pipeline: `protege bench drift`, README)."""

from __future__ import annotations

import pytest

from protege.drift_bench import Request, caught_up, release_checks, split, windows


def rows(n: int, labels: int) -> list[dict]:
    return [{"id": f"r{i}", "text": f"t{i}", "label": f"l{i % labels}"} for i in range(n)]


def test_the_first_part_holds_only_old_intents_and_the_new_ones_spread_through_the_second() -> None:
    before, after, new = split(rows(4000, 20), withheld=4, before=2000, after=1000, seed=3)
    assert len(new) == 4 and (len(before), len(after)) == (2000, 1000)
    assert not {r["label"] for r in before} & set(new)
    assert len({r["id"] for r in before + after}) == 3000
    shares = [sum(r["label"] in new for r in after[i : i + 250]) / 250 for i in range(0, 1000, 250)]
    assert all(0.1 < x < 0.3 for x in shares), shares  # about 4/20 in every quarter
    assert split(rows(4000, 20), withheld=4, before=2000, after=1000, seed=3) == (before, after, new)  # seeded
    with pytest.raises(ValueError):
        split(rows(1000, 20), withheld=4, before=2000, after=1000, seed=3)


def test_windows_measure_old_and_new_apart_and_place_alarms_and_steps() -> None:
    seen = []
    for i in range(600):
        fresh = i >= 300 and i % 5 == 0
        learned = i >= 450
        student = (not fresh) or learned
        label = "new" if fresh else "old"
        seen.append(Request(i, label, "student" if student else "teacher", label, "after" if i >= 300 else "before"))
    alerts = [
        {"state": "firing", "rate": 0.3, "baseline": 0.1, "at_ms": 320},
        {"state": "resolved", "rate": 0.1, "baseline": 0.1, "at_ms": 500},
    ]
    steps = [
        {"version": "v0002", "action": "canary", "source": "trainer", "reason": "drift alarm", "announced_at_ms": 350}
    ]
    out = windows(seen, ["new"], size=150, alerts=alerts, steps=steps)
    assert [r["phase"] for r in out] == ["before", "before", "after", "after"]
    assert out[0]["new"]["requests"] == 0 and out[0]["old"]["student_share"] == 1.0
    assert out[2]["new"]["escalation_rate"] == 1.0 and out[2]["alarm"] and out[2]["steps"][0]["version"] == "v0002"
    assert out[3]["new"]["student_share"] == 1.0 and not out[3]["alarm"]
    assert caught_up(out) == 300  # from request 300 to the end of the window that reached half
    # A student that answers the new intents with wrong old labels has not caught up.
    wrong = [Request(r.sent_at_ms, r.label, "student", "old", r.phase) for r in seen]
    rows = windows(wrong, ["new"], size=150, alerts=[], steps=[])
    assert caught_up(rows, "student_share") == 150 and caught_up(rows) is None


def test_release_checks_find_a_version_that_skipped_its_trial() -> None:
    passed = {"gates": {"passed": True}}
    steps = [
        {"version": "v1", "action": "serve", "source": "trainer"},
        {"version": "v2", "action": "canary", "source": "trainer"},
        {"version": "v2", "action": "serve", "source": "monitor"},
        {"version": "v3", "action": "canary", "source": "trainer"},
        {"version": "v3", "action": "abort", "source": "monitor"},
    ]
    ok = release_checks(steps, {"v1": passed, "v2": passed, "v3": passed})
    assert ok["ok"] and (ok["trials"], ok["promoted"], ok["rolled_back"]) == (2, 1, 1)
    skipped = release_checks(
        [*steps, {"version": "v4", "action": "serve", "source": "trainer"}],
        {"v4": passed} | {v: passed for v in ("v1", "v2", "v3")},
    )
    assert skipped["problems"] == ["v4 served without a trial while v2 served"]
    ungated = release_checks(steps[:1], {"v1": {"gates": {"passed": False}}})
    assert ungated["problems"] == ["v1 announced without passing its gates"]
