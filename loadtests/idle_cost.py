"""Load: what the pipeline costs when no request arrives, per consumer fetch wait.

    python loadtests/idle_cost.py --fetch-waits 10,500 --seconds 30

Every service's consumers ask the broker for records in a loop; a fetch that finds none is
held by the broker for up to ``fetch_max_wait_ms`` (a long poll: it is answered as soon as
records arrive). For each wait, in one run: the embedded broker and the six services start
(offline stand-in teacher, no student), settle for ``--settle`` seconds, then the CPU each
process spends over ``--seconds`` with no traffic is read from /proc. Prints a table and the
CPU model; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from protege.generator import generate, write_jsonl
from protege.harness import cpu_seconds, machine
from protege.pipeline import LocalPipeline
from protege.settings import REPO
from protege.student.backbone import cached_backbone

sys.path.insert(0, str(REPO))  # the tests' pipeline environment
from tests.helpers import pipeline_env


def processes() -> dict[str, str]:
    """pid -> "broker" or the service's name, for the broker and the services running now."""
    found = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "java" in cmd and "kafka" in cmd.lower():
            found[pid] = "broker"
        elif "protege_services." in cmd:
            found[pid] = cmd.split("protege_services.")[1].split()[0]
    return found


def idle(home: Path, wait: int, settle: float, seconds: float) -> dict[str, float]:
    labels = home / "labels.jsonl"
    write_jsonl(generate(50, seed=1), labels)
    env = pipeline_env(labels, cached_backbone(), PROTEGE_FETCH_MAX_WAIT_MS=str(wait))
    os.environ["PROTEGE_FETCH_MAX_WAIT_MS"] = str(wait)  # the pipeline's own settings, passed to children
    with LocalPipeline(home, env=env):
        time.sleep(settle)
        procs = processes()
        before = {pid: cpu_seconds(pid) for pid in procs}
        time.sleep(seconds)
        after = {pid: cpu_seconds(pid) for pid in procs}
    spent: dict[str, float] = {}
    for pid, name in procs.items():
        a, b = before[pid], after[pid]
        if a is not None and b is not None:
            spent[name] = spent.get(name, 0.0) + (b - a) / seconds
    return spent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fetch-waits", default="10,500")
    ap.add_argument("--settle", type=float, default=20.0)
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--json", type=Path, default=REPO / "reports" / "loadtest-idle.json")
    ap.add_argument("--home", type=Path, default=Path(".protege/loadtest-idle"))
    args = ap.parse_args()
    console = Console(width=140)
    host = machine()
    console.print(f"{host['cpu']}, {host['cores']} cores, Python {host['python']}")
    waits = [int(w) for w in args.fetch_waits.split(",")]
    runs: dict[int, dict[str, float]] = {}
    for wait in waits:
        home = args.home.resolve() / f"wait-{wait}"
        console.print(
            f"fetch_max_wait_ms={wait}: starting, {args.settle:.0f} s to settle, {args.seconds:.0f} s idle ..."
        )
        runs[wait] = idle(home, wait, args.settle, args.seconds)
    names = sorted({n for r in runs.values() for n in r}, key=lambda n: (n != "broker", n))
    table = Table(
        title=f"CPU with no traffic (cores, i.e. CPU seconds per second); {host['cpu']}, {host['cores']} cores"
    )
    table.add_column("fetch_max_wait_ms", justify="right")
    for n in [*names, "total"]:
        table.add_column(n, justify="right")
    for wait in waits:
        row = runs[wait]
        table.add_row(str(wait), *(f"{row.get(n, 0.0):.3f}" for n in names), f"{sum(row.values()):.3f}")
    console.print(table)
    report: dict[str, Any] = {"machine": host, "seconds": args.seconds, "runs": {str(w): r for w, r in runs.items()}}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
