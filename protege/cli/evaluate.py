"""Reading the events back for people: ``protege replay`` (what would this student or
policy have done to recorded traffic, and at what cost) and ``protege export`` (a tenant's
events as Parquet)."""

from __future__ import annotations

import asyncio
import json
import re
import time
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from protege.cli.root import TaskName, Tenant, app, console, home, library_logs_to, progress_bar
from protege.errors import BrokerError, ConfigError
from protege.settings import ScorerSettings, Settings
from protege.task import Task, load_task, load_tasks

if TYPE_CHECKING:
    from collections.abc import Sequence

    from protege.events import Ingested
    from protege.recorded import Events, Selection
    from protege.report import Basis, Context, Inputs, Throughput
    from protege.student.runtime import Student

DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_time(value: str | None, option: str) -> int | None:
    """ISO 8601 (UTC when no zone is given) to epoch ms."""
    if value is None:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            f"{option} {value!r}: not an ISO time such as 2026-11-24T09:00 or 2026-11-24"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


OFFSETS = re.compile(r"^(\d+):(\d+)-(\d+)$")


def parse_offsets(value: str | None) -> dict[int, tuple[int, int]] | None:
    """``0:100-200,1:0-50``: per partition of the scored topic, offsets [first, last)."""
    if value is None:
        return None
    spans: dict[int, tuple[int, int]] = {}
    for part in value.split(","):
        m = OFFSETS.match(part.strip())
        if not m or int(m[3]) <= int(m[2]):
            raise typer.BadParameter(f"--offsets {part!r}: PARTITION:FIRST-END with END > FIRST, e.g. 0:100-200,1:0-50")
        if int(m[1]) in spans:
            raise typer.BadParameter(f"--offsets names partition {m[1]} twice")
        spans[int(m[1])] = (int(m[2]), int(m[3]))
    return spans


def selection(
    tenant: str, task: str, since: str | None, until: str | None, last: str | None, offsets: str | None = None
) -> Selection:
    from protege.recorded import Selection

    if offsets is not None:
        if since is not None or until is not None or last is not None:
            raise typer.BadParameter("give --offsets or a time range (--from/--to/--last), not both")
        return Selection(tenant, task, offsets=parse_offsets(offsets))
    since_ms, until_ms = parse_time(since, "--from"), parse_time(until, "--to")
    if last is not None:
        if since is not None:
            raise typer.BadParameter("give --from or --last, not both")
        m = DURATION.match(last)
        if not m:
            raise typer.BadParameter(f"--last {last!r}: a duration such as 90m, 24h or 7d")
        since_ms = int((time.time() - float(m[1]) * UNIT_S[m[2]]) * 1000)
    if since_ms is not None and until_ms is not None and until_ms <= since_ms:
        raise typer.BadParameter("--to must be after --from")
    return Selection(tenant, task, since_ms, until_ms)


Since = Annotated[str | None, typer.Option("--from", help="Requests received at or after (ISO, UTC).")]
Until = Annotated[str | None, typer.Option("--to", help="Requests received before (ISO, UTC).")]
Last = Annotated[str | None, typer.Option(help="Instead of --from: the last 90m, 24h, 7d, ...")]
Offsets = Annotated[
    str | None, typer.Option(help="Instead of times: offsets of the scored topic, PARTITION:FIRST-END,...")
]


def read_selection(settings: Settings, chosen: Selection, source: Path | None) -> Events:
    """A selection's events from the topics, or from a folder ``protege export`` wrote
    (which must hold the same tenant and task)."""
    from protege.recorded import ReplayError, read_events, read_export

    if source is None:
        with console.status(f"reading {chosen.describe()} from {settings.bootstrap_servers}"):
            return asyncio.run(read_events(settings, chosen))
    with console.status(f"reading {source}"):
        events = read_export(source)
    held = (events.selection.tenant, events.selection.task)
    if held != (chosen.tenant, chosen.task):
        raise ReplayError(f"{source} holds {held[0]}/{held[1]}, not {chosen.tenant}/{chosen.task}")
    return events


