"""Why the serving model's in-process throughput moves on one machine: the model measured again
and again, each time beside a fixed single-core probe on each of the process's cores.

    python loadtests/inprocess_spread.py --rounds 12 --threads 0,1

The load test anchors its rates on the serving version's in-process throughput, and on this
kind of 2-core virtual machine that figure moved 1.7x within an hour with no steal time. If the
host takes speed from a core in ways that steal does not count (a neighbour on its SMT sibling,
a shared cache or memory bus, a lower clock), a fixed piece of work on that core slows with it.
Each round times the probes — a float32 matrix product through numpy's BLAS capped at one
thread, a pure-Python loop, and reading a 24 MB and a 512 MB array — pinned to each core in
turn, then the model (``predict`` on batches of 32 with the scorer's threads, sub-batches and
BLAS cap, as ``stream_rates.py`` measures it), then the probes again. The model's spread beside the probes' and their correlation say whether
the machine or the program moved. ``--threads 0,1`` measures the model at each ONNX Runtime
thread count in every round (the order alternating), so the two are compared on the same
moments of the machine. The version is trained once on generated tickets (the fast
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
from protege.student.runtime import threads_for

PROBES = ("matmul_gflops", "python_mips", "cache_gbps", "dram_gbps")


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


def memory_probe(seconds: float, megabytes: int) -> float:
    """GB/s reading a float32 array of ``megabytes`` again and again (its dot product with itself,
    one BLAS thread): at about the int8 model's 22 MB the array fits the last-level cache only
    while nothing else fills it; at 512 MB it streams from memory."""
    a = np.ones(megabytes * 2**20 // 4, dtype=np.float32)
    with threadpool_limits(limits=1, user_api="blas"):
        np.dot(a, a)
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds:
            np.dot(a, a)
            done += a.nbytes
        return done / (time.perf_counter() - started) / 1e9


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
            out[str(core)] = {
                "matmul_gflops": matmul_probe(seconds),
                "python_mips": python_probe(seconds),
                "cache_gbps": memory_probe(seconds, 24),
                "dram_gbps": memory_probe(seconds, 512),
            }
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
    ap.add_argument("--seconds", type=float, default=8.0, help="the model's measurement per round (each thread count)")
    ap.add_argument("--probe-seconds", type=float, default=1.5, help="each probe on each core, before and after")
    ap.add_argument(
        "--threads",
        default="0",
        help="ONNX Runtime threads, comma-separated (0: the scorer's default for the version's precision, "
        "threads_for); every round measures each, in turn, the order alternating",
    )
    ap.add_argument("--cases", type=int, default=1200, help="generated tickets the version is trained on")
    ap.add_argument("--home", type=Path, default=REPO / ".protege" / "inprocess-spread")
    ap.add_argument("--out", type=Path, default=REPO / "reports" / "loadtest-inprocess-spread.json")
    args = ap.parse_args()
    console = Console()
    home = args.home.resolve()
    train_once(home, args.cases)
    cores = sorted(os.sched_getaffinity(0))
    version = [v for v in Registry(home / "registry").versions(TENANT, TASK) if v.manifest.gates.passed][-1]
    counts = [threads_for(version.manifest.precision, int(t)) for t in args.threads.split(",")]
    texts = [r["text"] for r in generate(1640, seed=101)[800:1440]]
    about = machine()
    console.print(f"{about['cpu']}, {about['cores']} cores; the model with {counts} threads; probes on cores {cores}")
    rounds: list[dict[str, Any]] = []
    for n in range(args.rounds):
        first = probe(cores, args.probe_seconds)
        models: dict[str, dict[str, Any]] = {}
        for threads in counts if n % 2 == 0 else counts[::-1]:
            busy0, t0 = machine_cpu(), time.perf_counter()
            own = in_process(home, threads, texts, seconds=args.seconds)
            models[str(threads)] = {
                **own,
                "machine_cores": cores_between(busy0, machine_cpu(), time.perf_counter() - t0),
            }
        second = probe(cores, args.probe_seconds)
        row: dict[str, Any] = {"round": n + 1, "models": models, "probe_before": first, "probe_after": second}
        for threads in counts:
            row[f"seq_per_s@{threads}"] = models[str(threads)]["seq_per_s"]
        for kind in PROBES:
            row[f"{kind}_mean"] = statistics.fmean(p[kind] for p in (*first.values(), *second.values()))
        rounds.append(row)
        console.print(
            f"round {n + 1}: "
            + ", ".join(
                f"{t} threads {m['seq_per_s']:.0f} seq/s on {m['cores']:.2f} cores "
                f"(steal {m['machine_cores'].get('steal', 0):.3f})"
                for t, m in models.items()
            )
            + f"; matmul {row['matmul_gflops_mean']:.1f} GFLOP/s, python {row['python_mips_mean']:.1f} M it/s, "
            f"24 MB {row['cache_gbps_mean']:.1f} GB/s, 512 MB {row['dram_gbps_mean']:.1f} GB/s",
            highlight=False,
        )

    def spread(key: str) -> dict[str, float]:
        xs = [r[key] for r in rounds]
        return {"min": min(xs), "median": statistics.median(xs), "max": max(xs), "max_over_min": max(xs) / min(xs)}

    keys = [f"seq_per_s@{t}" for t in counts]
    first_key = keys[0]
    report: dict[str, Any] = {
        "machine": about,
        "threads": counts,
        "precision": rounds[0]["models"][str(counts[0])]["precision"],
        "probe_cores": cores,
        "rounds": rounds,
        "spread": {k: spread(k) for k in (*keys, *(f"{p}_mean" for p in PROBES))},
        "correlation_with_the_model": {
            k: {m: correlation([r[m] for r in rounds], [r[k] for r in rounds]) for m in keys}
            for k in (*keys[1:], *(f"{p}_mean" for p in PROBES))
        },
        "ratio_to_first": {
            k: {
                "median": statistics.median(r[k] / r[first_key] for r in rounds),
                "rounds_above_1": sum(r[k] > r[first_key] for r in rounds),
            }
            for k in keys[1:]
        },
        "command": " ".join(sys.argv),
    }
    table = Table(title=f"in-process throughput beside fixed probes ({args.rounds} rounds)")
    for col in ("figure", "min", "median", "max", "max / min", f"correlation with the model ({counts[0]} threads)"):
        table.add_column(col)
    names = [(k, f"the model, {t} threads, seq/s") for k, t in zip(keys, counts, strict=True)]
    names += [
        ("matmul_gflops_mean", "matmul probe, GFLOP/s (1 core)"),
        ("python_mips_mean", "Python probe, M it/s (1 core)"),
        ("cache_gbps_mean", "24 MB read, GB/s (1 core)"),
        ("dram_gbps_mean", "512 MB read, GB/s (1 core)"),
    ]
    for key, name in names:
        s = report["spread"][key]
        r = None if key == first_key else report["correlation_with_the_model"][key][first_key]
        table.add_row(
            name,
            f"{s['min']:.1f}",
            f"{s['median']:.1f}",
            f"{s['max']:.1f}",
            f"{s['max_over_min']:.2f}",
            "-" if key == first_key else ("n/a" if r is None else f"{r:+.2f}"),
        )
    console.print(table)
    for key, ratio in report["ratio_to_first"].items():
        console.print(
            f"{key} over {first_key}: median {ratio['median']:.2f}x per round, higher in {ratio['rounds_above_1']} "
            f"of {args.rounds} rounds",
            highlight=False,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"report: {args.out}")


if __name__ == "__main__":
    main()
