"""Student versions: ``protege models ...`` (which one serves, through announcements) and
``protege train`` (one gated version)."""

from __future__ import annotations

# ONNX Runtime, scikit-learn, torch and the Anthropic SDK are imported by the commands that use them:
# every other command starts without them.
import asyncio
import contextlib
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from protege.audits import against_golden, live_accuracy, read_audits, read_live_accuracy
from protege.canary import candidate
from protege.cli.root import TaskName, Tenant, app, console, models_app, progress_bar
from protege.errors import BrokerError
from protege.events import ModelAnnouncement, TeacherResult, now_ms
from protege.generator import read_jsonl
from protege.kafka import Out, publish
from protege.registry import Registry, Version
from protege.serving import Serving, read_serving
from protege.settings import Settings
from protege.student.finetune import FinetuneConfig
from protege.student.manifest import Target
from protege.task import load_tasks

# -- models -------------------------------------------------------------------------


def _serving(settings: Settings) -> Serving:
    return asyncio.run(read_serving(settings))


def _announce(settings: Settings, ann: ModelAnnouncement) -> None:
    asyncio.run(publish(settings, [Out.of(settings.topics.models, ann)]))


@models_app.command("list")
def models_list(
    tenant: Annotated[str | None, typer.Option(help="Tenant (default: every tenant in the registry).")] = None,
    task_name: Annotated[str | None, typer.Option("--task", help="Task name (default: every task).")] = None,
) -> None:
    """Every version in the registry: its metrics, the target it was certified for and the
    coverage certified there, its live accuracy from audits, and which one serves (from
    protege.models: without a broker the registry is listed all the same, serving unknown)."""
    settings = Settings()
    registry = Registry.of(settings)
    pairs = [(t, k) for t, k in registry.tasks() if tenant in (None, t) and task_name in (None, k)]
    if tenant is not None and task_name is not None and not pairs:
        pairs = [(tenant, task_name)]  # an empty table says there is nothing, under the name asked for
    if not pairs:
        console.print(
            f"no versions in {registry.root}"
            + (f" for {tenant or '*'}/{task_name or '*'}" if tenant or task_name else "")
        )
        return
    unknown = None
    try:
        serving: Serving | None = _serving(settings)
    except BrokerError as e:
        serving, unknown = None, f"which version serves is not known: {e}"
    audits: list[TeacherResult] = []
    if serving is not None:  # the broker answered a moment ago: the audits, read once for every task
        with contextlib.suppress(BrokerError):
            audits = asyncio.run(read_audits(settings))
    for t, k in pairs:
        models_table(registry, serving, live_accuracy(audits, t, k), t, k)
    if unknown:
        console.print(f"[yellow]{unknown}[/]")


def models_table(
    registry: Registry, serving: Serving | None, live: dict[str, Any], tenant: str, task_name: str
) -> None:
    """One tenant and task's versions (``serving`` None: which one serves is not known; ``live``:
    its versions' audited accuracy)."""
    now = serving.serving(tenant, task_name) if serving else None
    table = Table(
        title=f"{tenant}/{task_name}",
        caption="golden acc: against the teacher's labels; truth acc: against the task's trusted golden set "
        "(the teacher's own in brackets; rows from the review sample: reviewed); live: audited answers the teacher agreed with "
        "(audits), vs what the golden rows its rule accepts predicted (flagged when surely less: the golden rows are easier "
        "than the traffic)",
    )
    for col in (
        "version",
        "created",
        "recipe",
        "cases",
        "golden acc",
        "truth acc (teacher)",
        "macro-F1",
        "ECE",
        "target",
        "coverage at target",
        "live",
        "gates",
        "serving",
    ):
        table.add_column(col)
    for v in registry.versions(tenant, task_name):
        man = v.manifest
        m = man.metrics
        mark = "?" if serving is None else ""
        if serving is not None and now and now.version == v.name:
            mark = "pinned" if serving.is_pinned(tenant, task_name) else "yes"
        trial = serving.canary(tenant, task_name) if serving else None
        if trial is not None and trial.version == v.name:
            mark = f"canary {trial.share:.0%}"
        target = man.acceptance_target
        audited = live.get(v.name)
        table.add_row(
            v.name,
            man.created_at,
            f"{man.recipe.get('kind', '-')}/{man.precision}"
            + (f", {man.recertified_from.split('-')[0]} re-certified" if man.recertified_from else ""),
            str(man.data.cases),
            f"{m['golden_accuracy']:.3f}",
            truth_text(m),
            f"{m['golden_macro_f1']:.3f}",
            f"{m['golden_ece']:.3f}",
            target_text(target),
            f"{m['golden_coverage']:.3f}" if man.acceptance is not None else "none certified",
            live_text(audited, m),
            "passed" if man.gates.passed else "held back",
            mark,
        )
    Console(width=170).print(table)


