"""Data commands: labelling through the Message Batches API, the event schemas, the demo's
ticket generator."""

from __future__ import annotations

# ONNX Runtime, scikit-learn, torch and the Anthropic SDK are imported by the commands that use them:
# every other command starts without them.
import asyncio
import json
from pathlib import Path
from typing import Annotated

import typer

from protege.cli.root import app, console, progress_bar, schemas_app
from protege.costs import price_table
from protege.events import EVENTS, schema_of
from protege.generator import generate, read_jsonl, write_jsonl
from protege.labelling import label_with_batches
from protege.settings import REPO, TeacherSettings
from protege.task import load_tasks

# -- offline labelling ----------------------------------------------------------------


@app.command("label")
def label_cmd(
    task_name: Annotated[str, typer.Option("--task", help="Task name (a file in PROTEGE_TASKS_DIR).")],
    input: Annotated[Path, typer.Option(help="JSON Lines with id and text.")],
    output: Annotated[Path, typer.Option(help="Labelled JSON Lines (id, text, label, rationale, teacher).")],
    poll: Annotated[float, typer.Option(help="Seconds between progress polls.")] = 30.0,
    model: Annotated[str | None, typer.Option(help="Teacher model (default: the task's).")] = None,
    golden: Annotated[
        bool,
        typer.Option(
            help="The input is a golden set with trusted labels: keep each row's label, add the teacher's answer "
            "as `teacher`, and measure the teacher's accuracy on it (the task's `golden` file)."
        ),
    ] = False,
) -> None:
    """Label a golden or bootstrap set with the teacher through the Message Batches API (half price)."""
    import anthropic

    settings = TeacherSettings()
    key = settings.api_key()
    if not key:
        raise typer.BadParameter("labelling calls the Message Batches API: set ANTHROPIC_API_KEY (no stand-in here)")
    task = load_tasks(settings.tasks_dir)[task_name]
    rows = read_jsonl(input)
    if golden:
        # Checked before a cent is spent: every row carries a trusted label the task knows.
        bad = [r.get("id") for r in rows if str(r.get("label")) not in task.answers]
        if bad:
            raise typer.BadParameter(
                f"--golden: {len(bad)} row(s) without a label among the task's answers, e.g. ids {bad[:5]}"
            )
    client = anthropic.AsyncAnthropic(
        api_key=key, base_url=settings.anthropic_base_url, max_retries=settings.max_retries, timeout=settings.timeout_s
    )
    with progress_bar("rows", every=None) as bar:  # in a log, its own line per poll
        job = bar.add_task("labelling (Message Batches API)", total=len(rows))
        report = asyncio.run(
            label_with_batches(
                client,
                task,
                rows,
                model=model,
                poll_s=poll,
                prices=price_table(settings.prices),
                progress=None if console.is_terminal else lambda line: console.print(line, highlight=False),
                counts=lambda done, total: bar.update(job, completed=done, total=total),
            )
        )
    if golden:
        said = {str(r["id"]): r["label"] for r in report.labelled}
        kept = [r for r in rows if str(r["id"]) in said]
        write_jsonl([{**r, "label": str(r["label"]), "teacher": said[str(r["id"])]} for r in kept], output)
        right = sum(said[str(r["id"])] == str(r["label"]) for r in kept)
        console.print(
            f"the teacher ({model or task.teacher.model}) answered {right}/{len(kept)} golden rows as the "
            f"trusted label: accuracy {right / max(1, len(kept)):.1%}"
        )
    else:
        write_jsonl(report.labelled, output)
    errors = output.with_suffix(".errors.jsonl")
    write_jsonl(report.failed, errors)
    console.print(
        f"labelled {len(report.labelled)}/{len(rows)} into {output}; {len(report.failed)} failed "
        f"({errors}); cost ${report.cost_usd:.4f} at the batch price; batches {report.batch_ids}"
    )


# -- schemas ------------------------------------------------------------------------


@schemas_app.command("export")
def schemas_export(out: Path = REPO / "schemas") -> None:
    """Write schemas/<event>.v1.schema.json from the event models."""

    out.mkdir(parents=True, exist_ok=True)
    for name in EVENTS:
        (out / f"{name}.v1.schema.json").write_text(json.dumps(schema_of(name), indent=2) + "\n")
    typer.echo(f"wrote {len(EVENTS)} schemas to {out}")


@app.command("generate")
def generate_cmd(n: int = 600, seed: int = 7, out: Path = Path("tickets.jsonl")) -> None:
    """Write generated, labelled support tickets as JSON Lines."""

    write_jsonl(generate(n, seed), out)
    typer.echo(f"wrote {n} tickets to {out}")
