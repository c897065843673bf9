"""The trainer retrains in a worker thread (``PROTEGE_TRAIN_IN_BACKGROUND``, once a version
serves) while its loop goes on reading the harvest; a retrain that ends when no record comes is
announced by the loop's idle poll (``Processor.flush_idle``), in a transaction of its own, once."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import protege_services.trainer.__main__
import pytest
from protege_services.trainer.handler import CaseStore, Trainer

from protege.events import ModelAnnouncement
from protege.generator import triage_task
from protege.kafka import producer
from protege.settings import Settings, TrainerSettings
from protege.state import read_all
from protege.student.train import Case, TrainResult
from protege.task import Task
from tests.helpers import harvest_case

pytestmark = pytest.mark.kafka
TASK = triage_task()


def test_a_retrain_that_ends_between_batches_is_announced_by_the_idle_poll(settings: Settings, tmp_path: Path) -> None:
    release = threading.Event()
    started: list[int] = []

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        started.append(len(cases))
        assert release.wait(60), "the test never released the retrain"
        return TrainResult("v0001-bg", tmp_path / "v0001-bg", {}, ["billing", "refund"], True, "passed")

    async def serving(tenant: str, task: str) -> Path | None:
        return tmp_path / "v0000-bg"  # a version serves: the retrain runs in the worker thread

    trainer = Trainer(
        {TASK.name: TASK},
        settings.topics,
        CaseStore(tmp_path / "harvest"),
        train,
        min_cases=4,
        retrain_every=1000,
        serving=serving,
        background=True,
    )
    loop = protege_services.trainer.__main__.processor(TrainerSettings(**dict(settings)), trainer)
    announced: list[ModelAnnouncement] = []

    async def go() -> None:
        stop = asyncio.Event()
        running = asyncio.create_task(loop.run(stop))
        try:
            for _ in range(600):  # its partitions assigned
                if getattr(loop, "producers", None):
                    break
                await asyncio.sleep(0.05)
            prod = producer(settings)
            await prod.start()
            try:
                for i in range(4):
                    case = harvest_case(f"bg-{i}", ("billing", "refund")[i % 2], reason="escalated", task=TASK.name)
                    await prod.send_and_wait(settings.topics.harvest, case.dumps(), key=b"one-partition")
            finally:
                await prod.stop()
            for _ in range(600):  # read and committed, the retrain running: the loop is not waiting for it
                if loop.processed == 4 and trainer.training:
                    break
                await asyncio.sleep(0.05)
            assert loop.processed == 4 and started == [4] and not running.done()
            assert await read_all(settings, settings.topics.models) == []
            release.set()  # no record comes after it: the idle poll announces it
            for _ in range(300):
                announced[:] = [
                    ModelAnnouncement.model_validate_json(r.value)
                    for r in await read_all(settings, settings.topics.models)
                ]
                if announced:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(1.0)  # and only once
            announced[:] = [
                ModelAnnouncement.model_validate_json(r.value) for r in await read_all(settings, settings.topics.models)
            ]
        finally:
            release.set()
            stop.set()
            await running
            trainer.settle(60)

    asyncio.run(go())
    assert [(a.version, a.action) for a in announced] == [("v0001-bg", "serve")], announced
    assert announced[0].reason is not None and announced[0].reason.startswith("trained on first student: 4 cases")
