"""A version's manifest: what a registry folder holds and how it was made, as one frozen
model. Written once by ``protege.student.train`` (``manifest.json``), read by the scorer's
runtime, the registry, the CLI, and the trainer's gates; never edited after (a rule certified
again on later rows is a new version sharing the files, ``recertified_from``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from protege.events import AcceptRule

FILE = "manifest.json"
TRAINED_ON = "trained_on.txt"  # the request ids of its cases, one per line, sorted
HELD_OUT = "held_out.npz"  # the golden set as scored: confidence, ood, correct (one row per case)
KNN_LABELS = "knn_labels.npy"  # the label index of each row of knn.npy (the kNN vote's)


class Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Calibration(Part):
    method: Literal["temperature"] = "temperature"
    temperature: float = Field(gt=0)


class Ood(Part):
    method: Literal["knn"] = "knn"
    k: int = Field(ge=1, description="Neighbours averaged.")
    bank: int = Field(ge=1, description="Fit-split embeddings kept in knn.npy.")
    score: str = "1 - mean cosine similarity to the k nearest fit-split embeddings"


class Vote(Part):
    """The nearest neighbours' vote mixed into the head's probabilities
    (``protege.student.runtime.blend``)."""

    method: Literal["knn"] = "knn"
    k: int = Field(ge=1, description="Nearest fit-split cases (cosine) whose labels vote.")
    weight: float = Field(gt=0, le=1, description="The vote's share of the probabilities; the head has the rest.")


class Target(Part):
    target_accuracy: float | None = None
    target_margin: float | None = Field(None, description="Relative: at most this below the teacher's accuracy.")
    confidence_level: float
    max_false_accepts: float | None = Field(
        None, description="The policy's cap on out-of-scope requests accepted (a golden-set estimate)."
    )


class GateReport(Part):
    config: dict[str, Any] = Field(description="The task's student.gates when this version was judged.")
    failed: list[str] = Field(description="Every gate it failed, with the numbers; empty when it passed.")
    passed: bool
    serving: dict[str, Any] | None = Field(None, description="The serving version's golden metrics it was held to.")


class Data(Part):
    cases: int = Field(ge=1)
    request_ids_sha256: str
    split: dict[str, int] = Field(description="fit, calib and golden cases.")
    label_counts: dict[str, int]
    sources: dict[str, int] | None = Field(
        None, description="Cases by who labelled them: teacher, standin, feedback, student (its accepted answers)."
    )


class Manifest(Part):
    version: str
    tenant: str
    task: str
    labels: list[str]
    max_length: int = Field(ge=1)
    precision: Literal["fp32", "int8"]
    precision_choice: str | None = Field(None, description="Why this precision (int8: auto compares the two graphs).")
    recipe: dict[str, Any] = Field(description="kind (fast, finetune) and what the recipe recorded.")
    calibration: Calibration
    ood: Ood
    vote: Vote | None = Field(None, description="The kNN vote in the probabilities; None: the head's alone.")
    acceptance: AcceptRule | None = Field(description="The certified rule; None when calib could not certify one.")
    acceptance_target: Target
    metrics: dict[str, float]
    golden: dict[str, Any] = Field(description="Golden-set evaluation (accuracy, macro-F1, ECE, coverage, ...).")
    gates: GateReport
    data: Data
    created_at: str
    trigger: str | None = Field(None, description="Why it was trained: new cases, a drift alarm, a schedule, by hand.")
    recertified_from: str | None = Field(
        None,
        description="A re-certified version: the version whose files it shares, with the rule today's trusted rows "
        "certify (``protege.student.train.recertify_version``); None: trained.",
    )
    files: dict[str, str] = Field(description="sha256 of every other file in the folder.")

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        return cls.model_validate_json((folder / FILE).read_text())

    def save(self, folder: Path) -> None:
        (folder / FILE).write_text(json.dumps(self.model_dump(mode="json"), indent=2))
