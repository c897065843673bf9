"""The ``protege`` command line.

    protege demo                     # the whole pipeline on generated tickets, then a summary
    protege up                       # embedded broker + the six services, supervised
    protege run scorer               # one service (what docker-compose and k8s run)
    protege broker start|stop|status # the embedded Apache Kafka broker
    protege bench stream --train T.jsonl --test S.jsonl --report-json R.json
    protege trace REQUEST_ID         # one request's events across the services, in order
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import platform
import runpy
import shutil
import sys
import time
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from protege import signals
from protege.broker.embedded import KAFKA_VERSION, EmbeddedBroker
from protege.settings import REPO, Settings, apply_to_process
from protege.supervisor import SERVICES

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, help="protege: keep the teacher's quality, serve from the student.")
broker_app = typer.Typer(no_args_is_help=True, help="The embedded Apache Kafka broker (KRaft, one node).")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks.")
schemas_app = typer.Typer(no_args_is_help=True, help="The event schemas in schemas/.")
app.add_typer(broker_app, name="broker")
app.add_typer(bench_app, name="bench")
app.add_typer(schemas_app, name="schemas")
console = Console(stderr=True)

STANDIN_NOTE = "teacher: OFFLINE STAND-IN answering from labelled data (no ANTHROPIC_API_KEY); costs are estimates"


def _home() -> Path:
    return Settings().home


@app.callback()
def _process() -> None:
    """protege: keep the teacher's quality, serve from the student."""
    apply_to_process(Settings())


# -- broker -------------------------------------------------------------------------


@broker_app.command("start")
def broker_start(home: Annotated[Path, typer.Option(help="Broker state folder.")] = Path(".protege/broker"),
                 port: Annotated[int, typer.Option(help="Port (0: a free one).")] = 0) -> None:
    """Start the embedded broker in the background and print its bootstrap address."""
    b = EmbeddedBroker(home, port=port or None)
    typer.echo(b.start())


@broker_app.command("stop")
def broker_stop(home: Path = Path(".protege/broker")) -> None:
    EmbeddedBroker(home).stop()
    typer.echo("stopped")


@broker_app.command("status")
def broker_status(home: Path = Path(".protege/broker")) -> None:
    b = EmbeddedBroker(home)
    typer.echo(f"running at {b.bootstrap}" if b.running() else "not running")


# -- services -----------------------------------------------------------------------


@app.command("run")
def run(service: Annotated[str, typer.Argument(help=f"One of: {', '.join(SERVICES)}.")]) -> None:
    """Run one service in the foreground (settings from PROTEGE_* environment variables)."""
    if service not in SERVICES:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {SERVICES}")
    sys.argv = [f"services.{service}"]
    runpy.run_module(f"services.{service}", run_name="__main__")


@app.command("health")
def health(service: str, max_age: Annotated[float, typer.Option(help="Seconds since the last heartbeat.")] = 60.0) -> None:
    """Exit 0 if SERVICE's processing loop turned within MAX_AGE seconds (the liveness probe)."""
    beat = Settings().home / "health" / service
    try:
        age = time.time() - float(beat.read_text())
    except (OSError, ValueError):
        typer.echo(f"{service}: no heartbeat at {beat}")
        raise typer.Exit(1) from None
    typer.echo(f"{service}: last heartbeat {age:.1f}s ago")
    raise typer.Exit(0 if age <= max_age else 1)


@app.command("topics")
def topics() -> None:
    """Create every protege topic on PROTEGE_BOOTSTRAP_SERVERS (idempotent)."""
    from protege.kafka import ensure_topics

    settings = Settings()
    asyncio.run(ensure_topics(settings))
    typer.echo("\n".join(settings.topics.all()))


@app.command("trace")
def trace_request(
    request_id: Annotated[str, typer.Argument(help="The request's id.")],
    minutes: Annotated[float, typer.Option(help="How far back to look.")] = 60.0,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's events (ids may repeat across tenants).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the events as JSON Lines.")] = False,
) -> None:
    """Follow one request across the services: every event that carries its id, in order."""
    from protege.trace import trace

    settings = Settings()
    since = int((time.time() - minutes * 60) * 1000)
    steps = asyncio.run(trace(settings, request_id, since_ms=since, tenant=tenant))
    if not steps:
        console.print(f"no event carries {request_id!r} in the last {minutes:g} minutes")
        raise typer.Exit(1)
    if as_json:
        for step in steps:
            typer.echo(json.dumps({"at_ms": step.at_ms, "topic": step.topic, "writer": step.writer, "event": step.event}))
        return
    table = Table(title=f"request {request_id}")
    for col in ("time (UTC)", "+ms", "topic", "written by", "what"):
        table.add_column(col)
    first = steps[0].at_ms
    for step in steps:
        when = time.strftime("%H:%M:%S", time.gmtime(step.at_ms / 1000)) + f".{step.at_ms % 1000:03d}"
        table.add_row(when, str(step.at_ms - first), step.topic, step.writer, step.what)
    Console(width=160).print(table)


