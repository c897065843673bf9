"""The embedded Apache Kafka broker: KRaft nodes (broker + controller) on loopback.

Its jars are resolved from Maven Central by Maven (``pom.xml`` beside this file) into a
cache folder once; after that a start is a ``java`` process and a few seconds.

    broker = EmbeddedBroker(home=Path(".protege/broker"))
    broker.start()          # formats the storage on first use, waits until it answers
    broker.bootstrap        # "127.0.0.1:PORT"
    broker.stop()           # controlled shutdown, then SIGKILL if it hangs

The data folder survives ``stop``; a later ``start`` on the same home keeps every topic
(and the same port, so clients reconnect by themselves).

``EmbeddedCluster`` starts three such nodes as one replicated cluster (replication factor
3, ``min.insync.replicas`` 2 for every topic, the internal ones included), the shape of a
production cluster, for tests that stop a partition leader mid-stream:

    cluster = EmbeddedCluster(home=Path(".protege/cluster"))
    cluster.start()         # all three, then waits until each serves
    cluster.bootstrap       # "127.0.0.1:P1,127.0.0.1:P2,127.0.0.1:P3"
    cluster.node(2).kill()  # kill -9 one node; .start() brings it back on the same ports
"""

from __future__ import annotations

import base64
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from protege import signals
from protege.errors import BrokerError

POM = Path(__file__).with_name("pom.xml")
LOG4J = Path(__file__).with_name("log4j2.properties")
KAFKA_VERSION = "4.1.1"


def default_cache() -> Path:
    """``PROTEGE_CACHE`` (a setting), by default ``~/.cache/protege``."""
    from protege.settings import Settings

    return Settings().cache


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def jars_dir(cache: Path | None = None) -> Path:
    """Where the broker's classpath lives in the cache; complete when it holds ``.complete``."""
    return (cache or default_cache()) / f"kafka-{KAFKA_VERSION}" / "lib"


