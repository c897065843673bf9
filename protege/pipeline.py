"""A whole local pipeline: the embedded broker (or a given one), the topics, and the six
services supervised as processes. Used by ``protege up``, ``protege demo``, ``protege bench
stream`` and the end-to-end tests; the traffic they send is ``protege.harness``'s.

    with LocalPipeline(home, env=...) as p:           # broker, topics, services
        ...                                           # p.settings, p.supervisor
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path

from protege import signals
from protege.broker.embedded import EmbeddedBroker, EmbeddedCluster
from protege.kafka import ensure_topics
from protege.settings import Settings, env_for_children
from protege.supervisor import SERVICES, Supervisor, layout, service_of


@dataclass
class LocalPipeline:
    home: Path
    env: dict[str, str] = field(default_factory=dict)
    bootstrap: str | None = None  # an already running broker; else the embedded one
    broker_home: Path | None = None
    services: list[str] | None = None  # process names; replicas as verifier-2, ... (supervisor.with_replicas)
    topic_prefix: str = ""
    partitions: int = 2  # per topic protege creates: at least the most replicas of any service
    brokers: int = 1  # embedded nodes: 3 is a replicated cluster (3 copies, min.insync.replicas 2)
    profile: Path | None = None  # run each service under py-spy, samples in profile/<name>.txt (protege.profiles)
    metrics_port: int = 0  # > 0: the first process serves /metrics there, the next one port + 1, ...
    scrape_interval_s: float = 5.0  # in the Prometheus configuration written beside the logs

    def __post_init__(self) -> None:
        self.broker: EmbeddedBroker | EmbeddedCluster | None = None
        self.supervisor: Supervisor | None = None
        self.started_broker = False

    @property
    def settings(self) -> Settings:
        return Settings(
            bootstrap_servers=self.bootstrap or "",
            home=self.home,
            topic_prefix=self.topic_prefix,
            partitions=self.partitions,
            replication_factor=self.brokers if self.broker is not None else Settings().replication_factor,
        )

    def __enter__(self) -> LocalPipeline:
        try:
            self.home.mkdir(parents=True, exist_ok=True)
            if self.bootstrap is None:
                where = self.broker_home or self.home / ("broker" if self.brokers == 1 else "cluster")
                self.broker = EmbeddedBroker(where) if self.brokers == 1 else EmbeddedCluster(where, size=self.brokers)
                self.started_broker = not self.broker.running()
                self.bootstrap = self.broker.start()
            settings = self.settings
            asyncio.run(ensure_topics(settings))
            env = env_for_children(settings)
            env.update(self.env)
            env.setdefault("PROTEGE_LOG_FORMAT", "json")
            self.supervisor = Supervisor(env, self.home / "logs", profile=self.profile)
            self.supervisor.services = layout(self.services if self.services is not None else SERVICES, env)
            if self.metrics_port:
                ports = {n: self.metrics_port + i for i, n in enumerate(self.supervisor.services)}
                self.supervisor.metrics_ports = ports
                write_prometheus_config(self.prometheus_config, ports, self.scrape_interval_s)
            self.supervisor.start()
        except BaseException:
            self.close()
            raise
        return self

    @property
    def prometheus_config(self) -> Path:
        """Where ``metrics_port`` writes a Prometheus configuration that scrapes every process."""
        return self.home / "prometheus.yml"

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        # A Ctrl-C now must not leave half of it running: finish stopping first.
        with signals.deferred():
            if self.supervisor is not None:
                self.supervisor.stop()
                self.supervisor = None
            if self.broker is not None and self.started_broker:
                self.broker.stop()
                self.broker = None


def write_prometheus_config(path: Path, ports: dict[str, int], scrape_interval_s: float = 5.0) -> None:
    """A Prometheus configuration for the local processes: job ``protege`` (as in
    ``deploy/prometheus/prometheus.yml``), one target per process, labelled with its service
    (``instance_service``, as the compose file's relabelling gives it) and process name."""
    import yaml

    targets = [
        {"targets": [f"127.0.0.1:{port}"], "labels": {"instance_service": service_of(name), "process": name}}
        for name, port in ports.items()
    ]
    config = {
        "global": {"scrape_interval": f"{scrape_interval_s:g}s", "evaluation_interval": f"{scrape_interval_s:g}s"},
        "scrape_configs": [{"job_name": "protege", "static_configs": targets}],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "# Written by protege up --metrics-port: prometheus --config.file " + str(path) + "\n" + yaml.safe_dump(config)
    )
