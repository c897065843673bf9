"""From a Hugging Face encoder folder to the serving graph, with Hugging Face Optimum.

1. ``optimum.exporters.onnx.main_export`` (feature-extraction: ``last_hidden_state``),
2. ONNX Runtime's transformer optimiser (attention, layer-norm, GELU fusions),
3. masked mean pooling and L2 normalisation appended in ONNX: output ``embedding``,
4. per version: the linear head appended (output ``logits``), and optionally dynamic int8
   quantisation of the weights (``onnxruntime.quantization.quantize_dynamic``).

Needs the ``train`` extra (optimum-onnx, torch) for step 1; steps 2-4 need onnx and
onnxruntime only.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18  # Optimum's recommended minimum for BERT-family exports


def optimum_export(hf_dir: Path, dest: Path) -> Path:
    """Step 1: ``dest/model.onnx`` with inputs input_ids, attention_mask, token_type_ids."""
    from optimum.exporters.onnx import main_export

    # Optimum and transformers warn about deprecated arguments and traced control flow;
    # the export is validated against PyTorch by Optimum itself (atol 1e-4).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("optimum").setLevel(logging.ERROR)
        main_export(
            str(hf_dir),
            output=str(dest),
            task="feature-extraction",
            opset=OPSET,
            device="cpu",
            library_name="transformers",
        )
    return dest / "model.onnx"


def fuse(model: Path, dest: Path, *, num_heads: int, hidden_size: int) -> None:
    """Step 2: ONNX Runtime's BERT graph fusions."""
    from onnxruntime.transformers.optimizer import optimize_model

    opt = optimize_model(str(model), model_type="bert", num_heads=num_heads, hidden_size=hidden_size)
    opt.save_model_to_file(str(dest))


def append_pooling(model_path: Path, dest: Path) -> None:
    """Step 3: replace ``last_hidden_state`` by ``embedding`` = normalize(masked mean)."""
    model = onnx.load(str(model_path))
    g = model.graph
    g.initializer.extend(
        [
            numpy_helper.from_array(np.asarray([-1], np.int64), "pool_axis_last"),
            numpy_helper.from_array(np.asarray([1], np.int64), "pool_axis_seq"),
            numpy_helper.from_array(np.asarray(1e-9, np.float32), "pool_eps"),
            numpy_helper.from_array(np.asarray(1e-12, np.float32), "norm_eps"),
        ]
    )
    n = helper.make_node
    g.node.extend(
        [
            n("Cast", ["attention_mask"], ["pool_mask_f"], to=TensorProto.FLOAT, name="pool_cast"),
            n("Unsqueeze", ["pool_mask_f", "pool_axis_last"], ["pool_mask"], name="pool_unsqueeze"),
            n("Mul", ["last_hidden_state", "pool_mask"], ["pool_masked"], name="pool_mul"),
            n("ReduceSum", ["pool_masked", "pool_axis_seq"], ["pool_sum"], keepdims=0, name="pool_sum"),
            n("ReduceSum", ["pool_mask", "pool_axis_seq"], ["pool_count"], keepdims=0, name="pool_count"),
            n("Max", ["pool_count", "pool_eps"], ["pool_count_safe"], name="pool_clamp"),
            n("Div", ["pool_sum", "pool_count_safe"], ["pooled"], name="pool_mean"),
            n("Mul", ["pooled", "pooled"], ["norm_sq"], name="norm_sq"),
            n("ReduceSum", ["norm_sq", "pool_axis_seq"], ["norm_ss"], keepdims=1, name="norm_sum"),
            n("Sqrt", ["norm_ss"], ["norm_l2"], name="norm_sqrt"),
            n("Max", ["norm_l2", "norm_eps"], ["norm_safe"], name="norm_clamp"),
            n("Div", ["pooled", "norm_safe"], ["embedding"], name="norm_div"),
        ]
    )
    dim = _hidden_dim(g)
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", dim]))
    onnx.save(model, str(dest))


def _hidden_dim(g: onnx.GraphProto) -> int | str:
    for o in g.output:
        if o.name == "last_hidden_state":
            dims = o.type.tensor_type.shape.dim
            return dims[2].dim_value if dims[2].HasField("dim_value") else "hidden"
    raise ValueError("graph has no last_hidden_state output")


def export_encoder(hf_dir: Path, dest: Path, *, optimize: bool = True) -> Path:
    """Steps 1-3: ``dest/model.onnx`` (output ``embedding``) and ``dest/tokenizer.json``."""
    import json

    cfg = json.loads((hf_dir / "config.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="protege-export-") as tmp:
        raw = optimum_export(hf_dir, Path(tmp) / "optimum")
        if optimize:
            fused = Path(tmp) / "fused.onnx"
            fuse(raw, fused, num_heads=cfg["num_attention_heads"], hidden_size=cfg["hidden_size"])
            raw = fused
        append_pooling(raw, dest / "model.onnx")
    shutil.copy(hf_dir / "tokenizer.json", dest / "tokenizer.json")
    return dest


def append_head(encoder: Path, w: np.ndarray, b: np.ndarray, dest: Path) -> None:
    """Step 4: the head (MatMul + Add) after ``embedding``: outputs logits and embedding."""
    model = onnx.load(str(encoder))
    graph = model.graph
    graph.initializer.extend(
        [
            numpy_helper.from_array(w.astype(np.float32), "head_W"),
            numpy_helper.from_array(b.astype(np.float32), "head_b"),
        ]
    )
    graph.node.extend(
        [
            helper.make_node("MatMul", ["embedding", "head_W"], ["head_raw"], name="head_matmul"),
            helper.make_node("Add", ["head_raw", "head_b"], ["logits"], name="head_add"),
        ]
    )
    graph.output.insert(0, helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", w.shape[1]]))
    onnx.save(model, str(dest))


def quantize_int8(model: Path, dest: Path) -> None:
    """Dynamic int8 quantisation: int8 weights, activations quantised per batch at run time."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Shape inference cannot type the outputs of ORT's fused contrib ops (Attention,
    # SkipLayerNormalization); they are float, said here. The quantiser's advice to run
    # its pre-processing first is logged on the root logger: not for a fused graph.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        quantize_dynamic(
            str(model),
            str(dest),
            weight_type=QuantType.QInt8,
            per_channel=True,
            extra_options={"DefaultTensorType": TensorProto.FLOAT},
        )
    finally:
        root.setLevel(level)


def quantized(encoder: Path) -> Path:
    """``encoder/model.int8.onnx``, the encoder's int8 graph, written once beside it: the
    shared backbone of the fast recipe is quantised once per machine, not once per version."""
    dest = encoder / "model.int8.onnx"
    if not dest.exists():
        tmp = encoder / f".model.int8.{os.getpid()}.onnx"  # another trainer may be writing one too
        quantize_int8(encoder / "model.onnx", tmp)
        tmp.replace(dest)
    return dest