def resolve_jars(cache: Path | None = None) -> Path:
    """Return a folder holding the broker's classpath, resolving it with Maven if needed."""
    target = jars_dir(cache)
    marker = target / ".complete"
    if marker.exists():
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise BrokerError("Maven (mvn) is not on PATH; it resolves the Kafka jars from Maven Central")
    tmp = target.with_name("lib.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(POM),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={tmp}",
    ]
    done = signals.run(cmd)
    if done.returncode != 0:
        raise BrokerError(f"Maven could not resolve the Kafka jars:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    if not any(tmp.glob("kafka_2.13-*.jar")):
        raise BrokerError(f"Maven finished but {tmp} holds no kafka_2.13 jar")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    marker.write_text(KAFKA_VERSION)
    return target


def _replication(copies: int) -> dict[str, str]:
    """Server settings for a cluster that keeps ``copies`` of every partition: acks=all
    writes need all but one in sync (at least one), so one node can be down."""
    insync = str(max(1, copies - 1))
    return {
        "default.replication.factor": str(copies),
        "min.insync.replicas": insync,
        "offsets.topic.replication.factor": str(copies),
        "transaction.state.log.replication.factor": str(copies),
        "transaction.state.log.min.isr": insync,
        "share.coordinator.state.topic.replication.factor": str(copies),
        "share.coordinator.state.topic.min.isr": insync,
    }


@dataclass
class EmbeddedBroker:
    """A KRaft node (broker and controller in one process) whose state lives under ``home``.

    Alone by default; ``EmbeddedCluster`` gives each of its nodes a ``node_id``, the quorum's
    ``voters``, a shared ``cluster_id`` and the ports it chose for all of them.
    """

    home: Path
    port: int | None = None
    controller_port: int | None = None
    node_id: int = 1
    voters: str | None = None  # controller.quorum.voters, e.g. "1@127.0.0.1:P1,2@..."; None: itself
    cluster_id: str | None = None
    copies: int = 1  # replication factor of every topic (see _replication)
    heap_mb: int = 512
    cache: Path | None = None
    # More client listeners beside PLAINTEXT, by name -> security protocol (e.g. {"SASL_SSL":
    # "SASL_SSL"}), each on its own free port, with the server properties they need in
    # ``properties`` (which override the defaults) and ``format_args`` for the storage
    # format (``--add-scram ...``): how the tests stand up a secured broker.
    listeners: dict[str, str] = field(default_factory=dict)
    properties: dict[str, str] = field(default_factory=dict)
    format_args: tuple[str, ...] = ()
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def state_file(self) -> Path:
        return self.home / "broker.json"

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self._ports()[0]}"

    def address(self, listener: str) -> str:
        """host:port of one of the extra ``listeners``."""
        return f"127.0.0.1:{self._state().get('listeners', {})[listener]}"

    def _ports(self) -> tuple[int, int]:
        state = self._state()
        return int(state["port"]), int(state["controller_port"])

    def _state(self) -> dict:
        if self.state_file.exists():
            return dict(json.loads(self.state_file.read_text()))
        taken: set[int] = set()

        def fresh() -> int:
            port = free_port()
            while port in taken:
                port = free_port()
            taken.add(port)
            return port

        port = self.port or fresh()
        taken.add(port)
        state = {
            "port": port,
            "controller_port": self.controller_port or fresh(),
            "listeners": {name: fresh() for name in self.listeners},
            "cluster_id": self.cluster_id or new_cluster_id(),
        }
        self.home.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps(state))
        return state

    def _write_config(self) -> Path:
        port, controller = self._ports()
        extra = {name: self.address(name) for name in self.listeners}
        data = self.home / "data"
        props = {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters or f"{self.node_id}@127.0.0.1:{controller}",
            "listeners": ",".join(
                [
                    f"PLAINTEXT://127.0.0.1:{port}",
                    f"CONTROLLER://127.0.0.1:{controller}",
                    *(f"{name}://{addr}" for name, addr in extra.items()),
                ]
            ),
            "advertised.listeners": ",".join(
                [f"PLAINTEXT://127.0.0.1:{port}", *(f"{name}://{addr}" for name, addr in extra.items())]
            ),
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": ",".join(
                [
                    "PLAINTEXT:PLAINTEXT",
                    "CONTROLLER:PLAINTEXT",
                    *(f"{n}:{proto}" for n, proto in self.listeners.items()),
                ]
            ),
            "log.dirs": str(data),
            "num.partitions": "2",
            "auto.create.topics.enable": "false",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.num.partitions": "4",
            **_replication(self.copies),
            "group.initial.rebalance.delay.ms": "0",
            "num.network.threads": "2",
            "num.io.threads": "2",
            "background.threads": "2",
            "log.retention.hours": "168",
            "log.segment.bytes": str(64 * 1024 * 1024),
            **self.properties,
        }
        path = self.home / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _java(self, lib: Path, main: str, *args: str, heap_mb: int) -> list[str]:
        java = shutil.which("java")
        if java is None:
            raise BrokerError("java is not on PATH; the embedded broker needs Java 17 or newer")
        logs = self.home / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        return [
            java,
            f"-Xmx{heap_mb}m",
            f"-Xms{min(heap_mb, 256)}m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            # Extra JVM flags, last so that they win (the load tests compare JIT settings with it).
            *shlex.split(os.environ.get("PROTEGE_BROKER_JVM_OPTS", "")),
            "-Djava.awt.headless=true",
            f"-Dkafka.logs.dir={logs}",
            f"-Dlog4j2.configurationFile={LOG4J}",
            "-cp",
            f"{lib}/*",
            main,
            *args,
        ]

    def _format(self, lib: Path, config: Path) -> None:
        if (self.home / "data" / "meta.properties").exists():
            return
        cluster = json.loads(self.state_file.read_text())["cluster_id"]
        cmd = self._java(
            lib,
            "kafka.tools.StorageTool",
            "format",
            f"--cluster-id={cluster}",
            "-c",
            str(config),
            *self.format_args,
            heap_mb=128,
        )
        done = signals.run(cmd)
        if done.returncode != 0:
            raise BrokerError(f"formatting the KRaft storage failed: {done.stdout}{done.stderr}")

    def pid(self) -> int | None:
        pidfile = self.home / "broker.pid"
        if not pidfile.exists():
            return None
        pid = int(pidfile.read_text())
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def running(self) -> bool:
        return self.pid() is not None and _answers(*self.bootstrap.split(":"))

    def start(self, timeout: float = 90.0) -> str:
        """Start the broker (if it is not already up) and return its bootstrap address."""
        if self.running():
            return self.bootstrap
        self.launch()
        return self.wait_started(timeout)

    def launch(self) -> None:
        """Start the process without waiting for it to serve (a cluster's nodes must all be
        launched before any can elect a controller and finish starting)."""
        if self.running():
            return
        lib = resolve_jars(self.cache)
        config = self._write_config()
        self._format(lib, config)
        with signals.deferred(), open(self.home / "logs" / "stdout.log", "ab") as out:
            # A Ctrl-C between the start and the pid file would leave a broker nobody stops.
            self._proc = subprocess.Popen(
                self._java(lib, "kafka.Kafka", str(config), heap_mb=self.heap_mb),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the terminal reaches us, and we stop it in order
            )
            (self.home / "broker.pid").write_text(str(self._proc.pid))

    def wait_started(self, timeout: float = 90.0) -> str:
        host, port = self.bootstrap.split(":")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                tail = (self.home / "logs" / "stdout.log").read_text()[-3000:]
                raise BrokerError(f"the broker exited with {self._proc.returncode}:\n{tail}")
            if _answers(host, port) and _log_says_started(self.home / "logs" / "server.log"):
                return self.bootstrap
            time.sleep(0.2)
        self.stop()
        raise BrokerError(f"the broker did not start within {timeout:.0f}s (logs in {self.home / 'logs'})")

    def stop(self, timeout: float = 30.0) -> None:
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                break
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait(timeout=5)
        (self.home / "broker.pid").unlink(missing_ok=True)

    def kill(self) -> None:
        """kill -9: a crash, no controlled shutdown (its data stays for the next start)."""
        pid = self.pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        if self._proc is not None:
            self._proc.wait(timeout=10)
        else:
            deadline = time.monotonic() + 10
            while self.pid() is not None and time.monotonic() < deadline:
                time.sleep(0.05)
        (self.home / "broker.pid").unlink(missing_ok=True)


