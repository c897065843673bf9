"""Commands that stream traffic through a whole local pipeline and report: ``demo`` and
``bench stream``."""

from __future__ import annotations

# ONNX Runtime, scikit-learn, torch and the Anthropic SDK are imported by the commands that use them:
# every other command starts without them.
import asyncio
import contextlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import TaskID
from rich.table import Table

from protege import signals
from protege.agreement import agreement
from protege.broker.embedded import KAFKA_VERSION
from protege.cli.root import (
    STANDIN_NOTE,
    Fused,
    OneHop,
    app,
    bench_app,
    console,
    layout_env,
    library_logs_to,
    progress_bar,
    stops_on_signals,
)
from protege.costs import cost_usd, price_table
from protege.generator import generate, read_jsonl, task_from_labels, triage_task, write_jsonl
from protege.harness import (
    Drive,
    StandinReviewer,
    drive,
    group_lag,
    machine,
    summarize,
    wait_drained,
    wait_quiet,
    wait_stable,
)
from protege.pipeline import LocalPipeline
from protege.policy import in_review
from protege.recorded import Selection
from protege.registry import Registry
from protege.settings import ScorerSettings, Settings, TeacherSettings
from protege.state import read_all
from protege.student.finetune import FinetuneConfig
from protege.supervisor import SERVICES, layout
from protege.task import OOS, Canary, Drift, Policy, StudentConfig, Task, load_tasks, write_task
from protege.teacher import StandinTeacher

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
def demo(
    tickets: Annotated[int, typer.Option(help="Generated tickets to stream.")] = 2000,
    rate: Annotated[float, typer.Option(help="Requests per second.")] = 30.0,
    seed: int = 7,
    home: Annotated[Path, typer.Option(help="Run folder (wiped at start).")] = Path(".protege/demo"),
    report_json: Annotated[Path | None, typer.Option(help="Also write the summary as JSON.")] = None,
    monitor: Annotated[
        bool, typer.Option(help="Run the monitor (it judges the canaries; without it a trial waits for an operator).")
    ] = True,
    fused: Fused = False,
    one_hop: OneHop = False,
) -> None:
    """Stream generated support tickets through the whole pipeline, with the live loop on
    (audits, canaries judged by the monitor), and print a summary."""

    shutil.rmtree(home, ignore_errors=True)
    rows = generate(tickets, seed=seed)
    write_jsonl(rows, home / "tickets.jsonl")
    task = demo_task()
    write_task(task, home / "tasks" / "ticket-triage.yaml")
    # Trusted labels for the relative target: generated tickets of their own (a person's labels, in
    # production), with the teacher's answers on them.
    trusted = generate(DEMO_GOLDEN, seed=seed + 1)
    teacher = StandinTeacher({r["text"]: r["label"] for r in trusted}, noise=DEMO_TEACHER_NOISE)
    write_golden(trusted, teacher, task, home / "tasks" / "golden.jsonl")
    env = {
        "PROTEGE_TASKS_DIR": str((home / "tasks").resolve()),
        "PROTEGE_STANDIN_LABELS": str((home / "tickets.jsonl").resolve()),
        "PROTEGE_STANDIN_NOISE": str(DEMO_TEACHER_NOISE),
        "PROTEGE_MIN_CASES": "200",  # a first student on fewer certifies nothing on the golden set
        "PROTEGE_RETRAIN_EVERY": "80",
        # Two cores: one ONNX Runtime thread each for the scorer and the trainer, so a
        # retrain does not starve the student path.
        "PROTEGE_THREADS": "1",
        "PROTEGE_TRAINER_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        **layout_env(fused, one_hop),
    }
    console.print(DEMO_LOOP_NOTE)
    summary = _stream_run(
        home, env, {"traffic": rows}, tenant="acme", task="ticket-triage", rate=rate, extra=BAD_INPUTS, monitor=monitor
    )
    _print_summary(summary, ["traffic", "traffic, last 25%"])
    _print_steps(summary["steps"])
    if report_json:
        report_json.write_text(json.dumps(summary, indent=2))


