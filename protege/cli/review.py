"""The review sample: ``protege review pull`` (requests waiting for a person's label) and
``protege review submit`` (the labels, as reviews on protege.feedback). Reviewed requests,
with the teacher's answer on each, join the task's golden set (``Task.review_rate``)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from pydantic import BaseModel, ValidationError

from protege import signals
from protege.agreement import consensus
from protege.cli.root import TaskName, Tenant, app, console
from protege.errors import BrokerError
from protege.events import Feedback, ReviewItem
from protege.jsonl import DamagedFile
from protege.kafka import Out, Record, publish
from protege.policy import refused, reviewers_wanted
from protege.review import ReviewStore
from protege.settings import Settings
from protege.task import Task, load_tasks

E = TypeVar("E", bound=BaseModel)

review_app = typer.Typer(
    no_args_is_help=True,
    help="The review sample: requests waiting for a person's label; labelled, they grow the golden set.",
)
app.add_typer(review_app, name="review")


async def waiting(settings: Settings, tenant: str, task: Task, source: str | None = None) -> list[ReviewItem]:
    """The review sample's requests of (tenant, task) still short of people's labels, oldest
    first (``short_of_labels``), read from protege.review and protege.feedback."""
    from protege.state import read_all

    items, given = await asyncio.gather(
        read_all(settings, settings.topics.review), read_all(settings, settings.topics.feedback)
    )
    return short_of_labels(_parsed(ReviewItem, items), _parsed(Feedback, given), tenant, task, source)


def _parsed(model: type[E], records: Iterable[Record]) -> Iterator[E]:
    for r in records:
        try:
            yield model.model_validate_json(r.value or b"")
        except ValidationError:
            continue  # the harvester dead-letters a bad review; a bad item is nothing a person can label


def short_of_labels(
    items: Iterable[ReviewItem], given: Iterable[Feedback], tenant: str, task: Task, source: str | None = None
) -> list[ReviewItem]:
    """The items still short of people's labels, in order: one label each, two on the task's
    ``review_overlap`` share (a second opinion), and one more where people disagree (until a
    label has a majority). With ``source``, not those this reviewer labelled already (a second
    opinion is somebody else's)."""
    who: dict[str, dict[str, str]] = {}  # request id -> reviewer -> their (last) label
    for f in given:
        if f.kind == "review" and (f.tenant, f.task) == (tenant, task.name):
            who.setdefault(f.request_id, {})[f.source] = f.label
    out: dict[str, ReviewItem] = {}
    for item in items:
        if (item.tenant, item.task) != (tenant, task.name):
            continue
        labelled = who.get(item.request_id, {})
        enough = len(labelled) >= max(1, reviewers_wanted(item.request_id, task)) and consensus(labelled) is not None
        if not enough and source not in labelled:  # a disputed row waits for a third person
            out.setdefault(item.request_id, item)
    return list(out.values())


@review_app.command("pull")
def pull(
    tenant: Tenant,
    task_name: TaskName,
    out: Annotated[Path | None, typer.Option("--out", help="Write here (default: stdout).")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (0: all).", min=0)] = 0,
    source: Annotated[
        str | None, typer.Option(help="Who will label them: leaves out what this reviewer labelled already.")
    ] = None,
) -> None:
    """The requests of the review sample still without a person's label, as JSON Lines
    ``{request_id, tenant, task, text, label: null}``. Blind: neither the teacher's nor the
    student's answer is shown. Fill in ``label`` (one of the task's answers, or ``oos``) and
    ``protege review submit`` the file; a line left null is skipped."""
    settings = Settings()
    task = _task(settings, task_name)
    try:
        items = asyncio.run(waiting(settings, tenant, task, source))
    except BrokerError as e:
        console.print(f"[red]broker[/]: {e}")
        raise typer.Exit(1) from None
    items = items[:limit] if limit else items
    lines = [
        json.dumps({"request_id": i.request_id, "tenant": i.tenant, "task": i.task, "text": i.text, "label": None})
        for i in items
    ]
    text = "".join(line + "\n" for line in lines)
    if out is None:
        sys.stdout.write(text)
    else:
        out.write_text(text)
    console.print(f"{len(items)} requests of {tenant}/{task_name} wait for a label; answers: {', '.join(task.answers)}")


def reviews(lines: list[str], tasks: dict[str, Task], *, source: str) -> list[Feedback]:
    """Each labelled line as a review, every line checked first: a bad one names its line
    number and nothing is sent (``ValueError``)."""
    out: list[Feedback] = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row: Any = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {n}: not JSON ({e})") from None
        if not isinstance(row, dict):
            raise ValueError(f"line {n}: a line is an object {{request_id, tenant, task, text, label}}")
        if row.get("label") is None:
            continue  # not labelled (yet)
        task = tasks.get(str(row.get("task")))
        if task is None:
            raise ValueError(f"line {n}: no task {row.get('task')!r}; known: {sorted(tasks)}")
        try:
            review = Feedback(
                request_id=row.get("request_id"),
                tenant=row.get("tenant"),
                task=task.name,
                text=row.get("text"),
                label=row["label"],
                source=source,
                kind="review",
            )
        except ValidationError as e:
            raise ValueError(f"line {n}: {e.errors()[0]['loc']}: {e.errors()[0]['msg']}") from None
        why = refused(review, task)  # what the harvester would dead-letter
        if why is not None:
            raise ValueError(f"line {n}: {why[1]}")
        out.append(review)
    return out


@review_app.command("submit")
def submit(
    file: Annotated[Path, typer.Argument(help="JSON Lines from `protege review pull`, labels filled in.")],
    source: Annotated[str, typer.Option(help="Who reviewed (recorded on each review).")] = "reviewer",
) -> None:
    """Publish each labelled line as a review on protege.feedback. Every line is checked first
    (the task, the label among its answers, the request in its review sample): a bad line stops
    the file with its number, and nothing is sent."""
    settings = Settings()
    try:
        found = reviews(file.read_text().splitlines(), load_tasks(settings.tasks_dir), source=source)
    except (OSError, ValueError) as e:
        console.print(f"[red]{file}[/]: {e}")
        raise typer.Exit(1) from None

    asyncio.run(publish(settings, [Out.of(settings.topics.feedback, f) for f in found]))
    console.print(f"{len(found)} reviews sent to {settings.topics.feedback}")


@review_app.command("status")
def status(
    tenant: Tenant,
    task_name: TaskName,
    as_json: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
) -> None:
    """The golden rows the review sample has grown, as the trainer keeps them (under
    PROTEGE_HOME/review: run it where the trainer's home is): rows people completed, those that
    count now, what still waits for a label or for the teacher's answer, disputed rows, people's
    agreement, and every shift the trainer marked (the rows before one no longer count)."""
    settings = Settings()
    task = _task(settings, task_name)
    try:
        got = ReviewStore(settings.home / "review", writer=False).status(tenant, task)
    except DamagedFile as e:
        console.print(f"[red]{e}[/]")
        raise typer.Exit(1) from None
    if as_json:
        sys.stdout.write(json.dumps(got, indent=2) + "\n")
        return
    surge = (
        f", {task.surge_rate:g} while no certified rule lets the student answer"
        if task.surge_rate > task.review_rate
        else ""
    )
    console.print(f"[bold]{tenant}/{task_name}[/]: review_rate {task.review_rate:g}{surge}")
    window = f", the newest {task.review_window} of them certify" if task.review_window else ""
    console.print(
        f"{got['completed']} rows completed (a person's label and the teacher's answer); "
        f"{got['counting']} count now (from row {got['counting_from']}){window}"
    )
    console.print(
        f"waiting: {got['waiting_for_a_label']} for a person's label, {got['waiting_for_the_teacher']} for the "
        f"teacher's answer; {got['disputed']} disputed (people split, no majority)"
    )
    if got["agreement"] is not None:
        kappa = "" if got["kappa"] is None else f" (kappa {got['kappa']:.3f})"
        console.print(f"people agreed on {got['agreement']:.1%} of the rows two labelled{kappa}")
    if not got["shifts"]:
        console.print("no shift marked")
    for mark in got["shifts"]:
        when = "" if "at_ms" not in mark else time.strftime(" at %Y-%m-%d %H:%M:%SZ", time.gmtime(mark["at_ms"] / 1000))
        console.print(f"shift marked{when}: rows from {mark['shift']} on count; {mark.get('why', '')}", markup=False)


def _task(settings: Settings, name: str) -> Task:
    tasks = load_tasks(settings.tasks_dir)
    if name not in tasks:
        console.print(f"[red]no task {name!r}[/] in {settings.tasks_dir}; known: {sorted(tasks)}")
        raise typer.Exit(1)
    return tasks[name]


@review_app.command("serve")
def serve_desk(
    tenant: Tenant,
    task_name: TaskName,
    source: Annotated[str, typer.Option(help="Who reviews (recorded on each review).")] = "reviewer",
    host: Annotated[str, typer.Option(help="Address to listen on (loopback: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: a free one).", min=0, max=65535)] = 8077,
    allow_host: Annotated[
        list[str] | None,
        typer.Option(
            help="Another Host header to answer (name:port as people's browsers send it, e.g. behind a proxy "
            "that authenticates them); repeat for more. The address listened on is always answered."
        ),
    ] = None,
) -> None:
    """A page for labelling the review sample, one request at a time: its text (blind: neither
    the teacher's nor the student's answer), a button per answer. Each label goes to
    protege.feedback as a review, checked as `protege review submit` checks a file, before the
    page moves on. Stop with Ctrl-C."""
    from protege.review_desk import Desk, serve

    settings = Settings()
    task = _task(settings, task_name)

    def send(review: Feedback) -> None:
        with signals.deferred():  # a stop signal waits until the broker has answered
            asyncio.run(publish(settings, [Out.of(settings.topics.feedback, review)]))
        console.print(f"sent: {review.request_id} -> {review.label}")

    try:
        desk = Desk(
            task, tenant, source=source, waiting=lambda: asyncio.run(waiting(settings, tenant, task, source)), send=send
        )
    except BrokerError as e:
        console.print(f"[red]broker[/]: {e}")
        raise typer.Exit(1) from None
    server = serve(desk, host, port)
    bound = server.server_address[1]
    names = {host, "127.0.0.1", "localhost"} if host in ("127.0.0.1", "localhost") else {host}
    desk.hosts = {f"{name}:{bound}" for name in names} | {h.lower() for h in allow_host or []}
    console.print(
        f"review desk for {tenant}/{task_name} at http://{host}:{bound}/ ({len(desk.items)} waiting); Ctrl-C stops it"
    )
    # Ctrl-C or SIGTERM stops it (both, whatever the shell left SIGINT as: a job started in
    # the background ignores it, seen in CI); the desk's end is its normal end, status 0.
    try:
        with signals.interruptible():
            server.serve_forever()
    except KeyboardInterrupt:
        signals.forget_interrupt()
    finally:
        server.server_close()
        console.print(f"{len(desk.labelled)} reviews sent to {settings.topics.feedback}")
