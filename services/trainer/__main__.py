"""Offline trainer: protege.harvest -> model registry -> protege.models.

    python -m protege_services.trainer            (or: protege run trainer)

Needs the ``train`` extra: the backbone is exported to ONNX with Optimum once and cached
under PROTEGE_CACHE; retrains after that use ONNX Runtime and scikit-learn only.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

import structlog
from protege_services.trainer.handler import CaseStore, Trainer

from protege.events import Alert, HarvestCase, ModelAnnouncement
from protege.kafka import Processor
from protege.registry import Registry
from protege.review import ReviewStore
from protege.service import run_service
from protege.serving import Serving, view
from protege.settings import TrainerSettings
from protege.student.backbone import cached_backbone
from protege.student.runtime import Encoder, limit_blas
from protege.student.train import (
    Case,
    EmbeddingCache,
    FastRecipe,
    HeadRefresh,
    Recertified,
    TrainResult,
    read_golden,
    recertify_version,
    train_version,
)
from protege.task import Task, load_tasks

log = structlog.get_logger(service="trainer")  # lazy: bound when first used, after logging is configured


async def serve(settings: TrainerSettings, stop: asyncio.Event) -> None:
    # numpy's BLAS at one thread (PROTEGE_TRAINER_BLAS_THREADS), as in the scorer: a pool that
    # busy-waits between calls took the cores the pipeline shares with a retrain
    log.info("blas", wanted=settings.trainer_blas_threads, **limit_blas(settings.trainer_blas_threads))
    backbone = settings.backbone
    if backbone is None:
        backbone = await asyncio.to_thread(cached_backbone)
    embed = EmbeddingCache(
        Encoder(backbone / "model.onnx", backbone / "tokenizer.json", threads=settings.trainer_threads)
    )
    registry = Registry.of(settings)
    recipe = FastRecipe(embed, backbone)

    tasks = load_tasks(settings.tasks_dir)
    # Each task's trusted golden set, read (and checked) once: kept out of training, the rules certified on it.
    truths = {name: read_golden(settings.tasks_dir / t.golden, t) for name, t in tasks.items() if t.golden}

    def warm() -> None:
        """Embed the golden sets once, before the first case: every retrain measures each version on
        them, and the first would otherwise pay for it while traffic waits for a student."""
        for name, truth in truths.items():
            texts = [t.text for t in truth]
            recipe.embed(texts)
            if tasks[name].student.int8 is not False:
                recipe.embed_int8(texts)

    await asyncio.to_thread(warm)

    recipes = HeadRefresh(recipe, threads=settings.trainer_threads)
    reviews = ReviewStore(settings.home / "review")

    def train(cases: list[Case], tenant: str, task: Task, serving: Path | None, trigger: str) -> TrainResult:
        return train_version(
            cases,
            recipe=recipes.on(serving),
            registry=registry.root,
            tenant=tenant,
            task=task,
            serving=serving,
            threads=settings.trainer_threads,
            trigger=trigger,
            truth=reviews.truth(tenant, task, truths.get(task.name, ())),  # the file and live reviews
        )

    def recertify(
        tenant: str, task: Task, serving: Path, since: int | None, anew: bool, alarm: str | None
    ) -> Recertified | None:
        recent = None if since is None else {t.request_id for t in reviews.golden(tenant, task, since=since)}
        return recertify_version(
            serving,
            registry=registry.root,
            tenant=tenant,
            task=task,
            truth=reviews.truth(tenant, task, truths.get(task.name, ())),
            recent=recent,
            places=reviews.places(tenant, task.name),
            threads=settings.trainer_threads,
            anew=anew,
            alarm=alarm,
        )

    # What serves now, kept live: a candidate is gated against it (no re-read of the topic per retrain).
    serving = Serving()
    models = view(settings, serving)
    watching = asyncio.create_task(models.run(stop))
    await models.ready(watching)

    async def serving_folder(tenant: str, task: str) -> Path | None:
        ann = serving.serving(tenant, task)
        found = registry.find(tenant, task, ann.version) if ann is not None else None
        return found.folder if found is not None else None

    def trials(tenant: str, task: str) -> tuple[ModelAnnouncement | None, ModelAnnouncement | None]:
        return serving.canary(tenant, task), serving.serving(tenant, task)

    def last_trained(tenant: str, task: str) -> tuple[int, int, int, bool] | None:
        # the newest trained version (a re-certified one shares its files and its cases)
        versions = [v for v in registry.versions(tenant, task) if v.manifest.recertified_from is None]
        if not versions:
            return None
        m = versions[-1].manifest
        at = datetime.strptime(m.created_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        accepted = (m.data.sources or {}).get("student", 0)
        return m.data.cases - accepted, accepted, int(at.timestamp() * 1000), m.gates.passed

    trainer = Trainer(
        tasks,
        settings.topics,
        CaseStore(settings.home / "harvest"),
        train,
        min_cases=settings.min_cases,
        retrain_every=settings.retrain_every,
        retrain_hours=settings.retrain_hours,
        serving=serving_folder,
        trials=trials,
        last_trained=last_trained,
        has_read=serving.has_read,
        reviews=reviews,
        recertify=recertify,
        recertify_every=settings.recertify_every,
        background=settings.train_in_background,
    )
    await asyncio.gather(processor(settings, trainer).run(stop), watching)


def processor(settings: TrainerSettings, trainer: Trainer) -> Processor:
    """A retrain takes minutes on a small machine: the loop's poll and transaction limits allow it.
    While one runs in the worker thread, the loop's batches linger ``trainer_linger_ms`` to fill
    (a transaction per small batch took cores from the retrain); otherwise they do not: a first
    student waits for no linger (it made the demo's first batch, and first version, larger)."""

    def linger_ms() -> int:
        return max(settings.linger_ms, settings.trainer_linger_ms if trainer.training else 0)

    return Processor(
        settings,
        "trainer",
        {settings.topics.harvest: HarvestCase, settings.topics.alerts: Alert},
        trainer.handle,
        tasks=trainer.tasks,
        idle=trainer.idle,
        linger_ms=linger_ms,
        max_poll_interval_ms=900_000,
        transaction_timeout_ms=900_000,
    )


if __name__ == "__main__":
    run_service("trainer", TrainerSettings, serve)