def candidate_task(
    settings: Settings,
    task: str,
    task_file: Path | None,
    policy: str | None,
    target_accuracy: float | None,
    min_confidence: float | None,
    min_margin: float | None,
    max_ood: float | None,
) -> Task:
    """The task whose policy re-decides: the deployed task file, or another, with overrides."""
    if task_file is not None:
        found = load_task(task_file)
        if found.name != task:
            raise typer.BadParameter(f"--task-file {task_file} defines task {found.name!r}, not {task!r}")
    else:
        tasks = load_tasks(settings.tasks_dir)
        if task not in tasks:
            raise typer.BadParameter(f"no task {task!r} in {settings.tasks_dir} (tasks: {', '.join(sorted(tasks))})")
        found = tasks[task]
    data = found.model_dump()
    pol = data["policy"]
    if policy is not None:
        pol["name"] = policy
    if target_accuracy is not None:
        pol["target_accuracy"] = target_accuracy
    for name, value in (("min_confidence", min_confidence), ("min_margin", min_margin), ("max_ood", max_ood)):
        if value is not None:
            pol["thresholds"][name] = value
    try:
        return Task.model_validate(data)
    except ValueError as e:
        raise typer.BadParameter(f"the policy overrides do not make a valid task: {e}") from None


@app.command("replay")
def replay_command(
    tenant: Tenant,
    task: TaskName,
    since: Since = None,
    until: Until = None,
    last: Last = None,
    version: Annotated[
        str | None, typer.Option(help="Candidate student: a registry version (default: each request's own).")
    ] = None,
    model_dir: Annotated[Path | None, typer.Option(help="Candidate student: a version folder.")] = None,
    rescore: Annotated[
        bool, typer.Option(help="--no-rescore: keep the recorded student outputs, replay the policy only.")
    ] = True,
    task_file: Annotated[Path | None, typer.Option(help="Candidate policy: this task file's.")] = None,
    policy: Annotated[str | None, typer.Option(help="Override the policy: cascade, distill_verify, ...")] = None,
    target_accuracy: Annotated[float | None, typer.Option(help="Override the target accuracy.")] = None,
    min_confidence: Annotated[float | None, typer.Option(help="Override a threshold.")] = None,
    min_margin: Annotated[float | None, typer.Option(help="Override a threshold.")] = None,
    max_ood: Annotated[float | None, typer.Option(help="Override a threshold.")] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the summary as JSON here.")] = None,
    parquet: Annotated[Path | None, typer.Option(help="Write one row per request as Parquet here.")] = None,
    batch: Annotated[int, typer.Option(min=1, help="Requests per ONNX Runtime batch.")] = 64,
    source: Annotated[
        Path | None, typer.Option("--input", help="Replay a folder protege export wrote instead of the topics.")
    ] = None,
    report: Annotated[
        Path | None, typer.Option(help="Also write the replay's report here (HTML; the JSON beside it).")
    ] = None,
    publish: Annotated[
        str | None,
        typer.Option(help="Also write the replay to a namespace of its own: topics PREFIXprotege.scored, ..."),
    ] = None,
    offsets: Offsets = None,
) -> None:
    """What would this student, threshold or policy have done to recorded traffic, and at what cost?

    Reads the topics with no consumer group and writes to none of them.
    """
    from protege.recorded import ReplayError
    from protege.registry import Registry
    from protege.replay import Candidate, replay, write_parquet
    from protege.replay import publish as publish_replay
    from protege.student.runtime import Student

    if version is not None and model_dir is not None:
        raise typer.BadParameter("give --version or --model-dir, not both")
    if not rescore and (version is not None or model_dir is not None):
        raise typer.BadParameter("--no-rescore keeps the recorded outputs: it cannot take a candidate student")
    settings = ScorerSettings()
    library_logs_to(home() / "logs")
    chosen = selection(tenant, task, since, until, last, offsets)
    policy_task = candidate_task(
        settings, task, task_file, policy, target_accuracy, min_confidence, min_margin, max_ood
    )
    registry = Registry.of(settings)

    def load(folder: Path) -> Student:  # as the scorer loads a version
        return Student(folder, providers=settings.providers, threads=settings.threads, sub_batch=settings.sub_batch)

    @cache
    def students(name: str) -> Student:
        found = registry.find(tenant, task, name)
        if found is None:
            known = ", ".join(v.name for v in registry.versions(tenant, task)) or "none"
            raise ReplayError(f"no version {name!r} of {tenant}/{task} in {registry.root} (versions: {known})")
        return load(found.folder)

    try:
        candidate_student = None
        if version is not None:
            candidate_student = students(version)
        elif model_dir is not None:
            try:
                candidate_student = load(model_dir)
            except Exception as e:
                raise ReplayError(f"cannot load a student from {model_dir}: {e}") from e
        cand = Candidate(policy_task, student=candidate_student, rescore=rescore)
        events = read_selection(settings, chosen, source)
        traffic = events.traffic()
        with progress_bar("requests") as bar:
            job = bar.add_task("replay", total=len(traffic.scored))
            result = replay(
                traffic,
                cand,
                students,
                batch=batch,
                redact_pii=settings.redact_pii,
                progress=lambda n: bar.advance(job, n),
            )
        if parquet is not None:
            write_parquet(result.rows, parquet)
        if report is not None:
            from protege.report import Basis, Inputs

            basis = Basis.replayed(result)
            context = report_context(settings, policy_task, tenant, task, events, basis.version)
            write_report(basis, context, Inputs(), report)
        published = None
        if publish is not None:
            with console.status(f"publishing the replay to {publish}protege.*"):
                published = asyncio.run(publish_replay(result, settings, publish))
    except (ConfigError, BrokerError) as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    summary = result.summary()
    print_summary(summary)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(summary, indent=2) + "\n")
    for path in (json_out, parquet, report, None if report is None else report.with_suffix(".json")):
        if path is not None:
            console.print(f"wrote {path}")
    if published is not None:
        counts = ", ".join(f"{n} {name}" for name, n in published.items())
        console.print(f"published {counts} under {publish}protege.* (read back with PROTEGE_TOPIC_PREFIX={publish})")


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.1f}%"