def wait_no_partial(folder: Path, timeout: float = 600.0) -> bool:
    """Wait until no version is being written under ``folder`` (``.vNNNN.partial``, the trainer's
    retrain or a fine-tune in progress); False at ``timeout`` (one a crash left behind)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not folder.is_dir() or not any(p.name.endswith(".partial") for p in folder.iterdir()):
            return True
        time.sleep(0.5)
    return False


def _stream_run(
    home: Path,
    env: dict[str, str],
    phases: dict[str, list[dict[str, Any]]],
    *,
    tenant: str,
    task: str,
    rate: float,
    extra: list[bytes] | None = None,
    linger: float = 0.0,
    monitor: bool = False,
    keep: dict[str, Drive] | None = None,
    between: Callable[[LocalPipeline], None] | None = None,
    reviewer: Callable[[Settings], StandinReviewer] | None = None,
    export: Path | None = None,
) -> dict[str, Any]:

    keyed = TeacherSettings().api_key() is not None  # the key, or the key file, as the teacher worker reads it
    if not keyed:
        console.print(f"[yellow]{STANDIN_NOTE}[/]")
    summary: dict[str, Any] = {"teacher": "anthropic" if keyed else STANDIN_NOTE}
    started = time.perf_counter()
    library_logs_to(home / "logs")
    with stops_on_signals("the services and the broker were stopped"):
        _prepare_backbone()
        services = [*SERVICES, "monitor"] if monitor else list(SERVICES)
        console.print(f"starting the embedded Apache Kafka broker and {len(layout(services, env))} services ...")
        _run_phases(
            home,
            env,
            phases,
            summary,
            tenant=tenant,
            task=task,
            rate=rate,
            extra=extra,
            linger=linger,
            services=services,
            keep=keep,
            between=between,
            reviewer=reviewer,
            export=export,
        )
    summary["wall_seconds"] = time.perf_counter() - started
    summary["versions"] = versions()
    return summary


def _scheduled_finetune(p: LocalPipeline, tenant: str, task: str, epochs: int, oos_weight: float) -> dict[str, Any]:
    """The fine-tune a deployment schedules (k8s/finetune-cronjob.yaml), on the cases harvested
    so far: its own process, gated against the version serving, announced when it passes."""
    assert p.supervisor is not None
    console.print(f"the scheduled fine-tune (LP-FT, {epochs} epochs) on the cases harvested so far ...")
    log = p.home / "logs" / "finetune.log"
    command = ["train", "--recipe", "finetune", "--epochs", str(epochs), "--oos-weight", str(oos_weight)]
    command += ["--announce", "--tenant", tenant]
    before = {v.name for v in Registry.of(p.settings).versions(tenant, task)}
    t0 = time.perf_counter()
    with log.open("w") as out:
        done = signals.run(
            [sys.executable, "-m", "protege.cli", *command, "--task", task],
            env={**os.environ, **p.supervisor.env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    seconds = time.perf_counter() - t0
    # What it wrote, from the registry (its manifest), not from its log. The trainer service goes
    # on retraining meanwhile, so a newer version may be the fast recipe's (seen: the report
    # gave a fast retrain's figures as the fine-tune's).
    made = [
        v
        for v in Registry.of(p.settings).versions(tenant, task)
        if v.name not in before and v.manifest.recipe.get("kind") == "finetune"
    ]
    result: dict[str, Any] = {}
    if made:
        m = made[-1].manifest
        reason = "; ".join(m.gates.failed) or "passed gates"
        result = {"version": m.version, "promoted": m.gates.passed, "reason": reason, "metrics": m.metrics}
    said = "announced" if done.returncode == 0 else f"not announced (exit {done.returncode}: {result.get('reason')})"
    console.print(f"  {result.get('version')}: {said}, {seconds:.0f} s; log in {log}", highlight=False)
    return {"seconds": seconds, "exit": done.returncode, "epochs": epochs, "oos_weight": oos_weight, **result}


def _export_phase(settings: Settings, task: Task, tenant: str, selection: Selection, folder: Path) -> dict[str, Any]:
    """One phase's record, left behind for ``protege replay --input`` and ``protege report
    --input``: its events as ``protege export`` writes them (texts PII-redacted) and the report
    page on them (report.html, report.json), read from the topics while the broker still runs."""
    from protege.cli.evaluate import report_context, write_report
    from protege.recorded import read_events, write_export
    from protege.report import Basis, Inputs

    events = asyncio.run(read_events(settings, selection))
    counts = write_export(events, folder)
    basis = Basis.recorded(events)
    scorer = ScorerSettings(**settings.model_dump())
    context = report_context(scorer, task, tenant, task.name, events, basis.version)
    write_report(basis, context, Inputs(), folder / "report.html")
    console.print(f"{selection.describe()}: exported to {folder} with its report (report.html)", highlight=False)
    return {"folder": str(folder), "since_ms": selection.since_ms, "until_ms": selection.until_ms, **counts}


def labelled_by_phase(labelled: list[str], phase_of: dict[str, str], review_rate: float) -> dict[str, dict[str, int]]:
    """The first person's labels per phase (``phase_of``: request id -> phase), and of them the
    ones the review surge alone drew (outside the ``review_rate`` sample)."""
    counts: dict[str, dict[str, int]] = {}
    for rid in labelled:
        phase = counts.setdefault(phase_of.get(rid, "other"), {"labels": 0, "surge": 0})
        phase["labels"] += 1
        phase["surge"] += not in_review(rid, review_rate)
    return counts


def _prepare_backbone() -> None:
    """Export the student backbone before traffic starts (first run only; cached after)."""
    from protege.student.backbone import cache_dir, cached_backbone

    if not (cache_dir() / "backbone.json").exists():
        console.print("exporting the student backbone (all-MiniLM-L6-v2) to ONNX, first run only ...")
    cached_backbone()


def _run_phases(
    home: Path,
    env: dict[str, str],
    phases: dict[str, list[dict[str, Any]]],
    summary: dict[str, Any],
    *,
    tenant: str,
    task: str,
    rate: float,
    extra: list[bytes] | None,
    linger: float,
    services: list[str],
    keep: dict[str, Drive] | None = None,
    between: Callable[[LocalPipeline], None] | None = None,
    reviewer: Callable[[Settings], StandinReviewer] | None = None,
    export: Path | None = None,
) -> None:

    windows: dict[str, tuple[int, int]] = {}  # phase -> [first, last] received_at_ms of its requests
    phase_of: dict[str, str] = {}  # request id -> its phase
    the_task = load_tasks(Path(env["PROTEGE_TASKS_DIR"]))[task]
    with contextlib.ExitStack() as stack:
        p = stack.enter_context(LocalPipeline(home.resolve(), env=env, services=services))
        console.print(f"broker at {p.bootstrap}; service logs in {home / 'logs'}")
        settings = p.settings
        reviewing = stack.enter_context(reviewer(settings)) if reviewer is not None else None
        if "trainer" in services and not asyncio.run(wait_stable(settings, ["trainer"])):
            console.print("[yellow]the trainer has not joined its consumer group after 120 s; streaming anyway[/]")
        for i, (name, rows) in enumerate(phases.items()):
            t0 = time.perf_counter()
            console.print(f"{name}: {len(rows)} requests at {rate:g} req/s", highlight=False)
            with progress_bar("answers") as bar:
                job = bar.add_task(name, total=len(rows))

                def progress(
                    sent: int, answered: int, counts: dict[str, int], name: str = name, job: TaskID = job
                ) -> None:
                    assert p.supervisor is not None
                    p.supervisor.poll()
                    bar.update(
                        job,
                        completed=answered,
                        description=f"{name}: sent {sent}, student {counts['student']}, teacher {counts['teacher']}",
                    )

                result = asyncio.run(
                    drive(
                        settings,
                        rows,
                        tenant=tenant,
                        task=task,
                        rate=rate,
                        progress=progress,
                        extra=extra if i == 0 else None,
                        linger=linger,
                    )
                )
            received = [o.response.received_at_ms for o in result.outcomes.values() if o.response is not None]
            if received:
                windows[name] = (min(received), max(received) + 1)
            routes = Counter(o.response.route for o in result.outcomes.values() if o.response is not None)
            console.print(
                f"{name}: {routes.total()}/{len(rows)} answered in {time.perf_counter() - t0:.0f} s "
                f"(student {routes['student']}, teacher {routes['teacher']})",
                highlight=False,
            )
            summary[name] = summarize(result)
            phase_of |= dict.fromkeys(result.outcomes, name)
            if keep is not None:
                keep[name] = result
            # The steady state: the last quarter of the phase, after the student has caught up.
            tail = list(result.outcomes.items())[-max(1, len(rows) // 4) :]
            tail_ids = {rid for rid, _ in tail}
            summary[f"{name}, last 25%"] = summarize(
                Drive(dict(tail), [r for r in result.teacher_results if r.request_id in tail_ids], result.seconds / 4)
            )
            if i + 1 < len(phases):
                console.print("waiting for the harvester and trainer to catch up ...")
                t = settings.topics
                asyncio.run(
                    wait_quiet(settings, {"harvester": [t.teacher_results, t.feedback], "trainer": [t.harvest]})
                )
                # the trainer reads on while it retrains (in a worker thread): a retrain writes its
                # version in a partial folder until it ends; the next phase starts after it
                wait_no_partial(Registry.of(settings).folder(tenant, task))
                if between is not None:
                    between(p)
                time.sleep(5)  # the scorer loads the last announced version
        if "monitor" in services:  # its last verdicts: the audits answered, then read by the monitor
            t = settings.topics
            # the audits answered; the monitor's sources re-keyed; the keyed records counted
            waits = {
                "teacher": [t.teacher_requests],
                "monitor-sources": [t.decisions, t.teacher_results, t.models],
                "monitor": [t.monitor_keyed],
            }
            if not (
                asyncio.run(wait_quiet(settings, {g: waits[g] for g in ("teacher", "monitor-sources")}, timeout=60))
                and asyncio.run(wait_drained(settings, "monitor", waits["monitor"], timeout=60))
            ):
                behind = {
                    g: asyncio.run(group_lag(settings, f"{settings.topic_prefix}protege-{g}", ts))
                    for g, ts in waits.items()
                }
                console.print(f"[yellow]not caught up after 60 s (records behind, per consumer group): {behind}[/]")
            limit = the_task.student.canary.max_minutes * 60
            await_verdict(settings, limit)
        models = asyncio.run(read_all(settings, settings.topics.models))
        dlq = asyncio.run(read_all(settings, settings.topics.requests_dlq))
        summary["models_trained"] = len({json.loads(m.value)["version"] for m in models})
        summary["final_model"] = json.loads(models[-1].value) if models else None
        summary["steps"] = [step_of(json.loads(m.value)) for m in models]
        summary["trained"] = trained_versions(Registry.of(settings), tenant, task)
        summary["alerts"] = [json.loads(r.value) for r in asyncio.run(read_all(settings, settings.topics.alerts))]
        summary["dead_letters"] = {"count": len(dlq), "reasons": sorted({json.loads(r.value)["reason"] for r in dlq})}
        if reviewing is not None:
            summary["review"] = {
                "reviewer": reviewing.describe(),
                "reviews_sent": reviewing.reviewed,
                "wrong": reviewing.wrong,
                "followed_teacher": reviewing.followed,
                "second_opinions": reviewing.second_opinions,
                "third_opinions": reviewing.third_opinions,
                "held_at_the_end": len(reviewing.held),
                # by phase, and of them the labels the surge alone drew (Task.review_surge_rate)
                "by_phase": labelled_by_phase(reviewing.labelled, phase_of, the_task.review_rate),
            }
        if export is not None:
            summary["exports"] = {
                name: _export_phase(settings, the_task, tenant, Selection(tenant, task, *window), export / name)
                for name, window in windows.items()
            }


# The demo runs the live loop: audits of accepted answers, and each new version on trial
# (a canary) before it serves everything. Its canary settings are scaled to a run of under a
# minute — a quarter of the requests on trial, half of its answers audited, a verdict after
# 10 audits on each side (or 30 s), margins of 5 points of accuracy and 10 of escalations at
# 90% confidence — where the defaults (10%, 0.25, 30, 60 min, 2 and 5 points at 99%) suit
# production traffic.
DEMO_LOOP_NOTE = (
    "live loop on: 5% of accepted answers audited by the teacher; each new version on trial for 25% of "
    "requests until the monitor's verdict (canary settings scaled to this short run)"
)


def on_trial(models: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The canary still on trial at the end of ``models`` (announcements, in order), if any."""
    trial = None
    for ann in models:
        if ann["action"] == "canary":
            trial = ann
        elif (trial is not None and ann["version"] == trial["version"] and ann["action"] in ("serve", "abort")) or (
            ann["action"] == "serve" and ann.get("source") == "operator"
        ):
            trial = None
    return trial


