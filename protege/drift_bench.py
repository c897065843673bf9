"""``protege bench drift``: intents the student has never seen arrive mid-stream.

    before, after, new = split(rows, withheld=10, requests=6000, seed=0)
    rows = windows(requests, new, size=300, alerts=..., steps=...)   # what happened, per window
    at = caught_up(rows)          # requests after the new intents arrived until the student
                                  # answers them half as often as the old ones
    checked = release_checks(steps, manifests)   # no gate or canary check skipped

The stream's first half holds only the old intents; in the second the withheld ones come in
at their natural share. The pieces here are pure: the command streams the traffic through
the whole pipeline (with the monitor) and hands them what it recorded.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Request:
    """One request as the bench sees it: when it was sent, its true label, and its answer."""

    sent_at_ms: int
    label: str
    route: str | None  # student | teacher | None (unanswered)
    answer: str | None
    phase: str  # before | after


def split(
    rows: Sequence[dict[str, Any]], *, withheld: int, before: int, after: int, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[str]]:
    """(before, after, the withheld labels): ``before`` rows of the old intents, then
    ``after`` rows of all intents at their natural shares, none twice, each part shuffled."""
    rng = random.Random(seed)
    labels = sorted({r["label"] for r in rows})
    if withheld >= len(labels):
        raise ValueError(f"cannot withhold {withheld} of {len(labels)} labels")
    new = set(rng.sample(labels, withheld))
    pool = list(rows)
    rng.shuffle(pool)
    old_rows = [r for r in pool if r["label"] not in new]
    first = old_rows[:before]
    used = {r["id"] for r in first}
    # the rest at their natural shares: as many old as new rows in proportion to the data
    new_rows = [r for r in pool if r["label"] in new]
    n_new = round(after * len(new_rows) / len(pool))
    rest = [r for r in old_rows if r["id"] not in used][: after - n_new] + new_rows[:n_new]
    if len(first) < before or len(rest) < after:
        raise ValueError(f"{len(rows)} rows are too few for {before} + {after} requests")
    rng.shuffle(rest)  # the new intents spread through the second part, not bunched
    return first, rest, sorted(new)


def _share(items: Sequence[Request], route: str) -> float | None:
    answered = [r for r in items if r.route is not None]
    return sum(r.route == route for r in answered) / len(answered) if answered else None


def _student_right(items: Sequence[Request]) -> float | None:
    answered = [r for r in items if r.route is not None]
    return sum(r.route == "student" and r.answer == r.label for r in answered) / len(answered) if answered else None


def _accuracy(items: Sequence[Request]) -> float | None:
    answered = [r for r in items if r.answer is not None]
    return sum(r.answer == r.label for r in answered) / len(answered) if answered else None


def windows(
    requests: Sequence[Request],
    new: Sequence[str],
    *,
    size: int,
    alerts: Sequence[dict[str, Any]],
    steps: Sequence[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Per window of ``size`` requests (in the order sent): for the old and the new intents,
    the requests, the share the student answered, the share escalated to the teacher, the
    accuracy; the drift alarm's state at its end and the alerts and version steps within."""
    ordered = sorted(requests, key=lambda r: r.sent_at_ms)
    fresh = set(new)
    out: list[dict[str, Any]] = []
    firing = False
    for i in range(0, len(ordered), size):
        chunk = ordered[i : i + size]
        start = chunk[0].sent_at_ms
        end = ordered[i + size].sent_at_ms if i + size < len(ordered) else float("inf")
        row: dict[str, Any] = {"from": i, "to": i + len(chunk), "phase": chunk[-1].phase}
        for name, part in (
            ("old", [r for r in chunk if r.label not in fresh]),
            ("new", [r for r in chunk if r.label in fresh]),
        ):
            row[name] = {
                "requests": len(part),
                "student_share": _share(part, "student"),
                "student_right": _student_right(part),  # answered by the student, and right
                "escalation_rate": _share(part, "teacher"),
                "accuracy": _accuracy(part),
            }
        here = [a for a in alerts if start <= a["at_ms"] < end]
        for a in here:
            firing = a["state"] == "firing"
        row["alerts"] = [{"state": a["state"], "rate": a["rate"], "baseline": a["baseline"]} for a in here]
        row["alarm"] = firing
        row["steps"] = [
            {k: s.get(k) for k in ("version", "action", "source", "reason")}
            for s in steps
            if start <= s["announced_at_ms"] < end
        ]
        out.append(row)
    return out


def caught_up(rows: Sequence[dict[str, Any]], measure: str = "student_right") -> int | None:
    """Requests from the first window of the second phase to the end of the first window in
    which the new intents' ``measure`` reaches half the old intents' (None: never). By
    default the share the student answered *and got right*: a student that has never seen
    an intent answers some of its requests with a wrong old label, which is no catching up."""
    after = [r for r in rows if r["phase"] == "after"]
    if not after:
        return None
    start = after[0]["from"]
    for r in after:
        new, old = r["new"][measure], r["old"][measure]
        if new is not None and old and new >= 0.5 * old:
            return int(r["to"] - start)
    return None


def release_checks(steps: Sequence[dict[str, Any]], manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """That no version skipped a release gate or a canary check on the way: every version the
    trainer announced passed its gates (its manifest says so); every one announced while
    another served went on trial first, and only the monitor's verdict made it serve."""
    problems: list[str] = []
    serving: str | None = None
    on_trial: set[str] = set()
    for s in steps:
        v = s["version"]
        if s["source"] == "trainer":
            m = manifests.get(v)
            if m is None or not m["gates"]["passed"]:
                problems.append(f"{v} announced without passing its gates")
            if serving is not None and s["action"] != "canary":
                problems.append(f"{v} served without a trial while {serving} served")
            if s["action"] == "canary":
                on_trial.add(v)
        if s["action"] == "serve":
            if serving is not None and s["source"] == "monitor" and v not in on_trial:
                problems.append(f"{v} promoted without a trial")
            serving = v
    return {
        "versions_announced": len({s["version"] for s in steps if s["source"] == "trainer"}),
        "trials": len(on_trial),
        "promoted": sum(s["action"] == "serve" and s["source"] == "monitor" for s in steps),
        "rolled_back": sum(s["action"] == "abort" for s in steps),
        "problems": problems,
        "ok": not problems,
    }
