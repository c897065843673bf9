"""Tasks: one YAML file each, holding everything that defines one workflow.

    name: ticket-triage
    labels: {billing: "charges, refunds, invoices", ...}   # the teacher may also answer `oos`
    instructions: "You triage customer support tickets ..."
    policy: {name: cascade, thresholds: {...}, always_escalate_labels: [...], ...}
    teacher: {model: claude-sonnet-4-6, max_tokens: 256}
    student: {max_length: 128}
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from protege.errors import ConfigError

OOS = "oos"


class Thresholds(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    min_confidence: float = Field(0.8, ge=0, le=1)
    min_margin: float = Field(0.2, ge=0, le=1)
    max_ood: float = Field(0.6, description="Largest OOD score still accepted.")


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["cascade"] = "cascade"
    thresholds: Thresholds = Thresholds()
    always_escalate_labels: list[str] = Field(default_factory=list, description="Policy-sensitive labels.")
    escalate_patterns: list[str] = Field(default_factory=list, description="Regexes that always escalate.")
    vip_tenants: list[str] = Field(default_factory=list, description="Tenants that always get the teacher.")

    @field_validator("escalate_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        for p in patterns:
            try:
                re.compile(p)
            except re.error as e:
                raise ValueError(f"escalate pattern {p!r} does not compile: {e}") from e
        return patterns

    @property
    def version(self) -> str:
        """Content hash: any change to the policy section is a new policy version."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


class TeacherConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "claude-sonnet-4-6"
    max_tokens: int = Field(256, ge=16)


class StudentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_length: int = Field(128, ge=8, le=512)


class Task(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    labels: dict[str, str] = Field(min_length=2, description="Label -> what it covers.")
    instructions: str = Field(min_length=1)
    policy: Policy = Policy()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()

    @property
    def answers(self) -> list[str]:
        """Every valid teacher answer: the labels plus ``oos`` (out of scope)."""
        return [*self.labels, OOS] if OOS not in self.labels else list(self.labels)


def load_task(path: Path) -> Task:
    try:
        data: Any = yaml.safe_load(path.read_text())
        return Task.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as e:
        raise ConfigError(f"task file {path}: {e}") from e


def load_tasks(folder: Path) -> dict[str, Task]:
    tasks = {}
    for path in sorted(folder.glob("*.yaml")):
        task = load_task(path)
        if task.name in tasks:
            raise ConfigError(f"task {task.name!r} is defined twice (in {path})")
        tasks[task.name] = task
    if not tasks:
        raise ConfigError(f"no task files (*.yaml) in {folder}")
    return tasks


def write_task(task: Task, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(task.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