@app.command("up")
def up(standin_labels: Annotated[Path | None, typer.Option(help="Labelled JSON Lines for the offline teacher.")] = None,
       bootstrap: Annotated[str | None, typer.Option(help="Use this broker instead of the embedded one.")] = None) -> None:
    """Start the embedded broker and the six services; restart crashed ones; Ctrl-C stops all."""
    from protege.pipeline import LocalPipeline

    env = {"PROTEGE_STANDIN_LABELS": str(standin_labels.resolve())} if standin_labels else {}
    _library_logs_to(_home() / "logs")
    with _stops_on_signals("the services and the broker were stopped"), \
            LocalPipeline(_home(), env=env, bootstrap=bootstrap, broker_home=Path(".protege/broker")) as p:
        console.print(f"[bold]up[/]: broker {p.bootstrap}, services {', '.join(SERVICES)}; logs in {_home() / 'logs'}")
        while True:
            assert p.supervisor is not None
            for name in p.supervisor.poll():
                console.print(f"restarted {name}")
            time.sleep(0.5)


@contextlib.contextmanager
def _stops_on_signals(what: str) -> Iterator[None]:
    """Ctrl-C or SIGTERM, in any phase: unwind (stopping what was started), say so, exit 130."""
    try:
        with signals.interruptible():
            yield
    except KeyboardInterrupt:
        signals.forget_interrupt()
        console.print(f"[yellow]interrupted: {what}[/]")
        raise typer.Exit(signals.INTERRUPTED) from None