def await_verdict(settings: Settings, limit_s: float) -> None:
    """A trial that began late in the run: wait for the monitor's verdict — by its time limit
    ``limit_s`` at the latest (the monitor's clock ends a trial no record reaches any more)."""
    models = [json.loads(m.value) for m in asyncio.run(read_all(settings, settings.topics.models))]
    trial = on_trial(models)
    if trial is None:
        return
    left = trial["announced_at_ms"] / 1000 + limit_s - time.time()
    console.print(f"waiting for the monitor's verdict on {trial['version']} (its time limit: {max(0, left):.0f} s) ...")
    deadline = time.time() + max(0.0, left) + 30
    while time.time() < deadline:
        models = [json.loads(m.value) for m in asyncio.run(read_all(settings, settings.topics.models))]
        if on_trial(models) is None:
            return
        time.sleep(2)


DEMO_GOLDEN = 1000  # trusted tickets: a flawless record on 367 of them certifies the 1-point margin
# A real teacher errs now and then; the stand-in does too in the demo (a wrong queue for 3% of
# requests, chosen by request id), so the relative target has something to measure against.
DEMO_TEACHER_NOISE = 0.03


def demo_task() -> Task:
    task = triage_task()
    canary = Canary(
        share=0.25,
        audit_rate=0.5,
        min_audits=10,
        max_audits=60,
        max_minutes=0.5,
        margin=0.05,
        escalation_margin=0.1,
        confidence=0.9,
    )
    return task.model_copy(
        update={
            # Accepted answers at most 1 point below the teacher's on the same requests, certified
            # on the golden set: a version too young to show it serves nothing.
            "policy": task.policy.model_copy(update={"audit_rate": 0.05, "target_margin": 0.01}),
            "student": task.student.model_copy(update={"canary": canary}),
            "golden": "golden.jsonl",
        }
    )


