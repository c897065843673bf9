"""What several end-to-end tests share."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from protege_services.teacher.journal import HANDLED, INVALID

from protege.events import HarvestCase, TeacherResult
from protege.settings import Settings
from protege.state import read_all
from protege.student.manifest import Calibration, Data, GateReport, Manifest, Ood, Target

REPO = Path(__file__).resolve().parents[1]


def pipeline_env(labels: Path, backbone: Path, **settings: str) -> dict[str, str]:
    """Environment for a LocalPipeline on a small machine: the repo's tasks, the stand-in teacher
    answering from ``labels``, the first student at 60 cases, one ONNX Runtime thread per service.
    ``settings`` (PROTEGE_* names) override."""
    return {
        "PROTEGE_TASKS_DIR": str(REPO / "tests" / "tasks"),
        "PROTEGE_STANDIN_LABELS": str(labels),
        "PROTEGE_MIN_CASES": "60",
        "PROTEGE_RETRAIN_EVERY": "1000",
        "PROTEGE_BACKBONE": str(backbone),
        "PROTEGE_THREADS": "1",
        "PROTEGE_TRAINER_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PROTEGE_LOG_FORMAT": "json",
        **settings,
    }


def uid(request_id: str) -> str:
    """The ``metadata.user_id`` the teacher sends for a request (tests/messages_api.py counts calls by it)."""
    return hashlib.sha256(request_id.encode()).hexdigest()[:32]


async def saved_answers(settings: Settings) -> set[str]:
    """Teacher answers the pipeline kept: in the journal (paid, answer not yet committed) or
    committed to teacher.results; by ``uid``. A call the API answered that is in neither
    when its caller is killed was cut off on its way back. (The journal also holds the
    loop's handled marks, keyed ``handled:``: not answers; and paid answers outside the label
    set, keyed ``invalid:``.)"""
    journal = await read_all(settings, settings.topics.teacher_journal)
    saved = set()
    for r in journal:
        key = (r.key or b"").decode()
        if not r.value or key.startswith(HANDLED):
            continue
        if key.startswith(INVALID):  # paid for, outside the label set: its key names the request
            saved.add(uid(key.removeprefix(INVALID).split("/", 1)[1]))
        else:
            saved.add(uid(TeacherResult.model_validate_json(r.value).request_id))
    results = await read_all(settings, settings.topics.teacher_results)
    return saved | {uid(TeacherResult.model_validate_json(r.value).request_id) for r in results if r.value}


def harvest_case(
    request_id: str,
    label: str,
    source: str = "teacher",
    by: str | None = None,
    *,
    reason: str = "review",
    tenant: str = "acme",
    task: str = "ticket-triage",
) -> HarvestCase:
    """A harvest case as the trainer receives it: by default one half of a golden row (the
    teacher's answer; ``source="feedback"`` with ``by``: a person's review label)."""
    return HarvestCase(
        request_id=request_id,
        tenant=tenant,
        task=task,
        text=f"text {request_id}",
        label=label,
        label_source=source,  # type: ignore[arg-type]
        reason=reason,  # type: ignore[arg-type]
        labelled_by=by,
        harvested_at_ms=1,
    )


def manifest_only(folder: Path, **fields: Any) -> Path:
    """A registry folder with only a manifest (no model): what the trainer, the model commands and
    the report read of a version. ``fields`` override the defaults: no rule (it certifies nothing
    for a margin of 1 point), its gates passed."""
    folder.mkdir(parents=True, exist_ok=True)
    values: dict[str, Any] = {
        "version": folder.name,
        "tenant": "acme",
        "task": "ticket-triage",
        "labels": ["billing", "refund"],
        "max_length": 128,
        "precision": "fp32",
        "recipe": {"kind": "fast"},
        "calibration": Calibration(temperature=1.0),
        "ood": Ood(k=10, bank=100),
        "acceptance": None,
        "acceptance_target": Target(target_margin=0.01, confidence_level=0.95),
        "metrics": {},
        "golden": {},
        "gates": GateReport(config={}, failed=[], passed=True),
        "data": Data(cases=100, request_ids_sha256="x", split={"fit": 1}, label_counts={"billing": 1}),
        "created_at": "2026-12-01T00:00:00Z",
        "files": {},
    }
    Manifest(**(values | fields)).save(folder)
    return folder
