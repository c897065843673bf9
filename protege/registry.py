"""The model registry on disk: immutable version folders written by the trainer.

    $PROTEGE_HOME/registry/<tenant>/<task>/<version>/   model.onnx, tokenizer.json, knn.npy, manifest.json

Which version serves is not the registry's business: announcements on ``protege.models``
decide it (``protege.serving``); an operator changes it by announcing, never by editing
files.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from protege.errors import ConfigError
from protege.events import ModelAnnouncement, now_ms
from protege.settings import Settings
from protege.student.manifest import FILE, Manifest


@dataclass(frozen=True)
class Version:
    name: str
    folder: Path
    manifest: Manifest

    def announcement(self, *, pin: bool) -> ModelAnnouncement:
        """An operator's announcement that this version serves (``pin``: and holds)."""
        m = self.manifest
        return ModelAnnouncement(
            tenant=m.tenant,
            task=m.task,
            version=self.name,
            path=str(self.folder.resolve()),
            labels=m.labels,
            metrics=m.metrics,
            trained_on=m.data.cases,
            source="operator",
            pin=pin,
            announced_at_ms=now_ms(),
        )


@dataclass(frozen=True)
class Registry:
    root: Path

    @classmethod
    def of(cls, settings: Settings) -> Registry:
        return cls(settings.home / "registry")

    def folder(self, tenant: str, task: str) -> Path:
        """Where a tenant's task keeps its versions."""
        return self.root / tenant / task

    def tasks(self) -> list[tuple[str, str]]:
        """Every (tenant, task) with a version in the registry."""
        if not self.root.is_dir():
            return []
        return sorted(
            (folder.parent.name, folder.name)
            for folder in self.root.glob("*/*")
            if folder.is_dir() and any((p / FILE).exists() for p in folder.glob("v*"))
        )

    def versions(self, tenant: str, task: str) -> list[Version]:
        return [
            Version(p.name, p, Manifest.load(p))
            for p in sorted(self.folder(tenant, task).glob("v*"))
            if (p / FILE).exists()
        ]

    def version(self, tenant: str, task: str, name: str) -> Version:
        """A version by its name or the name's number part (``v0003``)."""
        for v in self.versions(tenant, task):
            if v.name == name or v.name.startswith(name + "-"):
                return v
        raise ConfigError(f"no version {name!r} for {tenant}/{task} in {self.root}")

    def find(self, tenant: str, task: str, name: str) -> Version | None:
        try:
            return self.version(tenant, task, name)
        except ConfigError:
            return None