def live_text(audited: dict[str, Any] | None, m: dict[str, float]) -> str:
    """``0.963 (82) vs 0.968 golden``: audited agreement, and what the golden rows predicted,
    flagged when the audits find surely less (``protege.audits.against_golden``)."""
    if audited is None:
        return "-"
    text = f"{audited['accuracy']:.3f} ({audited['audits']})"
    check = against_golden(audited, m)
    if check is None:
        return text
    text += f" vs {check['predicted']:.3f} golden"
    return f"[yellow]{text}: golden rows easier than traffic[/]" if check["easier"] else text


def truth_text(m: dict[str, float]) -> str:
    """``0.946 (0.950) on 120, 37 reviewed``: the version against the trusted golden set, the
    teacher's accuracy there, the set's size and how many of its rows came from the review sample."""
    if "truth_accuracy" not in m:
        return "-"
    text = f"{m['truth_accuracy']:.3f} ({m['truth_teacher_accuracy']:.3f}) on {int(m['truth_cases'])}"
    reviewed = int(m.get("truth_reviewed", 0))
    return f"{text}, {reviewed} reviewed" if reviewed else text


def target_text(target: Target) -> str:
    """``0.970 @ 95%`` (absolute) or ``teacher -0.010 @ 95%`` (relative to the teacher), and the
    false-accept cap when the policy sets one."""
    if target.target_margin is not None:
        text = f"teacher -{target.target_margin:.3f} @ {target.confidence_level:.0%}"
    elif target.target_accuracy is not None:
        text = f"{target.target_accuracy:.3f} @ {target.confidence_level:.0%}"
    else:
        return "-"
    cap = target.max_false_accepts
    return text if cap is None else f"{text}; oos in scope <= {cap:.1%}"


@models_app.command("show")
def models_show(
    version_name: Annotated[str, typer.Argument(help="Version, e.g. v0003.")], tenant: Tenant, task_name: TaskName
) -> None:
    """A version's manifest, and its live accuracy from audits (when the broker is reachable)."""
    settings = Settings()
    v = Registry.of(settings).version(tenant, task_name, version_name)
    shown = v.manifest.model_dump(mode="json")
    try:
        live = asyncio.run(read_live_accuracy(settings, tenant, task_name)).get(v.name)
        shown["live_accuracy"] = live or {"audits": 0, "why": "no audited answers on record (policy.audit_rate)"}
        if (check := against_golden(live, v.manifest.metrics)) is not None:
            shown["live_accuracy"]["against_golden"] = check
    except BrokerError as e:
        shown["live_accuracy"] = {"audits": None, "why": str(e)}
    typer.echo(json.dumps(shown, indent=2))


def _gated(settings: Settings, tenant: str, task_name: str, version_name: str, force: bool) -> Version:
    """The version, refused when it failed its release gates (unless ``force``)."""
    v = Registry.of(settings).version(tenant, task_name, version_name)
    failed = v.manifest.gates.failed
    if failed and not force:
        raise typer.BadParameter(f"{v.name} failed its release gates: {'; '.join(failed)} (--force serves it anyway)")
    return v


def _serve(version_name: str, tenant: str, task_name: str, pin: bool, force: bool = False) -> None:
    settings = Settings()
    v = _gated(settings, tenant, task_name, version_name, force)
    _announce(settings, v.announcement(pin=pin))
    console.print(
        f"{tenant}/{task_name}: {v.name} announced{' and pinned' if pin else ''}; running scorers swap to "
        f"it without a restart"
    )


