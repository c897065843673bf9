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
from jsonschema.validators import validator_for

from protege.supervisor import SERVICES

REPO = Path(__file__).resolve().parents[2]
K8S_VERSION = "1.33.0"


def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def test_compose_file_matches_the_compose_spec() -> None:
    spec = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json").read_text())
    errors = sorted(validator_for(spec)(spec).iter_errors(compose()), key=str)
    assert not errors, [f"{list(e.absolute_path)}: {e.message}" for e in errors]


def test_compose_runs_kafka_kraft_and_every_service() -> None:
    c = compose()["services"]
    kafka = c["kafka"]
    assert kafka["image"].startswith("apache/kafka:4.")
    assert kafka["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
    for name in SERVICES:
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
    deployments = {d["spec"]["template"]["spec"]["containers"][0]["args"][1]: d
                   for _, d in k8s_docs() if d["kind"] == "Deployment"}
    assert set(deployments) == set(SERVICES)
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
