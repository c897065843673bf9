"""Load: the whole pipeline at fixed request rates, beside the raw broker in the same run.

    python loadtests/stream_rates.py --rates 10,25,50,100 --seconds 20 --json reports/loadtest-stream.json

One embedded broker and the six services; a warm-up stream trains one student (then no
retrains, so the phases measure serving, not training); then each rate for ``--seconds``
of generated tickets (offline stand-in teacher). For each rate it also measures the raw
broker: plain produce -> consume of the same number of records at the same rate on a
scratch topic, so the pipeline's cost shows as a ratio. Prints a table, writes JSON.
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

from aiokafka import TopicPartition
from rich.console import Console
from rich.table import Table

from protege.generator import generate, write_jsonl
from protege.kafka import consumer, ensure_topics, producer
from protege.pipeline import LocalPipeline, drive, percentile, summarize, wait_quiet
from protege.settings import REPO, Settings


async def raw_broker(settings: Settings, n: int, rate: float) -> dict[str, Any]:
    """Produce ``n`` records at ``rate`` and time each to its arrival at a consumer."""
    topic = f"{settings.topic_prefix}loadtest.raw.{uuid.uuid4().hex[:8]}"
    print(f"raw broker: {n} records at {rate:.0f}/s on {topic}", flush=True)
    await ensure_topics(settings, [topic])
    reader = consumer(settings, group=None)
    await reader.start()
    tps = [TopicPartition(topic, p) for p in range(settings.partitions)]
    reader.assign(tps)
    await reader.seek_to_end(*tps)
    prod = producer(settings)
    await prod.start()
    latencies: list[float] = []

    async def read() -> None:
        while len(latencies) < n:
            for records in (await reader.getmany(timeout_ms=100)).values():
                now = time.time()
                latencies.extend((now - float(r.value)) * 1000 for r in records)

    task = asyncio.create_task(read())
    started = time.perf_counter()
    for i in range(n):
        await prod.send(topic, str(time.time()).encode(), key=str(i).encode())
        delay = started + (i + 1) / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
    await asyncio.wait_for(task, timeout=60)
    await prod.stop()
    await reader.stop()
    return {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95), "p99": percentile(latencies, 0.99)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rates", default="10,25,50,100")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--warmup", type=int, default=800)
    ap.add_argument("--json", type=Path, default=REPO / "reports" / "loadtest-stream.json")
    ap.add_argument("--home", type=Path, default=Path(".protege/loadtest"))
    args = ap.parse_args()
    rates = [float(r) for r in args.rates.split(",")]
    console = Console(width=170)
    shutil.rmtree(args.home, ignore_errors=True)
    total = args.warmup + int(sum(r * args.seconds for r in rates))
    rows = generate(total, seed=101)
    write_jsonl(rows, args.home / "labels.jsonl")
    env = {
        "PROTEGE_TASKS_DIR": str(REPO / "tasks"), "PROTEGE_STANDIN_LABELS": str((args.home / "labels.jsonl").resolve()),
        "PROTEGE_MIN_CASES": str(int(args.warmup * 0.6)), "PROTEGE_RETRAIN_EVERY": "1000000",
        "PROTEGE_THREADS": "1", "PROTEGE_TRAINER_THREADS": "1", "OMP_NUM_THREADS": "1",
    }
    report: dict[str, Any] = {"teacher": "OFFLINE STAND-IN (labelled data)", "seconds_per_rate": args.seconds,
                              "rates": []}
    with LocalPipeline(args.home.resolve(), env=env) as p:
        settings = p.settings
        console.print(f"warm-up: {args.warmup} tickets to train one student ...")
        asyncio.run(drive(settings, rows[: args.warmup], tenant="load", task="ticket-triage", rate=40))
        t = settings.topics
        asyncio.run(wait_quiet(settings, {"harvester": [t.decisions, t.teacher_results], "trainer": [t.harvest]}))
        time.sleep(5)
        at = args.warmup
        for rate in rates:
            n = int(rate * args.seconds)
            chunk, at = rows[at : at + n], at + n
            console.print(f"{rate:.0f} req/s for {args.seconds:.0f}s ({n} requests) ...")
            s = summarize(asyncio.run(drive(settings, chunk, tenant="load", task="ticket-triage", rate=rate,
                                            timeout=args.seconds * 10)))
            raw = asyncio.run(asyncio.wait_for(raw_broker(settings, n, rate), timeout=args.seconds * 5))
            report["rates"].append({"rate": rate, "pipeline": s, "raw_broker_ms": raw})
    table = Table(title="pipeline vs raw broker, same rate, same run (latency ms)",
                  caption="teacher: OFFLINE STAND-IN")
    for col in ("req/s", "answered", "student share", "student p50", "student p95", "student p99", "teacher p95",
                "raw p50", "raw p95", "student p95 / raw p95"):
        table.add_column(col, justify="right")
    for r in report["rates"]:
        s, raw = r["pipeline"], r["raw_broker_ms"]
        st = s["latency_ms"]["student"]
        f = lambda v: "-" if v is None else f"{v:.0f}"  # noqa: E731
        ratio = f"{st['p95'] / raw['p95']:.1f}x" if st["p95"] and raw["p95"] else "-"
        table.add_row(f"{r['rate']:.0f}", f"{s['answered']}/{s['requests']}", f"{100 * s['student_share']:.0f}%",
                      f(st["p50"]), f(st["p95"]), f(st["p99"]), f(s["latency_ms"]["teacher"]["p95"]),
                      f(raw["p50"]), f(raw["p95"]), ratio)
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
