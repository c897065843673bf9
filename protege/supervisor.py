"""Supervising the six services as child processes (``protege up``, the demo, the bench).

Each service is ``python -m protege_services.<name>`` in its own process group with its log in
``<logs>/<name>.log``. Replicas of a service are named ``<service>-2``, ``<service>-3``, ...:
the same module in the same consumer group, each with its own ``PROTEGE_INSTANCE``. A child that exits unexpectedly is restarted with backoff; ``stop``
sends SIGTERM to all, waits, then SIGKILLs what is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from protege import signals

SERVICES = ["ingestion", "scorer", "verifier", "teacher", "harvester", "trainer"]
DEPLOYED = [*SERVICES, "monitor"]  # compose, k8s and protege up also run the monitor


def on(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def fused(env: Mapping[str, str]) -> bool:
    """The fused layout (``PROTEGE_FUSED``): the scorer decides, and no verifier runs."""
    return on(env, "PROTEGE_FUSED")


def one_hop(env: Mapping[str, str]) -> bool:
    """The one-hop layout (``PROTEGE_ONE_HOP``): the scorer ingests and decides, and neither
    ingestion nor a verifier runs."""
    return on(env, "PROTEGE_ONE_HOP")


def layout(names: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """The processes to run: ``names`` without the verifiers when the layout is fused, and
    without ingestion either when it is one hop."""
    left_out = {"verifier"} if fused(env) else set()
    left_out |= {"ingestion", "verifier"} if one_hop(env) else set()
    return [n for n in names if service_of(n) not in left_out]


def service_of(name: str) -> str:
    """``verifier-2`` -> ``verifier``."""
    base, _, number = name.rpartition("-")
    return base if base and number.isdigit() else name


def with_replicas(replicas: dict[str, int]) -> list[str]:
    """The process names for ``{"verifier": 3}``: verifier, verifier-2, verifier-3 (others once)."""
    unknown = set(replicas) - set(SERVICES)
    if unknown:
        raise ValueError(f"no such service: {sorted(unknown)}; choose from {SERVICES}")
    return [name if i == 1 else f"{name}-{i}" for name in SERVICES for i in range(1, replicas.get(name, 1) + 1)]


def profiled(command: list[str], out: Path) -> list[str]:
    """``command`` launched by py-spy (which samples only processes it started, here), its
    samples written to ``out`` as collapsed stacks when the process exits. py-spy itself
    ignores SIGTERM, so that a stop reaches the service, which exits, and py-spy then writes;
    the service installs its own handler."""
    spy = Path(sys.executable).with_name("py-spy")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = [str(spy) if spy.exists() else "py-spy", "record", "--nonblocking", "--rate", "100", "--format", "raw"]
    return ["sh", "-c", 'trap "" TERM; exec "$@"', "sh", *record, "--output", str(out), "--", *command]


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    started: float
    restarts: int = 0


@dataclass
class Supervisor:
    env: dict[str, str]
    logs: Path
    services: list[str] = field(default_factory=lambda: list(SERVICES))
    children: dict[str, Child] = field(default_factory=dict)
    retired: list[Child] = field(default_factory=list)  # removed replicas still finishing
    max_restarts: int = 20
    profile: Path | None = None  # run each process under py-spy, its samples in profile/<name>.txt
    metrics_ports: dict[str, int] = field(default_factory=dict)  # process name -> its /metrics port

    def _spawn(self, name: str) -> subprocess.Popen[bytes]:
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**self.env, "PROTEGE_INSTANCE": f"{socket.gethostname()}-{name}"}
        if name in self.metrics_ports:
            env["PROTEGE_METRICS_PORT"] = str(self.metrics_ports[name])
        command = [sys.executable, "-m", f"protege_services.{service_of(name)}"]
        if self.profile is not None:
            command = profiled(command, self.profile / f"{name}.txt")
        with open(self.logs / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                command,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    def add(self, name: str) -> None:
        """Start one more process (a replica: ``verifier-3``) beside the running ones."""
        with signals.deferred():
            self.children[name] = Child(name, self._spawn(name), time.monotonic())
            self._record_pids()

    def remove(self, name: str) -> None:
        """Stop one process as a scale-in does (SIGTERM: it finishes its batch and leaves its
        group); returns at once, ``stop`` waits for it."""
        child = self.children.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.proc.pid, signal.SIGTERM)
        self.retired.append(child)
        self._record_pids()

    def _record_pids(self) -> None:
        """``pids.json`` beside the logs: what is (or was) running, for operators and tests."""
        pids = {c.name: c.proc.pid for c in self.children.values()}
        self.logs.mkdir(parents=True, exist_ok=True)
        (self.logs / "pids.json").write_text(json.dumps(pids))

    def start(self) -> None:
        with signals.deferred():  # a Ctrl-C here must not leave a child unrecorded
            for name in self.services:
                self.children[name] = Child(name, self._spawn(name), time.monotonic())
            self._record_pids()

    def poll(self) -> list[str]:
        """Restart children that died; return the names restarted."""
        restarted = []
        for child in self.children.values():
            code = child.proc.poll()
            if code is None:
                continue
            if child.restarts >= self.max_restarts:
                raise RuntimeError(f"{child.name} keeps crashing (exit {code}); see {self.logs / child.name}.log")
            if time.monotonic() - child.started < min(2.0 * 2**child.restarts, 30):
                continue  # back off before the next try
            with signals.deferred():
                child.proc = self._spawn(child.name)
            child.started = time.monotonic()
            child.restarts += 1
            restarted.append(child.name)
        if restarted:
            self._record_pids()
        return restarted

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        child = self.children[name]
        os.killpg(child.proc.pid, sig)
        child.proc.wait()
        child.started = 0.0  # restart on the next poll, no backoff

    def stop(self, timeout: float = 20.0) -> None:
        everyone = [*self.children.values(), *self.retired]  # removed replicas may still be finishing
        for child in everyone:
            if child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in everyone:
            try:
                child.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(child.proc.pid, signal.SIGKILL)
                child.proc.wait()
        self.children.clear()
        self.retired.clear()