def _usd(x: float | None) -> str:
    return "—" if x is None else f"${x:,.4f}"


def _acc(a: dict[str, Any]) -> str:
    if not a["n"]:
        return "no labels"
    lo, hi = a["interval95"]
    return f"{_pct(a['accuracy'])} [{100 * lo:.1f}-{100 * hi:.1f}] of {a['n']}"


def _estimated(e: dict[str, Any] | None) -> str:
    if e is None:
        return "no audits"
    lo, hi = e["interval95"]
    return f"{_pct(e['accuracy'])} [{100 * lo:.1f}-{100 * hi:.1f}] from {e['audits']} audits"


def _difference(d: dict[str, Any] | None) -> str:
    if d is None:
        return "no reviews"
    lo, hi = d["interval95"]
    return f"{100 * d['difference']:+.1f} pts [{100 * lo:+.1f}, {100 * hi:+.1f}] on {d['n']}"


def print_summary(s: dict[str, Any]) -> None:
    out = Console(width=140)
    rec, rep = s["recorded"], s["replay"]
    table = Table(title=f"replay of {s['requests']} requests ({s['candidate']})")
    for col in ("", "recorded", "replay"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("student share", _pct(rec["student_share"]), _pct(rep["student_share"]))
    table.add_row("escalated", str(rec["escalated"]), str(rep["escalated"]))
    table.add_row("teacher calls", str(rec["teacher_calls"]), str(rep["teacher_calls"]))
    table.add_row("teacher cost", _usd(rec["teacher_cost_usd"]), _usd(rep["teacher_cost_usd"]))
    table.add_row(
        "of which audits",
        f"{rec['audit_calls']} {_usd(rec['audit_cost_usd'])}",
        f"{rep['audit_calls']} {_usd(rep['audit_cost_usd'])}",
    )
    table.add_row("all-teacher cost", _usd(rec["all_teacher_cost_usd"]), _usd(rep["all_teacher_cost_usd"]))
    table.add_row(
        "accepted vs teacher labels (95% CI)", _acc(rec["accepted_vs_teacher"]), _acc(rep["accepted_vs_teacher"])
    )
    table.add_row("accepted vs feedback", _acc(rec["accepted_vs_feedback"]), _acc(rep["accepted_vs_feedback"]))
    table.add_row("accepted without a label", str(rec["accepted_unlabelled"]), str(rep["accepted_unlabelled"]))
    table.add_row(
        "accepted, estimated from audits", _estimated(rec["accepted_estimate"]), _estimated(rep["accepted_estimate"])
    )
    table.add_row("answers vs feedback", _acc(rec["answers_vs_feedback"]), _acc(rep["answers_vs_feedback"]))
    people = rec["answers_vs_people"], rep["answers_vs_people"]
    if people[0] is not None:
        table.add_row("answers vs people (review sample)", *(_acc(p["served"]) for p in people))
        table.add_row("  the teacher vs people", *(_acc(p["teacher"]) for p in people))
        table.add_row("  served minus teacher (95% CI)", *(_difference(p["served_minus_teacher"]) for p in people))
    out.print(table)
    flips = s["flips"]
    out.print(
        "flips: "
        + (", ".join(f"{k} {v}" for k, v in sorted(flips.items())) if flips else "none")
        + f"; same decision as recorded: {s['matched']['count']}/{s['matched']['of']}"
        + (f", their signals within {s['max_signal_deviation']:.0e}" if s["max_signal_deviation"] else "")
        + f"; {s['rescored']} re-scored in {s['seconds']:.1f}s ({s['decisions_per_s']} decisions/s)"
    )
    if rep["accepted_in_sample"]:
        out.print(
            f"{rep['accepted_in_sample']} accepted requests were in the candidate's training data: "
            "left out of its accuracy (in-sample)"
        )
    if rep["training_cases_unknown"]:
        out.print(
            f"[yellow]{rep['training_cases_unknown']} requests were re-scored by a version that kept no list of its "
            "training cases: its accuracy on them may be in-sample[/]"
        )
    reviewers = people[0]["reviewers"] if people[0] is not None else None
    if reviewers is not None and reviewers["rows"]:
        kappa = "-" if reviewers["kappa"] is None else f"{reviewers['kappa']:.2f}"
        out.print(
            f"second opinions: on {reviewers['rows']} requests two or more people labelled, two of them agreed "
            f"{_pct(reviewers['agreement'])} of the time (Fleiss' kappa {kappa}); {people[0]['disputed']} split with "
            "no majority, left out of the rows against people"
        )
    labels = s["teacher_labels"]
    audits = rec["audit_calls"]
    out.print(
        f"labels on record: {labels['count']} from the {labels['source']} ({audits} of them audits), "
        f"{s['feedback_labels']} from feedback (corrections), {s.get('review_labels', 0)} from people's reviews; "
        + (
            "accepted answers without a label are estimated from the audits (a uniform sample by request id)"
            if audits
            else "accepted answers without either are not measured (no audits on record: policy.audit_rate)"
        )
    )


@app.command("export")
def export_command(
    tenant: Tenant,
    task: TaskName,
    out: Annotated[Path, typer.Option(help="Folder for the Parquet files (created).")],
    since: Since = None,
    until: Until = None,
    last: Last = None,
    with_text: Annotated[
        bool, typer.Option(help="Keep texts as sent (default: PII-redacted, as the harvest keeps them).")
    ] = False,
    offsets: Offsets = None,
) -> None:
    """Write one tenant and task's events for a time range as Parquet: scored signals, decisions,
    teacher results with tokens and cost, responses with latency, feedback, harvested cases,
    and requests.parquet joining them per request. Reads with no consumer group."""
    from protege.recorded import read_events, write_export

    settings = Settings()
    library_logs_to(home() / "logs")
    chosen = selection(tenant, task, since, until, last, offsets)
    try:
        with console.status(f"reading {chosen.describe()} from {settings.bootstrap_servers}"):
            events = asyncio.run(read_events(settings, chosen))
        counts = write_export(events, out, with_text=with_text)
    except (ConfigError, BrokerError) as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    console.print(f"exported {chosen.describe()} to {out}")
    table = Table()
    table.add_column("file")
    table.add_column("rows", justify="right")
    for name, n in counts.items():
        table.add_row(f"{name}.parquet", str(n))
    Console(width=120).print(table)
    texts = "as sent" if with_text else "PII-redacted (--with-text keeps them as sent)"
    console.print(f"texts {texts}; {events.unreadable} unreadable records skipped")


@app.command("assess")
def assess_command(
    task: TaskName,
    tenant: Annotated[str | None, typer.Option(help="Recorded traffic of this tenant (from the topics).")] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            "--input",
            help='A JSON Lines file of {"id", "text", "label", "at"?} (teacher answers), or a folder protege '
            "export wrote, instead.",
        ),
    ] = None,
    since: Since = None,
    until: Until = None,
    last: Last = None,
    task_file: Annotated[Path | None, typer.Option(help="The task (labels, checks, target) from this file.")] = None,
    fixed_usd: Annotated[float, typer.Option(help="Input: D + T + M, the one-off cost of distilling.")] = 2000.0,
    core_hour_usd: Annotated[float, typer.Option(help="Input: price of a CPU core-hour for the student.")] = 0.05,
    gpu_hour_usd: Annotated[float, typer.Option(help="Input: price of a GPU-hour, with --gpu-requests-per-s.")] = 3.0,
    gpu_requests_per_s: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Input: the student's requests/s on the GPU it would serve on (benchmarks/scorer.py --provider "
            "cuda there); prices c_s per GPU-hour instead of per core-hour.",
        ),
    ] = None,
    horizon_days: Annotated[float, typer.Option(help="Input: a break-even later than this does not pay.")] = 90.0,
    requests_per_day: Annotated[
        float | None, typer.Option(help="Input: traffic per day, when the cases carry no times.")
    ] = None,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the assessment as JSON here.")] = None,
    threads: Annotated[int, typer.Option(help="ONNX Runtime threads for the learning curve (0: all).")] = 0,
    target_accuracy: Annotated[
        float | None,
        typer.Option(min=0.5, max=0.999, help="The accuracy accepted answers must keep (else the task's)."),
    ] = None,
) -> None:
    """Is this task worth distilling? The five signals (narrow, stable, high-volume, program-like,
    verifiable) with the numbers behind each, and a recommendation. Trains three throwaway
    students (fast recipe) for the learning curve: needs the train extra."""
    from protege.assess import Costs, assess, learning_curve, samples_from_events, samples_from_jsonl
    from protege.costs import cost_usd, price_for
    from protege.events import Usage
    from protege.generator import task_from_labels
    from protege.recorded import read_events, read_export
    from protege.student.backbone import cached_backbone
    from protege.student.runtime import Encoder
    from protege.student.train import EmbeddingCache, FastRecipe
    from protege.teacher import system_prompt

    if (tenant is None) == (source is None):
        raise typer.BadParameter("give --tenant (recorded traffic) or --input (a file), one of them")
    settings = Settings()
    library_logs_to(home() / "logs")
    teacher_costs: list[float] = []
    arrivals_per_day = None
    try:
        if source is not None and source.is_dir():  # a folder protege export wrote
            events = read_export(source)
            samples, teacher_costs, arrivals_per_day = samples_from_events(events)
        elif source is not None:
            samples = samples_from_jsonl(source)
        else:
            assert tenant is not None
            with console.status(f"reading {tenant}/{task} from {settings.bootstrap_servers}"):
                events = asyncio.run(read_events(settings, selection(tenant, task, since, until, last)))
            samples, teacher_costs, arrivals_per_day = samples_from_events(events)
        if task_file is not None:
            the_task = load_task(task_file)
        else:
            tasks = load_tasks(settings.tasks_dir) if settings.tasks_dir.exists() else {}
            labels = sorted({s.label for s in samples})
            the_task = tasks.get(task) or task_from_labels(task, labels)
        if target_accuracy is not None:
            the_task = the_task.model_copy(
                update={"policy": the_task.policy.model_copy(update={"target_accuracy": target_accuracy})}
            )
        price = price_for(the_task.teacher.model)

        def estimate(text: str) -> float:  # ~4 characters a token, a short tool-call answer
            return cost_usd(
                Usage(input_tokens=(len(system_prompt(the_task)) + len(text)) // 4 + 20, output_tokens=40), price
            )

        backbone = cached_backbone()
        recipe = FastRecipe(
            EmbeddingCache(Encoder(backbone / "model.onnx", backbone / "tokenizer.json", threads=threads)), backbone
        )
        with console.status(f"learning curve: three students on 10/30/100% of {len(samples)} cases"):
            curve = learning_curve(the_task, samples, recipe)
        costs = Costs(fixed_usd, core_hour_usd, horizon_days, requests_per_day, gpu_hour_usd, gpu_requests_per_s)
        result = assess(
            the_task,
            samples,
            costs=costs,
            curve=curve,
            teacher_costs=teacher_costs,
            estimate=estimate,
            arrivals_per_day=arrivals_per_day,
        )
    except (ConfigError, BrokerError, ValueError) as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    print_assessment(result)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(result, indent=2) + "\n")
        console.print(f"wrote {json_out}")


