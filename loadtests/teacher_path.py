"""Load: the teacher path alone, against a Messages API whose answers take seconds.

    python loadtests/teacher_path.py --concurrency 64 --median 1.5 --p99 15 --backlog 800 --rate-share 0.5 --seconds 40

A real teacher answers in seconds with a long tail. This runs the teacher worker on the
embedded broker with the real ``anthropic`` SDK against the local Messages API server
(tests/messages_api.py), each call's time drawn from a log-normal with the given median and
p99 (seeded), and compares two layouts side by side in one run:

- ``batch``: the worker under ``protege.kafka.Processor``, as before this change: a batch of
  up to 4 x concurrency requests in one transaction, the next batch fetched when every call
  of this one has returned;
- ``pipelined``: ``services/teacher/loop.py``: each request answered as soon as its own call
  returns, up to 4 x concurrency in flight, commits every 50 ms.

Each layout gets two phases on fresh topics: a backlog of ``--backlog`` requests published
first (answered/s, against the bound concurrency ÷ mean latency), then requests offered at
``--rate-share`` of that bound for ``--seconds`` (time from escalation to answer as the
caller reads it, p50/p95/p99, and the queue age: escalation to the start of its call).
Checks every request is answered exactly once. Prints the CPU model; writes JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anthropic
from aiokafka import TopicPartition
from protege_services.teacher.handler import TeacherWorker
from protege_services.teacher.journal import AnswerJournal
from protege_services.teacher.loop import AnswerLoop
from rich.console import Console
from rich.table import Table

from protege.broker.embedded import EmbeddedBroker
from protege.events import Ingested, Response, TeacherRequest, TeacherResult, now_ms
from protege.generator import triage_task
from protege.harness import machine, percentile
from protege.kafka import Processor, consumer, ensure_topics, partitions_of, producer
from protege.logs import configure
from protege.settings import REPO, Settings
from protege.teacher import AnthropicTeacher

sys.path.insert(0, str(REPO))  # the local Messages API server lives with the tests
from tests.messages_api import MessagesAPI, serve

Z99 = 2.3263478740408408  # the standard normal's 99th percentile


class LogNormal:
    """Seconds per call: log-normal with the given median and 99th percentile (seeded)."""

    def __init__(self, median: float, p99: float, seed: int) -> None:
        self.mu, self.sigma = math.log(median), math.log(p99 / median) / Z99
        self.rng = random.Random(seed)
        self.lock = threading.Lock()

    @property
    def mean(self) -> float:
        return math.exp(self.mu + self.sigma**2 / 2)

    def __call__(self) -> float:
        with self.lock:
            return self.rng.lognormvariate(self.mu, self.sigma)


def asks(n: int, run: str) -> list[TeacherRequest]:
    task = triage_task()
    return [
        TeacherRequest(
            request=Ingested(
                request_id=f"{run}-{i}", tenant="acme", task=task.name, text=f"ticket {i}", received_at_ms=now_ms()
            ),
            reasons=["low_confidence"],
            student_label=next(iter(task.labels)),
            requested_at_ms=0,  # set when published
        )
        for i in range(n)
    ]


async def phase(
    settings: Settings,
    layout: str,
    api: MessagesAPI,
    concurrency: int,
    requests: list[TeacherRequest],
    rate: float | None,
) -> dict[str, Any]:
    """Publish ``requests`` (at ``rate``, or all before the worker starts), run the worker
    until each is answered, and time them."""
    topics = settings.topics
    reader = consumer(settings, group=None)
    await reader.start()
    tps = [
        TopicPartition(t, p) for t in (topics.responses, topics.teacher_results) for p in await partitions_of(reader, t)
    ]
    reader.assign(tps)
    await reader.seek_to_end(*tps)
    prod = producer(settings)
    await prod.start()
    sent: dict[str, float] = {}

    async def publish() -> None:
        started = time.perf_counter()
        for i, ask in enumerate(requests):
            ask = ask.model_copy(update={"requested_at_ms": now_ms()})
            sent[ask.request.request_id] = time.time()
            await prod.send(topics.teacher_requests, ask.dumps(), key=ask.request.request_id.encode())
            if rate:
                delay = started + (i + 1) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
        await prod.flush()

    if rate is None:
        await publish()
    task = triage_task()
    journal = AnswerJournal(settings)
    client = anthropic.AsyncAnthropic(api_key="sk-load", base_url=api.url, max_retries=2, timeout=60)
    worker = TeacherWorker(
        {task.name: task},
        topics,
        AnthropicTeacher(client),
        concurrency,
        unavailable=(anthropic.APIError,),
        journal=journal,
    )
    stop = asyncio.Event()
    reading = asyncio.create_task(journal.run(stop))
    await journal.view.ready(reading)
    if layout == "batch":
        loop: Any = Processor(
            settings,
            "teacher",
            {topics.teacher_requests: TeacherRequest},
            worker.handle,
            tasks=worker.tasks,
            max_records=concurrency * 4,
            transaction_timeout_ms=300_000,
            on_commit=worker.committed,
            fallback=worker.quarantined,
        )
    else:
        loop = AnswerLoop(settings, "teacher", topics.teacher_requests, worker, capacity=concurrency * 4)
    running = asyncio.create_task(loop.run(stop))
    answered: dict[str, float] = {}
    results: dict[str, TeacherResult] = {}
    duplicates = 0
    first = time.time()
    publishing = asyncio.create_task(publish()) if rate else None
    try:
        deadline = time.monotonic() + 900
        while len(answered) < len(requests) and time.monotonic() < deadline:
            if running.done():
                running.result()
            for tp, records in (await reader.getmany(timeout_ms=100)).items():
                at = time.time()
                for r in records:
                    if tp.topic == topics.teacher_results:
                        res = TeacherResult.model_validate_json(r.value)
                        results[res.request_id] = res
                        continue
                    resp = Response.model_validate_json(r.value)
                    if resp.request_id in answered:
                        duplicates += 1
                    answered.setdefault(resp.request_id, at)
        last = max(answered.values(), default=first)
    finally:
        if publishing is not None:
            await publishing
        stop.set()
        for t in (running, reading):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(t, timeout=60)
        await prod.stop()
        await reader.stop()
        await client.close()
    waits = [(answered[k] - sent[k]) * 1000 for k in answered]
    queued = [
        r.answered_at_ms - r.latency_ms - sent[k] * 1000 for k, r in results.items() if k in sent and k in answered
    ]
    return {
        "requests": len(requests),
        "answered": len(answered),
        "duplicates": duplicates,
        "seconds": last - first,
        "answered_per_s": len(answered) / (last - first) if last > first else None,
        "to_answer_ms": {q: percentile(waits, p) for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
        "queue_age_ms": {q: percentile(queued, p) for q, p in (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--median", type=float, default=1.5, help="seconds per call, median")
    ap.add_argument("--p99", type=float, default=15.0, help="seconds per call, 99th percentile")
    ap.add_argument("--backlog", type=int, default=800)
    ap.add_argument("--rate-share", type=float, default=0.5, help="offered rate in the second phase, of the bound")
    ap.add_argument("--seconds", type=float, default=40.0)
    ap.add_argument("--layouts", default="batch,pipelined")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", type=Path, default=REPO / "reports" / "loadtest-teacher-path.json")
    ap.add_argument("--home", type=Path, default=Path(".protege/loadtest-teacher"))
    args = ap.parse_args()
    configure("warning", "console")
    console = Console(width=150)
    host = machine()
    console.print(f"{host['cpu']}, {host['cores']} cores, Python {host['python']}")
    latency = LogNormal(args.median, args.p99, args.seed)
    bound = args.concurrency / latency.mean
    console.print(
        f"calls: log-normal, median {args.median} s, p99 {args.p99} s, mean {latency.mean:.2f} s; "
        f"concurrency {args.concurrency}: bound {bound:.1f} answers/s"
    )
    broker = EmbeddedBroker(args.home / "broker")
    bootstrap = broker.start()
    report: dict[str, Any] = {"machine": host, "args": {k: str(v) for k, v in vars(args).items()}, "bound": bound}
    layouts = args.layouts.split(",")
    try:
        with serve(MessagesAPI(latency=latency)) as api:
            for layout in layouts:
                runs = {}
                for name, n, rate in (
                    ("backlog", args.backlog, None),
                    ("rate", int(args.rate_share * bound * args.seconds), args.rate_share * bound),
                ):
                    s = Settings(bootstrap_servers=bootstrap, topic_prefix=f"tp{time.time_ns()}.", home=args.home)
                    asyncio.run(ensure_topics(s))
                    what = f"{n} requests" + (f" at {rate:.1f}/s" if rate else " published first")
                    console.print(f"{layout}, {name}: {what} ...")
                    runs[name] = asyncio.run(phase(s, layout, api, args.concurrency, asks(n, f"{layout}-{name}"), rate))
                    console.print(f"  {json.dumps(runs[name])}")
                report[layout] = runs
    finally:
        broker.stop()

    table = Table(
        title=f"The teacher path: concurrency {args.concurrency}, calls median {args.median} s / p99 "
        f"{args.p99} s (bound {bound:.1f}/s); {host['cpu']}, {host['cores']} cores"
    )
    for col in (
        "layout",
        "backlog answered/s",
        "of the bound",
        f"at {args.rate_share:.0%} of bound: to answer p50/p95/p99 (s)",
        "queue age p50/p95 (s)",
        "answered once",
    ):
        table.add_column(col, justify="right")
    for layout in layouts:
        b, r = report[layout]["backlog"], report[layout]["rate"]
        t, q = r["to_answer_ms"], r["queue_age_ms"]
        fmt = lambda v: "-" if v is None else f"{v / 1000:.1f}"  # noqa: E731
        table.add_row(
            layout,
            f"{b['answered_per_s']:.1f}",
            f"{b['answered_per_s'] / bound:.0%}",
            f"{fmt(t['p50'])} / {fmt(t['p95'])} / {fmt(t['p99'])}",
            f"{fmt(q['p50'])} / {fmt(q['p95'])}",
            "yes" if all(x["answered"] == x["requests"] and not x["duplicates"] for x in (b, r)) else "NO",
        )
    console.print(table)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
