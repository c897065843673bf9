"""A deployment that asks for CUDA (PROTEGE_PROVIDERS=cuda, as k8s/scorer.yaml and compose do)
refuses to start without it, with the reason, instead of scoring on the CPU at a fraction of
the speed it was sized for. Run where ONNX Runtime has no CUDA provider (this CPU package)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

from protege.errors import StudentError
from protege.settings import Settings
from protege.student.runtime import Encoder, require_gpu

pytestmark = pytest.mark.skipif(
    "CUDAExecutionProvider" in ort.get_available_providers(), reason="this ONNX Runtime has CUDA: nothing to refuse"
)


def test_asking_for_cuda_without_it_is_an_error_not_a_fallback(backbone: Path) -> None:
    with pytest.raises(StudentError, match=r"PROTEGE_PROVIDERS=cuda.*onnxruntime-gpu\[cuda,cudnn\]"):
        require_gpu()
    with pytest.raises(StudentError, match="PROTEGE_PROVIDERS=cuda"):
        Encoder(backbone / "model.onnx", backbone / "tokenizer.json", providers="cuda")
    auto = Encoder(backbone / "model.onnx", backbone / "tokenizer.json", providers="auto")
    assert auto.providers == ["CPUExecutionProvider"]  # preferred, not required: the CPU serves


@pytest.mark.kafka
def test_the_scorer_refuses_to_start_without_the_gpu_it_asked_for(settings: Settings) -> None:
    env = {
        **os.environ,
        "PROTEGE_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
        "PROTEGE_TOPIC_PREFIX": settings.topic_prefix,
        "PROTEGE_HOME": str(settings.home),
        "PROTEGE_TASKS_DIR": str(settings.tasks_dir),
        "PROTEGE_PROVIDERS": "cuda",
        "PROTEGE_METRICS_PORT": "0",
    }
    done = subprocess.run(
        [sys.executable, "-m", "protege_services.scorer"], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 1
    assert (
        "PROTEGE_PROVIDERS=cuda" in done.stdout + done.stderr
        and "onnxruntime-gpu[cuda,cudnn]" in done.stdout + done.stderr
    )