def print_assessment(a: dict[str, Any]) -> None:
    out = Console(width=140)
    s = a["signals"]
    table = Table(title=f"assess {a['task']}: {a['cases']} cases, target accuracy {a['target_accuracy']:.0%}")
    for col in ("signal", "measured", "rule", "passes"):
        table.add_column(col)

    def mark(p: bool | None) -> str:
        return "—" if p is None else "yes" if p else "NO"

    n = s["narrow"]
    table.add_row(
        "narrow",
        f"{n['labels']} labels; entropy {n['entropy_bits']} of {n['entropy_of_uniform_bits']} bits; "
        f"top 10% of labels carry {_pct(n['top_10pct_labels_share'])}",
        n["rule"],
        mark(n["passes"]),
    )
    st = s["stable"]
    table.add_row(
        "stable",
        f"label shift (TVD) {st['label_shift_tvd']}" if st["measured"] else st["why"],
        st["rule"],
        mark(st["passes"]),
    )
    v = s["high_volume"]
    per_day = (
        "—" if v["requests_per_day"] is None else f"{v['requests_per_day']:,.0f}/day ({v['requests_per_day_source']})"
    )
    days = "never" if v["breakeven_days"] is None else f"{v['breakeven_days']:g} days"
    table.add_row(
        "high-volume",
        f"{per_day}; q {v['q_escalation_rate']}, c_t ${v['c_t_usd']:.5f} ({v['c_t_source']}), c_s ${v['c_s_usd']:.7f} ({v['c_s_source']}); "
        f"D+T+M ${v['fixed_usd_input']:,.0f} (input): break-even {days}",
        v["rule"],
        mark(v["passes"]),
    )
    curve = "; ".join(
        f"{p['fraction']:.0%} ({p['cases']}): acc {_pct(p['accuracy'])}, coverage {_pct(p['coverage_at_target'])}"
        for p in s["program_like"]["curve"]
    )
    table.add_row("program-like", curve, s["program_like"]["rule"], mark(s["program_like"]["passes"]))
    ver = s["verifiable"]
    table.add_row(
        "verifiable", f"{ver['checks']} checks cover {_pct(ver['share_verifiable'])}", ver["rule"], mark(ver["passes"])
    )
    out.print(table)
    out.print(f"[bold]recommendation: {a['recommendation']}[/] — {a['because']}")


