"""Running students with ONNX Runtime and the fast ``tokenizers`` library (no torch).

``Encoder`` turns texts into normalised embeddings (the backbone alone, used by the
trainer); ``Student`` is a registered version: backbone + classification head in one
ONNX graph, plus its calibration, its kNN bank for the OOD score and its acceptance rule,
and answers with signals.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import structlog
from tokenizers import Tokenizer

from protege.errors import StudentError
from protege.events import StudentOutput
from protege.student.manifest import KNN_LABELS, Manifest, Vote
from protege.task import OOS

log = structlog.get_logger()


def providers_for(choice: str) -> list[str]:
    if choice in ("cuda", "auto"):
        preload_cuda()
    available = ort.get_available_providers()
    if choice == "cpu":
        return ["CPUExecutionProvider"]
    if choice == "cuda":
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]


def preload_cuda() -> None:
    """Load the CUDA and cuDNN libraries that ``onnxruntime-gpu[cuda,cudnn]`` brings as NVIDIA's
    wheels (a slim image has none of its own); harmless where there are none."""
    if "CUDAExecutionProvider" in ort.get_available_providers() and hasattr(ort, "preload_dlls"):
        try:
            ort.preload_dlls()
        except Exception as e:  # the provider then fails to load and says why below
            log.warning("cuda_preload_failed", error=str(e))


def require_gpu() -> None:
    """A deployment that asks for CUDA (``PROTEGE_PROVIDERS=cuda``) refuses to start without
    it, rather than serve from the CPU at a fraction of the speed it was sized for."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        raise StudentError(
            f"PROTEGE_PROVIDERS=cuda, but this ONNX Runtime ({ort.__version__}) has no CUDA provider "
            f"(available: {', '.join(ort.get_available_providers())}): install onnxruntime-gpu[cuda,cudnn] "
            "(the serve-gpu image does), or set PROTEGE_PROVIDERS=auto to allow the CPU"
        )


def by_length(
    run: Callable[[list[str]], dict[str, np.ndarray]], texts: Sequence[str], size: int
) -> dict[str, np.ndarray]:
    """``run`` over length-sorted chunks of ``size`` texts, outputs put back in input order:
    similar lengths in a chunk keep padding, and wasted work, small."""
    order = np.argsort([len(t) for t in texts], kind="stable")
    out: dict[str, np.ndarray] = {}
    for i in range(0, len(texts), size):
        idx = order[i : i + size]
        for name, value in run([texts[j] for j in idx]).items():
            if name not in out:
                out[name] = np.zeros((len(texts), *value.shape[1:]), dtype=value.dtype)
            out[name][idx] = value
    return out


