"""The scorer's model, three ways on the same inputs in one run: PyTorch eager, ONNX
Runtime fp32 (Optimum export + transformer fusions) and ONNX Runtime int8 (dynamic
quantisation of the same encoder, the head in fp32: as the trainer builds a version).

    python benchmarks/scorer.py --json reports/benchmark-scorer.json
    python benchmarks/scorer.py --backends pytorch-eager,ort-int8,ort-int8-static --sub-batches 1,8
    python benchmarks/scorer.py --provider cuda --seq-len 64 --batches 1,8,32,64,256   # on a GPU machine

The student is the fast recipe trained on BANKING77's train split (frozen
all-MiniLM-L6-v2 + logistic regression, one graph); PyTorch eager runs the same weights
(transformers ``AutoModel`` + mean pooling + the same head). Each backend runs in its own
process, so its peak resident memory is its own; all use the same thread count. For each
batch size: sequences per second and p50/p99 batch latency over the test texts (dynamic
padding to the longest in the batch; ``--seq-len N`` pads every input to N tokens
instead), and accuracy on all of BANKING77's test set. Every backend runs in each mode:
each call as one batch padded to its longest text (0), as length-sorted sub-batches of 8
(what the scorer does with an fp32 graph, ``PROTEGE_SUB_BATCH``) and one text per run (1:
what it does with an int8 graph); speed-ups compare backends in the same mode. With ``--provider cuda`` the ONNX
Runtime backends bind inputs and outputs with I/O binding. Needs the ``train`` extra and
../shared/data/banking77.

``ort-int8-static`` (opt-in, ``--backends``) is the lever dynamic quantisation leaves out:
static int8 (``quantize_static``, QOperator format, MinMax calibration on 256 train texts,
per-channel weights). Its activation scales are fixed at calibration, so a text's answer does
not depend on its batch-mates and the scorer could batch an int8 graph as it batches fp32.
It is built from the unfused export (ONNX Runtime's static quantiser has no fused Attention).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from intents import DATA, load

BACKENDS = ("pytorch-eager", "ort-fp32", "ort-int8", "ort-int8-static")
CALIBRATION_TEXTS = 256


class OrtRunner:
    def __init__(self, model: Path, tokenizer: Path, provider: str, threads: int, seq_len: int) -> None:
        from protege.student.runtime import Encoder

        self.encoder = Encoder(model, tokenizer, max_length=64, providers=provider, threads=threads)
        if seq_len:
            self.encoder.tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=seq_len)
            self.encoder.tokenizer.enable_truncation(max_length=seq_len)
        self.cuda = self.encoder.providers[0] == "CUDAExecutionProvider"

    def __call__(self, texts: list[str]) -> np.ndarray:
        if not self.cuda:
            return self.encoder.run_once(texts)["logits"]
        session = self.encoder.session
        io = session.io_binding()
        for name, value in self.encoder.feed(texts).items():
            io.bind_cpu_input(name, value)
        io.bind_output("logits", "cuda")
        session.run_with_iobinding(io)
        return io.copy_outputs_to_cpu()[0]


class TorchRunner:
    def __init__(self, w: np.ndarray, b: np.ndarray, threads: int, seq_len: int, device: str) -> None:
        import torch

        from protege.student.backbone import source_dir
        from protege.student.finetune import Classifier

        torch.set_num_threads(threads)
        self.torch = torch
        self.model = Classifier(source_dir(), w, b, max_length=seq_len or 64)
        self.model.train(False)
        self.device = device
        self.model.encoder.to(device)
        self.model.head.to(device)
        self.seq_len = seq_len

    def __call__(self, texts: list[str]) -> np.ndarray:
        enc = self.model.tokenizer(
            texts,
            padding="max_length" if self.seq_len else True,
            truncation=True,
            max_length=self.seq_len or 64,
            return_tensors="pt",
        ).to(self.device)
        with self.torch.inference_mode():
            logits, _ = self.model.forward(enc)
        return logits.cpu().numpy()


def static_int8(tmp: Path, calibration: list[str], w: np.ndarray, b: np.ndarray, dest: Path) -> None:
    """The static int8 graph: the backbone exported without fusions, quantised with activation
    scales calibrated on ``calibration`` (8 texts a run), then the fp32 head appended."""
    import logging

    from onnx import TensorProto
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    from protege.student.backbone import source_dir
    from protege.student.export import append_head, export_encoder
    from protege.student.runtime import Encoder

    unfused = export_encoder(source_dir(), tmp / "unfused", optimize=False)
    encoder = Encoder(unfused / "model.onnx", unfused / "tokenizer.json", max_length=64)

    class Texts(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([encoder.feed(calibration[i : i + 8]) for i in range(0, len(calibration), 8)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    logging.getLogger().setLevel(logging.ERROR)  # the quantiser's pre-processing advice
    quantize_static(
        str(unfused / "model.onnx"),
        str(tmp / "encoder-static.onnx"),
        Texts(),
        quant_format=QuantFormat.QOperator,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        op_types_to_quantize=["MatMul"],
        calibrate_method=CalibrationMethod.MinMax,
        extra_options={"DefaultTensorType": TensorProto.FLOAT},
    )
    append_head(tmp / "encoder-static.onnx", w, b, dest)


def peak_rss_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss
    across fork and exec, so a spawned child would report its parent's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # not Linux


def worker(
    backend: str, sub: int, paths: dict[str, str], texts: list[str], y: list[int], args: dict[str, Any], out: Any
) -> None:
    """One backend in its own process; ``sub``: length-sorted sub-batches (the scorer's
    ``by_length``), applied the same way to every backend."""
    from protege.student.runtime import by_length

    try:
        if backend == "pytorch-eager":
            head = np.load(paths["head"])
            model: Any = TorchRunner(
                head["w"], head["b"], args["threads"], args["seq_len"], "cuda" if args["provider"] == "cuda" else "cpu"
            )
        else:
            model = OrtRunner(
                Path(paths[backend.removeprefix("ort-")]),
                Path(paths["tokenizer"]),
                args["provider"],
                args["threads"],
                args["seq_len"],
            )

        def run(batch: list[str]) -> np.ndarray:
            if not sub:
                return model(batch)
            return by_length(lambda b: {"logits": model(b)}, batch, sub)["logits"]

        preds = []
        for i in range(0, len(texts), 64):
            preds.append(run(texts[i : i + 64]).argmax(1))
        accuracy = float(np.mean(np.concatenate(preds) == np.asarray(y)))
        rows = {}
        for bs in args["batches"]:
            n = max(args["min_sequences"], bs * args["min_batches"])
            pool = (texts * (1 + n // len(texts)))[:n]
            run(pool[:bs])  # warm-up
            took = []
            started = time.perf_counter()
            for i in range(0, n, bs):
                t0 = time.perf_counter()
                run(pool[i : i + bs])
                took.append((time.perf_counter() - t0) * 1000)
            wall = time.perf_counter() - started
            rows[str(bs)] = {
                "sequences_per_s": n / wall,
                "p50_ms": float(np.percentile(took, 50)),
                "p99_ms": float(np.percentile(took, 99)),
                "sequences": n,
            }
        out.put(
            {
                "backend": backend,
                "sub_batch": sub,
                "accuracy": accuracy,
                "batches": rows,
                "peak_rss_mb": peak_rss_mb(),
                "providers": getattr(getattr(model, "encoder", None), "providers", ["torch"]),
            }
        )
    except Exception as e:  # reported, not swallowed: the parent prints it
        out.put({"backend": backend, "error": f"{type(e).__name__}: {e}"})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--backends", default=",".join(BACKENDS[:3]), help=f"Comma-separated, of {', '.join(BACKENDS)}.")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--provider", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--seq-len", type=int, default=0, help="Pad every input to this many tokens (0: dynamic).")
    ap.add_argument(
        "--sub-batches",
        default="0,1,8",
        help="Modes: 0 = one batch padded to its longest text; N = "
        "length-sorted sub-batches of N (8: what the scorer does with fp32; 1: what it does with int8, "
        "whose dynamic quantisation would make a text's answer depend on its batch-mates).",
    )
    ap.add_argument("--min-sequences", type=int, default=384, help="Sequences timed per batch size at least.")
    ap.add_argument("--min-batches", type=int, default=20, help="Batches timed per batch size at least.")
    ap.add_argument("--json", type=Path, default=Path("reports/benchmark-scorer.json"))
    args = ap.parse_args()
    loaded = load(args.data)
    if loaded is None:
        return
    from protege.harness import machine
    from protege.student.backbone import cached_backbone
    from protege.student.export import append_head, quantized
    from protege.student.runtime import Encoder
    from protege.student.train import fit_head

    backends = args.backends.split(",")
    if unknown := set(backends) - set(BACKENDS):
        raise SystemExit(f"unknown backends: {', '.join(sorted(unknown))} (known: {', '.join(BACKENDS)})")
    m = machine()
    print(f"{m['cpu']}, {m['cores']} cores; {args.threads} threads per backend", flush=True)
    train, test = loaded
    backbone = cached_backbone()
    started = time.perf_counter()
    frozen = Encoder(backbone / "model.onnx", backbone / "tokenizer.json", max_length=64, threads=args.threads)
    w, b, labels = fit_head(frozen.embed([r["text"] for r in train]), np.asarray([r["label"] for r in train]))
    print(f"student trained in {time.perf_counter() - started:.0f}s (fast recipe, {len(train)} texts)", flush=True)
    texts = [r["text"] for r in test]
    y = [labels.index(r["label"]) for r in test]
    settings = {
        "batches": [int(v) for v in args.batches.split(",")],
        "threads": args.threads,
        "provider": args.provider,
        "seq_len": args.seq_len,
        "min_sequences": args.min_sequences,
        "min_batches": args.min_batches,
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        paths = {
            "fp32": f"{tmp}/fp32.onnx",
            "int8": f"{tmp}/int8.onnx",
            "head": f"{tmp}/head.npz",
            "tokenizer": str(backbone / "tokenizer.json"),
        }
        append_head(backbone / "model.onnx", w, b, Path(paths["fp32"]))
        append_head(quantized(backbone), w, b, Path(paths["int8"]))  # as a version is built: int8 encoder, fp32 head
        if "ort-int8-static" in backends:
            calibration = [r["text"] for r in train[:: max(1, len(train) // CALIBRATION_TEXTS)]][:CALIBRATION_TEXTS]
            paths["int8-static"] = f"{tmp}/int8-static.onnx"
            static_int8(Path(tmp), calibration, w, b, Path(paths["int8-static"]))
        np.savez(paths["head"], w=w, b=b)
        sizes = {k: Path(paths[k]).stat().st_size / 1e6 for k in ("fp32", "int8", "int8-static") if k in paths}
        ctx = mp.get_context("spawn")
        for sub in (int(v) for v in args.sub_batches.split(",")):
            for backend in backends:
                q = ctx.Queue()
                p = ctx.Process(target=worker, args=(backend, sub, paths, texts, y, settings, q))
                p.start()
                result = q.get()
                p.join()
                if "error" in result:
                    raise SystemExit(f"{backend} failed: {result['error']}")
                print(
                    f"{backend} (sub-batch {sub}): accuracy {result['accuracy']:.4f}, "
                    f"peak RSS {result['peak_rss_mb']:.0f} MB",
                    flush=True,
                )
                results.append(result)
    print(
        f"\n{'backend':14s} {'sub':>4s} {'batch':>5s} {'seq/s':>9s} {'x eager':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
        f"{'acc':>7s} {'peak RSS MB':>11s}"
    )
    for r in results:
        eager = next((e for e in results if e["backend"] == "pytorch-eager" and e["sub_batch"] == r["sub_batch"]), None)
        for bs, row in r["batches"].items():
            row["speedup_vs_eager"] = row["sequences_per_s"] / eager["batches"][bs]["sequences_per_s"] if eager else 0
            print(
                f"{r['backend']:14s} {r['sub_batch']:4d} {bs:>5s} {row['sequences_per_s']:9.1f} "
                f"{row['speedup_vs_eager']:8.2f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} {r['accuracy']:7.4f} "
                f"{r['peak_rss_mb']:11.0f}"
            )
    report = {
        "settings": settings,
        "model_mb": sizes,
        "test_texts": len(texts),
        "results": results,
        "machine": m | {"provider": args.provider},
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