def measure(student: Student, requests: Sequence[Ingested], redact_pii: bool, batch: int = 64) -> Throughput:
    """The student's throughput on recorded requests through the scorer's batched path (one
    warm-up batch first), what c_s is priced from."""
    from protege.redact import redact
    from protege.report import Throughput
    from protege.scoring import score_batch

    clean = redact if redact_pii else str
    score_batch(student, requests[:batch], clean)
    started = time.perf_counter()
    for i in range(0, len(requests), batch):
        score_batch(student, requests[i : i + batch], clean)
    seconds = time.perf_counter() - started
    device = "cuda" if student.providers[0] == "CUDAExecutionProvider" else "cpu"
    return Throughput(student.version, len(requests), seconds, threads=1, batch=batch, device=device)


def report_context(
    settings: ScorerSettings,
    task: Task,
    tenant: str,
    task_name: str,
    events: Events,
    version: str | None,
) -> Context:
    """The task's versions, the announcements and alerts on record (read with the events, from
    the topics or an export), and the student's throughput on up to 1,024 recorded requests."""
    from protege.registry import Registry
    from protege.report import Context
    from protege.student.runtime import Student

    registry = Registry.of(settings)
    versions = registry.versions(tenant, task_name)
    context = Context(task, versions=versions, announcements=events.announcements, alerts=events.alerts)
    found = next((v for v in versions if v.name == version), None)
    if found is not None:
        student = Student(found.folder, providers=settings.providers, threads=1, sub_batch=settings.sub_batch)
        with console.status(f"measuring {found.name}'s throughput on recorded requests (c_s)"):
            requests = [s.request for s in events.scored[:1024]]
            context.throughput = measure(student, requests, settings.redact_pii)
    return context


