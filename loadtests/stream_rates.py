"""Load: the whole pipeline at fixed request rates or as fast as possible, beside the raw
broker and the serving model's own in-process throughput in the same run.

    python loadtests/stream_rates.py --rates 25,50%,max --seconds 20 --layouts separate,fused,one-hop

One embedded broker and the six services; a warm-up stream trains one student (then no
retrains, so the phases measure serving, not training); then each rate for ``--seconds``
of generated tickets (offline stand-in teacher). ``max`` publishes ``--max-requests`` as
fast as the producer can and reports the throughput the pipeline sustained. For each
phase it also measures the raw broker: plain produce -> consume of the same number of
records at the same rate on a scratch topic, so the pipeline's cost shows as a ratio.

Per route: throughput, p50/p95/p99 end to end (publish -> the caller reads the answer).
For the student path also per hop, from the events' own timestamps: publish -> ingested,
ingested -> scored, scored -> answered (verifier), answered -> read by the caller. CPU
seconds per answered request for each process (the broker too), from /proc.

After the warm-up the serving version's throughput is measured in-process (its ``predict``
on batches of 32, the scorer's threads and sub-batches, nothing else working): a rate
written ``50%`` is that share of it (with several runs, ``--rounds`` or ``|``-separated
variants, of the first run's figure, so every run is offered the same req/s; ``--own-rates``:
each run's own), and every phase's throughput is also given as a share of the run's own. The
summary names the highest fixed rate that was sustained (every request answered,
the answers kept pace) with student-path p95 under ``--p95-target`` ms. ``--layouts``
runs the whole thing once per layout (``separate``: ingestion, scorer and verifier; ``fused``:
``PROTEGE_FUSED=1``, the scorer decides; ``one-hop``: ``PROTEGE_ONE_HOP=1``, the scorer
ingests and decides), one after the other; ``--broker-jvm`` once per set of
the broker's JVM flags as well, each on a fresh broker. The broker's CPU is also split by kind
of thread (request handlers, network threads, the JIT compiler, GC: ``jcmd`` names them).
``--soak N`` publishes N requests as fast as possible after the warm-up, not measured (a
broker that has run for days has compiled its hot paths; a fresh one compiles through the first
phases). ``--profile`` restarts the
services under py-spy after the warm-up and summarises where each one's CPU went (its
latencies then include py-spy's sampling: profile in a run of its own). Prints tables,
writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from protege.events import Scored
from protege.generator import generate, write_jsonl
from protege.harness import (
    Drive,
    cores_between,
    cpu_seconds,
    drive,
    java_thread_names,
    machine,
    machine_cpu,
    percentile,
    summarize,
    thread_cpu_seconds,
    time_records,
    wait_quiet,
)
from protege.kafka import ensure_topics
from protege.pipeline import LocalPipeline
from protege.profiles import Profile
from protege.registry import Registry
from protege.settings import REPO, ScorerSettings, Settings
from protege.state import read_all
from protege.student.runtime import Student
from protege.task import load_task, write_task

TENANT, TASK = "load", "ticket-triage"


async def raw_broker(settings: Settings, n: int, rate: float | None) -> dict[str, Any]:
    """Produce ``n`` records at ``rate`` (None: as fast as possible) and time each to its
    arrival at a consumer."""
    topic = f"{settings.topic_prefix}loadtest.raw.{uuid.uuid4().hex[:8]}"
    print(f"raw broker: {n} records at {f'{rate:.0f}/s' if rate else 'full speed'} on {topic}", flush=True)
    await ensure_topics(settings, [topic])
    latencies, seconds = await time_records(settings, topic, topic, n, rate)
    return {
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99),
        "throughput_rps": n / seconds,
    }


async def student_hops(settings: Settings, d: Drive, since_ms: int) -> dict[str, dict[str, float | None]]:
    """p50/p95 ms of each hop on the student path, from the events' timestamps (one clock:
    every process runs on this machine)."""
    scored_at = {}
    for r in await read_all(settings, settings.topics.scored, since_ms=since_ms):
        scored = Scored.model_validate_json(r.value)
        scored_at[scored.request.request_id] = scored.scored_at_ms
    spans: dict[str, list[float]] = {HOPS[0]: [], HOPS[1]: [], HOPS[2]: [], HOPS[3]: []}
    for o in d.outcomes.values():
        resp = o.response
        if resp is None or resp.route != "student" or o.answered_at is None or o.request_id not in scored_at:
            continue
        marks = [
            o.sent_at * 1000,
            resp.received_at_ms,
            scored_at[o.request_id],
            resp.answered_at_ms,
            o.answered_at * 1000,
        ]
        for hop, a, b in zip(HOPS, marks, marks[1:], strict=False):
            spans[hop].append(b - a)
    return {hop: {"p50": percentile(v, 0.5), "p95": percentile(v, 0.95)} for hop, v in spans.items()}


LAYOUTS = ("separate", "fused", "one-hop")  # PROTEGE_FUSED, PROTEGE_ONE_HOP
HOPS = ("publish->ingested", "ingested->scored", "scored->answered", "answered->caller")


def sustained(phase: dict[str, Any]) -> bool:
    """Every request answered once, and the answers kept pace with the offered rate."""
    s = phase["pipeline"]
    kept_pace = s["throughput_rps"] is not None and s["throughput_rps"] >= 0.9 * phase["rate"]
    return s["answered"] == s["requests"] and s["duplicates"] == 0 and kept_pace


def in_process(
    home: Path, threads: int, texts: list[str], seconds: float = 8.0, batch: int = 32, blas: int | None = None
) -> dict[str, Any]:
    """The serving version's own throughput: ``predict`` on batches of ``batch`` texts, with
    the scorer's threads, sub-batches and BLAS threads (``blas``; None: the scorer's default),
    in this process, for ``seconds``; the cores this process kept busy meanwhile beside it."""
    from threadpoolctl import threadpool_limits

    from protege.student.runtime import limit_blas

    passed = [v for v in Registry(home / "registry").versions(TENANT, TASK) if v.manifest.gates.passed]
    if not passed:
        raise SystemExit("the warm-up trained no version that passed its gates: nothing serves")
    version = passed[-1]
    student = Student(version.folder, providers="cpu", threads=threads, sub_batch=ScorerSettings().sub_batch)
    blas = ScorerSettings().blas_threads if blas is None else blas
    with threadpool_limits(limits=None, user_api="blas"):  # this process's own limits come back after
        limit_blas(blas)  # as the scorer caps it
        student.predict(texts[:batch])
        done, started, cpu0 = 0, time.perf_counter(), cpu_seconds(os.getpid()) or 0.0
        while time.perf_counter() - started < seconds:
            for i in range(0, len(texts) - batch + 1, batch):
                student.predict(texts[i : i + batch])
                done += batch
        elapsed = time.perf_counter() - started
        cores = ((cpu_seconds(os.getpid()) or 0.0) - cpu0) / elapsed
    return {
        "version": version.name,
        "precision": version.manifest.precision,
        "batch": batch,
        "blas_threads": blas,
        "threads": student.encoder.session_info["intra_op_threads"],  # as the scorer chose them (threads_for)
        "seq_per_s": done / elapsed,
        "cores": round(cores, 2),
    }


def parse_rate(text: str) -> tuple[float | None, float | None]:
    """(req/s, share of in-process): ``25`` -> (25, None); ``50%`` -> (None, 0.5); ``max`` -> (None, None)."""
    if text == "max":
        return None, None
    if text.endswith("%"):
        return None, float(text[:-1]) / 100
    return float(text), None


def processes(p: LocalPipeline) -> dict[str, int]:
    """Process name -> pid, the broker's too (for CPU per request)."""
    assert p.supervisor is not None
    pids = {name: child.proc.pid for name, child in p.supervisor.children.items()}
    broker = p.broker.pid() if p.broker is not None and hasattr(p.broker, "pid") else None
    return pids | ({"broker": broker} if broker else {})


