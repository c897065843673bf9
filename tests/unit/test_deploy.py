"""docker-compose.yml and k8s/ are real deployment files: no Docker engine or cluster runs
here, so they are validated against the Compose Specification schema and the Kubernetes
OpenAPI schemas (strict), and checked for what protege needs of them."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from jsonschema import Draft7Validator
from jsonschema.validators import validator_for

from protege.supervisor import DEPLOYED

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33.0"


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_spec() -> None:
    spec = json.loads(
        resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text()
    )
    # This vendored copy names draft-07 without the trailing '#' jsonschema looks up: say it.
    errors = sorted(validator_for(spec, default=Draft7Validator)(spec).iter_errors(compose()), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def test_compose_runs_kafka_kraft_and_every_service() -> None:
    c = compose()["services"]
    kafka = c["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in DEPLOYED:
        assert c[name]["command"] == ["run", name]
        assert c[name]["environment"]["PROTEGE_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert c[name]["read_only"] is True and c[name]["user"] == "10001"
        assert c[name]["healthcheck"]["test"][:3] == ["CMD", "protege", "health"]
    assert c["scorer"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    assert c["teacher"]["environment"]["ANTHROPIC_API_KEY"] == "${ANTHROPIC_API_KEY:-}"


def k8s_docs() -> list[tuple[str, dict]]:
    kust = yaml.safe_load((REPO / "k8s" / "kustomization.yaml").read_text())
    return [(f, d) for f in kust["resources"] for d in yaml.safe_load_all((REPO / "k8s" / f).read_text())]


def test_kustomization_lists_every_manifest() -> None:
    kust = yaml.safe_load((REPO / "k8s" / "kustomization.yaml").read_text())
    on_disk = {p.name for p in (REPO / "k8s").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == on_disk


@pytest.mark.parametrize(("name", "doc"), k8s_docs(), ids=[f for f, _ in k8s_docs()])
def test_manifest_is_valid_kubernetes(name: str, doc: dict) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_every_service_is_a_hardened_deployment() -> None:
    deployments = {
        d["spec"]["template"]["spec"]["containers"][0]["args"][1]: d for _, d in k8s_docs() if d["kind"] == "Deployment"
    }
    assert set(deployments) == set(DEPLOYED)
    for name, d in deployments.items():
        pod = d["spec"]["template"]["spec"]
        c = pod["containers"][0]
        assert c["securityContext"]["runAsNonRoot"] and c["securityContext"]["readOnlyRootFilesystem"], name
        assert c["livenessProbe"]["exec"]["command"][:3] == ["protege", "health", name]
        assert c["resources"]["requests"] and c["resources"]["limits"], name
        assert {"name": "PROTEGE_INSTANCE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}} in c["env"]
    scorer = deployments["scorer"]["spec"]["template"]["spec"]["containers"][0]
    assert scorer["resources"]["limits"]["nvidia.com/gpu"] == 1
    teacher_env = deployments["teacher"]["spec"]["template"]["spec"]["containers"][0]["env"]
    key = next(e for e in teacher_env if e["name"] == "ANTHROPIC_API_KEY")
    assert key["valueFrom"]["secretKeyRef"]["name"] == "protege-anthropic"


def test_compose_provisions_prometheus_and_grafana() -> None:
    c = compose()["services"]
    assert c["prometheus"]["image"].startswith("prom/prometheus:") and c["grafana"]["image"].startswith("grafana/")
    for svc in ("prometheus", "grafana"):
        for volume in c[svc]["volumes"]:
            src = volume.split(":")[0]
            if src.startswith("./"):
                assert (REPO / src).exists(), f"{svc} mounts {src}, which is not in the repository"
    scrape = yaml.safe_load((REPO / "deploy" / "prometheus" / "prometheus.yml").read_text())
    targets = {t for job in scrape["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]}
    port = compose()["x-protege"]["environment"]["PROTEGE_METRICS_PORT"]
    assert targets == {f"{name}:{port}" for name in DEPLOYED}
    datasource = yaml.safe_load((REPO / "deploy/grafana/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"


def test_dashboard_queries_only_metrics_protege_exports() -> None:
    import re

    from protege.metrics import REGISTRY

    exported = set()
    for family in REGISTRY.collect():
        suffixes = {"counter": ["_total"], "gauge": [""], "histogram": ["_bucket", "_sum", "_count"]}[family.type]
        exported |= {family.name + s for s in suffixes}
    dash = json.loads((REPO / "deploy/grafana/dashboards/protege.json").read_text())
    used = {
        name
        for panel in dash["panels"]
        for t in panel["targets"]
        for name in re.findall(r"\bprotege_[a-z_]+", t["expr"])
    }
    assert used and used <= exported, used - exported
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    # what the issue asks to see: routing share, escalation reasons, latency per route and hop, teacher
    # tokens and cost, batch sizes, model version, consumer lag
    for wanted in (
        "protege_answers_total",
        "protege_escalations_total",
        "protege_answer_seconds_bucket",
        "protege_hop_seconds_bucket",
        "protege_teacher_tokens_total",
        "protege_teacher_cost_usd_total",
        "protege_inference_batch_size_bucket",
        "protege_model_serving",
        "protege_consumer_lag",
    ):
        assert wanted in used, wanted


def test_k8s_metrics_services_pdbs_and_lag_autoscaling() -> None:
    from protege.topics import Topics

    docs = [d for _, d in k8s_docs()]
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    port = int(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["PROTEGE_METRICS_PORT"])
    services = [d for d in docs if d["kind"] == "Service"]
    for name, dep in deployments.items():
        pod_labels = dep["spec"]["template"]["metadata"]["labels"]
        svc = [s for s in services if s["spec"]["selector"].items() <= pod_labels.items()]
        assert len(svc) == 1 and svc[0]["spec"]["ports"][0]["targetPort"] == port, name
    pdbs = {d["metadata"]["name"] for d in docs if d["kind"] == "PodDisruptionBudget"}
    assert {f"protege-{s}" for s in DEPLOYED if s != "trainer"} <= pdbs
    topics = set(Topics().all())
    hpas = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert {h["spec"]["scaleTargetRef"]["name"] for h in hpas} == {
        "protege-scorer",
        "protege-verifier",
        "protege-teacher",
    }
    for h in hpas:
        assert h["spec"]["scaleTargetRef"]["name"] in deployments
        metric = h["spec"]["metrics"][0]["external"]["metric"]
        assert metric["name"] == "protege_consumer_lag" and metric["selector"]["matchLabels"]["topic"] in topics


def test_scheduled_finetune_is_a_gated_train_run() -> None:
    from typer.main import get_command

    from protege.cli import app

    jobs = [d for _, d in k8s_docs() if d["kind"] == "CronJob"]
    assert jobs
    for job in jobs:
        c = job["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]
        assert c["image"] == "protege:train" and c["args"][:3] == ["train", "--recipe", "finetune"]
        assert "--announce" in c["args"]
        train = get_command(app).commands["train"]  # type: ignore[attr-defined]
        options = {o for p in train.params for o in p.opts}
        assert {a for a in c["args"] if a.startswith("--")} <= options


def test_autoscaled_replicas_fit_the_partitions_and_have_their_own_instance() -> None:
    """Replicas of a service share a consumer group and one transactional producer per input
    partition: a replica beyond the partition count would sit idle, and each needs its own
    PROTEGE_INSTANCE (the pod's name)."""
    docs = [d for f in sorted((REPO / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text()) if d]
    partitions = int(next(d for d in docs if d["kind"] == "ConfigMap")["data"]["PROTEGE_PARTITIONS"])
    scalers = [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]
    assert scalers and all(h["spec"]["maxReplicas"] <= partitions for h in scalers)
    for d in docs:
        if d["kind"] == "Deployment" and d["metadata"]["name"].removeprefix("protege-") in DEPLOYED:
            [container] = d["spec"]["template"]["spec"]["containers"]
            instance = next(e for e in container.get("env", []) if e["name"] == "PROTEGE_INSTANCE")
            assert instance["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_compose_replicas_fit_the_partitions_and_keep_distinct_instances() -> None:
    """A compose replica takes its PROTEGE_INSTANCE from its container's hostname: no service
    that runs several may pin a container name, a hostname or an instance."""
    c = compose()
    partitions = int(c["x-protege"]["environment"]["PROTEGE_PARTITIONS"])
    replicated = {n: s for n, s in c["services"].items() if s.get("deploy", {}).get("replicas", 1) > 1}
    assert "verifier" in replicated
    for name, service in replicated.items():
        assert service["deploy"]["replicas"] <= partitions, name
        assert not {"container_name", "hostname"} & set(service), name
        assert "PROTEGE_INSTANCE" not in service.get("environment", {}), name
