"""The loop's run-to-run spread: `protege bench stream` once per seed, side by side.

    python benchmarks/bench_reps.py --seeds 0,1,2 --json reports/bench-reps-banking77.json -- \\
        --train ../shared/data/banking77/banking77_train.jsonl \\
        --test ../shared/data/banking77/banking77_test.jsonl --teacher-noise 0.05

One loop's figures move by a point or more from run to run (which version serves which
request depends on when the trainer finishes; the seed picks the golden set and the stream's
order), so a lever judged on one run each is judged on noise. Everything after ``--`` goes to
``protege bench stream`` as it is; each seed runs with ``--seed N`` in a home of its own, one
after the other (never side by side: they would share the cores), and writes its report
beside the summary (``<json stem>-seed<N>.json``). The summary gives each figure of the test
phase per seed, their mean and their range.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from protege.harness import machine

FIGURES = {  # name: (phase, path in the report)
    "test student share": ("test", ("student_share",)),
    "test accuracy": ("test", ("accuracy",)),
    "all-teacher accuracy": ("all_teacher", ("accuracy",)),
    "test teacher cost / all-teacher": ("test", ("cost_usd",)),
    "train student share": ("train", ("student_share",)),
    "test oos false accepts": ("test", ("scope", "oos_false_accepts")),
    "test in scope deferred": ("test", ("scope", "in_scope_deferred")),
}


def figures(report: dict[str, Any]) -> dict[str, float | None]:
    """The figures of one run's report (None where the run has none, e.g. no out of scope)."""
    out: dict[str, float | None] = {}
    for name, (phase, path) in FIGURES.items():
        value: Any = report.get(phase)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        out[name] = None if value is None else float(value)
    cost = out["test teacher cost / all-teacher"]
    all_teacher = report.get("all_teacher", {}).get("cost_usd")
    out["test teacher cost / all-teacher"] = cost / all_teacher if cost is not None and all_teacher else None
    return out


def summarise(runs: dict[int, dict[str, float | None]]) -> dict[str, dict[str, float | None]]:
    """Mean, smallest and largest of each figure over the seeds that have it."""
    out: dict[str, dict[str, float | None]] = {}
    for name in FIGURES:
        values = [v[name] for v in runs.values() if v[name] is not None]
        out[name] = {
            "mean": sum(values) / len(values) if values else None,  # type: ignore[arg-type]
            "min": min(values) if values else None,  # type: ignore[type-var]
            "max": max(values) if values else None,  # type: ignore[type-var]
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--json", type=Path, default=Path("reports/bench-reps.json"))
    ap.add_argument("bench", nargs=argparse.REMAINDER, help="-- then the arguments of protege bench stream")
    args = ap.parse_args()
    bench = args.bench[1:] if args.bench[:1] == ["--"] else args.bench
    if any(a in ("--seed", "--home", "--report-json") for a in bench):
        ap.error("--seed, --home and --report-json are set per seed")
    seeds = [int(s) for s in args.seeds.split(",")]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    runs: dict[int, dict[str, float | None]] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="protege-bench-reps-") as tmp:
        for seed in seeds:
            report = args.json.with_name(f"{args.json.stem}-seed{seed}.json")
            argv = [*bench, "--seed", str(seed), "--home", f"{tmp}/seed{seed}", "--report-json", str(report)]
            print(f"seed {seed}: protege bench stream {' '.join(argv)}", flush=True)
            done = subprocess.run([sys.executable, "-m", "protege.cli", "bench", "stream", *argv], check=False)
            if done.returncode != 0:
                sys.exit(f"seed {seed}: protege bench stream exited {done.returncode}")
            runs[seed] = figures(json.loads(report.read_text()))
    summary = summarise(runs)
    m = machine()
    print(
        f"\nprotege bench stream, {len(seeds)} seeds ({m['cpu']}, {m['cores']} cores, {time.perf_counter() - started:.0f} s)"
    )
    print(f"{'figure':<34}" + "".join(f"{'seed ' + str(s):>10}" for s in seeds) + f"{'mean':>10}{'range':>20}")

    def pct(v: float | None) -> str:
        return "-" if v is None else f"{100 * v:.1f}%"

    for name, s in summary.items():
        spread = "-" if s["min"] is None else f"{pct(s['min'])} to {pct(s['max'])}"
        print(
            f"{name:<34}"
            + "".join(f"{pct(runs[seed][name]):>10}" for seed in seeds)
            + f"{pct(s['mean']):>10}{spread:>16}"
        )
    args.json.write_text(
        json.dumps({"machine": m, "bench_args": bench, "seeds": seeds, "runs": runs, "summary": summary}, indent=1)
    )
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
