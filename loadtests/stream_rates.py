"""Load: the whole pipeline at fixed request rates or as fast as possible, beside the raw
broker in the same run.

    python loadtests/stream_rates.py --rates 10,25,50,75,100,max --seconds 20

One embedded broker and the six services; a warm-up stream trains one student (then no
retrains, so the phases measure serving, not training); then each rate for ``--seconds``
of generated tickets (offline stand-in teacher). ``max`` publishes ``--max-requests`` as
fast as the producer can and reports the throughput the pipeline sustained. For each
phase it also measures the raw broker: plain produce -> consume of the same number of
records at the same rate on a scratch topic, so the pipeline's cost shows as a ratio.

Per route: throughput, p50/p95/p99 end to end (publish -> the caller reads the answer).
For the student path also per hop, from the events' own timestamps: publish -> ingested,
ingested -> scored, scored -> answered (verifier), answered -> read by the caller. The
last line names the highest fixed rate that was sustained (every request answered, the
answers kept pace) with student-path p95 under ``--p95-target`` ms. Prints tables,
writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from protege.events import Scored
from protege.generator import generate, write_jsonl
from protege.harness import Drive, drive, percentile, summarize, time_records, wait_quiet
from protege.kafka import ensure_topics
from protege.pipeline import LocalPipeline
from protege.settings import REPO, Settings
from protege.state import read_all
from protege.task import load_task, write_task


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


HOPS = ("publish->ingested", "ingested->scored", "scored->answered", "answered->caller")


def sustained(phase: dict[str, Any]) -> bool:
    """Every request answered once, and the answers kept pace with the offered rate."""
    s = phase["pipeline"]
    kept_pace = s["throughput_rps"] is not None and s["throughput_rps"] >= 0.9 * phase["rate"]
    return s["answered"] == s["requests"] and s["duplicates"] == 0 and kept_pace


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="10,25,50,75,100,max", help="req/s per phase; max: as fast as possible")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--max-requests", type=int, default=2000, help="requests in a max phase")
    ap.add_argument("--warmup", type=int, default=800)
    ap.add_argument("--p95-target", type=float, default=100.0, help="student-path p95 (ms) a sustained rate must keep")
    ap.add_argument("--int8", action="store_true", help="serve the student's int8 graph (task option student.int8)")
    ap.add_argument("--scorer-threads", type=int, default=1, help="ONNX Runtime threads in the scorer")
    ap.add_argument("--json", type=Path, default=REPO / "reports" / "loadtest-stream.json")
    ap.add_argument("--home", type=Path, default=Path(".protege/loadtest"))
    args = ap.parse_args()
    rates: list[float | None] = [None if r == "max" else float(r) for r in args.rates.split(",")]
    sizes = [args.max_requests if r is None else int(r * args.seconds) for r in rates]
    console = Console(width=170)
    shutil.rmtree(args.home, ignore_errors=True)
    rows = generate(args.warmup + sum(sizes), seed=101)
    write_jsonl(rows, args.home / "labels.jsonl")
    task = load_task(REPO / "tasks" / "ticket-triage.yaml")
    task = task.model_copy(update={"student": task.student.model_copy(update={"int8": args.int8})})
    write_task(task, args.home / "tasks" / "ticket-triage.yaml")
    env = {
        "PROTEGE_TASKS_DIR": str((args.home / "tasks").resolve()),
        "PROTEGE_STANDIN_LABELS": str((args.home / "labels.jsonl").resolve()),
        "PROTEGE_MIN_CASES": str(int(args.warmup * 0.6)),
        "PROTEGE_RETRAIN_EVERY": "1000000",
        "PROTEGE_THREADS": str(args.scorer_threads),
        "PROTEGE_TRAINER_THREADS": "1",
        "OMP_NUM_THREADS": "1",
    }
    report: dict[str, Any] = {
        "teacher": "OFFLINE STAND-IN (labelled data)",
        "seconds_per_rate": args.seconds,
        "p95_target_ms": args.p95_target,
        "student_precision": "int8" if args.int8 else "fp32",
        "scorer_threads": args.scorer_threads,
        "rates": [],
    }
    with LocalPipeline(args.home.resolve(), env=env) as p:
        settings = p.settings
        console.print(f"warm-up: {args.warmup} tickets to train one student ...")
        asyncio.run(drive(settings, rows[: args.warmup], tenant="load", task="ticket-triage", rate=40))
        t = settings.topics
        asyncio.run(wait_quiet(settings, {"harvester": [t.teacher_results], "trainer": [t.harvest]}))
        time.sleep(5)
        at = args.warmup
        for rate, n in zip(rates, sizes, strict=True):
            chunk, at = rows[at : at + n], at + n
            console.print(
                f"{f'{rate:.0f} req/s for {args.seconds:.0f}s' if rate else 'as fast as possible'} ({n} requests) ..."
            )
            since_ms = int(time.time() * 1000) - 1000
            d = asyncio.run(
                drive(
                    settings,
                    chunk,
                    tenant="load",
                    task="ticket-triage",
                    rate=rate,
                    timeout=max(120.0, args.seconds * 10),
                )
            )
            phase = {
                "rate": rate,
                "pipeline": summarize(d),
                "student_hops_ms": asyncio.run(student_hops(settings, d, since_ms)),
                "raw_broker_ms": asyncio.run(asyncio.wait_for(raw_broker(settings, n, rate), timeout=120)),
            }
            phase["sustained"] = rate is not None and sustained(phase)
            report["rates"].append(phase)
    ok = [
        r["rate"]
        for r in report["rates"]
        if r["sustained"] and (r["pipeline"]["latency_ms"]["student"]["p95"] or float("inf")) < args.p95_target
    ]
    report["highest_sustained_rate_under_target"] = max(ok) if ok else None
    f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
    table = Table(
        title=f"pipeline vs raw broker, same rate, same run (latency ms, publish -> answer read; student "
        f"{report['student_precision']}, scorer threads {args.scorer_threads})",
        caption="teacher: OFFLINE STAND-IN",
    )
    for col in (
        "req/s offered",
        "answered",
        "answered/s",
        "student share",
        "student p50",
        "student p95",
        "student p99",
        "teacher p50",
        "teacher p95",
        "raw p50",
        "raw p95",
        "student p95 / raw p95",
    ):
        table.add_column(col, justify="right")
    for r in report["rates"]:
        s, raw = r["pipeline"], r["raw_broker_ms"]
        st, te = s["latency_ms"]["student"], s["latency_ms"]["teacher"]
        ratio = f"{st['p95'] / raw['p95']:.1f}x" if st["p95"] and raw["p95"] else "-"
        table.add_row(
            "max" if r["rate"] is None else f"{r['rate']:.0f}",
            f"{s['answered']}/{s['requests']}",
            f(s["throughput_rps"]),
            f"{100 * s['student_share']:.0f}%",
            f(st["p50"]),
            f(st["p95"]),
            f(st["p99"]),
            f(te["p50"]),
            f(te["p95"]),
            f(raw["p50"]),
            f(raw["p95"]),
            ratio,
        )
    console.print(table)
    hops = Table(title="student path per hop (ms, p50 / p95)")
    hops.add_column("req/s offered", justify="right")
    for hop in HOPS:
        hops.add_column(hop, justify="right")
    for r in report["rates"]:
        h = r["student_hops_ms"]
        hops.add_row(
            "max" if r["rate"] is None else f"{r['rate']:.0f}",
            *(f"{f(h[hop]['p50'])} / {f(h[hop]['p95'])}" for hop in HOPS),
        )
    console.print(hops)
    best = report["highest_sustained_rate_under_target"]
    console.print(
        f"highest sustained rate with student p95 < {args.p95_target:.0f} ms: "
        f"{'none of ' + args.rates if best is None else f'{best:.0f} req/s'}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