def trained_versions(registry: Registry, tenant: str, task: str) -> list[dict[str, Any]]:
    """Every version the trainer wrote, from its manifest: what it trained on and how long the
    recipe's fit and the whole version took (a re-certified copy trains nothing: no times)."""
    out = []
    for v in registry.versions(tenant, task):
        m = v.manifest
        row: dict[str, Any] = {"version": v.name, "recipe": m.recipe.get("kind"), "precision": m.precision}
        row["recertified_from"] = m.recertified_from
        row["passed_gates"] = m.gates.passed
        row |= {k: m.metrics.get(k) for k in ("fit_cases", "fit_seconds", "train_seconds", "truth_coverage")}
        out.append(row)
    return out


def step_of(ann: dict[str, Any]) -> dict[str, Any]:
    """One announcement on protege.models, as the summary shows it."""
    return {k: ann.get(k) for k in ("version", "action", "source", "share", "reason", "announced_at_ms")}


def _print_steps(steps: list[dict[str, Any]]) -> None:
    """What served, in order: each version, its trial and the verdict, and why."""
    if not steps:
        return
    table = Table(title="versions (protege.models)")
    for column in ("version", "step", "by", "why"):
        table.add_column(column)
    names = {"serve": "serves", "canary": "on trial", "abort": "rolled back", "unpin": "unpinned"}
    for s in steps:
        step = names.get(s["action"], s["action"])
        if s["action"] == "canary" and s.get("share"):
            step = f"on trial ({s['share']:.0%})"
        elif s["action"] == "serve" and s["source"] == "monitor":
            step = "promoted"
        table.add_row(s["version"], step, s["source"], s.get("reason") or "")
    Console().print(table)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "kafka": KAFKA_VERSION}
    for pkg in (
        "protege",
        "aiokafka",
        "onnxruntime",
        "onnxruntime-gpu",
        "tokenizers",
        "anthropic",
        "numpy",
        "scikit-learn",
        "torch",
        "transformers",
    ):
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
        ("requests", "requests", {}),
        ("answered", "answered", {}),
        ("duplicate responses", "duplicates", {}),
        ("answered by student", "student_share", {"pct": True}),
        ("answered by teacher", "teacher_share", {"pct": True}),
        ("accuracy vs labels", "accuracy", {"pct": True}),
        ("  student route", "student_accuracy", {"pct": True}),
        ("  teacher route", "teacher_accuracy", {"pct": True}),
        ("teacher calls", "teacher_calls", {}),
        ("teacher cost", "cost_usd", {"money": True}),
        ("  of it audits", "audit_cost_usd", {"money": True}),
        ("audits", "audits", {}),
        ("  student right (audited)", "audited_accuracy", {"pct": True}),
    ]
    for label, key, fmt in rows:
        table.add_row(label, *[_fmt(summary[p][key], **fmt) for p in phases])
    if any(summary[p]["scope"]["out_of_scope"] for p in phases):
        for label, key in (
            ("out of scope (requests)", "out_of_scope"),
            ("  answered oos", "oos_recall"),
            ("  student accepted in-scope (false accepts)", "oos_false_accepts"),
            ("in scope sent to the teacher", "in_scope_deferred"),
        ):
            table.add_row(label, *[_fmt(summary[p]["scope"][key], pct=key != "out_of_scope") for p in phases])
    for route in ("student", "teacher"):
        for q in ("p50", "p95"):
            table.add_row(f"latency {route} {q} (ms)", *[_fmt(summary[p]["latency_ms"][route][q]) for p in phases])
    Console().print(table)
    console.print(
        f"models trained: {summary['models_trained']}; dead letters: {summary['dead_letters']['count']} "
        f"{summary['dead_letters']['reasons']}; wall time {summary['wall_seconds']:.0f}s"
    )
    if "all_teacher" in summary:
        accuracy = summary["all_teacher"].get("accuracy")
        console.print(
            f"all-teacher baseline on the same test traffic: ${summary['all_teacher']['cost_usd']:.4f}"
            + ("" if accuracy is None else f", accuracy {accuracy:.2%} (the stand-in's own answers)")
        )


# -- bench --------------------------------------------------------------------------


