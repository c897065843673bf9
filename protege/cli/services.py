"""Commands that run things: the embedded broker, one service, all of them (``up``), and
looking at them (``health``, ``topics``, ``trace``)."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import runpy
import sys
import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from protege.broker.embedded import EmbeddedBroker
from protege.cli.root import (
    Fused,
    OneHop,
    app,
    broker_app,
    console,
    home,
    layout_env,
    library_logs_to,
    stops_on_signals,
)
from protege.errors import ConfigError
from protege.kafka import ensure_topics
from protege.pipeline import LocalPipeline
from protege.settings import Settings
from protege.supervisor import DEPLOYED, with_replicas
from protege.task import load_tasks
from protege.trace import trace

# -- broker -------------------------------------------------------------------------


@broker_app.command("start")
def broker_start(
    home: Annotated[Path, typer.Option(help="Broker state folder.")] = Path(".protege/broker"),
    port: Annotated[int, typer.Option(help="Port (0: a free one).")] = 0,
) -> None:
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


RUNNABLE = DEPLOYED


@app.command("run")
def run(service: Annotated[str, typer.Argument(help=f"One of: {', '.join(RUNNABLE)}.")]) -> None:
    """Run one service in the foreground (settings from PROTEGE_* environment variables)."""
    if service not in RUNNABLE:
        raise typer.BadParameter(f"unknown service {service!r}; choose from {RUNNABLE}")
    sys.argv = [f"protege_services.{service}"]
    runpy.run_module(f"protege_services.{service}", run_name="__main__")


@app.command("health")
def health(
    service: str, max_age: Annotated[float, typer.Option(help="Seconds since the last heartbeat.")] = 60.0
) -> None:
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

    settings = Settings()
    asyncio.run(ensure_topics(settings))
    typer.echo("\n".join(settings.topics.all()))


@app.command("trace")
def trace_request(
    request_id: Annotated[str, typer.Argument(help="The request's id.")],
    minutes: Annotated[float, typer.Option(help="How far back to look.")] = 60.0,
    tenant: Annotated[
        str | None, typer.Option(help="Only this tenant's events (ids may repeat across tenants).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the events as JSON Lines.")] = False,
) -> None:
    """Follow one request across the services: every event that carries its id, in order."""

    settings = Settings()
    since = int((time.time() - minutes * 60) * 1000)
    steps = asyncio.run(trace(settings, request_id, since_ms=since, tenant=tenant))
    if not steps:
        console.print(f"no event carries {request_id!r} in the last {minutes:g} minutes")
        raise typer.Exit(1)
    if as_json:
        for step in steps:
            typer.echo(
                json.dumps({"at_ms": step.at_ms, "topic": step.topic, "writer": step.writer, "event": step.event})
            )
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
def up(
    standin_labels: Annotated[Path | None, typer.Option(help="Labelled JSON Lines for the offline teacher.")] = None,
    bootstrap: Annotated[str | None, typer.Option(help="Use this broker instead of the embedded one.")] = None,
    replicas: Annotated[
        str,
        typer.Option(
            help="Replicas per service, e.g. scorer=3,verifier=2 (others: 1); "
            "new topics get as many partitions as the most replicas."
        ),
    ] = "",
    brokers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Embedded Kafka nodes: 3 runs a replicated cluster (every partition on 3 nodes, "
            "min.insync.replicas 2), so one node can stop without stopping protege.",
        ),
    ] = 1,
    monitor: Annotated[
        bool, typer.Option(help="Also run the monitor (windowed statistics on /metrics; the monitor extra).")
    ] = True,
    fused: Fused = False,
    one_hop: OneHop = False,
    profile: Annotated[
        Path | None,
        typer.Option(
            help="Run each service under py-spy (the dev extra); when they stop, DIR/<service>.txt holds its "
            "samples and `protege up` prints where each one's CPU went."
        ),
    ] = None,
    metrics_port: Annotated[
        int,
        typer.Option(
            min=0,
            max=65000,
            help="Serve /metrics from each process on its own port from this one up (0: off), and write a "
            "Prometheus configuration that scrapes them all ($PROTEGE_HOME/prometheus.yml).",
        ),
    ] = 0,
) -> None:
    """Start the embedded broker and the six services (and the monitor); restart crashed ones;
    Ctrl-C stops all."""
    if monitor and importlib.util.find_spec("faust") is None:
        console.print("[yellow]the monitor needs the monitor extra (pip install 'protege[monitor]'): not started[/]")
        monitor = False
    if not monitor:
        warn_trials_wait(Settings().tasks_dir)
    try:
        counts = {k.strip(): int(v) for k, v in (part.split("=") for part in replicas.split(",") if part.strip())}
        names = with_replicas(counts) + (["monitor"] if monitor else [])
    except ValueError as e:
        raise typer.BadParameter(f"--replicas {replicas!r}: {e}") from None
    env = {"PROTEGE_STANDIN_LABELS": str(standin_labels.resolve())} if standin_labels else {}
    env |= layout_env(fused, one_hop)
    library_logs_to(home() / "logs")
    try:
        with (
            stops_on_signals("the services and the broker were stopped"),
            LocalPipeline(
                home(),
                env=env,
                bootstrap=bootstrap,
                broker_home=Path(".protege/broker" if brokers == 1 else f".protege/cluster-{brokers}"),
                brokers=brokers,
                services=names,
                partitions=max([Settings().partitions, *counts.values()]),
                profile=profile.resolve() if profile else None,
                metrics_port=metrics_port,
                topic_prefix=Settings().topic_prefix,
            ) as p,
        ):
            console.print(
                f"[bold]up[/]: broker {p.bootstrap}, services {', '.join(p.supervisor.services if p.supervisor else names)}; logs in {home() / 'logs'}"
            )
            if p.supervisor and p.supervisor.metrics_ports:
                ports = ", ".join(f"{n} :{port}" for n, port in p.supervisor.metrics_ports.items())
                console.print(f"/metrics: {ports}; prometheus --config.file {p.prometheus_config}")
            while True:
                assert p.supervisor is not None
                for name in p.supervisor.poll():
                    console.print(f"restarted {name}")
                time.sleep(0.5)
    finally:
        if profile is not None:
            print_profiles(profile)


def warn_trials_wait(tasks_dir: Path) -> None:
    """Without the monitor nothing judges a canary: say which tasks put new versions on trial."""
    try:
        tasks = load_tasks(tasks_dir)
    except ConfigError:
        return  # the services say what is wrong with the task files
    for task in tasks.values():
        if (share := task.student.canary.share) > 0:
            console.print(
                f"[yellow]{task.name} puts each new version on trial for {share:.0%} of requests "
                "(student.canary.share); without the monitor a trial waits for `protege models promote` "
                "or `rollback`[/]"
            )


def print_profiles(folder: Path) -> None:
    """Where each service's CPU went, from the py-spy samples its stop wrote."""
    from protege.profiles import Profile

    for path in sorted(folder.glob("*.txt")):
        prof = Profile.read(path)
        parts = ", ".join(f"{part} {100 * share:.0f}%" for part, share in list(prof.shares().items())[:6])
        console.print(
            f"{path.stem}: {prof.samples} samples at work ({prof.idle} waiting, {prof.startup} starting): {parts}"
        )