def write_report(basis: Basis, context: Context, inputs: Inputs, out: Path) -> None:
    from protege.report import build, write

    data = build(basis, context, inputs)
    write(data, out, out.with_suffix(".json"))


@app.command("report")
def report_command(
    tenant: Tenant,
    task: TaskName,
    out: Annotated[Path, typer.Option(help="The HTML page (the JSON is written beside it, .json).")],
    since: Since = None,
    until: Until = None,
    last: Last = None,
    source: Annotated[
        Path | None,
        typer.Option("--input", help="A folder protege export wrote instead of the topics."),
    ] = None,
    distill_usd: Annotated[float, typer.Option(help="Input D: labelling and building the student.")] = 1000.0,
    train_usd: Annotated[float, typer.Option(help="Input T: training runs.")] = 500.0,
    maintain_usd: Annotated[float, typer.Option(help="Input M: retrains and upkeep over the horizon.")] = 500.0,
    core_hour_usd: Annotated[float, typer.Option(help="Input: price of one CPU core for an hour (prices c_s).")] = 0.05,
    buckets: Annotated[int, typer.Option(min=2, max=500, help="Time buckets over the range.")] = 24,
    offsets: Offsets = None,
    gpu_hour_usd: Annotated[
        float,
        typer.Option(help="Input: price of one GPU for an hour (prices c_s where the student is measured on a GPU)."),
    ] = 3.0,
    gpu_requests_per_s: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Input: the student's requests/s on the GPU it serves on, measured there (benchmarks/scorer.py "
            "--provider cuda); prices c_s per GPU-hour instead of this machine's measurement.",
        ),
    ] = None,
) -> None:
    """One self-contained HTML page (plots inline, opens offline) and the same numbers as JSON:
    the coverage curve, student share and escalations over time with the drift band and
    alarms, cost per 1,000 against all-teacher, the break-even horizon, the versions timeline.
    For a replay's report: protege replay ... --report FILE."""
    from protege.report import Basis, Inputs

    settings = ScorerSettings()
    library_logs_to(home() / "logs")
    chosen = selection(tenant, task, since, until, last, offsets)
    inputs = Inputs(distill_usd, train_usd, maintain_usd, core_hour_usd, buckets, gpu_hour_usd, gpu_requests_per_s)
    try:
        the_task = candidate_task(settings, task, None, None, None, None, None, None)
        events = read_selection(settings, chosen, source)
        basis = Basis.recorded(events)
        context = report_context(settings, the_task, tenant, task, events, basis.version)
        write_report(basis, context, inputs, out)
    except (ConfigError, BrokerError) as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(2) from None
    console.print(f"wrote {out} and {out.with_suffix('.json')}")
