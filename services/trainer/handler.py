"""Offline trainer: accumulate harvested cases per tenant and task, retrain, gate, announce.

The case store is one JSON Lines file per (tenant, task) under ``home/harvest``; a case
is kept once per request id (a re-read after a crash adds nothing). The first student is
trained at ``min_cases`` cases, then again every ``retrain_every`` new ones, with the fast
recipe. Only labelled cases count toward both (teacher, stand-in, feedback): the student's own
accepted answers (``student.learn_accepted``) ride along with the next training but trigger none,
or a student answering most traffic would retrain at the pace of the traffic, not of what the
teacher taught it (the full fine-tune runs on a schedule: ``protege train --recipe finetune``). A
version that passes the release gates — against the version serving now, on the same
golden cases — is announced on ``protege.models``; one that does not is kept in the
registry, not announced, and the log says why. With ``student.canary.share`` set (and a
version serving), the announcement is a canary: the version answers that share of requests
on trial, and the monitor judges it on the audits and escalations (``protege.canary``): it
announces the promotion (``serve``) or the rollback (``abort``), with the reason and the
numbers. No new candidate is trained while one is on trial.

Cases of the review sample (reason ``review``) are not learnt: their two halves — the
teacher's answer and a person's label — make golden rows (``ReviewStore``), which join the
task's golden file in every version's measurement and certification. Every
``recertify_every`` new reviewed rows the serving version's rule is judged again on them
(``Trainer.judge_again``): a rule they show falls short is replaced at once by the one they
certify, as a new version sharing its files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from protege import metrics
from protege.agreement import agreement
from protege.canary import candidate, certifies
from protege.certify import Alarm, out_of_scope_alarm
from protege.events import Alert, HarvestCase, ModelAnnouncement, now_ms
from protege.jsonl import append, read_appended
from protege.kafka import Out, Received
from protege.review import ReviewStore
from protege.student.train import Case, Recertified, TrainResult
from protege.task import OOS, Task
from protege.topics import Topics

Train = Callable[[list[Case], str, Task, Path | None, str], TrainResult]  # ..., the trigger
ServingFolder = Callable[[str, str], Awaitable[Path | None]]
Trials = Callable[[str, str], tuple[ModelAnnouncement | None, ModelAnnouncement | None]]  # (on trial, serving)
# The newest version on record (the registry): (labelled cases it was trained on, the student's
# accepted answers beside them, when, ms; passed its gates)
LastTrained = Callable[[str, str], tuple[int, int, int, bool] | None]
READ_BACK_MS = 60_000  # how long a trainer waits to read its own announcement back
HasRead = Callable[[str, str, str], bool]  # whether the serving view has read (tenant, task, version)'s announcement
# The serving version (its folder) judged again on the trusted rows, those completed from the given
# place on being the ones since its rule was certified (None: all): a new version with the rule they
# certify, or None when it keeps its own (protege.student.train.recertify_version). With ``anew``,
# a version whose rule was certified on rows a shift has since ruled out (it trained meanwhile): the
# rule today's rows certify, whatever its own was; None when there are none to certify on. The last
# argument: why the out-of-scope alarm rang (``Trainer.out_of_scope_alarm``), None when it did not.
Recertify = Callable[[str, Task, Path, int | None, bool, str | None], Recertified | None]


@dataclass(frozen=True)
class Started:
    """What a retrain started from."""

    serving: Path | None  # what it is gated against
    trigger: str
    cases: int
    shift: int  # the place from which reviewed rows counted when it started (ReviewStore.shift)


async def no_serving(tenant: str, task: str) -> Path | None:
    return None


def no_trials(tenant: str, task: str) -> tuple[ModelAnnouncement | None, ModelAnnouncement | None]:
    return None, None


def never_trained(tenant: str, task: str) -> tuple[int, int, int, bool] | None:
    return None


def reads_at_once(tenant: str, task: str, version: str) -> bool:
    return True


class CaseStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cases: dict[tuple[str, str], dict[str, Case]] = {}
        self.accepted: dict[tuple[str, str], int] = {}  # of them, the student's own accepted answers

    def _path(self, tenant: str, task: str) -> Path:
        return self.root / tenant / f"{task}.jsonl"

    def load(self, tenant: str, task: str) -> dict[str, Case]:
        key = (tenant, task)
        if key not in self.cases:
            cases: dict[str, Case] = {}
            for row in read_appended(self._path(tenant, task), repair=True):  # the trainer's own file
                cases[row["request_id"]] = Case(
                    row["request_id"], row["text"], row["label"], row.get("source", "teacher")
                )
            self.cases[key] = cases
            self.accepted[key] = sum(1 for c in cases.values() if c.source == "student")
        return self.cases[key]

    def counts(self, tenant: str, task: str) -> tuple[int, int]:
        """(labelled cases — the teacher's, the stand-in's, feedback — and the student's accepted
        answers) of (tenant, task), kept as cases arrive: a retrain is counted in the first."""
        cases = self.load(tenant, task)
        accepted = self.accepted[(tenant, task)]
        return len(cases) - accepted, accepted

    def add(self, case: HarvestCase) -> bool:
        cases = self.load(case.tenant, case.task)
        before = cases.get(case.request_id)
        if before is not None and case.reason != "feedback":
            return False
        cases[case.request_id] = Case(case.request_id, case.text, case.label, case.label_source)
        key = (case.tenant, case.task)
        self.accepted[key] += (case.label_source == "student") - (before is not None and before.source == "student")
        append(
            self._path(case.tenant, case.task),
            {
                "request_id": case.request_id,
                "text": case.text,
                "label": case.label,
                "source": case.label_source,
                "reason": case.reason,
            },
        )
        return True

    def tenants(self, task: str) -> list[str]:
        """Every tenant with cases of ``task`` (on disk or loaded)."""
        on_disk = {p.parent.name for p in self.root.glob(f"*/{task}.jsonl")}
        return sorted(on_disk | {tenant for tenant, t in self.cases if t == task})


class Trainer:
    def __init__(
        self,
        tasks: dict[str, Task],
        topics: Topics,
        store: CaseStore,
        train: Train,
        *,
        min_cases: int,
        retrain_every: int,
        retrain_hours: float | None = None,
        serving: ServingFolder = no_serving,
        trials: Trials = no_trials,
        last_trained: LastTrained = never_trained,
        has_read: HasRead = reads_at_once,
        reviews: ReviewStore | None = None,
        recertify: Recertify | None = None,
        recertify_every: int = 100,
        background: bool = False,
        observe_every_s: float = 1.0,
    ) -> None:
        """``background``: retrain in a worker thread while batches go on being read, so the
        serving rule is judged on the rows people review meanwhile (a retrain took 58-82 s on
        CLINC150 and no check ran during it, stop 36); its announcement rides the first batch, or
        idle poll (``idle``), after it ends. A first student (nothing serves, so no rule to judge)
        is trained waiting either way. False: the batch that triggers it waits for it."""
        self.tasks = tasks
        # The review gauges are counted over every row: once a second at most, not per batch (a
        # trainer reading small batches while it retrains spent most of its loop there).
        self.observe_every_s = observe_every_s
        self.observed: dict[tuple[str, str], float] = {}  # when (monotonic) the gauges were last set
        self.unobserved: set[tuple[str, str]] = set()
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="retrain") if background else None
        # in the worker thread, per (tenant, task)
        self.training: dict[tuple[str, str], tuple[Future[TrainResult], Started]] = {}
        self.reviews = reviews
        self.recertify = recertify
        self.recertify_every = recertify_every
        # Rows people had completed (ReviewStore.done) when the serving version's rule was certified
        # (trained, or certified again), and when it was last judged.
        self.certified_at: dict[tuple[str, str], int] = {}
        self.judged_at: dict[tuple[str, str], int] = {}
        # The certification (its certified_at) for which the out-of-scope alarm has made a check:
        # one per certification; the checks every recertify_every rows go on.
        self.rang: dict[tuple[str, str], int] = {}
        self.last_trained = last_trained
        self.has_read = has_read
        # The version this trainer announced last, and when (ms), until its view has read it.
        self.announced: dict[tuple[str, str], tuple[str, int]] = {}
        self.serving = serving
        self.trials = trials
        self.topics = topics
        self.store = store
        self.train = train
        self.min_cases = min_cases
        self.retrain_every = retrain_every
        self.retrain_hours = retrain_hours
        self.trained_at: dict[tuple[str, str], int] = {}  # labelled cases at the last training
        self.accepted_at: dict[tuple[str, str], int] = {}  # and the student's accepted answers
        self.trained_ms: dict[tuple[str, str], int] = {}  # and when
        self.held_back: set[tuple[str, str]] = set()  # the last candidate failed its gates
        self.log = structlog.get_logger().bind(service="trainer")

    def reading_back(self, tenant: str, task: str) -> bool:
        """Whether this trainer's own last announcement is not in the serving view yet (committed
        with the batch that made it, read back a moment later): what serves and what is on trial
        are not known until it is. Seen in a demo: a second candidate put on trial beside the
        first. An announcement never read (its transaction aborted: fenced) stops holding
        retrains and checks back after a minute."""
        mine = self.announced.get((tenant, task))
        if mine is None or self.has_read(tenant, task, mine[0]):
            return False
        if now_ms() - mine[1] < READ_BACK_MS:
            return True
        self.log.warning("announcement_not_read", tenant=tenant, task=task, version=mine[0])
        del self.announced[(tenant, task)]
        return False

    def due(self, tenant: str, task: str, alert: Alert | None = None) -> str | None:
        """Why to retrain now — enough new cases, a drift alarm, the schedule — or None. The
        reason is the trigger recorded on the version and its announcement."""
        if (tenant, task) in self.training or self.reading_back(tenant, task):
            return None
        canary, _ = self.trials(tenant, task)
        if canary is not None:
            return None  # one candidate on trial at a time (until the monitor's verdict)
        n, accepted = self.store.counts(tenant, task)
        last = self.trained_at.get((tenant, task))
        if last is None and (record := self.last_trained(tenant, task)) is not None:
            # A restarted trainer goes on from the newest version on record, not from nothing
            # (it retrained a "first student" at every start).
            last, self.accepted_at[(tenant, task)], self.trained_ms[(tenant, task)], passed = record
            self.trained_at[(tenant, task)] = last
            if not passed:
                self.held_back.add((tenant, task))
        if not two_labels(self.store.load(tenant, task).values()):
            return None
        if last is None:
            return f"first student: {n} cases" if n >= self.min_cases else None
        new = n - last
        # after a held-back candidate, try again sooner: more cases are the usual cure
        every = min(self.retrain_every, self.min_cases) if (tenant, task) in self.held_back else self.retrain_every
        riding = accepted - self.accepted_at.get((tenant, task), 0)
        fresh = f"{new} new cases" + (f" (and {riding} accepted answers)" if riding > 0 else "")
        if new >= every:
            return fresh
        if new and alert is not None:
            return (
                f"drift alarm: escalation rate {alert.rate:.1%} against a baseline of {alert.baseline:.1%} "
                f"± {alert.band:.0%}; {fresh}"
            )
        since = now_ms() - self.trained_ms.get((tenant, task), now_ms())
        if new and self.retrain_hours is not None and since >= self.retrain_hours * 3_600_000:
            return (
                f"schedule: {since / 3_600_000:.1f} h since the last training (every {self.retrain_hours:g} h); {fresh}"
            )
        return None

    async def idle(self) -> list[Out]:
        """Between batches: the announcements of retrains that ended meanwhile (and the review
        gauges a recent batch left unset)."""
        for tenant, task in sorted(self.unobserved):
            self.observe_reviews(tenant, task)
        return await self.finished()

    async def handle(self, received: Sequence[Received[HarvestCase | Alert]]) -> list[Out]:
        ended = await self.ended()
        outs = flat(ended)
        touched: set[tuple[str, str]] = set()
        alarms: dict[str, Alert] = {}
        reviewed: set[tuple[str, str]] = set()
        for r in received:
            event = r.event
            if isinstance(event, Alert):
                if event.kind == "drift" and event.state == "firing" and event.task in self.tasks:
                    alarms[event.task] = event
            elif event.reason == "review":  # a half of a golden row: never a case to learn
                if self.reviews is not None:
                    self.reviews.add(event)
                    reviewed.add((event.tenant, event.task))
            elif self.store.add(event):
                touched.add((event.tenant, event.task))
        self.unobserved |= reviewed
        for tenant, task in sorted(self.unobserved):
            if time.monotonic() - self.observed.get((tenant, task), -1e9) >= self.observe_every_s:
                self.observe_reviews(tenant, task)
        for task in alarms:  # the alarm is per task: every tenant with new cases
            touched |= {(tenant, task) for tenant in self.store.tenants(task)}
        # The serving rule is judged before a retrain, not only in batches without one: a trainer
        # retraining batch after batch (cases arriving faster than it trains) never checked it,
        # so a shift went unseen for as long as the retraining lasted (stop 34). A check that
        # replaces the rule holds this batch's retrain until its announcement is read back.
        announced = {key for key, out in ended.items() if out}
        for tenant, task in sorted(reviewed):
            if out := await self.judge_again(tenant, task):
                outs.extend(out)
                announced.add((tenant, task))
        for tenant, task in sorted(touched - announced):
            trigger = self.due(tenant, task, alarms.get(task))
            if trigger is not None and (out := await self.retrain(tenant, task, trigger)):
                outs.extend(out)
        return outs

    def observe_reviews(self, tenant: str, task: str) -> None:
        """The reviewed golden rows of (tenant, task) on /metrics: how many, how often people
        agreed with the teacher on them, with each other (second opinions), and the rows they
        split on."""
        assert self.reviews is not None
        self.observed[(tenant, task)] = time.monotonic()
        self.unobserved.discard((tenant, task))
        rows = self.reviews.golden(tenant, self.tasks[task])
        metrics.REVIEWED_ROWS.labels(tenant, task).set(len(rows))
        if rows:
            metrics.REVIEWED_TEACHER_ACCURACY.labels(tenant, task).set(
                sum(t.teacher == t.label for t in rows) / len(rows)
            )
        people = agreement(self.reviews.opinions(tenant, task))
        metrics.REVIEWED_DISPUTED.labels(tenant, task).set(people["disputed"])
        if people["agreement"] is not None:
            metrics.REVIEWERS_AGREEMENT.labels(tenant, task).set(people["agreement"])

    def done(self, tenant: str, task: str) -> int:
        return self.reviews.done(tenant, task) if self.reviews is not None else 0

    async def judge_again(self, tenant: str, task_name: str) -> list[Out]:
        """Every ``recertify_every`` rows people complete, the serving version's rule judged again
        on the trusted rows (``protege.certify.reconsider``). When the rows completed since it was
        certified — out of sample for it — show it falls short, the traffic has shifted: the rows
        before the shift stop counting (``ReviewStore.mark_shift``, from where the rows since
        certification changed when they show it, else all of them: for this check, every later
        one and every retrain), and the rule the rows since certify — stricter, or none — replaces it at
        once, as a new version with the same files. A looser rule the rows now certify (a
        version that had too few to certify anything) comes as any candidate does, on trial where
        canaries are on. Not while a candidate is on trial, nor before this trainer's own last
        announcement is read back (what serves is not known until then)."""
        key = (tenant, task_name)
        if self.recertify is None or self.recertify_every <= 0 or self.reviews is None:
            return []
        done = self.done(tenant, task_name)
        last = self.judged_at.get(key)
        alarm = None
        if last is not None and done - last < self.recertify_every:
            alarm = self.out_of_scope_alarm(tenant, task_name)
            if alarm is None:
                return []
        if self.reading_back(tenant, task_name):
            return []
        canary, _ = self.trials(tenant, task_name)
        if canary is not None:
            return []
        serving = await self.serving(tenant, task_name)
        if serving is None:
            return []
        if (
            key in self.training
            and self.reviews.shift(tenant, task_name) == 0
            and not certifies(serving, self.tasks[task_name])
        ):
            # A cold start: nothing to tighten, and the retrain under way learns from the same
            # traffic with more cases; the checks, every 100 rows of a review surge, would take the
            # cores from it. After a shift they go on: a rule today's rows certify is the student's
            # way back while the retrain, certified on yesterday's rows, runs (stop 38).
            return []
        task = self.tasks[task_name]
        if alarm is not None:
            self.rang[key] = self.certified_at[key]
            if not certifies(serving, task):
                return []  # a rule that answers nothing lets no out-of-scope request through
            metrics.OUT_OF_SCOPE_ALARMS.labels(tenant, task_name).inc()
            self.log.info("out_of_scope_alarm", tenant=tenant, task=task_name, version=serving.name, why=alarm.why)
        self.judged_at[key] = done
        # after a restart the moment its rule was certified is not known: from now on
        since = self.certified_at.setdefault(key, done)
        began = time.perf_counter()
        why = None if alarm is None else alarm.why
        try:
            result = await asyncio.to_thread(self.recertify, tenant, task, serving, since, False, why)
        except Exception as e:  # a check that fails must not hold the harvest back: the rule stands
            metrics.RECERTIFIED.labels(tenant, task_name, "failed").inc()
            self.log.error("rule_check_failed", tenant=tenant, task=task_name, version=serving.name, error=str(e))
            return []
        if result is None:
            metrics.RECERTIFIED.labels(tenant, task_name, "kept").inc()
            self.log.info(
                "rule_kept",
                tenant=tenant,
                task=task_name,
                version=serving.name,
                rows=done,
                since=since,
                seconds=round(time.perf_counter() - began, 2),
            )
            return []
        outcome = "tightened" if result.broken else "loosened"
        metrics.RECERTIFIED.labels(tenant, task_name, outcome).inc()
        self.log.info(
            "rule_recertified",
            tenant=tenant,
            task=task_name,
            source=result.source,
            version=result.version,
            outcome=outcome,
            why=result.why,
            rows=done,
            since=since,
            seconds=round(time.perf_counter() - began, 2),
        )
        if result.broken:  # from where the rows changed, else every row since it was certified
            shift = since if result.shift_from is None else max(since, result.shift_from)
            self.reviews.mark_shift(tenant, task_name, shift, f"{result.source}: {result.why}")
        self.certified_at[key] = done
        fields: dict[str, Any] = {"labels": result.labels, "metrics": result.metrics, "trained_on": result.trained_on}
        made = f"{result.source} re-certified: {result.why}"
        if result.broken:  # no trial for a rule that stops answers the served one should not give
            ann = ModelAnnouncement(
                tenant=tenant,
                task=task_name,
                version=result.version,
                path=str(result.folder.resolve()),
                reason=made,
                announced_at_ms=now_ms(),
                **fields,
            )
        else:
            ann = candidate(
                tenant,
                task,
                result.version,
                result.folder,
                serving=serving,
                trigger="re-certification",
                made=made,
                **fields,
            )
        self.announced[key] = (result.version, now_ms())
        return [Out.of(self.topics.models, ann)]

    def out_of_scope_alarm(self, tenant: str, task_name: str) -> Alarm | None:
        """Between the checks every ``recertify_every`` reviewed rows: whether the out-of-scope
        share of the rows since the serving rule was certified rose above the share before
        (``protege.certify.out_of_scope_alarm``, a CUSUM on the reviewed labels alone, tuned to
        ring falsely no more often than those checks' own test: once per ``recertify_every /
        (1 - confidence)`` rows). When it rings, the check runs at once and takes it as a shift.
        None before this trainer knows when the rule was certified, and once it has rung for it."""
        key = (tenant, task_name)
        since = self.certified_at.get(key)
        if since is None or self.rang.get(key) == since or self.reviews is None:
            return None
        task = self.tasks[task_name]
        rows = self.reviews.sequence(tenant, task)
        before = np.asarray([label == OOS for place, label in rows if place < since], dtype=bool)
        after = np.asarray([label == OOS for place, label in rows if place >= since], dtype=bool)
        confidence = task.policy.target_confidence
        return out_of_scope_alarm(before, after, confidence, self.recertify_every / (1 - confidence))

    async def retrain(self, tenant: str, task_name: str, trigger: str) -> list[Out]:
        key = (tenant, task_name)
        cases = list(self.store.load(tenant, task_name).values())
        self.trained_at[key], self.accepted_at[key] = self.store.counts(tenant, task_name)
        self.trained_ms[key] = now_ms()
        self.log.info("training", tenant=tenant, task=task_name, cases=len(cases), trigger=trigger)
        serving = await self.serving(tenant, task_name)
        shift = self.reviews.shift(tenant, task_name) if self.reviews is not None else 0
        started = Started(serving, trigger, len(cases), shift)
        if self.pool is None or serving is None:
            # With nothing serving there is no rule to judge meanwhile, and the first student comes
            # soonest with the cores to itself: it waits.
            try:
                result = await asyncio.to_thread(self.train, cases, tenant, self.tasks[task_name], serving, trigger)
            except Exception as e:  # as in the worker thread: the harvest goes on, and more cases try again
                # (seen: a first student's fit split holding one label of the two its cases had)
                self.held_back.add(key)
                self.log.error("training_failed", tenant=tenant, task=task_name, error=f"{type(e).__name__}: {e}")
                return []
            return await self.trained(tenant, task_name, result, started, serving)
        future = self.pool.submit(self.train, cases, tenant, self.tasks[task_name], serving, trigger)
        self.training[key] = (future, started)
        return []

    async def finished(self) -> list[Out]:
        """The announcements of the retrains in the worker thread that have ended (``background``)."""
        return flat(await self.ended())

    async def ended(self) -> dict[tuple[str, str], list[Out]]:
        """The retrains in the worker thread that have ended, by (tenant, task): their
        announcements (none: held back, or failed)."""
        outs: dict[tuple[str, str], list[Out]] = {}
        for (tenant, task), (future, started) in sorted(self.training.items()):
            if not future.done():
                continue
            if self.trials(tenant, task)[0] is not None or self.reading_back(tenant, task):
                # a check's candidate went on trial meanwhile, or its announcement is not read back:
                # one candidate at a time, and gated against what serves once that is known
                continue
            del self.training[(tenant, task)]
            try:
                result = future.result()
            except Exception as e:  # a failed retrain must not stop the harvest: the next one tries again
                self.held_back.add((tenant, task))
                self.log.error("training_failed", tenant=tenant, task=task, error=f"{type(e).__name__}: {e}")
                continue
            outs[(tenant, task)] = await self.trained(tenant, task, result, started, await self.serving(tenant, task))
        return outs

    def settle(self, timeout: float | None = None) -> None:
        """Wait for the retrains in the worker thread to end (tests; a trainer that stops)."""
        for future, _ in list(self.training.values()):
            future.exception(timeout)

    async def trained(
        self, tenant: str, task_name: str, result: TrainResult, run: Started, serving: Path | None
    ) -> list[Out]:
        """A retrain's outcome: a candidate announced, or held back. ``serving``: what serves now.
        A shift the checks marked while it trained (``background``), or another rule serving now,
        rules out the rows its rule was certified on or what it was gated against: the rule today's
        rows certify replaces it before it is announced (none, or one covering less than what
        serves: it is not announced)."""
        key = (tenant, task_name)
        self.log.info(
            "trained",
            tenant=tenant,
            task=task_name,
            version=result.version,
            promoted=result.promoted,
            reason=result.reason,
            against=run.serving.name if run.serving else None,
            **result.metrics,
        )
        if not result.promoted:
            self.held_back.add(key)
            return []
        version, folder, fields = result.version, result.folder, {"labels": result.labels, "metrics": result.metrics}
        made: str | None = None
        shifted = self.reviews is not None and self.reviews.shift(tenant, task_name) > run.shift
        if shifted or serving != run.serving:
            # it was certified on the rows of when it started, and gated against what served then:
            # a check since marked a shift, or replaced the serving rule (seen on CLINC150: a
            # candidate certified on 140 rows of today announced over a rule 1,228 rows certified)
            again = None
            if self.recertify is not None:
                try:
                    again = await asyncio.to_thread(
                        self.recertify, tenant, self.tasks[task_name], folder, None, True, None
                    )
                except Exception as e:
                    self.log.error("rule_check_failed", tenant=tenant, task=task_name, version=version, error=str(e))
            if again is None:
                self.held_back.add(key)
                self.log.info("trained_on_rows_of_before", tenant=tenant, task=task_name, version=version)
                return []
            self.log.info(
                "rule_recertified",
                tenant=tenant,
                task=task_name,
                source=version,
                version=again.version,
                outcome="shifted while it trained" if shifted else "served another rule when it ended",
                why=again.why,
            )
            _, now = self.trials(tenant, task_name)
            theirs = None if now is None else now.metrics.get("truth_coverage")
            ours = again.metrics.get("truth_coverage", 0.0)
            if theirs is not None and ours < theirs - self.tasks[task_name].student.gates.tolerance:
                self.held_back.add(key)
                self.log.info(
                    "held_back",
                    tenant=tenant,
                    task=task_name,
                    version=again.version,
                    why=f"certified on today's rows it covers {ours:.1%}, what serves {theirs:.1%}",
                )
                return []
            version, folder, fields = again.version, again.folder, {"labels": again.labels, "metrics": again.metrics}
            made = f"{result.version} re-certified: {again.why}"
        self.held_back.discard(key)
        # its rule was certified on the rows of now; the checks keep their own pace (reset here, a
        # trainer retraining every few rows never judged a rule again: seen in the e2e review test)
        self.certified_at[key] = self.done(tenant, task_name)
        # on trial against what serves now
        ann = candidate(
            tenant,
            self.tasks[task_name],
            version,
            folder,
            serving=serving,
            trigger=run.trigger,
            made=made,
            trained_on=run.cases,
            **fields,
        )
        self.announced[key] = (version, now_ms())
        return [Out.of(self.topics.models, ann)]


def two_labels(cases: Iterable[Case]) -> bool:
    """Whether ``cases`` hold at least two labels (a classifier needs two), read only as far as
    the second: asked on every batch, over every case."""
    first = None
    for case in cases:
        if first is None:
            first = case.label
        elif case.label != first:
            return True
    return False


def flat(ended: dict[tuple[str, str], list[Out]]) -> list[Out]:
    """The announcements of ``Trainer.ended``, in one list."""
    return [out for announced in ended.values() for out in announced]
