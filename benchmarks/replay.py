"""Replay's speed beside the raw model, in one run: is reading and deciding the bottleneck?

    python benchmarks/replay.py --requests 100000 --json reports/benchmark-replay.json

An embedded broker; a student (fast recipe on generated tickets) trained into a registry;
``--requests`` recorded requests written to ``protege.scored``, ``protege.decisions`` and
(for the escalated ones) ``protege.teacher.results`` as the pipeline writes them: the texts
are ``--distinct`` generated tickets, each scored once by the student, repeated under new
request ids (ONNX Runtime does not cache, so a repeat costs what a new text costs), and the
teacher results come from the offline stand-in (the generator's labels; named as such).

Then, timed: ``protege replay``'s path from the broker (read every topic, re-score every
request with the same version through the scorer's batched path, re-decide, compare)
against the raw model: the same ``Student.predict`` calls at the same batch size and
thread count on ``--raw-sample`` of the texts. Target: replay at >= 90% of the raw rate.
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
from protege.events import Ingested, Scored, TeacherResult, Usage
from protege.generator import generate
from protege.harness import machine
from protege.kafka import Out, ensure_topics, producer
from protege.policy import router_for
from protege.replay import Candidate, Selection, recorded, replay
from protege.settings import REPO, Settings
from protege.student.backbone import cached_backbone
from protege.student.runtime import Encoder, Student
from protege.student.train import Case, EmbeddingCache, FastRecipe, train_version
from protege.task import load_tasks

TENANT, TASK = "bench", "ticket-triage"


async def publish(settings: Settings, outs: list[Out]) -> None:
    prod = producer(settings, linger_ms=20, max_batch_size=512 * 1024)
    await prod.start()
    try:
        for i, out in enumerate(outs):
            await prod.send(out.topic, out.value, key=out.key)
            if i % 20_000 == 0:
                await prod.flush()
        await prod.flush()
    finally:
        await prod.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--distinct", type=int, default=5_000)
    ap.add_argument("--raw-sample", type=int, default=20_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--sub-batch", type=int, default=8)
    ap.add_argument("--home", type=Path, default=Path(".protege/benchmark-replay"))
    ap.add_argument("--json", type=Path, default=REPO / "reports" / "benchmark-replay.json")
    args = ap.parse_args()
    here = machine()
    print(f"{here['cpu']}, {here['cores']} cores", flush=True)
    shutil.rmtree(args.home, ignore_errors=True)
    home = args.home.resolve()
    task = load_tasks(REPO / "tasks")[TASK]
    rows = generate(800 + args.distinct, seed=41)
    backbone = cached_backbone()
    embed = EmbeddingCache(Encoder(backbone / "model.onnx", backbone / "tokenizer.json", threads=args.threads))
    version = train_version(
        [Case(r["id"], r["text"], r["label"]) for r in rows[:800]],
        recipe=FastRecipe(embed, backbone),
        registry=home / "registry",
        tenant=TENANT,
        task=task,
    )
    student = Student(version.folder, providers="cpu", threads=args.threads, sub_batch=args.sub_batch)
    distinct = rows[800:]
    outputs = []
    for i in range(0, len(distinct), args.batch):
        outputs += student.predict([r["text"] for r in distinct[i : i + args.batch]])
    print(f"student {student.version}; {len(distinct)} distinct texts scored once", flush=True)

    broker = EmbeddedBroker(home / "broker")
    settings = Settings(bootstrap_servers=broker.start(), home=home, topic_prefix="bench.", partitions=2)
    try:
        asyncio.run(ensure_topics(settings))
        t = settings.topics
        router = router_for(task)
        outs: list[Out] = []
        base = int(time.time() * 1000) - args.requests
        for n in range(args.requests):
            row, out = distinct[n % len(distinct)], outputs[n % len(distinct)]
            at = base + n
            req = Ingested(request_id=f"r{n:07d}", tenant=TENANT, task=TASK, text=row["text"], received_at_ms=at)
            scored = Scored(request=req, student=out, scored_at_ms=at, batch_size=args.batch)
            decision = router.decide(scored, at)
            outs += [Out.of(t.scored, scored), Out.of(t.decisions, decision)]
            if decision.route == "teacher":
                outs.append(Out.of(t.teacher_results, standin_result(req, row["label"], at)))
        started = time.perf_counter()
        asyncio.run(publish(settings, outs))
        print(
            f"recorded {args.requests} requests ({len(outs)} events) in {time.perf_counter() - started:.0f}s",
            flush=True,
        )

        sample = [distinct[n % len(distinct)]["text"] for n in range(min(args.raw_sample, args.requests))]
        student.predict(sample[: args.batch])  # warm-up
        started = time.perf_counter()
        for i in range(0, len(sample), args.batch):
            student.predict(sample[i : i + args.batch])
        raw_per_s = len(sample) / (time.perf_counter() - started)
        print(f"raw model: {raw_per_s:.0f} requests/s (Student.predict, batch {args.batch})", flush=True)

        started = time.perf_counter()
        traffic = asyncio.run(recorded(settings, Selection(TENANT, TASK)))
        read_s = time.perf_counter() - started

        def refuse(name: str) -> Student:
            raise AssertionError(f"the candidate scores everything (asked for {name})")

        result = replay(traffic, Candidate(task, student=student), refuse, batch=args.batch)
        total_s = time.perf_counter() - started
    finally:
        broker.stop()
    summary = result.summary()
    replay_per_s = args.requests / total_s
    report: dict[str, Any] = {
        "machine": here,
        "requests": args.requests,
        "distinct_texts": len(distinct),
        "threads": args.threads,
        "batch": args.batch,
        "sub_batch": args.sub_batch,
        "raw_model_per_s": raw_per_s,
        "raw_sample": len(sample),
        "read_s": read_s,
        "rescore_and_decide_s": result.seconds,
        "replay_per_s": replay_per_s,
        "ratio": replay_per_s / raw_per_s,
        "matched": summary["matched"],
        "teacher_labels": "OFFLINE STAND-IN (the generator's labels)",
    }
    print(f"\n{here['cpu']}, {here['cores']} cores; {args.threads} threads, batch {args.batch}")
    print(f"{'':28s} {'requests/s':>11s} {'vs raw':>7s}")
    print(f"{'raw model (Student.predict)':28s} {raw_per_s:11.0f} {1.0:7.2f}")
    print(f"{'replay from the broker':28s} {replay_per_s:11.0f} {replay_per_s / raw_per_s:7.2f}")
    print(
        f"of which reading {args.requests} requests and their events: {read_s:.1f}s; "
        f"same decision as recorded: {summary['matched']['count']}/{summary['matched']['of']}"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


def standin_result(req: Ingested, label: str, at: int) -> TeacherResult:
    return TeacherResult(
        request_id=req.request_id,
        tenant=req.tenant,
        task=req.task,
        text=req.text,
        label=label,
        teacher="standin:generator",
        standin=True,
        usage=Usage(input_tokens=400, output_tokens=20, estimated=True),
        cost_usd=0.0015,
        latency_ms=0.0,
        attempts=1,
        answered_at_ms=at,
    )


if __name__ == "__main__":
    main()