@bench_app.command("stream")
def bench_stream(
    train: Annotated[Path, typer.Option(help="Labelled JSON Lines {id,text,label} streamed first (live traffic).")],
    test: Annotated[Path, typer.Option(help="Labelled JSON Lines streamed after; the report's test numbers.")],
    report_json: Annotated[Path, typer.Option(help="Where to write the JSON report.")],
    teacher_noise: Annotated[float, typer.Option(help="Share of stand-in answers replaced by a wrong label.")] = 0.0,
    noise_model: Annotated[
        str,
        typer.Option(
            help="uniform: a wrong answer is any other label; confusable: one of the 5 labels nearest the true one "
            "by the student's own backbone embedding (the mean embedding of each label's texts), as an LLM "
            "confuses similar intents."
        ),
    ] = "uniform",
    rate: Annotated[float, typer.Option(help="Requests per second.")] = 50.0,
    min_cases: int = 300,
    retrain_every: int = 1000,
    limit: Annotated[int, typer.Option(help="Use only the first N rows of each file (0: all).")] = 0,
    shuffle: Annotated[
        bool,
        typer.Option(
            help="Stream in a seeded random order (BANKING77's files are sorted by label, which no live traffic is)."
        ),
    ] = True,
    seed: int = 0,
    policy: Annotated[
        str, typer.Option(help="Routing policy: cascade, distill_verify, ensemble or shadow.")
    ] = "cascade",
    unknown_intents: Annotated[
        int,
        typer.Option(
            help="Labels left out of the task (chosen with --seed) and streamed as out of scope: their "
            "requests are labelled oos, as the teacher answers them."
        ),
    ] = 0,
    golden: Annotated[
        int,
        typer.Option(
            help="Train rows set apart as the task's trusted golden set: their true labels, and the teacher's "
            "answers on them (the stand-in's, with the same noise); never streamed, never trained on. 0: none."
        ),
    ] = 1000,
    target: Annotated[
        str,
        typer.Option(
            help="relative:M (accepted answers at most M below the teacher's accuracy on the same requests), "
            "absolute:A (at least A accurate), or none (the task's fixed thresholds)."
        ),
    ] = "relative:0.01",
    max_false_accepts: Annotated[
        float,
        typer.Option(
            help="The task's policy.max_false_accepts: cap the golden set's out-of-scope cases a version's rule "
            "accepts with an in-scope label at this share (0: no cap)."
        ),
    ] = 0.0,
    oos_past_ood_gate: Annotated[
        bool,
        typer.Option(
            help="The task's policy.oos_past_ood_gate: a version's rule judges an answer oos on confidence alone "
            "(off by default: every answer meets the OOD gate)."
        ),
    ] = False,
    finetune_epochs: Annotated[
        int,
        typer.Option(
            help="Between the phases, the scheduled fine-tune as a deployment runs it (protege train --recipe "
            "finetune --announce, this many epochs), and the test phase's retrains refresh the head on its "
            "encoder. 0: none."
        ),
    ] = 0,
    oos_weight: Annotated[
        float,
        typer.Option(help="The scheduled fine-tune's weight of a case labelled oos (protege train --oos-weight)."),
    ] = FinetuneConfig.oos_weight,
    learn_accepted: Annotated[
        float,
        typer.Option(
            help="The task's student.learn_accepted: the share of the student's accepted answers the next "
            "version learns from (0: escalations, audits and feedback only)."
        ),
    ] = StudentConfig().learn_accepted,
    review_rate: Annotated[
        float,
        typer.Option(
            help="The task's review_rate: this share of all requests goes to review, answered by an OFFLINE "
            "STAND-IN reviewer with the data set's labels, and the reviewed rows join the golden set (with "
            "--golden 0: they are the golden set, from student.gates.min_golden rows). 0: none.",
            min=0,
            max=1,
        ),
    ] = 0.0,
    review_surge_rate: Annotated[
        float,
        typer.Option(
            help="The task's review_surge_rate: while no certified rule lets the student answer (before its first, "
            "after a shift), this share of requests goes to review instead of --review-rate (0: no surge).",
            min=0,
            max=1,
        ),
    ] = 0.0,
    review_window: Annotated[
        int,
        typer.Option(help="The task's review_window: certify on the newest N reviewed rows only (0: all).", min=0),
    ] = 0,
    recertify_every: Annotated[
        int,
        typer.Option(
            help="The trainer's PROTEGE_RECERTIFY_EVERY: judge the serving version's rule again on the trusted rows "
            "every N new reviewed rows (0: never; a rule is certified only when its version is trained).",
            min=0,
        ),
    ] = 100,
    review_overlap: Annotated[
        float,
        typer.Option(
            help="The task's review_overlap: this share of the review sample is labelled by a second OFFLINE "
            "STAND-IN person too (the same noise and blind spots, its own draws); rows they split on wait for a "
            "third label, which a third OFFLINE STAND-IN person gives (its own draws).",
            min=0,
            max=1,
        ),
    ] = 0.0,
    reviewer_noise: Annotated[
        float,
        typer.Option(help="Share of the stand-in reviewer's labels that are wrong (seeded).", min=0, max=1),
    ] = 0.0,
    reviewer_follows_teacher: Annotated[
        float,
        typer.Option(
            help="Share of the stand-in teacher's mistakes the stand-in reviewer repeats (people with the "
            "teacher's blind spots; seeded). 0: its mistakes, if any, are independent of the teacher's.",
            min=0,
            max=1,
        ),
    ] = 0.0,
    reviewer_delay: Annotated[
        float,
        typer.Option(help="Seconds the stand-in reviewer takes to label each review item (0: at once).", min=0),
    ] = 0.0,
    export: Annotated[
        Path | None,
        typer.Option(
            help="Leave each phase's record in this folder (FOLDER/train, FOLDER/test): its events as protege "
            "export writes them, for protege replay/report --input, and the report page on them (report.html)."
        ),
    ] = None,
    home: Path = Path(".protege/bench"),
    task_name: str = "bench",
) -> None:
    """Cold student, train traffic, then test traffic; report accuracy, student share, cost,
    latency, the all-teacher baseline (cost; accuracy with the stand-in), and out-of-scope
    handling when the data has any."""

    if noise_model not in ("uniform", "confusable"):
        raise typer.BadParameter(f"--noise-model {noise_model!r}: uniform or confusable")
    targeted = policy_target(target)
    train_rows, test_rows = read_jsonl(train), read_jsonl(test)
    if shuffle:
        random.Random(seed).shuffle(train_rows)
        random.Random(seed + 1).shuffle(test_rows)
    if limit:
        train_rows, test_rows = train_rows[:limit], test_rows[:limit]
    golden_rows, train_rows = train_rows[:golden], train_rows[golden:]
    shutil.rmtree(home, ignore_errors=True)
    labels = sorted({r["label"] for r in golden_rows + train_rows + test_rows})
    unknown = sorted(random.Random(seed).sample([x for x in labels if x != OOS], unknown_intents))
    if unknown:
        console.print(f"out of scope (left out of the task): {', '.join(unknown)}")
        for r in golden_rows + train_rows + test_rows:
            r["label"] = OOS if r["label"] in unknown else r["label"]
        labels = [x for x in labels if x not in unknown]
    task = task_from_labels(task_name, labels, f"bench on {train.name}")
    task = task.model_copy(
        update={
            "policy": Policy.model_validate(
                {
                    **task.policy.model_dump(),
                    "name": policy,
                    **targeted,
                    "max_false_accepts": max_false_accepts or None,
                    "oos_past_ood_gate": oos_past_ood_gate,
                }
            ),
            "golden": "golden.jsonl" if golden_rows else None,
            "review_rate": review_rate,
            "review_surge_rate": review_surge_rate or None,
            "review_window": review_window,
            "review_overlap": review_overlap,
            "student": StudentConfig.model_validate({**task.student.model_dump(), "learn_accepted": learn_accepted}),
        }
    )
    write_task(task, home / "tasks" / f"{task_name}.yaml")
    write_jsonl(golden_rows + train_rows + test_rows, home / "labelled.jsonl")
    for r in test_rows:
        r["id"] = f"test-{r['id']}"
    confused = noise_confusions(train_rows, seed) if noise_model == "confusable" else None
    if confused is not None:
        (home / "confusions.json").write_text(json.dumps(confused, indent=1))
    teacher_accuracy_golden = None
    if golden_rows:
        noisy = StandinTeacher({r["text"]: r["label"] for r in golden_rows}, noise=teacher_noise, confused=confused)
        teacher_accuracy_golden = write_golden(golden_rows, noisy, task, home / "tasks" / "golden.jsonl")
    env = {
        "PROTEGE_TASKS_DIR": str((home / "tasks").resolve()),
        "PROTEGE_STANDIN_LABELS": str((home / "labelled.jsonl").resolve()),
        "PROTEGE_STANDIN_NOISE": str(teacher_noise),
        **({"PROTEGE_STANDIN_CONFUSIONS": str((home / "confusions.json").resolve())} if confused else {}),
        "PROTEGE_MIN_CASES": str(min_cases),
        "PROTEGE_RETRAIN_EVERY": str(retrain_every),
        "PROTEGE_RECERTIFY_EVERY": str(recertify_every),
        # Retrains must not starve the scorer on a small machine, and a scorer with ONNX Runtime's
        # default threads (all cores, spinning) slowed the whole test phase on 2 cores: p50/p95
        # 83/138 ms against 50/107 with one thread (two runs of make bench-banking77).
        "PROTEGE_TRAINER_THREADS": "1",
        "PROTEGE_THREADS": "1",
    }
    # Linger after the last response so trailing teacher checks (ensemble) and corrections are counted.
    finetuned: dict[str, Any] = {}

    def scheduled_finetune(p: LocalPipeline) -> None:
        finetuned.update(_scheduled_finetune(p, "bench", task_name, finetune_epochs, oos_weight))

    # The stand-in as the teacher worker runs it (the same ids, seed and noise): what it will answer.
    worker_teacher = StandinTeacher(
        {r["text"]: r["label"] for r in train_rows + test_rows}, noise=teacher_noise, confused=confused
    )
    said: dict[str, str] | None = None
    if review_rate and reviewer_follows_teacher:  # the mistakes the reviewer repeats
        streamed = [(f"bench-{r['id']}", r["text"]) for r in train_rows + test_rows]
        answers = asyncio.run(_standin_answers(worker_teacher, task, streamed))
        said = {rid: answer for (rid, _), answer in zip(streamed, answers, strict=True)}
    summary = _stream_run(
        home,
        env,
        {"train": train_rows, "test": test_rows},
        tenant="bench",
        task=task_name,
        rate=rate,
        linger=10.0,
        between=scheduled_finetune if finetune_epochs else None,
        reviewer=partial(
            StandinReviewer,
            labels={f"bench-{r['id']}": r["label"] for r in train_rows + test_rows},
            noise=reviewer_noise,
            follow=reviewer_follows_teacher,
            teacher=said,
            delay_s=reviewer_delay,
            seed=seed,
            overlap=task if review_overlap else None,
        )
        if review_rate
        else None,
        export=export,
    )
    if review_rate:
        from protege.review import ReviewStore

        reviewed = ReviewStore(home / "review", writer=False)
        summary["review"]["golden_rows"] = len(reviewed.golden("bench", task))  # since a shift the trainer saw
        summary["review"]["completed_rows"] = reviewed.done("bench", task.name)
        summary["review"]["shift_at"] = reviewed.shift("bench", task.name)  # rows before it no longer count
        summary["review"]["people"] = agreement(reviewed.opinions("bench", task.name))
        console.print(
            f"review sample ({review_rate:.0%}): {summary['review']['reviews_sent']} labels from the "
            f"{summary['review']['reviewer']} ({summary['review']['wrong']} wrong, "
            f"{summary['review']['followed_teacher']} of them the teacher's own mistake, "
            f"{summary['review']['held_at_the_end']} still held at the end); "
            + (
                "by phase (of them drawn by the surge): "
                + ", ".join(f"{k} {v['labels']} ({v['surge']})" for k, v in summary["review"]["by_phase"].items())
                + "; "
                if review_surge_rate
                else ""
            )
            + f"{summary['review']['golden_rows']} golden rows at the end"
            + (
                f" (the trainer saw a shift: only the rows completed after the first "
                f"{summary['review']['shift_at']:,} of {summary['review']['completed_rows']:,} count)"
                if summary["review"]["shift_at"]
                else ""
            )
        )
        people = summary["review"]["people"]
        if people["rows"]:
            console.print(
                f"second opinions on {people['rows']} requests: the two stand-in people agreed on "
                f"{people['agreement']:.1%} (Fleiss' kappa {people['kappa']:.3f}); {people['disputed']} split, left "
                "out of the golden set"
            )
    if finetuned:
        summary["finetune"] = finetuned

    standin = StandinTeacher({}, priced_as=task.teacher.model, prices=price_table(Settings().prices))
    if "STAND-IN" in summary["teacher"]:
        all_cost = sum(cost_usd(standin.usage_for(task, r["text"]), standin.price) for r in test_rows)
        method = "stand-in token estimates for every test request, priced as " + task.teacher.model
    else:
        per_call = summary["test"]["cost_usd"] / max(1, summary["test"]["teacher_calls"])
        all_cost, method = per_call * len(test_rows), "mean measured cost per teacher call x test requests"
    summary["all_teacher"] = {"cost_usd": all_cost, "requests": len(test_rows), "method": method}
    if "STAND-IN" in summary["teacher"]:
        # The stand-in's own answers on the test requests: what all-teacher would have scored
        # against the ground truth.
        answers = asyncio.run(
            _standin_answers(worker_teacher, task, [(f"bench-{r['id']}", r["text"]) for r in test_rows])
        )
        right = sum(a == r["label"] for a, r in zip(answers, test_rows, strict=True))
        summary["all_teacher"] |= {
            "accuracy": right / len(test_rows) if test_rows else None,
            "accuracy_method": f"the offline stand-in's answers on every test request ({noise_model} noise "
            f"{teacher_noise:g}) against the data set's labels",
        }
    summary["config"] = {
        "train": str(train),
        "test": str(test),
        "rate": rate,
        "teacher_noise": teacher_noise,
        "noise_model": noise_model,
        "unknown_intents": unknown,
        "min_cases": min_cases,
        "retrain_every": retrain_every,
        "limit": limit,
        "shuffle": shuffle,
        "seed": seed,
        "policy": policy,
        "policy_version": task.policy.version,
        "target": target,
        "golden": len(golden_rows),
        "teacher_accuracy_golden": teacher_accuracy_golden,
        "learn_accepted": learn_accepted,
        "max_false_accepts": max_false_accepts or None,
        "oos_past_ood_gate": oos_past_ood_gate,
        "review_rate": review_rate,
        "review_surge_rate": review_surge_rate or None,
        "review_window": review_window,
        "recertify_every": recertify_every,
        "review_overlap": review_overlap,
        "reviewer_noise": reviewer_noise,
        "reviewer_follows_teacher": reviewer_follows_teacher,
        "reviewer_delay_s": reviewer_delay,
    }
    report_json.parent.mkdir(parents=True, exist_ok=True)
    report_json.write_text(json.dumps(summary, indent=2))
    _print_summary(summary, ["train", "test"])
    console.print(f"report: {report_json}")


