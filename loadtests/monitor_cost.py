"""Load: what the monitor costs the broker and the CPU per decision, per window setting.

    python loadtests/monitor_cost.py --decisions 4000 --configs 3600/300,3600/900,900/300 --rounds 2
    git worktree add /tmp/old REV && python loadtests/monitor_cost.py --baseline /tmp/old --configs 3600/900/20

The monitor (faust-streaming) counts every decision into hopping windows, a drift state
and, while a canary is on trial, the trial's tallies, each a write to a changelog topic.
On a 2-core machine running the whole pipeline that traffic is what slows the student path
(the demo, README). This measures it alone, on one embedded broker: for each window
setting (``size/step`` seconds: size/step windows hold each record) the same synthetic
stream is published first — ``--decisions`` decisions of two tenants, a quarter escalated,
one tenant with a canary on trial for a quarter of its traffic, the teacher's answers to
the escalations and audits of 5% of accepted answers — then a monitor process is started
on it and timed from its first counted decision until it has counted every decision.

Per setting: decisions/s counted, CPU seconds per 1,000 decisions of the monitor and of the
broker (from /proc), and the records it wrote (changelog and its keyed topic) per decision.
Settings run interleaved, ``--rounds`` times, after a warm-up run; the table shows medians and ratios to the
first setting (this machine is shared and noisy). ``--baseline`` runs another checkout's
monitor beside this one's, in the same rounds, on the same broker. Prints the CPU model;
writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from rich.console import Console
from rich.table import Table

from protege.broker.embedded import EmbeddedBroker, free_port
from protege.events import Decision, ModelAnnouncement, TeacherResult, Usage
from protege.generator import triage_task
from protege.harness import cpu_seconds, machine, percentile
from protege.kafka import Out, consumer, ensure_topics, partitions_of, publish
from protege.logs import configure
from protege.settings import REPO, Settings
from protege.task import Canary, write_task
from protege.topics import Topics

TENANTS = ("acme", "globex")


def cpu(pid: int) -> float:
    seconds = cpu_seconds(pid)
    if seconds is None:
        raise RuntimeError(f"process {pid} is gone")
    return seconds


def announcement(tenant: str, task: str, version: str, action: str, at_ms: int, labels: list[str]) -> ModelAnnouncement:
    return ModelAnnouncement(
        tenant=tenant,
        task=task,
        version=version,
        path=f"/registry/{tenant}/{task}/{version}",
        labels=labels,
        metrics={"golden_accuracy": 0.95, "golden_macro_f1": 0.93, "coverage": 0.8},
        trained_on=500,
        action=action,  # type: ignore[arg-type]
        share=0.25 if action == "canary" else None,
        announced_at_ms=at_ms,
    )


def stream(t: Topics, task: str, labels: list[str], n: int, now_ms: int) -> list[Out]:
    """The synthetic stream: announcements, then ``n`` decisions and their teacher results."""
    outs = [Out.of(t.models, announcement(tenant, task, "v1", "serve", now_ms - 60_000, labels)) for tenant in TENANTS]
    outs.append(Out.of(t.models, announcement("acme", task, "v2", "canary", now_ms - 30_000, labels)))
    for i in range(n):
        tenant = TENANTS[i % 2]
        version = "v2" if tenant == "acme" and i % 8 == 0 else "v1"
        escalate = i % 4 == 1
        at = now_ms - 20_000 + i * 20_000 // n
        d = Decision(
            request_id=f"r{i}",
            tenant=tenant,
            task=task,
            verdict="escalate" if escalate else "accept",
            route="teacher" if escalate else "student",
            policy="cascade",
            policy_version="p",
            model_version=version,
            student_label=labels[i % len(labels)],
            signals={"confidence": 0.5},
            thresholds={"min_confidence": 0.6},
            reasons=["low_confidence"] if escalate else [],
            decided_at_ms=at,
        )
        outs.append(Out.of(t.decisions, d))
        if escalate or i % 20 == 0:
            r = TeacherResult(
                request_id=f"r{i}",
                tenant=tenant,
                task=task,
                text="x",
                label=labels[i % len(labels)],
                teacher="bench",
                standin=True,
                usage=Usage(input_tokens=100, output_tokens=5),
                cost_usd=0.0003,
                latency_ms=1,
                attempts=1,
                mode="answer" if escalate else "audit",
                student_label=labels[i % len(labels)] if i % 40 else labels[0],
                model_version=version,
                answered_at_ms=at + 500,
            )
            outs.append(Out.of(t.teacher_results, r))
    return outs


async def written(settings: Settings, app: str) -> dict[str, int]:
    """Records on the monitor's own topics: its changelogs and its keyed topic."""
    reader = consumer(settings, group=None)
    await reader.start()
    try:
        mine = [t for t in await reader.topics() if t.startswith(app) or t == settings.topics.monitor_keyed]
        mine = [t for t in mine if t.startswith(settings.topic_prefix) or t.startswith(app)]
        counts = {}
        for topic in mine:
            tps = [TopicPartition(topic, p) for p in await partitions_of(reader, topic)]
            counts[topic] = sum((await reader.end_offsets(tps)).values())
        return counts
    finally:
        await reader.stop()


