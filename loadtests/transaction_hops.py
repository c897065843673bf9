"""Load: what a chain of exactly-once hops costs on the broker alone, per producer setting.

    python loadtests/transaction_hops.py --hops 3 --rate 25 --requests 300 --backoffs 100,20,10,5 --rounds 2
    python loadtests/transaction_hops.py --backoffs 10 --fetch-waits 10,100,500 --rounds 3

The student path is three transactional hops (ingestion, scorer, verifier). This builds
the same chain with protege's own ``Processor`` and a handler that only forwards, so what
it measures is Kafka: fetch, produce and the transaction's commit. Each configuration (a
producer ``retry_backoff_ms`` and a consumer ``fetch_max_wait_ms``) runs ``--rounds`` times,
interleaved, on one embedded broker after a warm-up round; the table compares p95 with the
first configuration's (ratios; this machine is shared and noisy), and the broker's CPU.

It found the student path's tail: right after a transaction commits, the coordinator
answers the next transaction's first requests with CONCURRENT_TRANSACTIONS until its
markers are written, and the producer waits ``retry_backoff_ms`` (aiokafka: 100) before it
asks again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from protege.broker.embedded import EmbeddedBroker
from protege.harness import Probe, cpu_seconds, machine, percentile, time_records
from protege.kafka import BatchHandler, Out, Processor, Received, ensure_topics
from protege.logs import configure
from protege.settings import REPO, Settings


async def chain(
    bootstrap: str, home: Path, hops: int, rate: float, n: int, backoff: int, fetch_wait: int, broker_pid: int
) -> dict[str, Any]:
    """Publish ``n`` records at ``rate`` through ``hops`` forwarding processors; time each end to end."""
    s = Settings(
        bootstrap_servers=bootstrap,
        topic_prefix=f"hops{time.time_ns()}.",
        home=home,
        retry_backoff_ms=backoff,
        fetch_max_wait_ms=fetch_wait,
    )
    topics = [f"{s.topic_prefix}hop{i}" for i in range(hops + 1)]
    await ensure_topics(s, topics)
    stop = asyncio.Event()

    def forward(i: int) -> BatchHandler:
        async def handle(received: Sequence[Received[Probe]]) -> list[Out]:
            return [Out(topics[i + 1], r.value, r.key) for r in received]

        return handle

    running = [
        asyncio.create_task(Processor(s, f"hop{i}", {topics[i]: Probe}, forward(i)).run(stop)) for i in range(hops)
    ]
    try:
        await asyncio.sleep(2)  # every processor has joined its group
        cpu0 = cpu_seconds(broker_pid) or 0.0
        latencies, seconds = await time_records(s, topics[0], topics[-1], n, rate)
        broker_cpu = ((cpu_seconds(broker_pid) or 0.0) - cpu0) / seconds
    finally:
        stop.set()
        for task in running:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, timeout=10)
    return {
        "p50": percentile(latencies, 0.5),
        "p95": percentile(latencies, 0.95),
        "p99": percentile(latencies, 0.99),
        "records": len(latencies),
        "broker_cpu": broker_cpu,  # seconds of CPU per second
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hops", type=int, default=3)
    ap.add_argument("--rate", type=float, default=25.0)
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--backoffs", default="100,20,10,5", help="producer retry_backoff_ms values to compare")
    ap.add_argument("--fetch-waits", default="500", help="consumer fetch_max_wait_ms values to compare")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path, default=REPO / "reports" / "loadtest-transaction-hops.json")
    ap.add_argument("--home", type=Path, default=Path(".protege/loadtest-hops"))
    args = ap.parse_args()
    configs = [(int(b), int(w)) for b in args.backoffs.split(",") for w in args.fetch_waits.split(",")]
    configure("warning", "console")
    logging.getLogger("aiokafka").setLevel(logging.ERROR)  # leader elections right after topic creation
    console = Console(width=140)
    host = machine()
    console.print(f"{host['cpu']}, {host['cores']} cores, Python {host['python']}")
    broker = EmbeddedBroker(args.home / "broker")
    bootstrap = broker.start()
    pid = broker.pid()
    assert pid is not None
    runs: dict[tuple[int, int], list[dict[str, Any]]] = {c: [] for c in configs}
    try:
        console.print("warm-up round (not counted) ...")
        asyncio.run(chain(bootstrap, args.home, args.hops, args.rate, args.requests, *configs[0], pid))
        for r in range(args.rounds):
            for b, w in configs:
                console.print(
                    f"round {r + 1}: retry_backoff_ms={b}, fetch_max_wait_ms={w}, {args.hops} hops, {args.rate:.0f}/s ..."
                )
                runs[(b, w)].append(
                    asyncio.run(chain(bootstrap, args.home, args.hops, args.rate, args.requests, b, w, pid))
                )
    finally:
        broker.stop()

    def median(c: tuple[int, int], q: str) -> float:
        return float(percentile([x[q] for x in runs[c]], 0.5) or 0.0)

    table = Table(
        title=f"{args.hops} transactional hops on the embedded broker, {args.rate:.0f} records/s "
        f"(end-to-end ms, median of {args.rounds} rounds); {host['cpu']}, {host['cores']} cores"
    )
    first = configs[0]
    cols = ("retry_backoff_ms", "fetch_max_wait_ms", "p50", "p95", "p99", f"p95 / p95 at {first[0]}/{first[1]}")
    for col in (*cols, "p95 per round", "broker CPU (cores)"):
        table.add_column(col, justify="right")
    for c in configs:
        table.add_row(
            str(c[0]),
            str(c[1]),
            f"{median(c, 'p50'):.1f}",
            f"{median(c, 'p95'):.1f}",
            f"{median(c, 'p99'):.1f}",
            f"{median(c, 'p95') / median(first, 'p95'):.2f}x",
            " ".join(f"{x['p95']:.0f}" for x in runs[c]),
            f"{median(c, 'broker_cpu'):.2f}",
        )
    console.print(table)
    report = {
        "machine": host,
        "hops": args.hops,
        "rate": args.rate,
        "requests": args.requests,
        "runs": {f"{b}/{w}": runs[(b, w)] for b, w in configs},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