def write_golden(rows: list[dict[str, Any]], teacher: StandinTeacher, task: Task, path: Path) -> float:
    """The task's golden set: each row's trusted label and the teacher's answer on it, as
    `protege label --golden` records them — here the offline stand-in's (a real teacher's come
    through the Message Batches API). Says and returns the teacher's accuracy on it."""
    said = asyncio.run(_standin_answers(teacher, task, [(f"golden-{r['id']}", r["text"]) for r in rows]))
    write_jsonl(
        [
            {"id": r["id"], "text": r["text"], "label": r["label"], "teacher": t}
            for r, t in zip(rows, said, strict=True)
        ],
        path,
    )
    accuracy = sum(t == r["label"] for r, t in zip(rows, said, strict=True)) / len(rows)
    console.print(
        f"golden set: {len(rows)} trusted rows, never streamed or trained on; the teacher (offline stand-in) "
        f"answers {accuracy:.1%} of them right"
    )
    return accuracy


def policy_target(text: str) -> dict[str, float]:
    """``relative:0.01`` / ``absolute:0.97`` / ``none`` as the policy fields they set."""
    kind, _, value = text.partition(":")
    try:
        if kind == "none" and not value:
            return {}
        if kind in ("relative", "absolute"):
            number = float(value)
            if 0 <= number < 1:
                return {"target_margin" if kind == "relative" else "target_accuracy": number}
    except ValueError:
        pass
    raise typer.BadParameter(f"--target {text!r}: relative:M, absolute:A (numbers in [0, 1)) or none")


