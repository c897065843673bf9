"""The harness, apart from the library the services import: a traffic driver that sends
requests and collects their answers (``drive``), the statistics of a run (``summarize``),
and load probes (``time_records``, consumer-group lag). Used by the demo, the bench, the
load tests and the end-to-end tests.

    with LocalPipeline(home, env=...) as p:
        results = asyncio.run(drive(p.settings, requests, rate=50))
        print(summarize(results))
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shutil
import subprocess
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from protege.events import Correction, Event, Feedback, Response, ReviewItem, TeacherResult
from protege.kafka import Out, consumer, partitions_of, producer
from protege.policy import reviewers_wanted
from protege.settings import Settings
from protege.supervisor import Supervisor
from protege.task import OOS, Task


@dataclass
class Outcome:
    request_id: str
    label: str | None
    sent_at: float
    response: Response | None = None
    answered_at: float | None = None
    duplicates: int = 0
    corrected_to: str | None = None  # ensemble: the teacher's correction of a provisional answer

    @property
    def final_label(self) -> str | None:
        return self.corrected_to or (self.response.label if self.response else None)

    @property
    def latency_ms(self) -> float | None:
        return None if self.answered_at is None else (self.answered_at - self.sent_at) * 1000


@dataclass
class Drive:
    outcomes: dict[str, Outcome]
    teacher_results: list[TeacherResult]
    seconds: float


async def drive(
    settings: Settings,
    rows: list[dict[str, Any]],
    *,
    tenant: str,
    task: str,
    rate: float | None = None,
    timeout: float = 300.0,
    progress: Callable[[int, int, dict[str, int]], None] | None = None,
    extra: list[bytes] | None = None,
    linger: float = 0.0,
) -> Drive:
    """Publish ``rows`` ({id, text, label}) as requests and collect their responses.

    Responses and teacher results are read from the offsets that were the end before the
    first send, so earlier traffic is not counted. ``extra`` are raw payloads (bad input)
    published alongside, not awaited. ``linger`` keeps reading that long after the last
    answer, so late duplicates are counted.
    """
    topics = settings.topics
    reader = consumer(settings, group=None)
    await reader.start()
    tps = [
        TopicPartition(t, p)
        for t in (topics.responses, topics.teacher_results, topics.corrections)
        for p in sorted(await partitions_of(reader, t))
    ]
    reader.assign(tps)
    for tp, end in (await reader.end_offsets(tps)).items():
        reader.seek(tp, end)
    outcomes: dict[str, Outcome] = {}
    results: list[TeacherResult] = []
    counts = {"student": 0, "teacher": 0}
    started = time.perf_counter()

    async def collect(until: float) -> None:
        while time.perf_counter() < until:
            if len(outcomes) == len(rows) and sum(counts.values()) == len(rows):
                if linger <= 0:
                    return
                until = min(until, time.perf_counter() + linger)
            batch = await reader.getmany(timeout_ms=100)
            at = time.time()
            for tp, records in batch.items():
                for r in records:
                    if tp.topic == topics.corrections:
                        fix = Correction.model_validate_json(r.value)
                        if fix.request_id in outcomes:
                            outcomes[fix.request_id].corrected_to = fix.label
                        continue
                    if tp.topic == topics.teacher_results:
                        res = TeacherResult.model_validate_json(r.value)
                        if res.request_id in outcomes:
                            results.append(res)
                        continue
                    resp = Response.model_validate_json(r.value)
                    out = outcomes.get(resp.request_id)
                    if out is None:
                        continue
                    if out.response is not None:
                        out.duplicates += 1
                        continue
                    out.response, out.answered_at = resp, at
                    counts[resp.route] += 1

    prod = producer(settings)
    await prod.start()
    collector = asyncio.create_task(collect(time.perf_counter() + timeout))
    try:
        for raw in extra or []:
            await prod.send(topics.requests, raw)
        last_report = 0.0
        for i, row in enumerate(rows):
            request_id = f"{tenant}-{row['id']}"
            sent = time.time()
            outcomes[request_id] = Outcome(request_id, row.get("label"), sent)
            body = {
                "request_id": request_id,
                "tenant": tenant,
                "task": task,
                "text": row["text"],
                "sent_at_ms": int(sent * 1000),
            }
            await prod.send(topics.requests, json.dumps(body).encode(), key=request_id.encode())
            if rate:
                delay = started + (i + 1) / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            if progress and time.perf_counter() - last_report > 1:
                last_report = time.perf_counter()
                progress(i + 1, sum(counts.values()), counts)
        await prod.flush()
        while not collector.done():
            await asyncio.sleep(1 if progress else 0.1)
            if progress:
                progress(len(rows), sum(counts.values()), counts)
        await collector
    finally:
        collector.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await collector
        await prod.stop()
        await reader.stop()
    return Drive(outcomes, results, time.perf_counter() - started)


@contextlib.asynccontextmanager
async def _lag_clients(settings: Settings) -> AsyncIterator[tuple[AIOKafkaAdminClient, AIOKafkaConsumer]]:
    """An admin client (committed offsets) and a group-less reader (end offsets), started once
    for a whole wait rather than per look."""
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    reader = consumer(settings, group=None)
    try:
        await reader.start()
        yield admin, reader
    finally:
        await reader.stop()
        await admin.close()


async def _lag(
    admin: AIOKafkaAdminClient, reader: AIOKafkaConsumer, group: str, topics: list[str]
) -> tuple[int, dict[TopicPartition, int]]:
    """The group's records not yet committed on ``topics``, and the topics' end offsets."""
    committed = await admin.list_consumer_group_offsets(group)
    tps = [TopicPartition(t, p) for t in topics for p in await partitions_of(reader, t)]
    ends = await reader.end_offsets(tps)
    lag = sum(max(0, end - (committed[tp].offset if tp in committed else 0)) for tp, end in ends.items())
    return lag, ends


async def group_lag(settings: Settings, group: str, topics: list[str]) -> int:
    """Records on ``topics`` not yet committed by consumer group ``group``."""
    async with _lag_clients(settings) as (admin, reader):
        return (await _lag(admin, reader, group, topics))[0]


async def wait_stable(settings: Settings, groups: list[str], timeout: float = 120.0) -> bool:
    """Wait until each service's consumer group has joined and taken its partitions (Kafka's
    group state ``Stable``): traffic sent before a service is ready waits in its topics, and a
    trainer still embedding its golden set would train its first student late."""
    admin = AIOKafkaAdminClient(**settings.kafka_kwargs())
    await admin.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            names = [f"{settings.topic_prefix}protege-{g}" for g in groups]
            try:
                described = [g for r in await admin.describe_consumer_groups(names) for g in r.groups]
            except KafkaError:  # no coordinator yet: the offsets topic is created with the first group
                described = []
            if len(described) == len(names) and all(g[2] == "Stable" for g in described):
                return True
            await asyncio.sleep(0.5)
        return False
    finally:
        await admin.close()


class StandinReviewer:
    """The OFFLINE STAND-IN for the people who label the review sample (``Task.review_rate``), for
    benchmarks: it reads protege.review from the beginning and answers each request with the data
    set's label on protege.feedback as a review (source ``standin-reviewer``). By default a person
    who is always right and never late; ``noise`` makes that share of its labels wrong (another of
    the data set's labels, drawn by a seeded hash of the request id, independent of the stand-in
    teacher's mistakes), ``follow`` makes it share the teacher's blind spots: on that share of the
    requests the stand-in teacher gets wrong (``teacher``: request id -> the teacher's answer) it
    gives the teacher's wrong label too, as a person who confuses the same intents would.
    ``delay_s`` holds each label that long after the item arrived (what is still held when the run
    ends is never sent). With ``overlap`` (the task), a second stand-in person (source
    ``standin-reviewer-2``, the same noise and blind spots, its own draws) labels the requests
    the task wants two labels on (``Task.review_overlap``), and a third (``standin-reviewer-3``,
    its own draws) breaks the tie where those two split, as a team's desk shows a disputed row
    to a third person. Runs in its own thread beside the traffic driver; what it did is reported
    under that name.

        with StandinReviewer(settings, {"bench-1": "refund", ...}, noise=0.05, delay_s=60) as reviewer:
            ...                                   # traffic; reviewer.reviewed counts the labels sent
    """

    SOURCE = "standin-reviewer"
    SECOND = "standin-reviewer-2"
    THIRD = "standin-reviewer-3"

    def __init__(
        self,
        settings: Settings,
        labels: dict[str, str],
        *,
        noise: float = 0.0,
        follow: float = 0.0,
        teacher: dict[str, str] | None = None,
        delay_s: float = 0.0,
        seed: int = 0,
        overlap: Task | None = None,
    ) -> None:
        if follow and teacher is None:
            raise ValueError("follow needs the teacher's answers (request id -> label)")
        self.settings = settings
        self.labels = labels  # request id -> the data set's label
        self.noise = noise
        self.follow = follow
        self.teacher = teacher or {}
        self.delay_s = delay_s
        self.seed = seed
        self.overlap = overlap
        self.choices = sorted(set(labels.values()))
        self.reviewed = 0
        self.second_opinions = 0  # of the labels sent, the second person's
        self.third_opinions = 0  # and the third's (the two split)
        self.wrong = 0  # labels sent that are not the data set's (noise or the teacher's mistakes)
        self.followed = 0  # of those, the teacher's own wrong label
        self.unknown = 0  # items of requests it has no label for (not the driver's)
        self.labelled: list[str] = []  # the requests the first person's labels were sent for, in order
        self.held: deque[tuple[float, Feedback]] = deque()  # (when it is due, the review), in arrival order
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._loop()), name="standin-reviewer", daemon=True)

    def __enter__(self) -> StandinReviewer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def describe(self) -> str:
        wrong = [f"{self.noise:.0%} of its labels wrong"] if self.noise else []
        wrong += [f"repeating {self.follow:.0%} of the teacher's mistakes"] if self.follow else []
        how = ", ".join(wrong) or "always right"
        when = "at once" if not self.delay_s else f"{self.delay_s:g} s after each item"
        two = (
            f"; a second person on {self.overlap.review_overlap:.0%} of them, a third where the two split"
            if self.overlap
            else ""
        )
        return f"OFFLINE STAND-IN reviewer (the data set's labels, {how}, {when}{two})"

    def label_for(self, request_id: str, person: int = 1) -> str | None:
        """The stand-in person's label (``person`` 2 or 3: the second or third person's, each
        drawn apart; the first person's draws are those of the runs before there were others)."""
        truth = self.labels.get(request_id)
        if truth is None:
            return None
        who = f"{person}:" if person > 1 else ""
        said = self.teacher.get(request_id, truth)
        if said != truth and random.Random(f"follow:{who}{self.seed}:{request_id}").random() < self.follow:
            return said
        rng = random.Random(f"reviewer:{who}{self.seed}:{request_id}")
        if not self.noise or rng.random() >= self.noise:
            return truth
        return rng.choice([x for x in self.choices if x != truth] or [truth])

    async def _loop(self) -> None:
        t = self.settings.topics
        cons = consumer(self.settings, t.review, group=None)
        prod = producer(self.settings)
        try:  # started inside: a start that fails still stops both (aiokafka warns of an unclosed client)
            await cons.start()
            await prod.start()
            while not self._stop.is_set():
                for records in (await cons.getmany(timeout_ms=500)).values():
                    for r in records:
                        item = ReviewItem.model_validate_json(r.value or b"")
                        label = self.label_for(item.request_id)
                        if label is None:
                            self.unknown += 1
                            continue
                        due = time.monotonic() + self.delay_s
                        self.held.append((due, item.review(label, self.SOURCE)))
                        if self.overlap is not None and reviewers_wanted(item.request_id, self.overlap) == 2:
                            second = self.label_for(item.request_id, person=2)
                            assert second is not None
                            self.held.append((due, item.review(second, self.SECOND)))
                            if second != label:  # split: the row waits for a third person
                                third = self.label_for(item.request_id, person=3)
                                assert third is not None
                                self.held.append((due + self.delay_s, item.review(third, self.THIRD)))
                now = time.monotonic()
                while self.held and self.held[0][0] <= now:
                    _, review = self.held.popleft()
                    out = Out.of(t.feedback, review)
                    await prod.send(out.topic, out.value, key=out.key)
                    self.reviewed += 1
                    if review.source == self.SOURCE:
                        self.labelled.append(review.request_id)
                    self.second_opinions += review.source == self.SECOND
                    self.third_opinions += review.source == self.THIRD
                    wrong = review.label != self.labels[review.request_id]
                    self.wrong += wrong
                    self.followed += wrong and review.label == self.teacher.get(review.request_id)
                await prod.flush()
        finally:
            await cons.stop()
            await prod.stop()


async def wait_quiet(settings: Settings, groups: dict[str, list[str]], timeout: float = 300.0) -> bool:
    """Wait until every group has consumed everything on its topics."""
    deadline = time.monotonic() + timeout
    async with _lag_clients(settings) as (admin, reader):
        while time.monotonic() < deadline:
            lags = [(await _lag(admin, reader, f"{settings.topic_prefix}protege-{g}", t))[0] for g, t in groups.items()]
            if not any(lags):
                return True
            await asyncio.sleep(0.5)
    return False


async def wait_drained(
    settings: Settings, group: str, topics: list[str], quiet_s: float = 2.0, timeout: float = 60.0
) -> bool:
    """Wait until ``group`` has committed every record on ``topics`` and none has arrived for
    ``quiet_s``: for the monitor's keyed topic, which its own timer writes to while a trial is
    on, so no record new for a moment is the sign, not an end that stops moving."""
    deadline = time.monotonic() + timeout
    last: dict[TopicPartition, int] | None = None
    still_since = time.monotonic()
    async with _lag_clients(settings) as (admin, reader):
        while time.monotonic() < deadline:
            lag, ends = await _lag(admin, reader, f"{settings.topic_prefix}protege-{group}", topics)
            if ends != last:
                last, still_since = ends, time.monotonic()
            if lag == 0 and time.monotonic() - still_since >= quiet_s:
                return True
            await asyncio.sleep(0.5)
    return False


async def supervised(supervisor: Supervisor, stream: asyncio.Task[Drive], every: float = 0.5) -> Drive:
    """Wait for a running ``drive`` while restarting services that die (faults, chaos tests)."""
    while not stream.done():
        supervisor.poll()
        await asyncio.sleep(every)
    return await stream


def _agreement(results: list[TeacherResult]) -> float | None:
    """Share of teacher answers the student had given too (shadow, ensemble and escalations)."""
    judged = [r.agrees for r in results if r.agrees is not None]
    return sum(judged) / len(judged) if judged else None


class Probe(Event, title="protege.probe"):
    """A load probe's record: its number and when it was sent (epoch seconds)."""

    n: int
    sent_s: float


async def time_records(
    settings: Settings, into: str, out_of: str, n: int, rate: float | None
) -> tuple[list[float], float]:
    """Publish ``n`` timestamped records to ``into`` at ``rate`` (None: as fast as possible)
    and time each one's arrival on ``out_of`` (the same topic: the raw broker; another: what
    sits between). Returns the latencies in ms and the seconds it took."""
    reader = consumer(settings, group=None)
    await reader.start()
    tps = [TopicPartition(out_of, p) for p in sorted(await partitions_of(reader, out_of))]
    reader.assign(tps)
    await reader.seek_to_end(*tps)
    prod = producer(settings)
    await prod.start()
    latencies: list[float] = []

    async def read() -> None:
        while len(latencies) < n:
            for records in (await reader.getmany(timeout_ms=100)).values():
                now = time.time()
                latencies.extend((now - Probe.model_validate_json(r.value).sent_s) * 1000 for r in records)

    try:
        collector = asyncio.create_task(read())
        started = time.perf_counter()
        for i in range(n):
            await prod.send(into, Probe(n=i, sent_s=time.time()).dumps(), key=str(i).encode())
            delay = started + (i + 1) / rate - time.perf_counter() if rate else 0
            if delay > 0:
                await asyncio.sleep(delay)
        await asyncio.wait_for(collector, timeout=60)
        return latencies, time.perf_counter() - started
    finally:
        await prod.stop()
        await reader.stop()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def summarize(d: Drive) -> dict[str, Any]:
    outs = list(d.outcomes.values())
    answered = [o for o in outs if o.response]
    by_route: dict[str, list[Outcome]] = {"student": [], "teacher": []}
    for o in answered:
        assert o.response is not None
        by_route[o.response.route].append(o)

    def acc(items: list[Outcome]) -> float | None:
        labelled = [o for o in items if o.label is not None and o.response is not None]
        if not labelled:
            return None
        return sum(o.response.label == o.label for o in labelled if o.response) / len(labelled)

    def lat(items: list[Outcome]) -> dict[str, float | None]:
        values = [o.latency_ms for o in items if o.latency_ms is not None]
        return {"p50": percentile(values, 0.5), "p95": percentile(values, 0.95), "p99": percentile(values, 0.99)}

    def hops(items: list[Outcome]) -> dict[str, float | None]:
        """Median time spent before ingestion, inside the pipeline, and delivering the answer."""
        r = [(o, o.response) for o in items if o.response is not None and o.answered_at is not None]
        return {
            "to_ingestion": percentile([resp.received_at_ms - o.sent_at * 1000 for o, resp in r], 0.5),
            "in_pipeline": percentile([float(resp.answered_at_ms - resp.received_at_ms) for o, resp in r], 0.5),
            "to_reader": percentile([(o.answered_at or 0) * 1000 - resp.answered_at_ms for o, resp in r], 0.5),
        }

    n = len(outs) or 1
    standin = any(r.standin for r in d.teacher_results)
    out_of_scope = [o for o in answered if o.label == OOS]
    in_scope = [o for o in answered if o.label is not None and o.label != OOS]

    def share(items: list[Outcome], test: Callable[[Response], bool]) -> float | None:
        return sum(test(o.response) for o in items if o.response) / len(items) if items else None

    audits = [r for r in d.teacher_results if r.mode == "audit"]
    return {
        "requests": len(outs),
        "answered": len(answered),
        "duplicates": sum(o.duplicates for o in outs),
        "accuracy": acc(answered),
        "student_share": len(by_route["student"]) / n,
        "teacher_share": len(by_route["teacher"]) / n,
        "student_accuracy": acc(by_route["student"]),
        "teacher_accuracy": acc(by_route["teacher"]),
        "accuracy_after_corrections": (
            sum(o.final_label == o.label for o in answered) / len(answered) if answered else None
        ),
        "corrections": sum(o.corrected_to is not None for o in outs),
        "degraded": sum(o.response is not None and o.response.status == "degraded" for o in outs),
        "failed": sum(o.response is not None and o.response.status == "failed" for o in outs),
        "student_agreement": _agreement(d.teacher_results),
        "teacher_calls": len(d.teacher_results),
        "cost_usd": sum(r.cost_usd for r in d.teacher_results),
        "audits": len(audits),
        "audit_cost_usd": sum(r.cost_usd for r in audits),
        "audited_accuracy": sum(r.student_label == r.label for r in audits) / len(audits) if audits else None,
        "teacher_standin": standin,
        "latency_ms": {"student": lat(by_route["student"]), "teacher": lat(by_route["teacher"]), "all": lat(answered)},
        "hops_p50_ms": {"student": hops(by_route["student"]), "teacher": hops(by_route["teacher"])},
        "seconds": d.seconds,
        "throughput_rps": len(answered) / d.seconds if d.seconds else None,
        # Out of scope (the data set says ``oos``): answered oos by anyone; accepted by the
        # student with an in-scope label (false accepts); and in-scope requests sent to the teacher.
        "scope": {
            "out_of_scope": len(out_of_scope),
            "oos_recall": share(out_of_scope, lambda r: r.label == OOS),
            "oos_false_accepts": share(out_of_scope, lambda r: r.route == "student" and r.label != OOS),
            "oos_by_student": share(out_of_scope, lambda r: r.route == "student" and r.label == OOS),
            "in_scope_deferred": share(in_scope, lambda r: r.route == "teacher"),
        },
    }


def cpu_seconds(pid: int | str) -> float | None:
    """User + system CPU a process has used so far, from /proc/<pid>/stat (fields 14 and 15);
    None once it has gone. What the load tests put beside their timings."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> dict[str, float]:
    """The whole machine's CPU seconds so far, summed over its cores, from /proc/stat: ``busy``
    (user, nice, system, interrupts), ``idle`` (with I/O wait) and ``steal`` — time a virtual
    machine's cores were runnable but its host ran something else. Two differences over a phase
    give the cores it kept busy and the cores the host took away: what a figure on a shared
    machine is measured beside. Empty where /proc/stat cannot be read."""
    try:
        head = Path("/proc/stat").read_text().splitlines()[0].split()
    except (OSError, IndexError):
        return {}
    if head[0] != "cpu":
        return {}
    user, nice, system, idle, iowait, irq, softirq, steal = (int(v) for v in (head[1:9] + ["0"] * 8)[:8])
    tick = os.sysconf("SC_CLK_TCK")
    return {
        "busy": (user + nice + system + irq + softirq) / tick,
        "idle": (idle + iowait) / tick,
        "steal": steal / tick,
    }


def cores_between(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """``machine_cpu`` at two moments ``seconds`` apart as cores: busy, idle and stolen."""
    if not before or not after or seconds <= 0:
        return {}
    return {k: round((after[k] - before[k]) / seconds, 3) for k in ("busy", "idle", "steal")}


def java_thread_names(pid: int | str) -> dict[int, str]:
    """A JVM's thread ids -> their whole names, from ``jcmd PID Thread.print`` (the kernel keeps
    15 characters of a name, too few to tell a broker's request handlers from its network
    threads); empty without ``jcmd`` or a JVM at ``pid``."""
    jcmd = shutil.which("jcmd")
    if jcmd is None:
        return {}
    try:
        dump = subprocess.run([jcmd, str(pid), "Thread.print"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    return {int(m[2], 16): m[1] for m in re.finditer(r'^"(.+?)" .*?\bnid=0x([0-9a-f]+)', dump, re.M)}


def thread_cpu_seconds(pid: int | str, names: dict[int, str] | None = None) -> dict[str, float]:
    """CPU seconds per kind of thread of a process so far, from /proc/<pid>/task/*/stat; threads
    named alike but for their numbers are summed (a JVM names its threads, so the broker's CPU
    splits into request handlers, network threads, the transaction marker sender, GC, the JIT).
    ``names`` (thread id -> name, ``java_thread_names``) replaces the kernel's cut names. Threads
    that ended are not counted; empty once the process has gone."""
    kinds: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            head, _, tail = stat.read_text().rpartition(")")
        except OSError:
            continue
        fields = tail.split()
        name = (names or {}).get(int(stat.parent.name)) or head.partition("(")[2]
        kind = re.sub(r"[-#]\d+\b|\d+$", "", name).strip() or "?"
        kinds[kind] = kinds.get(kind, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return kinds


def machine() -> dict[str, Any]:
    """The CPU model and core count a benchmark ran on (printed and written with every result)."""
    model = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), model)
    return {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version()}