def _library_logs_to(folder: Path) -> None:
    """Libraries' log lines (aiokafka retrying while a new topic elects its leader, ...) go to
    ``folder/cli.log``, beside the services' logs, not to the user's terminal."""
    folder.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(folder / "cli.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


# -- demo ---------------------------------------------------------------------------


BAD_INPUTS = [
    b"this is not json",
    b'["a", "list"]',
    b'{"tenant": "acme", "task": "ticket-triage"}',
    b'{"tenant": "acme", "task": "no-such-task", "text": "hello"}',
    json.dumps({"tenant": "acme", "task": "ticket-triage", "text": "x" * 5000}).encode(),
    b'{"tenant": "acme", "task": "ticket-triage", "text": 42}',
    b'{"tenant": "acme", "task": "ticket-triage", "text": "hi", "metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]


@app.command("demo")
def demo(tickets: Annotated[int, typer.Option(help="Generated tickets to stream.")] = 1200,
         rate: Annotated[float, typer.Option(help="Requests per second.")] = 30.0,
         seed: int = 7,
         home: Annotated[Path, typer.Option(help="Run folder (wiped at start).")] = Path(".protege/demo"),
         report_json: Annotated[Path | None, typer.Option(help="Also write the summary as JSON.")] = None) -> None:
    """Stream generated support tickets through the whole pipeline and print a summary."""
    from protege.generator import generate, triage_task, write_jsonl
    from protege.task import write_task

    shutil.rmtree(home, ignore_errors=True)
    rows = generate(tickets, seed=seed)
    write_jsonl(rows, home / "tickets.jsonl")
    write_task(triage_task(), home / "tasks" / "ticket-triage.yaml")
    env = {
        "PROTEGE_TASKS_DIR": str((home / "tasks").resolve()),
        "PROTEGE_STANDIN_LABELS": str((home / "tickets.jsonl").resolve()),
        "PROTEGE_MIN_CASES": "60", "PROTEGE_RETRAIN_EVERY": "80",
        # Two cores: one ONNX Runtime thread each for the scorer and the trainer, so a
        # retrain does not starve the student path.
        "PROTEGE_THREADS": "1", "PROTEGE_TRAINER_THREADS": "1", "OMP_NUM_THREADS": "1",
    }
    summary = _stream_run(home, env, {"traffic": rows}, tenant="acme", task="ticket-triage", rate=rate,
                          extra=BAD_INPUTS)
    _print_summary(summary, ["traffic", "traffic, last 25%"])
    if report_json:
        report_json.write_text(json.dumps(summary, indent=2))


def _stream_run(home: Path, env: dict[str, str], phases: dict[str, list[dict[str, Any]]], *, tenant: str, task: str,
                rate: float, extra: list[bytes] | None = None, linger: float = 0.0) -> dict[str, Any]:
    from protege.settings import TeacherSettings

    keyed = TeacherSettings().api_key() is not None  # the key, or the key file, as the teacher worker reads it
    if not keyed:
        console.print(f"[yellow]{STANDIN_NOTE}[/]")
    summary: dict[str, Any] = {"teacher": "anthropic" if keyed else STANDIN_NOTE}
    started = time.perf_counter()
    _library_logs_to(home / "logs")
    with _stops_on_signals("the services and the broker were stopped"):
        _prepare_backbone()
        console.print("starting the embedded Apache Kafka broker and six services ...")
        _run_phases(home, env, phases, summary, tenant=tenant, task=task, rate=rate, extra=extra, linger=linger)
    summary["wall_seconds"] = time.perf_counter() - started
    summary["versions"] = versions()
    return summary


def _prepare_backbone() -> None:
    """Export the student backbone before traffic starts (first run only; cached after)."""
    from protege.student.backbone import cache_dir, cached_backbone

    if not (cache_dir() / "backbone.json").exists():
        console.print("exporting the student backbone (all-MiniLM-L6-v2) to ONNX, first run only ...")
    cached_backbone()


def _run_phases(home: Path, env: dict[str, str], phases: dict[str, list[dict[str, Any]]], summary: dict[str, Any], *,
                tenant: str, task: str, rate: float, extra: list[bytes] | None, linger: float) -> None:
    from protege.pipeline import Drive, LocalPipeline, drive, summarize, wait_quiet
    from protege.state import read_all

    with LocalPipeline(home.resolve(), env=env) as p:
        console.print(f"broker at {p.bootstrap}; service logs in {home / 'logs'}")
        settings = p.settings
        for i, (name, rows) in enumerate(phases.items()):
            t0 = time.perf_counter()

            def progress(sent: int, answered: int, counts: dict[str, int], name: str = name, n: int = len(rows),
                         t0: float = t0) -> None:
                assert p.supervisor is not None
                p.supervisor.poll()
                console.print(f"[{time.perf_counter() - t0:5.0f}s] {name}: sent {sent}/{n}  answered {answered} "
                              f"(student {counts['student']}, teacher {counts['teacher']})", highlight=False)

            result = asyncio.run(drive(settings, rows, tenant=tenant, task=task, rate=rate, progress=progress,
                                       extra=extra if i == 0 else None, linger=linger))
            summary[name] = summarize(result)
            # The steady state: the last quarter of the phase, after the student has caught up.
            tail = list(result.outcomes.items())[-max(1, len(rows) // 4):]
            tail_ids = {rid for rid, _ in tail}
            summary[f"{name}, last 25%"] = summarize(Drive(
                dict(tail), [r for r in result.teacher_results if r.request_id in tail_ids],
                result.seconds / 4))
            if i + 1 < len(phases):
                console.print("waiting for the harvester and trainer to catch up ...")
                t = settings.topics
                asyncio.run(wait_quiet(settings, {"harvester": [t.teacher_results],
                                                  "trainer": [t.harvest]}))
                time.sleep(5)  # the scorer loads the last announced version
        models = asyncio.run(read_all(settings, settings.topics.models))
        dlq = asyncio.run(read_all(settings, settings.topics.requests_dlq))
        summary["models_trained"] = len(models)
        summary["final_model"] = json.loads(models[-1].value) if models else None
        summary["dead_letters"] = {"count": len(dlq), "reasons": sorted({json.loads(r.value)["reason"] for r in dlq})}


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kafka": KAFKA_VERSION}
    for pkg in ("protege", "aiokafka", "onnxruntime", "onnxruntime-gpu", "tokenizers", "anthropic", "numpy",
                "scikit-learn", "torch", "transformers"):
        with contextlib.suppress(PackageNotFoundError):
            out[pkg] = version(pkg)
    return out


def _fmt(v: Any, pct: bool = False, money: bool = False) -> str:
    if v is None:
        return "-"
    if pct:
        return f"{100 * v:.1f}%"
    if money:
        return f"${v:.4f}"
    return f"{v:.0f}" if isinstance(v, float) else str(v)


def _print_summary(summary: dict[str, Any], phases: list[str]) -> None:
    standin = "STAND-IN" in summary["teacher"]
    table = Table(title="protege summary", caption="teacher: OFFLINE STAND-IN (labelled data)" if standin else None)
    table.add_column("metric")
    for name in phases:
        table.add_column(name, justify="right")
    rows: list[tuple[str, str, dict[str, Any]]] = [
        ("requests", "requests", {}), ("answered", "answered", {}), ("duplicate responses", "duplicates", {}),
        ("answered by student", "student_share", {"pct": True}), ("answered by teacher", "teacher_share", {"pct": True}),
        ("accuracy vs labels", "accuracy", {"pct": True}), ("  student route", "student_accuracy", {"pct": True}),
        ("  teacher route", "teacher_accuracy", {"pct": True}), ("teacher calls", "teacher_calls", {}),
        ("teacher cost", "cost_usd", {"money": True}),
    ]
    for label, key, fmt in rows:
        table.add_row(label, *[_fmt(summary[p][key], **fmt) for p in phases])
    for route in ("student", "teacher"):
        for q in ("p50", "p95"):
            table.add_row(f"latency {route} {q} (ms)", *[_fmt(summary[p]["latency_ms"][route][q]) for p in phases])
    Console().print(table)
    console.print(f"models trained: {summary['models_trained']}; dead letters: {summary['dead_letters']['count']} "
                  f"{summary['dead_letters']['reasons']}; wall time {summary['wall_seconds']:.0f}s")
    if "all_teacher" in summary:
        console.print(f"all-teacher baseline on the same test traffic: ${summary['all_teacher']['cost_usd']:.4f}")


# -- bench --------------------------------------------------------------------------


@bench_app.command("stream")
def bench_stream(
    train: Annotated[Path, typer.Option(help="Labelled JSON Lines {id,text,label} streamed first (live traffic).")],
    test: Annotated[Path, typer.Option(help="Labelled JSON Lines streamed after; the report's test numbers.")],
    report_json: Annotated[Path, typer.Option(help="Where to write the JSON report.")],
    teacher_noise: Annotated[float, typer.Option(help="Share of stand-in answers replaced by a wrong label.")] = 0.0,
    rate: Annotated[float, typer.Option(help="Requests per second.")] = 50.0,
    min_cases: int = 300,
    retrain_every: int = 1000,
    limit: Annotated[int, typer.Option(help="Use only the first N rows of each file (0: all).")] = 0,
    shuffle: Annotated[bool, typer.Option(help="Stream in a seeded random order (BANKING77's files are sorted by "
                                               "label, which no live traffic is).")] = True,
    seed: int = 0,
    policy: Annotated[str, typer.Option(help="Routing policy: cascade, distill_verify, ensemble or shadow.")] = "cascade",
    home: Path = Path(".protege/bench"),
    task_name: str = "bench",
) -> None:
    """Cold student, train traffic, then test traffic; report accuracy, student share, cost, latency."""
    from protege.generator import read_jsonl, task_from_labels, write_jsonl
    from protege.task import Policy, write_task
    from protege.teacher import StandinTeacher

    train_rows, test_rows = read_jsonl(train), read_jsonl(test)
    if shuffle:
        import random

        random.Random(seed).shuffle(train_rows)
        random.Random(seed + 1).shuffle(test_rows)
    if limit:
        train_rows, test_rows = train_rows[:limit], test_rows[:limit]
    shutil.rmtree(home, ignore_errors=True)
    labels = sorted({r["label"] for r in train_rows + test_rows})
    task = task_from_labels(task_name, labels, f"bench on {train.name}")
    task = task.model_copy(update={"policy": Policy.model_validate({**task.policy.model_dump(), "name": policy})})
    write_task(task, home / "tasks" / f"{task_name}.yaml")
    write_jsonl(train_rows + test_rows, home / "labelled.jsonl")
    for r in test_rows:
        r["id"] = f"test-{r['id']}"
    env = {
        "PROTEGE_TASKS_DIR": str((home / "tasks").resolve()),
        "PROTEGE_STANDIN_LABELS": str((home / "labelled.jsonl").resolve()),
        "PROTEGE_STANDIN_NOISE": str(teacher_noise),
        "PROTEGE_MIN_CASES": str(min_cases), "PROTEGE_RETRAIN_EVERY": str(retrain_every),
        # Retrains must not starve the scorer on a small machine, and a scorer with ONNX Runtime's
        # default threads (all cores, spinning) slowed the whole test phase on 2 cores: p50/p95
        # 83/138 ms against 50/107 with one thread (two runs of make bench-banking77).
        "PROTEGE_TRAINER_THREADS": "1", "PROTEGE_THREADS": "1",
    }
    # Linger after the last response so trailing teacher checks (ensemble) and corrections are counted.
    summary = _stream_run(home, env, {"train": train_rows, "test": test_rows}, tenant="bench", task=task_name,
                          rate=rate, linger=10.0)
    from protege.costs import cost_usd, price_table

    standin = StandinTeacher({}, priced_as=task.teacher.model, prices=price_table(Settings().prices))
    if "STAND-IN" in summary["teacher"]:
        all_cost = sum(cost_usd(standin.usage_for(task, r["text"]), standin.price) for r in test_rows)
        method = "stand-in token estimates for every test request, priced as " + task.teacher.model
    else:
        per_call = summary["test"]["cost_usd"] / max(1, summary["test"]["teacher_calls"])
        all_cost, method = per_call * len(test_rows), "mean measured cost per teacher call x test requests"
    summary["all_teacher"] = {"cost_usd": all_cost, "requests": len(test_rows), "method": method}
    summary["config"] = {"train": str(train), "test": str(test), "rate": rate, "teacher_noise": teacher_noise,
                         "min_cases": min_cases, "retrain_every": retrain_every, "limit": limit,
                         "shuffle": shuffle, "seed": seed, "policy": policy, "policy_version": task.policy.version}
    report_json.parent.mkdir(parents=True, exist_ok=True)
    report_json.write_text(json.dumps(summary, indent=2))
    _print_summary(summary, ["train", "test"])
    console.print(f"report: {report_json}")


# -- models -------------------------------------------------------------------------

models_app = typer.Typer(no_args_is_help=True, help="Student versions: list, show, promote, pin, unpin, roll back.")
app.add_typer(models_app, name="models")
Tenant = Annotated[str, typer.Option(help="Tenant.")]
TaskName = Annotated[str, typer.Option("--task", help="Task name.")]


def _history(settings: Settings, tenant: str, task: str) -> tuple[list[str], bool]:
    from protege.registry import read_history

    return asyncio.run(read_history(settings, tenant, task))


def _announce(settings: Settings, ann: Any) -> None:
    from protege.kafka import Out, producer

    async def send() -> None:
        prod = producer(settings)
        await prod.start()
        try:
            out = Out.of(settings.topics.models, ann)
            await prod.send_and_wait(out.topic, out.value, key=out.key)
        finally:
            await prod.stop()

    asyncio.run(send())


@models_app.command("list")
def models_list(tenant: Tenant, task_name: TaskName) -> None:
    """Every version in the registry, with its metrics and which one serves."""
    from protege.registry import versions

    settings = Settings()
    history, pinned = _history(settings, tenant, task_name)
    table = Table(title=f"{tenant}/{task_name}")
    for col in ("version", "created", "recipe", "cases", "golden acc", "macro-F1", "ECE", "coverage", "gates",
                "serving"):
        table.add_column(col)
    for v in versions(settings.home / "registry", tenant, task_name):
        m, man = v.manifest["metrics"], v.manifest
        mark = ("pinned" if pinned else "yes") if history and history[-1] == v.name else ""
        gates = "passed" if man.get("gates", {}).get("passed") else "held back"
        table.add_row(v.name, man["created_at"], f"{man['recipe'].get('kind', '-')}/{man.get('precision', 'fp32')}",
                      str(man["data"]["cases"]), f"{m['golden_accuracy']:.3f}", f"{m['golden_macro_f1']:.3f}",
                      f"{m['golden_ece']:.3f}", f"{m['golden_coverage']:.3f}", gates, mark)
    Console(width=140).print(table)


@models_app.command("show")
def models_show(version_name: Annotated[str, typer.Argument(help="Version, e.g. v0003.")], tenant: Tenant,
                task_name: TaskName) -> None:
    """A version's manifest."""
    from protege.registry import version

    typer.echo(json.dumps(version(Settings().home / "registry", tenant, task_name, version_name).manifest, indent=2))


def _serve(version_name: str, tenant: str, task_name: str, pin: bool, force: bool = False) -> None:
    from protege.registry import version

    settings = Settings()
    v = version(settings.home / "registry", tenant, task_name, version_name)
    failed = v.manifest.get("gates", {}).get("failed", [])
    if failed and not force:
        raise typer.BadParameter(f"{v.name} failed its release gates: {'; '.join(failed)} (--force serves it anyway)")
    _announce(settings, v.announcement(pin=pin))
    console.print(f"{tenant}/{task_name}: {v.name} announced{' and pinned' if pin else ''}; running scorers swap to "
                  f"it without a restart")


Force = Annotated[bool, typer.Option(help="Serve a version that failed its release gates.")]


@models_app.command("promote")
def models_promote(version_name: str, tenant: Tenant, task_name: TaskName, force: Force = False) -> None:
    """Serve VERSION now; the trainer's next version replaces it as usual."""
    _serve(version_name, tenant, task_name, pin=False, force=force)


@models_app.command("pin")
def models_pin(version_name: str, tenant: Tenant, task_name: TaskName, force: Force = False) -> None:
    """Serve VERSION and ignore the trainer's new versions until `protege models unpin`."""
    _serve(version_name, tenant, task_name, pin=True, force=force)


@models_app.command("rollback")
def models_rollback(tenant: Tenant, task_name: TaskName) -> None:
    """Serve the version that served before the current one, pinned."""
    history, _ = _history(Settings(), tenant, task_name)
    if len(history) < 2:
        raise typer.BadParameter(f"{tenant}/{task_name} has no earlier served version (history: {history})")
    _serve(history[-2], tenant, task_name, pin=True, force=True)  # it served before: its gates were passed then


@models_app.command("unpin")
def models_unpin(tenant: Tenant, task_name: TaskName) -> None:
    """Let the trainer's next version serve again."""
    from protege.events import ModelAnnouncement, now_ms

    history, _ = _history(Settings(), tenant, task_name)
    current = history[-1] if history else "none"
    _announce(Settings(), ModelAnnouncement(tenant=tenant, task=task_name, version=current, path="-", labels=[],
                                            metrics={}, trained_on=1, source="operator", action="unpin",
                                            announced_at_ms=now_ms()))
    console.print(f"{tenant}/{task_name}: unpinned; the trainer's next version will serve")


# -- training -----------------------------------------------------------------------


@app.command("train")
def train_cmd(
    task_name: Annotated[str, typer.Option("--task", help="Task name (a file in PROTEGE_TASKS_DIR).")],
    tenant: Tenant,
    input: Annotated[Path | None, typer.Option(help="Cases as JSON Lines (request_id or id, text, label); "
                                                    "default: the trainer's harvest for this tenant and task.")] = None,
    recipe: Annotated[str, typer.Option(help="fast (frozen encoder + logreg, seconds) or finetune (LP-FT, "
                                             "minutes).")] = "fast",
    epochs: Annotated[int, typer.Option(help="finetune: epochs.")] = 4,
    lr: Annotated[float, typer.Option(help="finetune: encoder learning rate.")] = 1e-4,
    golden: Annotated[Path | None, typer.Option(help="A fixed golden set (JSON Lines) for the gates.")] = None,
    announce: Annotated[bool, typer.Option(help="Gate against the serving version and announce on protege.models "
                                                "if the gates pass (needs the broker).")] = False,
) -> None:
    """Train one student version (the scheduled full fine-tune, or a fast retrain by hand)."""
    from protege.generator import read_jsonl
    from protege.student.backbone import cached_backbone, source_dir
    from protege.student.finetune import FinetuneConfig
    from protege.student.runtime import Encoder
    from protege.student.train import Case, EmbeddingCache, FastRecipe, FinetuneRecipe, Recipe, train_version
    from protege.task import load_tasks

    settings = Settings()
    task = load_tasks(settings.tasks_dir)[task_name]
    path = input or settings.home / "harvest" / tenant / f"{task_name}.jsonl"
    if not path.exists():
        raise typer.BadParameter(f"no cases at {path}")

    def cases_of(p: Path) -> list[Case]:
        return [Case(str(r.get("request_id", r.get("id"))), r["text"], str(r["label"])) for r in read_jsonl(p)]

    backbone = cached_backbone()
    embed = EmbeddingCache(Encoder(backbone / "model.onnx", backbone / "tokenizer.json"))
    chosen: Recipe
    if recipe == "fast":
        chosen = FastRecipe(embed, backbone)
    elif recipe == "finetune":
        chosen = FinetuneRecipe(embed, backbone, source_dir(), FinetuneConfig(epochs=epochs, lr=lr))
    else:
        raise typer.BadParameter(f"recipe must be fast or finetune, not {recipe!r}")
    serving = None
    if announce:
        from protege.registry import serving_folder

        serving = asyncio.run(serving_folder(settings, tenant, task_name))
    result = train_version(cases_of(path), recipe=chosen, registry=settings.home / "registry", tenant=tenant,
                           task=task, serving=serving, golden=cases_of(golden) if golden else None)
    typer.echo(json.dumps({"version": result.version, "folder": str(result.folder), "promoted": result.promoted,
                           "reason": result.reason, "metrics": result.metrics}, indent=2))
    if announce and result.promoted:
        from protege.registry import version

        v = version(settings.home / "registry", tenant, task_name, result.version)
        _announce(settings, v.announcement(pin=False).model_copy(update={"source": "trainer"}))
        console.print(f"{tenant}/{task_name}: {result.version} announced")
    elif not result.promoted:
        raise typer.Exit(3)


# -- offline labelling ----------------------------------------------------------------


@app.command("label")
def label_cmd(
    task_name: Annotated[str, typer.Option("--task", help="Task name (a file in PROTEGE_TASKS_DIR).")],
    input: Annotated[Path, typer.Option(help="JSON Lines with id and text.")],
    output: Annotated[Path, typer.Option(help="Labelled JSON Lines (id, text, label, rationale, teacher).")],
    poll: Annotated[float, typer.Option(help="Seconds between progress polls.")] = 30.0,
    model: Annotated[str | None, typer.Option(help="Teacher model (default: the task's).")] = None,
) -> None:
    """Label a golden or bootstrap set with the teacher through the Message Batches API (half price)."""
    import anthropic

    from protege.costs import price_table
    from protege.generator import read_jsonl, write_jsonl
    from protege.labelling import label_with_batches
    from protege.settings import TeacherSettings
    from protege.task import load_tasks

    settings = TeacherSettings()
    key = settings.api_key()
    if not key:
        raise typer.BadParameter("labelling calls the Message Batches API: set ANTHROPIC_API_KEY (no stand-in here)")
    task = load_tasks(settings.tasks_dir)[task_name]
    rows = read_jsonl(input)
    client = anthropic.AsyncAnthropic(api_key=key, base_url=settings.anthropic_base_url,
                                      max_retries=settings.max_retries, timeout=settings.timeout_s)
    report = asyncio.run(label_with_batches(client, task, rows, model=model, poll_s=poll,
                                            prices=price_table(settings.prices),
                                            progress=lambda line: console.print(line, highlight=False)))
    write_jsonl(report.labelled, output)
    errors = output.with_suffix(".errors.jsonl")
    write_jsonl(report.failed, errors)
    console.print(f"labelled {len(report.labelled)}/{len(rows)} into {output}; {len(report.failed)} failed "
                  f"({errors}); cost ${report.cost_usd:.4f} at the batch price; batches {report.batch_ids}")


# -- schemas ------------------------------------------------------------------------


@schemas_app.command("export")
def schemas_export(out: Path = REPO / "schemas") -> None:
    """Write schemas/<event>.v1.schema.json from the event models."""
    from protege.events import EVENTS, schema_of

    out.mkdir(parents=True, exist_ok=True)
    for name in EVENTS:
        (out / f"{name}.v1.schema.json").write_text(json.dumps(schema_of(name), indent=2) + "\n")
    typer.echo(f"wrote {len(EVENTS)} schemas to {out}")


@app.command("generate")
def generate_cmd(n: int = 600, seed: int = 7, out: Path = Path("tickets.jsonl")) -> None:
    """Write generated, labelled support tickets as JSON Lines."""
    from protege.generator import generate, write_jsonl

    write_jsonl(generate(n, seed), out)
    typer.echo(f"wrote {n} tickets to {out}")



if __name__ == "__main__":
    app()
