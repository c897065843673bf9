"""What several end-to-end tests share."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def pipeline_env(labels: Path, backbone: Path, **settings: str) -> dict[str, str]:
    """Environment for a LocalPipeline on a small machine: the repo's tasks, the stand-in teacher
    answering from ``labels``, the first student at 60 cases, one ONNX Runtime thread per service.
    ``settings`` (PROTEGE_* names) override."""
    return {
        "PROTEGE_TASKS_DIR": str(REPO / "tasks"),
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