def noise_confusions(rows: list[dict[str, Any]], seed: int, per_label: int = 40) -> dict[str, list[tuple[str, float]]]:
    """The confusable noise model's table from ``rows``: up to ``per_label`` texts of each
    label embedded by the student's backbone (the same ONNX graph the trainer embeds with)."""
    from protege.student.backbone import cached_backbone
    from protege.student.runtime import Encoder
    from protege.teacher import confusions

    rng = random.Random(seed)
    by_label: dict[str, list[str]] = {}
    for r in rows:
        by_label.setdefault(r["label"], []).append(r["text"])
    picked = [
        (label, text)
        for label, texts in sorted(by_label.items())
        for text in rng.sample(texts, min(per_label, len(texts)))
    ]
    backbone = cached_backbone()
    encoder = Encoder(backbone / "model.onnx", backbone / "tokenizer.json", providers="cpu")
    return confusions([label for label, _ in picked], encoder.embed([text for _, text in picked]))


async def _standin_answers(teacher: StandinTeacher, task: Task, requests: list[tuple[str, str]]) -> list[str]:
    return [(await teacher.label(task, text, request_id)).label for request_id, text in requests]


# The bench's live loop, scaled to a run of minutes (the defaults suit production traffic):
# a fifth of the requests on trial, half of its answers audited, a verdict from 20 audits a
# side (or 2 min), margins of 5 points at 90% confidence; the drift alarm over 500 decisions
# fires at a rise of 5 points of escalations.
DRIFT_BENCH_CANARY = Canary(
    share=0.2,
    audit_rate=0.5,
    min_audits=20,
    max_audits=150,
    max_minutes=2.0,
    margin=0.05,
    escalation_margin=0.05,
    confidence=0.9,
)
DRIFT_BENCH_DRIFT = Drift(window=500, band=0.05)


