"""Offline trainer: accumulate harvested cases per tenant and task, retrain, gate, announce.

The case store is one JSON Lines file per (tenant, task) under ``home/harvest``; a case
is kept once per request id (a re-read after a crash adds nothing). The first student is
trained at ``min_cases`` cases, then again every ``retrain_every`` new ones, with the fast
recipe (the full fine-tune runs on a schedule: ``protege train --recipe finetune``). A
version that passes the release gates — against the version serving now, on the same
golden cases — is announced on ``protege.models``; one that does not is kept in the
registry, not announced, and the log says why.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

from protege.events import HarvestCase, ModelAnnouncement, now_ms
from protege.kafka import Out, Received
from protege.student.train import Case, TrainResult
from protege.task import Task
from protege.topics import Topics

Train = Callable[[list[Case], str, Task, Path | None], TrainResult]
ServingFolder = Callable[[str, str], Awaitable[Path | None]]


async def no_serving(tenant: str, task: str) -> Path | None:
    return None


class CaseStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.cases: dict[tuple[str, str], dict[str, Case]] = {}

    def _path(self, tenant: str, task: str) -> Path:
        return self.root / tenant / f"{task}.jsonl"

    def load(self, tenant: str, task: str) -> dict[str, Case]:
        key = (tenant, task)
        if key not in self.cases:
            cases: dict[str, Case] = {}
            path = self._path(tenant, task)
            if path.exists():
                for line in path.read_text().splitlines():
                    row = json.loads(line)
                    cases[row["request_id"]] = Case(row["request_id"], row["text"], row["label"])
            self.cases[key] = cases
        return self.cases[key]

    def add(self, case: HarvestCase) -> bool:
        cases = self.load(case.tenant, case.task)
        if case.request_id in cases and case.reason != "feedback":
            return False
        cases[case.request_id] = Case(case.request_id, case.text, case.label)
        path = self._path(case.tenant, case.task)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(
                json.dumps(
                    {
                        "request_id": case.request_id,
                        "text": case.text,
                        "label": case.label,
                        "source": case.label_source,
                        "reason": case.reason,
                    }
                )
                + "\n"
            )
        return True


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
        serving: ServingFolder = no_serving,
    ) -> None:
        self.tasks = tasks
        self.serving = serving
        self.topics = topics
        self.store = store
        self.train = train
        self.min_cases = min_cases
        self.retrain_every = retrain_every
        self.trained_at: dict[tuple[str, str], int] = {}
        self.held_back: set[tuple[str, str]] = set()  # the last candidate failed its gates
        self.log = structlog.get_logger().bind(service="trainer")

    def due(self, tenant: str, task: str) -> bool:
        cases = self.store.load(tenant, task)
        n, last = len(cases), self.trained_at.get((tenant, task))
        if len({c.label for c in cases.values()}) < 2:
            return False
        if last is None:
            return n >= self.min_cases
        # after a held-back candidate, try again sooner: more cases are the usual cure
        every = min(self.retrain_every, self.min_cases) if (tenant, task) in self.held_back else self.retrain_every
        return n - last >= every

    async def handle(self, received: Sequence[Received[HarvestCase]]) -> list[Out]:
        outs: list[Out] = []
        touched: set[tuple[str, str]] = set()
        for r in received:
            case = r.event
            if self.store.add(case):
                touched.add((case.tenant, case.task))
        for tenant, task in sorted(touched):
            if self.due(tenant, task):
                outs.extend(await self.retrain(tenant, task))
        return outs

    async def retrain(self, tenant: str, task_name: str) -> list[Out]:
        cases = list(self.store.load(tenant, task_name).values())
        self.trained_at[(tenant, task_name)] = len(cases)
        self.log.info("training", tenant=tenant, task=task_name, cases=len(cases))
        serving = await self.serving(tenant, task_name)
        result = await asyncio.to_thread(self.train, cases, tenant, self.tasks[task_name], serving)
        self.log.info(
            "trained",
            tenant=tenant,
            task=task_name,
            version=result.version,
            promoted=result.promoted,
            reason=result.reason,
            against=serving.name if serving else None,
            **result.metrics,
        )
        if not result.promoted:
            self.held_back.add((tenant, task_name))
            return []
        self.held_back.discard((tenant, task_name))
        ann = ModelAnnouncement(
            tenant=tenant,
            task=task_name,
            version=result.version,
            path=str(result.folder.resolve()),
            labels=result.labels,
            metrics=result.metrics,
            trained_on=len(cases),
            announced_at_ms=now_ms(),
        )
        return [Out.of(self.topics.models, ann)]
