"""Offline trainer: protege.harvest -> model registry -> protege.models.

    python -m services.trainer            (or: protege run trainer)

Needs the ``train`` extra: the backbone is exported to ONNX with torch once and cached
under PROTEGE_CACHE; retrains after that use ONNX Runtime and scikit-learn only.
"""

from __future__ import annotations

import asyncio

from protege.kafka import Processor
from protege.service import run_service
from protege.settings import TrainerSettings
from protege.student.backbone import cached_backbone
from protege.student.runtime import Encoder
from protege.student.train import Case, EmbeddingCache, TrainResult, train_version
from protege.task import Task, load_tasks
from services.trainer.handler import CaseStore, Trainer


async def serve(settings: TrainerSettings, stop: asyncio.Event) -> None:
    backbone = settings.backbone
    if backbone is None:
        backbone = await asyncio.to_thread(cached_backbone)
    embed = EmbeddingCache(Encoder(backbone / "model.onnx", backbone / "tokenizer.json",
                                   threads=settings.trainer_threads))
    registry = settings.home / "registry"

    def train(cases: list[Case], tenant: str, task: Task) -> TrainResult:
        return train_version(cases, embed=embed, backbone=backbone, registry=registry, tenant=tenant,
                             task=task.name, max_length=task.student.max_length, holdout=settings.holdout,
                             min_holdout_accuracy=settings.min_holdout_accuracy)

    trainer = Trainer(load_tasks(settings.tasks_dir), settings.topics, CaseStore(settings.home / "harvest"), train,
                      min_cases=settings.min_cases, retrain_every=settings.retrain_every)
    await Processor(settings, "trainer", [settings.topics.harvest], trainer.handle,
                    max_poll_interval_ms=900_000, transaction_timeout_ms=900_000).run(stop)


if __name__ == "__main__":
    run_service("trainer", TrainerSettings, serve)