@bench_app.command("drift")
def bench_drift(
    data: Annotated[
        list[Path], typer.Option(help="Labelled JSON Lines {id,text,label}, pooled (e.g. BANKING77's train and test).")
    ],
    report_json: Annotated[Path, typer.Option(help="Where to write the JSON report.")],
    withheld: Annotated[int, typer.Option(help="Intents held out of the first part, brought in in the second.")] = 10,
    before: Annotated[int, typer.Option(help="Requests of the old intents only (the student settles).")] = 7000,
    after: Annotated[int, typer.Option(help="Requests after the new intents arrive, all intents mixed.")] = 4000,
    window: Annotated[int, typer.Option(help="Requests per reported window.")] = 300,
    rate: Annotated[float, typer.Option(help="Requests per second.")] = 40.0,
    min_cases: int = 300,
    retrain_every: int = 1000,
    seed: int = 0,
    plot: Annotated[Path | None, typer.Option(help="Also draw the run (PNG; the analysis extra).")] = None,
    home: Path = Path(".protege/bench-drift"),
) -> None:
    """Drift: intents the student never saw arrive mid-stream. Per window: the student share,
    escalation rate and accuracy of the new intents and the old, the drift alarm, the
    retrain it triggered and the canary's verdict; how long until the student answers the
    new intents half as often as the old; and that no release gate or canary check was skipped."""
    from protege.drift_bench import Request, caught_up, release_checks, split, windows
    from protege.registry import Registry

    pooled = [row for path in data for row in read_jsonl(path)]
    first, second, new = split(pooled, withheld=withheld, before=before, after=after, seed=seed)
    shutil.rmtree(home, ignore_errors=True)
    labels = sorted({r["label"] for r in first + second})
    task = task_from_labels("drift", labels, f"bench drift on {', '.join(p.name for p in data)}")
    task = task.model_copy(
        update={
            "policy": task.policy.model_copy(update={"audit_rate": 0.05, "drift": DRIFT_BENCH_DRIFT}),
            "student": task.student.model_copy(update={"canary": DRIFT_BENCH_CANARY}),
        }
    )
    write_task(task, home / "tasks" / "drift.yaml")
    write_jsonl(first + second, home / "labelled.jsonl")
    env = {
        "PROTEGE_TASKS_DIR": str((home / "tasks").resolve()),
        "PROTEGE_STANDIN_LABELS": str((home / "labelled.jsonl").resolve()),
        "PROTEGE_MIN_CASES": str(min_cases),
        "PROTEGE_RETRAIN_EVERY": str(retrain_every),
        "PROTEGE_TRAINER_THREADS": "1",
        "PROTEGE_THREADS": "1",
    }
    console.print(f"withheld until the second half: {', '.join(new)}")
    drives: dict[str, Drive] = {}
    summary = _stream_run(
        home,
        env,
        {"before": first, "after": second},
        tenant="bench",
        task="drift",
        rate=rate,
        linger=10.0,
        monitor=True,
        keep=drives,
    )
    seen = [
        Request(
            int(o.sent_at * 1000),
            o.label or "",
            o.response.route if o.response else None,
            o.response.label if o.response else None,
            phase,
        )
        for phase, d in drives.items()
        for o in d.outcomes.values()
    ]
    rows = windows(seen, new, size=window, alerts=summary["alerts"], steps=summary["steps"])
    registry = Registry(home.resolve() / "registry")
    manifests = {v.name: v.manifest.model_dump(mode="json") for v in registry.versions("bench", "drift")}
    triggers = {name: m.get("trigger") for name, m in manifests.items()}
    summary |= {
        "withheld": new,
        "windows": rows,
        "requests_until_half_share": caught_up(rows),
        "release_checks": release_checks(summary["steps"], manifests),
        "triggers": triggers,
        "machine": machine(),
        "config": {
            "data": [str(p) for p in data],
            "before": before,
            "after": after,
            "withheld": withheld,
            "window": window,
            "rate": rate,
            "min_cases": min_cases,
            "retrain_every": retrain_every,
            "seed": seed,
            "canary": DRIFT_BENCH_CANARY.model_dump(),
            "drift": DRIFT_BENCH_DRIFT.model_dump(),
            "audit_rate": 0.05,
        },
    }
    report_json.parent.mkdir(parents=True, exist_ok=True)
    report_json.write_text(json.dumps(summary, indent=2))
    _print_drift(summary)
    if plot is not None:
        _plot_drift(summary, plot)
        console.print(f"plot: {plot}")
    console.print(f"report: {report_json}")


def _print_drift(summary: dict[str, Any]) -> None:
    m = summary["machine"]
    standin = "STAND-IN" in summary["teacher"]
    table = Table(
        title=f"bench drift — {m['cpu']}, {m['cores']} cores",
        caption="teacher: OFFLINE STAND-IN (labelled data)" if standin else None,
    )
    for column in ("requests", "phase", "old: student", "old: escalated", "old: accuracy"):
        table.add_column(column, justify="right")
    for column in (
        "new: n",
        "new: student",
        "new: student right",
        "new: escalated",
        "new: accuracy",
        "alarm",
        "versions",
    ):
        table.add_column(column, justify="right")
    for r in summary["windows"]:
        old, new = r["old"], r["new"]
        steps = "; ".join(f"{s['version'][:5]} {s['action']}" for s in r["steps"])
        table.add_row(
            f"{r['from']}-{r['to']}",
            r["phase"],
            _fmt(old["student_share"], pct=True),
            _fmt(old["escalation_rate"], pct=True),
            _fmt(old["accuracy"], pct=True),
            str(new["requests"]),
            _fmt(new["student_share"], pct=True),
            _fmt(new["student_right"], pct=True),
            _fmt(new["escalation_rate"], pct=True),
            _fmt(new["accuracy"], pct=True),
            "FIRING" if r["alarm"] else ("resolved" if r["alerts"] else ""),
            steps,
        )
    Console(width=200).print(table)
    checks = summary["release_checks"]
    console.print(
        f"new intents: {', '.join(summary['withheld'])}\n"
        f"requests after they arrived until the student answered them (rightly) half as often as the old ones: "
        f"{summary['requests_until_half_share'] or 'not within the run'}\n"
        f"versions: {checks['versions_announced']} announced, {checks['trials']} on trial, {checks['promoted']} promoted, "
        f"{checks['rolled_back']} rolled back; release gates and canary checks: "
        f"{'none skipped' if checks['ok'] else '; '.join(checks['problems'])}"
    )
    for name, trigger in summary["triggers"].items():
        console.print(f"  {name}: {trigger}")


def _plot_drift(summary: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = summary["windows"]
    x = [r["to"] for r in rows]
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=110)
    for part, color in (("old", "#2b6cb0"), ("new", "#c05621")):
        share = [r[part]["student_share"] for r in rows]
        esc = [r[part]["escalation_rate"] for r in rows]
        ax.plot(x, share, color=color, marker="o", ms=3, label=f"{part} intents: answered by the student")
        ax.plot(x, esc, color=color, ls="--", lw=1, label=f"{part} intents: escalated")
        if part == "new":
            right = [r[part]["student_right"] for r in rows]
            ax.plot(x, right, color=color, ls=":", lw=1.5, label="new intents: answered by the student, right")
    half = next((r["from"] for r in rows if r["phase"] == "after"), None)
    if half is not None:
        ax.axvline(half, color="#4a5568", lw=1)
        ax.text(half, 1.02, " new intents arrive", fontsize=8, color="#4a5568")
    for r in rows:
        for a in r["alerts"]:
            if a["state"] == "firing":
                ax.axvspan(r["from"], r["to"], color="#c53030", alpha=0.12, lw=0)
        for s in r["steps"]:
            style = {"canary": ":", "serve": "-", "abort": "-."}.get(s["action"], ":")
            ax.axvline(r["to"], color="#2f855a", ls=style, lw=0.8)
    ax.set_xlabel("requests (windows end; green: versions announced, red: drift alarm fired)")
    ax.set_ylim(0, 1.08)
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("protege bench drift: withheld intents arrive mid-stream", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
