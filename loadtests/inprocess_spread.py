"""Why the serving model's in-process throughput moves on one machine: the model measured again
and again, each time beside a fixed single-core probe on each of the process's cores.

    python loadtests/inprocess_spread.py --rounds 12

The load test anchors its rates on the serving version's in-process throughput, and on this
kind of 2-core virtual machine that figure moved 1.7x within an hour with no steal time. If the
host takes speed from a core in ways that steal does not count (a neighbour on its SMT sibling,
a shared cache or memory bus, a lower clock), a fixed piece of work on that core slows with it.
Each round times the probe — a float32 matrix product through numpy's BLAS capped at one thread,
and a pure-Python loop — pinned to each core in turn, then the model (``predict`` on batches of
32 with the scorer's threads, sub-batches and BLAS cap, as ``stream_rates.py`` measures it),
then the probe again. The model's spread beside the probes' and their correlation say whether
the machine or the program moved. The version is trained once on generated tickets (the fast
recipe, no broker) into ``--home``. Prints a table, writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent))

from stream_rates import TASK, TENANT, in_process

from protege.generator import generate, write_jsonl
from protege.harness import cores_between, machine, machine_cpu
from protege.registry import Registry
from protege.settings import REPO
from protege.student.runtime import cpu_budget


def matmul_probe(seconds: float) -> float:
    """GFLOP/s of a float32 (256 x 384) @ (384 x 1536) product, one BLAS thread, for ``seconds``."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((256, 384), dtype=np.float32)
    b = rng.standard_normal((384, 1536), dtype=np.float32)
    flops = 2 * 256 * 384 * 1536
    with threadpool_limits(limits=1, user_api="blas"):
        a @ b
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            a @ b
            done += 1
        return done * flops / (time.perf_counter() - started) / 1e9


def python_probe(seconds: float) -> float:
    """Millions of iterations per second of a pure-Python loop (the interpreter, one core)."""
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        total = 0
        for i in range(100_000):
            total += i & 7
        done += 100_000
    return done / (time.perf_counter() - started) / 1e6


def probe(cores: list[int], seconds: float) -> dict[str, dict[str, float]]:
    """Both probes pinned to each core in turn; the process's affinity comes back after."""
    before = os.sched_getaffinity(0)
    out = {}
    try:
        for core in cores:
            os.sched_setaffinity(0, {core})
            out[str(core)] = {"matmul_gflops": matmul_probe(seconds), "python_mips": python_probe(seconds)}
    finally:
        os.sched_setaffinity(0, before)
    return out


def train_once(home: Path, cases: int) -> None:
    """One version of the load test's task on generated tickets (skipped when ``home`` has one)."""
    if any(v.manifest.gates.passed for v in Registry(home / "registry").versions(TENANT, TASK)):
        return
    home.mkdir(parents=True, exist_ok=True)
    rows = [{"id": f"spread-{r['id']}", "text": r["text"], "label": r["label"]} for r in generate(cases, seed=7)]
    write_jsonl(rows, home / "cases.jsonl")
    env = {**os.environ, "PROTEGE_HOME": str(home), "PROTEGE_TASKS_DIR": str(REPO / "tasks")}
    cmd = [sys.executable, "-m", "protege.cli", "train", "--task", TASK, "--tenant", TENANT]
    subprocess.run([*cmd, "--input", str(home / "cases.jsonl")], env=env, check=True)


def correlation(x: list[float], y: list[float]) -> float | None:
    if len(x) < 3 or statistics.pstdev(x) == 0 or statistics.pstdev(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--seconds", type=float, default=8.0, help="the model's measurement per round")
    ap.add_argument("--probe-seconds", type=float, default=1.5, help="each probe on each core, before and after")
    ap.add_argument("--cases", type=int, default=1200, help="generated tickets the version is trained on")
    ap.add_argument("--home", type=Path, default=REPO / ".protege" / "inprocess-spread")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "loadtest-inprocess-spread.json")
    args = ap.parse_args()
    console = Console()
    home = args.home.resolve()
    train_once(home, args.cases)
    cores = sorted(os.sched_getaffinity(0))
    threads = cpu_budget()
    texts = [r["text"] for r in generate(1640, seed=101)[800:1440]]
    about = machine()
    console.print(f"{about['cpu']}, {about['cores']} cores; the model with {threads} threads; probes on cores {cores}")
    rounds: list[dict[str, Any]] = []
    for n in range(args.rounds):
        first = probe(cores, args.probe_seconds)
        busy0, t0 = machine_cpu(), time.perf_counter()
        own = in_process(home, threads, texts, seconds=args.seconds)
        whole = cores_between(busy0, machine_cpu(), time.perf_counter() - t0)
        second = probe(cores, args.probe_seconds)
        steal = whole.get("steal", 0.0)
        row = {
            "round": n + 1,
            "seq_per_s": own["seq_per_s"],
            "cores": own["cores"],
            "machine_cores": whole,
            "probe_before": first,
            "probe_after": second,
        }
        for kind in ("matmul_gflops", "python_mips"):
            row[f"{kind}_mean"] = statistics.fmean(p[kind] for p in (*first.values(), *second.values()))
        rounds.append(row)
        console.print(
            f"round {n + 1}: {own['seq_per_s']:.0f} seq/s on {own['cores']:.2f} cores (machine "
            f"{whole.get('busy', 0):.2f} busy), steal {steal:.3f}; "
            f"matmul {row['matmul_gflops_mean']:.1f} GFLOP/s, python {row['python_mips_mean']:.1f} M it/s "
            f"(per core before/after: "
            + ", ".join(f"{c}: {first[c]['matmul_gflops']:.1f}/{second[c]['matmul_gflops']:.1f}" for c in first)
            + ")",
            highlight=False,
        )

    def spread(key: str) -> dict[str, float]:
        xs = [r[key] for r in rounds]
        return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "max_over_min": max(xs) / min(xs)}

    seq = [r["seq_per_s"] for r in rounds]
    report = {
        "machine": about,
        "threads": threads,
        "probe_cores": cores,
        "rounds": rounds,
        "spread": {k: spread(k) for k in ("seq_per_s", "matmul_gflops_mean", "python_mips_mean")},
        "correlation_with_seq_per_s": {
            k: correlation(seq, [r[k] for r in rounds]) for k in ("matmul_gflops_mean", "python_mips_mean")
        },
        "command": " ".join(sys.argv),
    }
    table = Table(title=f"in-process throughput beside fixed probes ({args.rounds} rounds)")
    for col in ("figure", "min", "median", "max", "max / min", "correlation with the model"):
        table.add_column(col)
    for key, name in (
        ("seq_per_s", "the model, seq/s"),
        ("matmul_gflops_mean", "matmul probe, GFLOP/s (1 core)"),
        ("python_mips_mean", "Python probe, M it/s (1 core)"),
    ):
        s = report["spread"][key]
        r = report["correlation_with_seq_per_s"].get(key)
        table.add_row(
            name,
            f"{s['min']:.1f}",
            f"{s['median']:.1f}",
            f"{s['max']:.1f}",
            f"{s['max_over_min']:.2f}",
            "-" if key == "seq_per_s" else ("n/a" if r is None else f"{r:+.2f}"),
        )
    console.print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"report: {args.out}")


if __name__ == "__main__":
    main()
