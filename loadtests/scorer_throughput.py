"""The scorer alone through Kafka, beside the raw model, in one run: what the plumbing costs,
and how it scales with replicas.

    python loadtests/scorer_throughput.py --requests 4000 --json reports/loadtest-scorer.json
    python loadtests/scorer_throughput.py --replicas 1,2,4 --threads 1 --json reports/loadtest-scorer-replicas.json

With ``--replicas``, each count drains the same backlog on its own topics of 4 partitions
(one embedded broker for all), the scorers in one consumer group with one transactional
producer per partition.

An embedded broker and one scorer process (``python -m protege_services.scorer``). A student
(fast recipe, generated tickets) is trained and announced; ``--requests`` ingested events
are published as a backlog; the scorer is started and drains it: consume, micro-batch,
ONNX Runtime, produce ``protege.scored``, commit — all in Kafka transactions. Throughput =
scored events / (last scored_at - first scored_at). The raw figure is the same student's
``predict`` on the same texts at the scorer's batch size, same thread count, in this
process, before the scorer starts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import time
from pathlib import Path
from typing import Any

from protege.broker.embedded import EmbeddedBroker
from protege.events import Ingested, ModelAnnouncement, Scored, now_ms
from protege.generator import generate
from protege.harness import machine
from protege.kafka import Out, publish
from protege.pipeline import LocalPipeline
from protege.settings import REPO
from protege.state import read_all
from protege.student.backbone import cached_backbone
from protege.student.runtime import Encoder, Student
from protege.student.train import Case, EmbeddingCache, FastRecipe, train_version
from protege.supervisor import with_replicas
from protege.task import load_tasks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-batch", type=int, default=64)
    ap.add_argument("--sub-batch", type=int, default=8)
    ap.add_argument("--replicas", default="1", help="scorer counts to compare, e.g. 1,2,4")
    ap.add_argument("--home", type=Path, default=Path(".protege/loadtest-scorer"))
    ap.add_argument("--json", type=Path, default=REPO / "reports" / "loadtest-scorer.json")
    args = ap.parse_args()
    shutil.rmtree(args.home, ignore_errors=True)
    home = args.home.resolve()
    task = load_tasks(REPO / "tasks")["ticket-triage"]
    rows = generate(800 + args.requests, seed=31)
    backbone = cached_backbone()
    embed = EmbeddingCache(Encoder(backbone / "model.onnx", backbone / "tokenizer.json", threads=args.threads))
    result = train_version(
        [Case(r["id"], r["text"], r["label"]) for r in rows[:800]],
        recipe=FastRecipe(embed, backbone),
        registry=home / "registry",
        tenant="load",
        task=task,
    )
    texts = [r["text"] for r in rows[800:]]

    student = Student(result.folder, providers="cpu", threads=args.threads, sub_batch=args.sub_batch)
    student.predict(texts[: args.max_batch])  # warm-up
    started = time.perf_counter()
    for i in range(0, len(texts), args.max_batch):
        student.predict(texts[i : i + args.max_batch])
    raw_per_s = len(texts) / (time.perf_counter() - started)
    print(
        f"raw model: {raw_per_s:.0f} requests/s (Student.predict, batch {args.max_batch}, sub-batch {args.sub_batch}, "
        f"{args.threads} threads)",
        flush=True,
    )

    counts = [int(n) for n in args.replicas.split(",")]
    partitions = max(4, *counts)
    env = {
        "PROTEGE_TASKS_DIR": str(REPO / "tasks"),
        "PROTEGE_THREADS": str(args.threads),
        "PROTEGE_MAX_BATCH": str(args.max_batch),
        "PROTEGE_SUB_BATCH": str(args.sub_batch),
    }
    rows_out = []
    broker = EmbeddedBroker(home / "broker")
    bootstrap = broker.start()
    try:
        for n in counts:
            rows_out.append(drain(home / f"replicas-{n}", bootstrap, env, n, partitions, texts, result, task.name))
    finally:
        broker.stop()
    here = machine()
    report = {
        "requests": len(texts),
        "threads_per_scorer": args.threads,
        "max_batch": args.max_batch,
        "sub_batch": args.sub_batch,
        "precision": "fp32",
        "partitions": partitions,
        "machine": here,
        "raw_model_per_s": raw_per_s,
        "replicas": rows_out,
    }
    print(
        f"\n{here['cpu']}, {here['cores']} cores; raw model (Student.predict, {args.threads} threads): "
        f"{raw_per_s:.0f} requests/s"
    )
    print(
        f"{'scorers':>8s} {'requests/s':>11s} {'vs raw':>7s} {'vs 1 scorer':>12s} {'mean batch':>11s} {'scored once':>12s}"
    )
    for row in rows_out:
        print(
            f"{row['scorers']:8d} {row['through_kafka_per_s']:11.0f} {row['through_kafka_per_s'] / raw_per_s:7.2f} "
            f"{row['through_kafka_per_s'] / rows_out[0]['through_kafka_per_s']:12.2f} {row['mean_batch']:11.1f} "
            f"{row['distinct_request_ids'] == row['scored'] == len(texts)!s:>12s}"
        )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


def drain(
    home: Path,
    bootstrap: str,
    env: dict[str, str],
    scorers: int,
    partitions: int,
    texts: list[str],
    result: Any,
    task: str,
) -> dict[str, Any]:
    """A backlog of ingested requests drained by ``scorers`` scorer processes; their throughput."""
    with LocalPipeline(
        home,
        env=env,
        bootstrap=bootstrap,
        topic_prefix=f"r{scorers}x{time.time_ns()}.",
        partitions=partitions,
        services=[],
    ) as p:
        settings = p.settings
        t = settings.topics
        ann = ModelAnnouncement(
            tenant="load",
            task=task,
            version=result.version,
            path=str(result.folder),
            labels=result.labels,
            metrics=result.metrics,
            trained_on=800,
            announced_at_ms=now_ms(),
        )
        at = now_ms()
        backlog = [
            Out.of(t.ingested, Ingested(request_id=f"s{i}", tenant="load", task=task, text=text, received_at_ms=at))
            for i, text in enumerate(texts)
        ]
        asyncio.run(publish(settings, [Out.of(t.models, ann), *backlog]))
        print(
            f"backlog: {len(backlog)} requests on {t.ingested} ({partitions} partitions); starting {scorers} scorer(s)",
            flush=True,
        )
        assert p.supervisor is not None
        p.supervisor.services = with_replicas({"scorer": scorers})[1 : 1 + scorers]
        p.supervisor.start()
        deadline = time.time() + 600
        scored: list[Scored] = []
        while time.time() < deadline:
            time.sleep(2)
            scored = [Scored.model_validate_json(r.value) for r in asyncio.run(read_all(settings, t.scored))]
            if len(scored) >= len(texts):
                break
    if len(scored) < len(texts):
        raise SystemExit(f"{scorers} scorer(s) scored {len(scored)} of {len(texts)} in 10 minutes")
    first, last = min(s.scored_at_ms for s in scored), max(s.scored_at_ms for s in scored)
    batches = [s.batch_size for s in scored]
    return {
        "scorers": scorers,
        "scored": len(scored),
        "through_kafka_per_s": len(scored) / max(1e-3, (last - first) / 1000),
        "mean_batch": sum(batches) / len(batches),
        "with_student": sum(1 for s in scored if s.student is not None),
        "distinct_request_ids": len({s.request.request_id for s in scored}),
    }


if __name__ == "__main__":
    main()