Force = Annotated[bool, typer.Option(help="Serve a version that failed its release gates.")]


@models_app.command("promote")
def models_promote(version_name: str, tenant: Tenant, task_name: TaskName, force: Force = False) -> None:
    """Serve VERSION now; the trainer's next version replaces it as usual."""
    _serve(version_name, tenant, task_name, pin=False, force=force)


@models_app.command("canary")
def models_canary(
    version_name: str,
    tenant: Tenant,
    task_name: TaskName,
    share: Annotated[float, typer.Option(min=0.01, max=0.5, help="Share of requests it answers on trial.")] = 0.1,
    force: Force = False,
) -> None:
    """Put VERSION on trial for a share of requests; the trainer judges it on the audits
    (task's student.canary settings) and promotes it or rolls it back by itself."""
    settings = Settings()
    now = _serving(settings)
    if now.serving(tenant, task_name) is None:
        raise typer.BadParameter(f"{tenant}/{task_name} has no serving version to compare with: promote one")
    if now.is_pinned(tenant, task_name):
        raise typer.BadParameter(f"{tenant}/{task_name} is pinned: a pin stops canaries (protege models unpin)")
    v = _gated(settings, tenant, task_name, version_name, force)
    ann = v.announcement(pin=False).model_copy(
        update={"action": "canary", "share": share, "reason": f"put on trial by an operator for {share:.0%}"}
    )
    _announce(settings, ann)
    console.print(f"{tenant}/{task_name}: {v.name} on trial for {share:.0%} of requests; the trainer decides")


@models_app.command("pin")
def models_pin(version_name: str, tenant: Tenant, task_name: TaskName, force: Force = False) -> None:
    """Serve VERSION and ignore the trainer's new versions until `protege models unpin`."""
    _serve(version_name, tenant, task_name, pin=True, force=force)


@models_app.command("rollback")
def models_rollback(tenant: Tenant, task_name: TaskName) -> None:
    """Serve the version that served before the current one, pinned."""
    history = _serving(Settings()).history(tenant, task_name)
    if len(history) < 2:
        raise typer.BadParameter(f"{tenant}/{task_name} has no earlier served version (history: {history})")
    _serve(history[-2], tenant, task_name, pin=True, force=True)  # it served before: its gates were passed then


@models_app.command("unpin")
def models_unpin(tenant: Tenant, task_name: TaskName) -> None:
    """Let the trainer's next version serve again."""
    settings = Settings()
    now = _serving(settings).serving(tenant, task_name)
    _announce(
        settings,
        ModelAnnouncement(
            tenant=tenant,
            task=task_name,
            version=now.version if now else "none",
            path="-",
            labels=[],
            metrics={},
            trained_on=1,
            source="operator",
            action="unpin",
            announced_at_ms=now_ms(),
        ),
    )
    console.print(f"{tenant}/{task_name}: unpinned; the trainer's next version will serve")


# -- training -----------------------------------------------------------------------


