"""How many reviewed rows a rise of the out-of-scope share takes to be seen, and how often
stationary traffic raises a false alarm: the checks every ``recertify_every`` rows (the
fixed-sample test ``protege.certify.out_of_scope_rose`` on all rows since the rule's
certification, at each check) against the row-by-row CUSUM (``out_of_scope_alarm``) the trainer
runs between them, on the same simulated sequences.

    python benchmarks/shift_alarm.py [--runs 400] [--json reports/benchmark-shift-alarm.json]

Each run draws ``--before`` reviewed rows at the share before (what the rule was certified
beside) and up to ``--horizon`` rows after at the share after, seeded. The rows a method needs
are counted from the rule's certification; "seen by" is the share of runs it rang within the
horizon (for a stationary pair: the false alarms). No timing: the figures are the same on any
machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from protege.certify import Evidence, out_of_scope_alarm, out_of_scope_rose
from protege.harness import machine

PAIRS = [(0.013, 0.013), (0.05, 0.05), (0.18, 0.18), (0.013, 0.18), (0.013, 0.08), (0.05, 0.15), (0.18, 0.30)]


def checks(before: np.ndarray, after: np.ndarray, every: int, confidence: float) -> int | None:
    """The rows since certification at the first check whose test sees the rise (None: none does)."""
    hits = np.concatenate([before, after])
    ev = Evidence(
        kind="golden",
        confidence=np.zeros(len(hits)),
        ood=np.zeros(len(hits)),
        student_right=np.ones(len(hits), bool),
        teacher_right=np.ones(len(hits), bool),
        out_of_scope=hits,
    )
    was = np.arange(len(hits)) < len(before)
    for n in range(every, len(after) + 1, every):
        now = np.zeros(len(hits), bool)
        now[len(before) : len(before) + n] = True
        if out_of_scope_rose(ev, was, now, confidence) is not None:
            return n
    return None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=400)
    ap.add_argument("--before", type=int, default=1000, help="reviewed rows the rule was certified beside")
    ap.add_argument("--horizon", type=int, default=2000, help="reviewed rows watched after certification")
    ap.add_argument("--every", type=int, default=100, help="recertify_every: rows between checks")
    ap.add_argument("--confidence", type=float, default=0.95)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows_per_false_alarm = args.every / (1 - args.confidence)  # what the trainer passes

    rng = np.random.default_rng(args.seed)
    results = []
    host = machine()
    print(f"{host['cpu']}, {host['cores']} cores, Python {host['python']} (no timing here: the same on any machine)")
    print(
        f"{args.runs} runs per pair, {args.before} rows before, horizon {args.horizon} rows, checks every {args.every}, "
        f"confidence {args.confidence}, CUSUM one false alarm per {rows_per_false_alarm:,.0f} rows at most"
    )
    print(
        f"{'share before':>12} {'after':>6} | {'checks: seen by':>15} {'rows p50':>8} {'p90':>6} | "
        f"{'CUSUM: seen by':>14} {'rows p50':>8} {'p90':>6} | {'both: seen by':>14} {'rows p50':>8} {'p90':>6}"
    )
    for p0, p1 in PAIRS:
        fixed: list[int | None] = []
        cusum: list[int | None] = []
        either: list[int | None] = []  # what the trainer runs: both
        for _ in range(args.runs):
            before, after = rng.random(args.before) < p0, rng.random(args.horizon) < p1
            fixed.append(checks(before, after, args.every, args.confidence))
            alarm = out_of_scope_alarm(before, after, args.confidence, rows_per_false_alarm)
            cusum.append(None if alarm is None else alarm.at + 1)
            seen = [x for x in (fixed[-1], cusum[-1]) if x is not None]
            either.append(min(seen) if seen else None)

        def summary(seen: list[int | None]) -> dict[str, float | None]:
            rows = np.asarray([s for s in seen if s is not None])
            return {
                "seen_share": len(rows) / len(seen),
                "rows_p50": float(np.median(rows)) if len(rows) else None,
                "rows_p90": float(np.percentile(rows, 90)) if len(rows) else None,
            }

        a, b, c = summary(fixed), summary(cusum), summary(either)
        results.append({"share_before": p0, "share_after": p1, "checks": a, "cusum": b, "both": c})

        def cell(s: dict[str, float | None]) -> str:
            p50 = "-" if s["rows_p50"] is None else f"{s['rows_p50']:.0f}"
            p90 = "-" if s["rows_p90"] is None else f"{s['rows_p90']:.0f}"
            return f"{s['seen_share']:>14.1%} {p50:>8} {p90:>6}"

        print(f"{p0:>12.1%} {p1:>6.1%} | {cell(a)} | {cell(b)} | {cell(c)}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {"machine": host, "args": {k: str(v) for k, v in vars(args).items()}, "results": results}, indent=2
            )
            + "\n"
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