def decided(port: int) -> float:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0.0
    return sum(float(m) for m in re.findall(r"^protege_monitor_decided\{[^}]*\} (\S+)$", text, re.M))


def run_once(
    bootstrap: str, home: Path, size: int, step: int, n: int, linger_ms: int, code: Path | None = None
) -> dict[str, Any]:
    prefix = f"mc{time.time_ns()}."
    settings = Settings(bootstrap_servers=bootstrap, topic_prefix=prefix, home=home / prefix.rstrip("."))
    task = triage_task().model_copy(update={"name": "t"})
    canary = Canary(share=0.25, min_audits=10_000, max_audits=100_000, max_minutes=600)  # on trial throughout
    task = task.model_copy(update={"student": task.student.model_copy(update={"canary": canary})})
    write_task(task, settings.home / "tasks" / "t.yaml")
    labels = list(task.labels)
    asyncio.run(ensure_topics(settings))
    now_ms = int(time.time() * 1000)
    asyncio.run(publish(settings, stream(settings.topics, "t", labels, n, now_ms)))
    port = free_port()
    env = {
        **os.environ,
        "PROTEGE_BOOTSTRAP_SERVERS": bootstrap,
        "PROTEGE_TOPIC_PREFIX": prefix,
        "PROTEGE_HOME": str(settings.home),
        "PROTEGE_TASKS_DIR": str(settings.home / "tasks"),
        "PROTEGE_PARTITIONS": str(settings.partitions),
        "PROTEGE_METRICS_PORT": str(port),
        "PROTEGE_MONITOR_WINDOW_S": str(size),
        "PROTEGE_MONITOR_STEP_S": str(step),
        "PROTEGE_MONITOR_LINGER_MS": str(linger_ms),
        "PROTEGE_LOG_LEVEL": "warning",
    }
    if code is not None:  # another checkout's monitor: its protege and its services first on the path
        shim = home / f"shim-{code.name}"
        shim.mkdir(parents=True, exist_ok=True)
        if not (shim / "protege_services").exists():
            (shim / "protege_services").symlink_to(code.resolve() / "services")
        env["PYTHONPATH"] = f"{code.resolve()}:{shim}"
    log = (settings.home / "monitor.log").open("ab")
    broker_pid = EmbeddedBroker(home / "broker").pid()
    assert broker_pid is not None
    monitor = subprocess.Popen([sys.executable, "-m", "protege_services.monitor"], env=env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + 600
        while decided(port) == 0:
            if monitor.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the monitor did not start counting; see {log.name}")
            time.sleep(0.05)
        t0, m0, b0 = time.perf_counter(), cpu(monitor.pid), cpu(broker_pid)
        # until every decision is counted (/metrics: the same end for any checkout's monitor)
        while decided(port) < n:
            if monitor.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the monitor counted {decided(port):.0f} of {n} decisions in 10 minutes")
            time.sleep(0.2)
        t1, m1, b1 = time.perf_counter(), cpu(monitor.pid), cpu(broker_pid)
    finally:
        monitor.send_signal(signal.SIGTERM)
        try:
            monitor.wait(timeout=30)
        except subprocess.TimeoutExpired:
            monitor.kill()
        log.close()
    records = asyncio.run(written(settings, f"{prefix}protege-monitor"))
    changelog = sum(v for k, v in records.items() if k.endswith("-changelog"))
    keyed_records = records.get(settings.topics.monitor_keyed, 0)
    return {
        "seconds": t1 - t0,
        "decisions_per_s": n / (t1 - t0),
        "monitor_cpu_per_1k": (m1 - m0) * 1000 / n,
        "broker_cpu_per_1k": (b1 - b0) * 1000 / n,
        "changelog_per_decision": changelog / n,
        "keyed_per_decision": keyed_records / n,
        "records": records,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--decisions", type=int, default=4000)
    ap.add_argument(
        "--configs",
        default="3600/300,3600/900,900/300",
        help="window size/step in seconds, optionally /linger ms (3600/900/10), to compare",
    )
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of protege (git worktree add /tmp/old REV): its monitor runs first in each "
        "round, with the first setting, and the ratios are to it",
    )
    ap.add_argument("--json", type=Path, default=REPO / "reports" / "loadtest-monitor-cost.json")
    ap.add_argument("--home", type=Path, default=Path(".protege/loadtest-monitor"))
    args = ap.parse_args()
    configure("warning", "console")
    console = Console(width=160)
    host = machine()
    console.print(f"{host['cpu']}, {host['cores']} cores, Python {host['python']}")
    configs = [tuple(int(x) for x in c.split("/")) for c in args.configs.split(",")]
    configs = [(c[0], c[1], c[2] if len(c) > 2 else 0) for c in configs]
    names = [f"{s}/{st}" + (f"/{lg}ms" if lg else "") for s, st, lg in configs]
    codes: list[Path | None] = [None] * len(configs)
    if args.baseline is not None:
        rev = subprocess.run(["git", "-C", str(args.baseline), "rev-parse", "--short", "HEAD"], capture_output=True)
        names.insert(0, f"{names[0]} (baseline {rev.stdout.decode().strip() or args.baseline})")
        configs.insert(0, configs[0])
        codes.insert(0, args.baseline)
    broker = EmbeddedBroker(args.home / "broker")
    bootstrap = broker.start()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    try:
        console.print("warm-up run (not counted): the broker's JIT, the page cache ...")
        run_once(bootstrap, args.home, *configs[0][:2], min(args.decisions, 1000), configs[0][2])
        for r in range(args.rounds):
            for name, (size, step, linger), code in zip(names, configs, codes, strict=True):
                console.print(f"round {r + 1}: {name} ({size // step} windows per record), ...")
                runs[name].append(run_once(bootstrap, args.home, size, step, args.decisions, linger, code))
                last = runs[name][-1]
                console.print(
                    f"  {last['decisions_per_s']:.0f} decisions/s, monitor {last['monitor_cpu_per_1k']:.2f} s "
                    f"and broker {last['broker_cpu_per_1k']:.2f} s CPU per 1k, "
                    f"{last['changelog_per_decision']:.1f} changelog records per decision"
                )
    finally:
        broker.stop()

    def median(name: str, q: str) -> float:
        return float(percentile([x[q] for x in runs[name]], 0.5) or 0.0)

    table = Table(
        title=f"The monitor over {args.decisions} decisions (pre-published), median of {args.rounds} rounds; "
        f"{host['cpu']}, {host['cores']} cores"
    )
    cols = ("size/step", "windows per record", "decisions/s", "monitor CPU s/1k", "broker CPU s/1k")
    for col in (*cols, "changelog/decision", "keyed/decision", "monitor CPU vs first", "broker CPU vs first"):
        table.add_column(col, justify="right")
    base = median(names[0], "broker_cpu_per_1k")
    base_monitor = median(names[0], "monitor_cpu_per_1k")
    for name, (size, step, _) in zip(names, configs, strict=True):
        table.add_row(
            name,
            str(size // step),
            f"{median(name, 'decisions_per_s'):.0f}",
            f"{median(name, 'monitor_cpu_per_1k'):.2f}",
            f"{median(name, 'broker_cpu_per_1k'):.2f}",
            f"{median(name, 'changelog_per_decision'):.2f}",
            f"{median(name, 'keyed_per_decision'):.2f}",
            f"{median(name, 'monitor_cpu_per_1k') / base_monitor:.2f}x" if base_monitor else "-",
            f"{median(name, 'broker_cpu_per_1k') / base:.2f}x" if base else "-",
        )
    console.print(table)
    report = {
        "machine": host,
        "decisions": args.decisions,
        "rounds": args.rounds,
        "baseline": str(args.baseline) if args.baseline else None,
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