@app.command("train")
def train_cmd(
    task_name: Annotated[str, typer.Option("--task", help="Task name (a file in PROTEGE_TASKS_DIR).")],
    tenant: Tenant,
    input: Annotated[
        Path | None,
        typer.Option(
            help="Cases as JSON Lines (request_id or id, text, label); "
            "default: the trainer's harvest for this tenant and task."
        ),
    ] = None,
    recipe: Annotated[
        str, typer.Option(help="fast (frozen encoder + logreg, seconds) or finetune (LP-FT, minutes).")
    ] = "fast",
    epochs: Annotated[int, typer.Option(help="finetune: epochs.")] = 4,
    lr: Annotated[float, typer.Option(help="finetune: encoder learning rate.")] = 1e-4,
    oos_weight: Annotated[
        float,
        typer.Option(help="finetune: how many times the loss of a case labelled oos counts (1: plain cross-entropy)."),
    ] = FinetuneConfig.oos_weight,
    golden: Annotated[Path | None, typer.Option(help="A fixed golden set (JSON Lines) for the gates.")] = None,
    announce: Annotated[
        bool,
        typer.Option(
            help="Gate against the serving version and announce on protege.models if the gates pass (needs the broker)."
        ),
    ] = False,
) -> None:
    """Train one student version (the scheduled full fine-tune, or a fast retrain by hand)."""
    from protege.review import ReviewStore
    from protege.student.backbone import cached_backbone, source_dir
    from protege.student.runtime import Encoder
    from protege.student.train import (
        Case,
        EmbeddingCache,
        FastRecipe,
        FinetuneRecipe,
        Recipe,
        read_golden,
        train_version,
    )

    settings = Settings()
    task = load_tasks(settings.tasks_dir)[task_name]
    path = input or settings.home / "harvest" / tenant / f"{task_name}.jsonl"
    if not path.exists():
        raise typer.BadParameter(f"no cases at {path}")

    def cases_of(p: Path) -> list[Case]:
        return [
            Case(str(r.get("request_id", r.get("id"))), r["text"], str(r["label"]), str(r.get("source", "teacher")))
            for r in read_jsonl(p)
        ]

    bar = progress_bar("examples")
    job = bar.add_task("fine-tune", total=None, visible=recipe == "finetune")
    backbone = cached_backbone()
    embed = EmbeddingCache(Encoder(backbone / "model.onnx", backbone / "tokenizer.json"))
    chosen: Recipe
    if recipe == "fast":
        chosen = FastRecipe(embed, backbone)
    elif recipe == "finetune":
        chosen = FinetuneRecipe(
            embed, backbone, source_dir(), FinetuneConfig(epochs=epochs, lr=lr, oos_weight=oos_weight)
        )
        chosen.on_batch = lambda epoch, done, planned: bar.update(
            job, completed=done, total=planned, description=f"fine-tune, epoch {epoch}/{epochs}"
        )
    else:
        raise typer.BadParameter(f"recipe must be fast or finetune, not {recipe!r}")
    registry = Registry.of(settings)
    serving = None
    if announce:
        view = _serving(settings)
        if (on_trial := view.canary(tenant, task_name)) is not None:
            # one candidate on trial at a time, as the trainer keeps it: minutes of training for
            # nothing otherwise (the CronJob runs again on its schedule)
            console.print(f"[yellow]{on_trial.version} is on trial for {tenant}/{task_name}: not training now[/]")
            raise typer.Exit(3)
        now = view.serving(tenant, task_name)
        found = registry.find(tenant, task_name, now.version) if now is not None else None
        serving = found.folder if found is not None else None
    cases = cases_of(path)
    trigger = f"{len(cases)} cases, the {recipe} recipe (protege train)"
    with bar:
        result = train_version(
            cases,
            recipe=chosen,
            registry=registry.root,
            tenant=tenant,
            task=task,
            serving=serving,
            golden=cases_of(golden) if golden else None,
            # the task's golden file and the rows people reviewed on live traffic, as the trainer service
            truth=ReviewStore(settings.home / "review", writer=False).truth(
                tenant, task, read_golden(settings.tasks_dir / task.golden, task) if task.golden else ()
            ),
            trigger=trigger,
        )
    typer.echo(
        json.dumps(
            {
                "version": result.version,
                "folder": str(result.folder),
                "promoted": result.promoted,
                "reason": result.reason,
                "metrics": result.metrics,
            },
            indent=2,
        )
    )
    if announce and result.promoted:
        if (on_trial := _serving(settings).canary(tenant, task_name)) is not None:
            console.print(
                f"[yellow]{on_trial.version} went on trial while this one trained: {result.version} stays in the "
                "registry, not announced (protege models promote, once the trial is judged)[/]"
            )
            raise typer.Exit(3)
        ann = candidate(
            tenant,
            task,
            result.version,
            result.folder,
            serving=serving,
            trigger=trigger,
            labels=result.labels,
            metrics=result.metrics,
            trained_on=len(cases),
        )
        _announce(settings, ann)
        step = f"on trial for {ann.share:.0%} of requests" if ann.action == "canary" else "serves"
        console.print(f"{tenant}/{task_name}: {result.version} announced ({step})")
    elif not result.promoted:
        raise typer.Exit(3)