@dataclass
class EmbeddedCluster:
    """Three (``size``) KRaft nodes on loopback, every one a broker and a controller voter,
    keeping ``size`` copies of every partition with ``min.insync.replicas`` one less.

    Ports and the cluster id are chosen once and kept in ``home/cluster.json``: a node that
    is stopped and started again comes back where its peers and the clients expect it.
    """

    home: Path
    size: int = 3
    heap_mb: int = 384
    cache: Path | None = None

    def __post_init__(self) -> None:
        if self.size < 1:
            raise BrokerError(f"a cluster needs at least one node, not {self.size}")
        plan = self._plan()
        voters = ",".join(f"{n}@127.0.0.1:{ports[1]}" for n, ports in plan["nodes"].items())
        self.nodes = [
            EmbeddedBroker(
                self.home / f"node-{n}",
                port=ports[0],
                controller_port=ports[1],
                node_id=int(n),
                voters=voters,
                cluster_id=plan["cluster_id"],
                copies=self.size,
                heap_mb=self.heap_mb,
                cache=self.cache,
            )
            for n, ports in plan["nodes"].items()
        ]

    def _plan(self) -> dict:
        path = self.home / "cluster.json"
        if path.exists():
            plan = dict(json.loads(path.read_text()))
            if len(plan["nodes"]) != self.size:
                raise BrokerError(f"{self.home} holds a {len(plan['nodes'])}-node cluster, not {self.size}")
            return plan
        taken: set[int] = set()
        while len(taken) < 2 * self.size:
            taken.add(free_port())
        ports = sorted(taken)
        plan = {
            "cluster_id": new_cluster_id(),
            "nodes": {str(i + 1): [ports[2 * i], ports[2 * i + 1]] for i in range(self.size)},
        }
        self.home.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(plan))
        return plan

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    def node(self, node_id: int) -> EmbeddedBroker:
        for n in self.nodes:
            if n.node_id == node_id:
                return n
        raise BrokerError(f"no node {node_id} in this cluster (nodes {[n.node_id for n in self.nodes]})")

    def running(self) -> bool:
        return all(n.running() for n in self.nodes)

    def start(self, timeout: float = 120.0) -> str:
        """Start every node that is not running and wait until all serve."""
        try:
            for n in self.nodes:
                n.launch()
            deadline = time.monotonic() + timeout
            for n in self.nodes:
                n.wait_started(max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self.bootstrap

    def stop(self, timeout: float = 30.0) -> None:
        # All at once: stopped one by one, the last node would wait for a quorum that is gone.
        with signals.deferred(), ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: n.stop(timeout), self.nodes))


def new_cluster_id() -> str:
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")


def _answers(host: str, port: str | int) -> bool:
    try:
        with socket.create_connection((host, int(port)), timeout=0.5):
            return True
    except OSError:
        return False


def _log_says_started(log: Path) -> bool:
    if not log.exists():
        return False
    with open(log, "rb") as f:
        f.seek(max(0, log.stat().st_size - 200_000))
        tail = f.read().decode(errors="replace")
    # Only the last start counts: the data folder (and its log) survive restarts.
    last = tail.rfind("Kafka version")
    return last >= 0 and "started (kafka.server.KafkaRaftServer)" in tail[last:]