def cpu_budget() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup v2 CPU quota (a
    container's CPU limit) — ONNX Runtime's own default counts the machine's cores instead."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def limit_blas(threads: int) -> dict[str, int]:
    """Cap the threads of numpy's BLAS in this process (OpenBLAS in numpy's wheels), for good:
    ``threads`` (0: leave the library's own choice). The scorer's BLAS work is one micro-batch's
    embeddings against the kNN bank — small products a thread pool cannot share well — and an
    OpenBLAS pool busy-waits after each call: capped, the int8 student scored 41% more
    sequences/s in-process on fewer cores (1.3 against 1.8) and the scorer spent 30% less CPU
    per answer at 271 req/s (``loadtests/stream_rates.py --blas-threads '0|1'``, stop 35).
    Returns each BLAS library's threads after the cap, to log."""
    from threadpoolctl import threadpool_info, threadpool_limits

    if threads > 0:
        threadpool_limits(limits=threads, user_api="blas")
    return {f"{i['internal_api']}_threads": int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"}


def session_options(threads: int, spinning: bool) -> ort.SessionOptions:
    """ONNX Runtime's CPU session fitted to the process: ``threads`` intra-op threads (0: every
    core it may use, ``cpu_budget()``), one inter-op thread and sequential execution (one
    small graph, one batch at a time), and no spinning unless asked: a spinning pool keeps
    each thread busy-waiting after every batch, which on cores shared with the broker and
    the other services is CPU taken from them."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or cpu_budget()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return opts


def sub_batch_for(precision: str, sub_batch: int) -> int:
    """The sub-batch a graph of this precision runs with. A dynamic int8 graph quantises its
    activations with one scale per run, taken over every text in it: a text's answer would
    depend on its batch-mates (0.9995 alone, 0.9991 in a batch, seen), and replay could not
    reproduce what was served. One text per run keeps each answer its own; on 2 cores it
    still scores ~1.2x the fp32 graph's sub-batches of 8 (benchmarks/scorer.py)."""
    return 1 if precision == "int8" else sub_batch


def threads_for(precision: str, threads: int) -> int:
    """The ONNX Runtime intra-op threads a graph of this precision runs with (``threads``; 0:
    chosen here). An int8 graph runs one text per run (``sub_batch_for``): the ops of one short
    text are too small to split, and a second thread mostly sleeps and wakes — one thread scored
    more sequences/s than two in-process in 12 of 12 rounds (median 1.11x), and the scorer spent
    16-25% less CPU per answer at 250 req/s, 35-56% as fast as possible (``loadtests/inprocess_spread.py
    --threads 2,1``, ``loadtests/stream_rates.py --scorer-threads '2|1'``, stop 36). An fp32
    graph runs sub-batches of several texts: the cores the process may use (``cpu_budget``)."""
    if threads > 0:
        return threads
    return 1 if precision == "int8" else cpu_budget()


def load_tokenizer(path: Path, max_length: int) -> Tokenizer:
    tok = Tokenizer.from_file(str(path))
    tok.enable_truncation(max_length=max_length)
    pad_id = tok.token_to_id("[PAD]") or 0
    tok.enable_padding(pad_id=pad_id, pad_token="[PAD]")  # pads to the longest in each batch
    return tok


class Encoder:
    """An ONNX graph fed with tokenised text, one session, batched."""

    def __init__(
        self,
        model: Path,
        tokenizer: Path,
        *,
        max_length: int = 128,
        providers: str = "auto",
        threads: int = 0,
        sub_batch: int = 0,
        spinning: bool = False,
    ) -> None:
        if not model.exists():
            raise StudentError(f"no ONNX model at {model}")
        self.tokenizer = load_tokenizer(tokenizer, max_length)
        self.sub_batch = sub_batch
        opts = session_options(threads, spinning)
        if providers == "cuda":
            require_gpu()  # asked for, not merely preferred: no silent CPU
        wanted = providers_for(providers)
        self.session = ort.InferenceSession(str(model), opts, providers=wanted)
        # The GPU wheel falls back to CPU silently: what counts is what the session got.
        self.providers = self.session.get_providers()
        if wanted[0] not in self.providers:
            if providers == "cuda":  # the provider is there but could not load (libraries, no device)
                raise StudentError(
                    f"PROTEGE_PROVIDERS=cuda, but the session could not load CUDA (got {self.providers}); "
                    "the CUDA/cuDNN libraries or the GPU are missing (the log line before says which)"
                )
            log.warning("provider_fallback", wanted=wanted, got=self.providers)
        self.outputs = [o.name for o in self.session.get_outputs()]
        self.wants_types = any(i.name == "token_type_ids" for i in self.session.get_inputs())
        # What it chose, for the service to log when it starts serving a version.
        self.session_info: dict[str, int | bool] = {
            "intra_op_threads": opts.intra_op_num_threads,
            "cpu_budget": cpu_budget(),
            "spinning": spinning,
        }

    def feed(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Tokenised, padded to the longest text in the batch (dynamic padding)."""
        enc = self.tokenizer.encode_batch(texts)
        ids = np.asarray([e.ids for e in enc], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.asarray([e.attention_mask for e in enc], dtype=np.int64)}
        if self.wants_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        return feed

    def run_once(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Every output for one batch, padded to its longest text."""
        return dict(zip(self.outputs, self.session.run(self.outputs, self.feed(texts)), strict=True))

    def run(self, texts: list[str]) -> dict[str, np.ndarray]:
        """Every output for one batch; with ``sub_batch``, as length-sorted sub-batches of
        that size, each padded only to its own longest text (on BANKING77, int8, 2 cores:
        1.65x the throughput of one padded batch of 32)."""
        return by_length(self.run_once, texts, self.sub_batch) if self.sub_batch else self.run_once(texts)

    def run_all(self, texts: list[str], batch: int = 64) -> dict[str, np.ndarray]:
        """Every output for many texts, in input order, in length-sorted batches."""
        return by_length(self.run, texts, batch)

    def embed(self, texts: list[str], batch: int = 64) -> np.ndarray:
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        return self.run_all(texts, batch)["embedding"]


def knn_ood(emb: np.ndarray, bank: np.ndarray, k: int) -> np.ndarray:
    """1 - mean cosine similarity to the k nearest training embeddings (rows are unit vectors).

    Chosen by measurement (benchmarks/ood.py, BANKING77 with held-out intents): AUROC 0.896
    against 0.879 for 1 - max softmax, 0.858 energy, 0.844 nearest centroid, 0.821 Mahalanobis.
    """
    return knn_ood_of(emb @ bank.T, k)


def knn_ood_of(sims: np.ndarray, k: int) -> np.ndarray:
    """``knn_ood`` from the cosine similarities to the bank (one row per text)."""
    k = min(k, sims.shape[1])
    top = np.partition(sims, sims.shape[1] - k, axis=1)[:, -k:]
    return 1.0 - top.mean(axis=1)


def knn_vote(sims: np.ndarray, bank_labels: np.ndarray, n_labels: int, k: int) -> np.ndarray:
    """Each label's share of the ``k`` nearest bank cases (by cosine similarity ``sims``, one row
    per text; ``bank_labels``: the bank cases' label indices): a second classifier beside the
    head, from the embeddings the OOD score already compares (``blend``)."""
    votes = np.zeros((sims.shape[0], n_labels), np.float64)
    if sims.shape[0] == 0 or sims.shape[1] == 0:
        return votes
    k = min(k, sims.shape[1])
    nearest = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    rows = np.repeat(np.arange(sims.shape[0]), k)
    np.add.at(votes, (rows, bank_labels[nearest].ravel()), 1.0 / k)
    return votes


def blend(probs: np.ndarray, votes: np.ndarray, weight: float) -> np.ndarray:
    """The student's probabilities: the calibrated head's, mixed with its nearest neighbours'
    vote (``weight`` of it). Two classifiers that err apart: where they agree the answer is
    surer, where they part it is not, and the acceptance rule ranks the traffic better.
    Measured in benchmarks/coverage_levers.py (the ``knn vote`` lever)."""
    if weight <= 0:
        return probs
    return (1.0 - weight) * probs + weight * votes


@dataclass(frozen=True)
class Bank:
    """A version's fit-split cases as embeddings (``knn.npy``; their labels in ``knn_labels.npy``
    when it votes): what its probabilities and OOD score are made of besides the head."""

    emb: np.ndarray  # [n, dim] float32, unit rows
    labels: np.ndarray  # [n] label indices (empty when the version does not vote)
    n_labels: int
    ood_k: int
    vote: Vote | None = None

    def view(self, emb: np.ndarray, logits: np.ndarray, temperature: float) -> tuple[np.ndarray, np.ndarray]:
        """(probabilities, OOD scores) of texts given their embeddings and raw logits."""
        sims = emb @ self.emb.T
        probs = softmax(logits / temperature)
        if self.vote is not None:
            probs = blend(probs, knn_vote(sims, self.labels, self.n_labels, self.vote.k), self.vote.weight)
        return probs, knn_ood_of(sims, self.ood_k)


def softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


class Student:
    """One registered student version, loaded from its registry folder."""

    def __init__(
        self, folder: Path, *, providers: str = "auto", threads: int = 0, sub_batch: int = 0, spinning: bool = False
    ) -> None:
        self.folder = folder
        try:
            self.manifest = Manifest.load(folder)
            emb = np.load(folder / "knn.npy").astype(np.float32)
            vote = self.manifest.vote
            labels = np.load(folder / KNN_LABELS) if vote is not None else np.zeros(0, np.int64)
            if vote is not None and (
                labels.shape != (len(emb),) or not np.isin(labels, np.arange(len(self.manifest.labels))).all()
            ):
                raise ValueError(
                    f"{KNN_LABELS} does not label the {len(emb)} rows of knn.npy with the version's labels"
                )
        except (OSError, ValueError) as e:  # pydantic's ValidationError is a ValueError
            raise StudentError(f"cannot load student at {folder}: {e}") from e
        self.bank = Bank(emb, labels, len(self.manifest.labels), self.manifest.ood.k, vote)
        self.version = self.manifest.version
        self.labels = self.manifest.labels
        self.oos = self.labels.index(OOS) if OOS in self.labels else -1
        self.temperature = self.manifest.calibration.temperature
        self.rule = self.manifest.acceptance
        self.encoder = Encoder(
            folder / "model.onnx",
            folder / "tokenizer.json",
            max_length=self.manifest.max_length,
            providers=providers,
            threads=threads_for(self.manifest.precision, threads),
            sub_batch=sub_batch_for(self.manifest.precision, sub_batch),
            spinning=spinning,
        )

    @property
    def providers(self) -> list[str]:
        return self.encoder.providers

    def predict(self, texts: list[str]) -> list[StudentOutput]:
        out = self.encoder.run(texts)
        probs, ood = self.bank.view(out["embedding"], out["logits"], self.temperature)
        order = np.argsort(-probs, axis=1)[:, :3]
        results = []
        for i in range(len(texts)):
            top = [(self.labels[j], round(float(probs[i, j]), 6)) for j in order[i]]
            # From the unrounded probabilities: rounded once, like the others, so the same text
            # scored in a batch of another shape (float32 differences ~3e-7) stays within 1e-6.
            second = float(probs[i, order[i][1]]) if len(order[i]) > 1 else 0.0
            results.append(
                StudentOutput(
                    model_version=self.version,
                    label=top[0][0],
                    confidence=top[0][1],
                    margin=round(max(0.0, float(probs[i, order[i][0]]) - second), 6),
                    ood=round(float(ood[i]), 6),
                    top=top,
                    oos_probability=None if self.oos < 0 else round(float(probs[i, self.oos]), 6),
                    rule=self.rule,
                )
            )
        return results
