"""The model registry on disk and the serving history on ``protege.models``.

    $PROTEGE_HOME/registry/<tenant>/<task>/<version>/   model.onnx, tokenizer.json, knn.npy, manifest.json

Versions are immutable folders written by the trainer. Which one serves is decided by
the announcements on ``protege.models`` (``Serving`` replays them the same way a
scorer does); an operator changes it by announcing, never by editing files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from protege.errors import ConfigError
from protege.events import ModelAnnouncement, now_ms
from protege.settings import Settings


@dataclass(frozen=True)
class Version:
    name: str
    folder: Path
    manifest: dict[str, Any]

    def announcement(self, *, pin: bool) -> ModelAnnouncement:
        m = self.manifest
        return ModelAnnouncement(
            tenant=m["tenant"], task=m["task"], version=self.name, path=str(self.folder.resolve()),
            labels=m["labels"], metrics={k: float(v) for k, v in m["metrics"].items()},
            trained_on=int(m["data"]["cases"]), source="operator", pin=pin, announced_at_ms=now_ms(),
        )


def versions(registry: Path, tenant: str, task: str) -> list[Version]:
    home = registry / tenant / task
    found = [Version(p.name, p, json.loads((p / "manifest.json").read_text()))
             for p in sorted(home.glob("v*")) if (p / "manifest.json").exists()]
    return found


def version(registry: Path, tenant: str, task: str, name: str) -> Version:
    for v in versions(registry, tenant, task):
        if v.name == name or v.name.startswith(name + "-"):
            return v
    raise ConfigError(f"no version {name!r} for {tenant}/{task} in {registry}")


class Serving:
    """Which version serves each (tenant, task), from the announcements in order.

    The trainer's versions serve as they come, unless an operator pinned one (``protege
    models pin`` or ``rollback``); an operator's announcement always applies; ``unpin``
    lets the trainer's next version through.
    """

    def __init__(self) -> None:
        self.pinned: set[tuple[str, str]] = set()

    def applies(self, ann: ModelAnnouncement) -> bool:
        key = (ann.tenant, ann.task)
        if ann.action == "unpin":
            self.pinned.discard(key)
            return False
        if ann.source == "trainer" and key in self.pinned:
            return False
        if ann.pin:
            self.pinned.add(key)
        else:
            self.pinned.discard(key)
        return True


def serving_history(announcements: list[ModelAnnouncement], tenant: str, task: str) -> tuple[list[str], bool]:
    """The versions that served (oldest first) and whether the last one is pinned."""
    serving = Serving()
    history: list[str] = []
    for ann in announcements:
        mine = (ann.tenant, ann.task) == (tenant, task)
        if mine and serving.applies(ann) and (not history or history[-1] != ann.version):
            history.append(ann.version)
    return history, (tenant, task) in serving.pinned


async def read_history(settings: Settings, tenant: str, task: str) -> tuple[list[str], bool]:
    """``serving_history`` of what is on ``protege.models`` now."""
    from protege.state import read_all

    records = await read_all(settings, settings.topics.models)
    return serving_history([ModelAnnouncement.model_validate_json(r.value) for r in records], tenant, task)


async def serving_folder(settings: Settings, tenant: str, task: str) -> Path | None:
    """The folder of the version serving now, if there is one and it is in this registry."""
    history, _ = await read_history(settings, tenant, task)
    try:
        return version(settings.home / "registry", tenant, task, history[-1]).folder if history else None
    except ConfigError:
        return None