def broker_threads(pids: dict[str, int]) -> dict[str, float]:
    """The broker's CPU seconds so far by kind of thread (whole names from jcmd); empty without one."""
    pid = pids.get("broker")
    return thread_cpu_seconds(pid, java_thread_names(pid)) if pid else {}


def spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Seconds each kind of thread used between two ``broker_threads``, busiest first (kinds in both)."""
    used = {kind: t - before[kind] for kind, t in after.items() if kind in before and t > before[kind]}
    return dict(sorted(used.items(), key=lambda kv: -kv[1]))


@dataclass(frozen=True)
class Variant:
    """One run's settings: the layout, the broker's extra JVM flags (PROTEGE_BROKER_JVM_OPTS), the
    services' linger to fill a micro-batch in ms (PROTEGE_LINGER_MS), the scorer's largest
    micro-batch (PROTEGE_MAX_BATCH; None: the default), the producers' retry backoff in ms
    (PROTEGE_RETRY_BACKOFF_MS; None: the default), the scorer's ONNX Runtime threads
    (PROTEGE_THREADS; 0: its cores; the in-process figure is measured with them), its BLAS threads
    (PROTEGE_BLAS_THREADS; None: the default), partitions per topic (None: the pipeline's default;
    each hop commits a transaction per partition it read), and ``soak``: requests published as
    fast as possible after the warm-up, before anything is measured (a broker that has run for
    days has compiled its hot paths; a fresh one compiles through the first phases)."""

    layout: str
    jvm: str = ""
    linger: int = 0
    max_batch: int | None = None
    backoff: int | None = None
    threads: int = 0
    blas: int | None = None
    partitions: int | None = None
    soak: int = 0

    def name(self, round_: int, rounds: int) -> str:
        return (
            self.layout
            + (f" [{self.jvm}]" if self.jvm else "")
            + (f" linger {self.linger} ms" if self.linger else "")
            + (f" batch <= {self.max_batch}" if self.max_batch else "")
            + (f" backoff {self.backoff} ms" if self.backoff is not None else "")
            + (f" {self.threads} scorer thread{'s' * (self.threads > 1)}" if self.threads else "")
            + (f" BLAS {self.blas or 'uncapped'}" if self.blas is not None else "")
            + (f" {self.partitions} partition{'s' * (self.partitions > 1)}" if self.partitions else "")
            + (f" soak {self.soak}" if self.soak else "")
            + (f" (round {round_ + 1})" if rounds > 1 else "")
        )

    def folder(self, round_: int, rounds: int) -> str:
        return (
            self.layout
            + ("-" + re.sub(r"[^A-Za-z0-9=]+", "", self.jvm) if self.jvm else "")
            + (f"-linger{self.linger}" if self.linger else "")
            + (f"-batch{self.max_batch}" if self.max_batch else "")
            + (f"-backoff{self.backoff}" if self.backoff is not None else "")
            + (f"-threads{self.threads}" if self.threads else "")
            + (f"-blas{self.blas}" if self.blas is not None else "")
            + (f"-partitions{self.partitions}" if self.partitions else "")
            + (f"-soak{self.soak}" if self.soak else "")
            + (f"-round{round_ + 1}" if rounds > 1 else "")
        )


def run_layout(
    args: argparse.Namespace, v: Variant, console: Console, round_: int = 0, anchor: float | None = None
) -> dict[str, Any]:
    """One run of ``v`` on a fresh broker and pipeline; ``round_``: which round of ``--rounds``;
    ``anchor``: the in-process seq/s a rate written ``N%`` is a share of (None: this run's own,
    measured here)."""
    name, folder = v.name(round_, args.rounds), v.folder(round_, args.rounds)
    home = (args.home / folder).resolve()
    shutil.rmtree(home, ignore_errors=True)
    specs = [parse_rate(r) for r in args.rates.split(",")]
    # Enough generated tickets for any rate: a share of in-process is at most 3,000 req/s here.
    most = sum(
        args.max_requests if r is None and f is None else int((r or 3000 * (f or 0)) * args.seconds) for r, f in specs
    )
    rows = generate(args.warmup + v.soak + 200 + most, seed=101)
    write_jsonl(rows, home / "labels.jsonl")
    task = load_task(REPO / "tasks" / f"{TASK}.yaml")
    int8 = {"auto": "auto", "int8": True, "fp32": False}[args.precision]
    task = task.model_copy(update={"student": task.student.model_copy(update={"int8": int8})})
    write_task(task, home / "tasks" / f"{TASK}.yaml")
    env = {
        "PROTEGE_TASKS_DIR": str(home / "tasks"),
        "PROTEGE_STANDIN_LABELS": str(home / "labels.jsonl"),
        "PROTEGE_MIN_CASES": str(int(args.warmup * 0.6)),
        "PROTEGE_RETRAIN_EVERY": "1000000",
        "PROTEGE_THREADS": str(v.threads),
        "PROTEGE_TRAINER_THREADS": "1",
        "PROTEGE_FUSED": "1" if v.layout == "fused" else "0",
        "PROTEGE_ONE_HOP": "1" if v.layout == "one-hop" else "0",
        "PROTEGE_LINGER_MS": str(v.linger),
        **({"PROTEGE_MAX_BATCH": str(v.max_batch)} if v.max_batch else {}),
        **({"PROTEGE_RETRY_BACKOFF_MS": str(v.backoff)} if v.backoff is not None else {}),
        **({"PROTEGE_BLAS_THREADS": str(v.blas)} if v.blas is not None else {}),
    }
    report: dict[str, Any] = {
        "layout": v.layout,
        "broker_jvm": v.jvm,
        "linger_ms": v.linger,
        "max_batch": v.max_batch or ScorerSettings().max_batch,
        "retry_backoff_ms": Settings().retry_backoff_ms if v.backoff is None else v.backoff,
        "round": round_ + 1,
        "blas_threads": ScorerSettings().blas_threads if v.blas is None else v.blas,
        "partitions": v.partitions or LocalPipeline.partitions,
        "soak": v.soak,
        "name": name,
        "rates": [],
    }
    os.environ["PROTEGE_BROKER_JVM_OPTS"] = v.jvm  # the broker is this process's child
    with LocalPipeline(home, env=env, partitions=report["partitions"]) as p:
        settings = p.settings
        console.print(f"{name}: warm-up: {args.warmup} tickets to train one student ...")
        asyncio.run(drive(settings, rows[: args.warmup], tenant=TENANT, task=TASK, rate=40))
        t = settings.topics
        asyncio.run(wait_quiet(settings, {"harvester": [t.teacher_results], "trainer": [t.harvest]}))
        at = args.warmup
        if v.soak:
            console.print(f"{name}: soak: {v.soak} requests as fast as possible, not measured ...")
            asyncio.run(drive(settings, rows[at : at + v.soak], tenant=TENANT, task=TASK, rate=None, timeout=600.0))
            asyncio.run(wait_quiet(settings, {"harvester": [t.teacher_results], "trainer": [t.harvest]}))
            at += v.soak
        time.sleep(5)
        texts = [r["text"] for r in rows[at : at + 640]]
        # "Nothing else working" is what the pipeline's processes leave: their CPU while it is
        # measured (a fresh broker's JIT compiler can still take a third of a core) is recorded.
        quiet = processes(p)
        threads0 = broker_threads(quiet)
        busy0, t0, whole0 = {n: cpu_seconds(pid) or 0.0 for n, pid in quiet.items()}, time.monotonic(), machine_cpu()
        report["in_process"] = own = in_process(home, v.threads, texts, blas=v.blas)
        report["scorer_threads"] = own["threads"]  # the version's precision decides them (threads_for)
        elapsed = time.monotonic() - t0
        # the machine's cores meanwhile: a host that takes cores away (steal) moves this figure
        own["machine_cores"] = cores_between(whole0, machine_cpu(), elapsed)
        own["background_cores"] = {n: ((cpu_seconds(pid) or 0.0) - busy0[n]) / elapsed for n, pid in quiet.items()}
        own["broker_jit_cores"] = spent(threads0, broker_threads(quiet)).get("C2 CompilerThread", 0.0) / elapsed
        console.print(
            f"{name}: in-process: {own['version']} ({own['precision']}) {own['seq_per_s']:.0f} sequences/s "
            f"at batch {own['batch']}, {report['scorer_threads']} thread(s); meanwhile the pipeline's "
            f"processes used {sum(own['background_cores'].values()):.2f} cores (the broker's JIT compiler "
            f"{own['broker_jit_cores']:.2f}); the host took {own['machine_cores'].get('steal', 0):.2f} cores (steal)"
        )
        if args.profile:
            assert p.supervisor is not None
            p.supervisor.stop()
            p.supervisor.profile = home / "profiles"
            p.supervisor.start()
            asyncio.run(drive(settings, rows[at : at + 200], tenant=TENANT, task=TASK, rate=25))  # caught up again
        at += 200
        report["rates_of_seq_per_s"] = base = anchor or own["seq_per_s"]
        for fixed, share in specs:
            rate = fixed if share is None else share * base
            n = args.max_requests if rate is None else int(rate * args.seconds)
            chunk, at = rows[at : at + n], at + n
            label = "max" if rate is None else f"{rate:.0f}" + (f" ({100 * share:.0f}%)" if share else "")
            console.print(f"{name}: {label + ' req/s' if rate else 'as fast as possible'} ({n} requests) ...")
            since_ms = int(time.time() * 1000) - 1000
            pids = {} if args.profile else processes(p)
            threads0 = broker_threads(pids)
            cpu0 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            whole0, t0 = machine_cpu(), time.monotonic()
            d = asyncio.run(
                drive(settings, chunk, tenant=TENANT, task=TASK, rate=rate, timeout=max(120.0, args.seconds * 10))
            )
            cpu1 = {name: cpu_seconds(pid) for name, pid in pids.items()}
            machine_cores = cores_between(whole0, machine_cpu(), time.monotonic() - t0)
            threads1 = broker_threads(pids)
            s = summarize(d)
            phase = {
                "rate": rate,
                "share_of_in_process": share,
                "label": label,
                "pipeline": s,
                "answered_per_s_of_in_process": (s["throughput_rps"] or 0) / own["seq_per_s"],
                "cpu_ms_per_answer": {
                    name: 1000 * (cpu1[name] - cpu0[name]) / max(1, s["answered"])  # type: ignore[operator]
                    for name in pids
                    if cpu0[name] is not None and cpu1[name] is not None
                },
                # The broker's CPU by kind of thread (request handlers, network threads, the
                # transaction coordinator's marker sender, the JIT, GC), threads that lived through the phase.
                "broker_threads_ms_per_answer": {
                    kind: 1000 * t / max(1, s["answered"]) for kind, t in spent(threads0, threads1).items()
                },
                # the whole machine while the phase ran (the load generator included) and what
                # the host took away from it (steal)
                "machine_cores": machine_cores,
                "student_hops_ms": asyncio.run(student_hops(settings, d, since_ms)),
                "raw_broker_ms": asyncio.run(asyncio.wait_for(raw_broker(settings, n, rate), timeout=120)),
            }
            phase["sustained"] = rate is not None and sustained(phase)
            report["rates"].append(phase)
    if args.profile:
        report["profiles"] = {}
        for path in sorted((home / "profiles").glob("*.txt")):
            prof = Profile.read(path)
            report["profiles"][path.stem] = {"samples": prof.samples, "startup_samples": prof.startup} | {
                "shares": prof.shares(),
                "top": [f"{leaf} {n}" for leaf, n in prof.leaves.most_common(8)],
            }
    ok = [
        r
        for r in report["rates"]
        if r["sustained"] and (r["pipeline"]["latency_ms"]["student"]["p95"] or float("inf")) < args.p95_target
    ]
    best = max(ok, key=lambda r: r["rate"]) if ok else None
    report["highest_sustained_rate_under_target"] = best and best["rate"]
    report["highest_sustained_share_of_in_process"] = best and best["rate"] / own["seq_per_s"]
    fastest = [r for r in report["rates"] if r["rate"] is None]
    report["max_answered_per_s"] = fastest[-1]["pipeline"]["throughput_rps"] if fastest else None
    report["max_answered_share_of_in_process"] = fastest[-1]["answered_per_s_of_in_process"] if fastest else None
    return report


def print_layout(report: dict[str, Any], args: argparse.Namespace, console: Console) -> None:
    f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    own = report["in_process"]
    table = Table(
        title=f"{report['name']}: pipeline vs raw broker, same rate, same run (latency ms, publish -> answer "
        f"read; student {own['precision']}, scorer threads {report['scorer_threads']}; in-process "
        f"{own['seq_per_s']:.0f} seq/s)",
        caption="teacher: OFFLINE STAND-IN",
    )
    for col in (
        "req/s offered",
        "answered",
        "answered/s",
        "of in-process",
        "student share",
        "student p50",
        "student p95",
        "student p99",
        "teacher p95",
        "raw p95",
        "student p95 / raw p95",
    ):
        table.add_column(col, justify="right")
    for r in report["rates"]:
        s, raw = r["pipeline"], r["raw_broker_ms"]
        st, te = s["latency_ms"]["student"], s["latency_ms"]["teacher"]
        ratio = f"{st['p95'] / raw['p95']:.1f}x" if st["p95"] and raw["p95"] else "-"
        table.add_row(
            r["label"],
            f"{s['answered']}/{s['requests']}",
            f(s["throughput_rps"]),
            f"{100 * r['answered_per_s_of_in_process']:.0f}%",
            f"{100 * s['student_share']:.0f}%",
            f(st["p50"]),
            f(st["p95"]),
            f(st["p99"]),
            f(te["p95"]),
            f(raw["p95"]),
            ratio,
        )
    console.print(table)
    hops = Table(title=f"{report['name']}: student path per hop (ms, p50 / p95)")
    hops.add_column("req/s offered", justify="right")
    for hop in HOPS:
        hops.add_column(hop, justify="right")
    for r in report["rates"]:
        h = r["student_hops_ms"]
        hops.add_row(r["label"], *(f"{f(h[hop]['p50'])} / {f(h[hop]['p95'])}" for hop in HOPS))
    console.print(hops)
    if report["rates"] and report["rates"][0]["cpu_ms_per_answer"]:
        names = sorted(report["rates"][0]["cpu_ms_per_answer"])
        cpu = Table(title=f"{report['name']}: CPU ms per answered request, by process")
        cpu.add_column("req/s offered", justify="right")
        for name in [*names, "total"]:
            cpu.add_column(name, justify="right")
        for r in report["rates"]:
            per = r["cpu_ms_per_answer"]
            cpu.add_row(r["label"], *(f"{per.get(n, 0):.1f}" for n in names), f"{sum(per.values()):.1f}")
        console.print(cpu)
    for r in report["rates"]:
        if r.get("machine_cores"):
            m = r["machine_cores"]
            console.print(
                f"{report['name']}: {r['label']}: the machine's cores busy {m['busy']:.2f} of {os.cpu_count()}, "
                f"taken by the host (steal) {m['steal']:.2f}"
            )
        if r.get("broker_threads_ms_per_answer"):
            top = ", ".join(f"{k} {v:.1f}" for k, v in list(r["broker_threads_ms_per_answer"].items())[:8])
            console.print(f"{report['name']}: {r['label']}: broker CPU ms per answer by thread: {top}")
    for name, prof in (report.get("profiles") or {}).items():
        top = ", ".join(f"{part} {100 * share:.0f}%" for part, share in list(prof["shares"].items())[:6])
        console.print(f"{report['name']}: profile {name} ({prof['samples']} samples): {top}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--rates", default="25,50%,max", help="req/s per phase; N%%: that share of in-process; max: as fast as possible"
    )
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-requests", type=int, default=2000, help="requests in a max phase")
    ap.add_argument("--warmup", type=int, default=800)
    ap.add_argument("--p95-target", type=float, default=100.0, help="student-path p95 (ms) a sustained rate must keep")
    ap.add_argument(
        "--precision",
        choices=("auto", "fp32", "int8"),
        default="auto",
        help="the task's student.int8 (auto: per version)",
    )
    ap.add_argument(
        "--scorer-threads",
        default="0",
        help="ONNX Runtime threads in the scorer (0: its cores); several, separated by |, each on a fresh pipeline "
        "with its in-process figure measured at its own threads (--scorer-threads '0|1')",
    )
    ap.add_argument(
        "--layouts", default="separate", help="separate, fused, one-hop, or several: separate,fused,one-hop"
    )
    ap.add_argument(
        "--broker-jvm",
        default="",
        help="extra JVM flags for the embedded broker; several, separated by |, each on a fresh broker "
        "(--broker-jvm='|-XX:TieredStopAtLevel=1': the default beside C1 only; the = keeps a leading - from reading as an option)",
    )
    ap.add_argument(
        "--linger",
        default="0",
        help="ms the services wait to fill a micro-batch (PROTEGE_LINGER_MS); several, separated by |, each on a "
        "fresh pipeline (--linger '0|5')",
    )
    ap.add_argument(
        "--max-batch",
        default="",
        help="the scorer's largest micro-batch (PROTEGE_MAX_BATCH; empty: its default); several, separated by |, "
        "each on a fresh pipeline (--max-batch '64|16')",
    )
    ap.add_argument(
        "--retry-backoff",
        default="",
        help="the producers' retry backoff in ms (PROTEGE_RETRY_BACKOFF_MS; empty: the default); several, "
        "separated by |, each on a fresh pipeline (--retry-backoff '10|50')",
    )
    ap.add_argument(
        "--blas-threads",
        default="",
        help="numpy's BLAS threads in the scorer (PROTEGE_BLAS_THREADS; empty: its default, 0: uncapped); "
        "several, separated by |, each on a fresh pipeline (--blas-threads '0|1')",
    )
    ap.add_argument(
        "--partitions",
        default="",
        help="partitions per topic (empty: the pipeline's default, 2); several, separated by |, each on a fresh "
        "pipeline (--partitions '2|1')",
    )
    ap.add_argument(
        "--soak",
        default="0",
        help="requests published as fast as possible after the warm-up, not measured, so a fresh broker's JIT "
        "compiler has done most of its work before the phases (0: none); several, separated by |, each on a "
        "fresh pipeline (--soak '0|6000')",
    )
    ap.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every variant this many times, interleaved (round 1 of each, then round 2, ...): one run of each "
        "is inside a shared machine's noise",
    )
    ap.add_argument(
        "--own-rates",
        action="store_true",
        help="with several runs, a rate N%% is that share of each run's own in-process figure (default: of the "
        "first run's, so every run is offered the same req/s)",
    )
    ap.add_argument("--profile", action="store_true", help="run the services under py-spy after the warm-up")
    ap.add_argument("--json", type=Path, default=REPO / "reports" / "loadtest-stream.json")
    ap.add_argument("--home", type=Path, default=Path(".protege/loadtest"))
    args = ap.parse_args()
    console = Console(width=170)
    where = machine()
    console.print(
        f"machine: {where['cpu']}, {where['cores']} cores; producers' retry backoff "
        f"{Settings().retry_backoff_ms} ms; teacher: OFFLINE STAND-IN (labelled data)"
    )
    report: dict[str, Any] = {
        "machine": where,
        "teacher": "OFFLINE STAND-IN (labelled data)",
        "seconds_per_rate": args.seconds,
        "p95_target_ms": args.p95_target,
        "precision": args.precision,
        "scorer_threads": [int(n) for n in args.scorer_threads.split("|")],
        "profiled": args.profile,
        "retry_backoff_ms": Settings().retry_backoff_ms,  # PROTEGE_RETRY_BACKOFF_MS, as the services get it
        "layouts": [],
    }
    for layout in args.layouts.split(","):
        if layout not in LAYOUTS:
            raise SystemExit(f"--layouts: no layout {layout!r} ({', '.join(LAYOUTS)})")
    variants = [
        Variant(
            layout,
            jvm.strip(),
            int(linger),
            int(batch) if batch else None,
            int(backoff) if backoff else None,
            int(threads),
            int(blas) if blas else None,
            int(parts) if parts else None,
            int(soak),
        )
        for layout, jvm, linger, batch, backoff, threads, blas, parts, soak in itertools.product(
            args.layouts.split(","),
            args.broker_jvm.split("|"),
            args.linger.split("|"),
            args.max_batch.split("|"),
            args.retry_backoff.split("|"),
            args.scorer_threads.split("|"),
            args.blas_threads.split("|"),
            args.partitions.split("|"),
            args.soak.split("|"),
        )
    ]
    # A comparison offers every run the same rates: a share of the first run's in-process figure
    # (each run's own moved by ±12% between fresh pipelines of one run, stop 34, and with it the
    # rate a share stood for, so latencies at "50%" were not comparable). --own-rates: each its own.
    # The target is a share of the model's throughput at the scorer's own threads: a run with
    # other threads is anchored on the first run with its threads.
    anchors: dict[int, float] = {}
    for round_ in range(args.rounds):  # interleaved: every variant once, then again
        for v in variants:
            run = run_layout(args, v, console, round_, anchors.get(v.threads))
            report["layouts"].append(run)
            if v.threads not in anchors and not args.own_rates and len(variants) * args.rounds > 1:
                anchors[v.threads] = run["in_process"]["seq_per_s"]
                console.print(
                    f"every later run with these threads is offered shares of this run's {anchors[v.threads]:.0f} "
                    "sequences/s"
                )
    report["rates_from"] = (
        "the first run's in-process (of each thread count)" if anchors else "each run's own in-process"
    )
    for run in report["layouts"]:
        print_layout(run, args, console)
    summary = Table(title=f"by layout (student p95 target {args.p95_target:.0f} ms)")
    for col in (
        "layout",
        "in-process seq/s",
        "cores busy meanwhile (JIT)",
        "highest sustained under target",
        "of in-process",
        "max answered/s",
        "of in-process",
    ):
        summary.add_column(col, justify="right")
    for run in report["layouts"]:
        best, fastest = run["highest_sustained_rate_under_target"], run["max_answered_per_s"]
        summary.add_row(
            run["name"],
            f"{run['in_process']['seq_per_s']:.0f}",
            f"{sum(run['in_process']['background_cores'].values()):.2f} ({run['in_process']['broker_jit_cores']:.2f})",
            "none" if best is None else f"{best:.0f} req/s",
            "-" if best is None else f"{100 * run['highest_sustained_share_of_in_process']:.0f}%",
            "-" if fastest is None else f"{fastest:.0f}",
            "-" if fastest is None else f"{100 * run['max_answered_share_of_in_process']:.0f}%",
        )
    console.print(summary)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
