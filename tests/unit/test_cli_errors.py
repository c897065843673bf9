"""The ``protege`` command when the world is not as it needs: no broker at the address, a
version that is not there. One line on stderr and exit status 2, never a traceback; and what
needs no broker (the registry's versions) is shown without one."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protege.broker.embedded import free_port
from protege.cli import app
from protege.registry import Registry
from tests.helpers import manifest_only

METRICS = {"golden_accuracy": 0.9, "golden_macro_f1": 0.9, "golden_ece": 0.05, "golden_coverage": 0.6}


@pytest.mark.parametrize(
    "command",
    [
        ["trace", "r1"],
        ["ask", "where is my parcel", "--tenant", "acme", "--task", "ticket-triage", "--timeout", "5"],
        ["topics"],
        ["review", "pull", "--tenant", "acme", "--task", "ticket-triage"],
        ["models", "rollback", "--tenant", "acme", "--task", "ticket-triage"],
    ],
)
def test_no_broker_is_one_line_and_exit_2_not_a_traceback(command: list[str], tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = os.environ | {"PROTEGE_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}", "PROTEGE_HOME": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "protege.cli", *command], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert f"protege: cannot reach Kafka at 127.0.0.1:{port}" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "Unclosed" not in done.stderr, done.stderr[-2000:]


def test_a_protege_error_is_one_line_and_exit_2(tmp_path: Path) -> None:
    env = os.environ | {"PROTEGE_HOME": str(tmp_path), "PROTEGE_TASKS_DIR": str(tmp_path / "no-tasks")}
    done = subprocess.run(
        [sys.executable, "-m", "protege.cli", "models", "promote", "v0009", "--tenant", "acme", "--task", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.startswith("protege: ") and "v0009" in done.stderr


@pytest.mark.parametrize(
    "command",
    [["-m", "protege.cli", "topics"], ["-m", "protege_services.ingestion"], ["-m", "protege_services.monitor"]],
)
def test_settings_that_do_not_parse_are_one_line_that_names_the_variable_not_its_value(
    command: list[str], tmp_path: Path
) -> None:
    secret = "s3cret-never-shown"
    env = os.environ | {
        "PROTEGE_HOME": str(tmp_path),
        "PROTEGE_SASL_MECHANISM": "OAUTHBEARER",
        "PROTEGE_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "http://idp.example/token",
        "PROTEGE_SASL_USERNAME": "client",
        "PROTEGE_SASL_PASSWORD": secret,
        "PROTEGE_LOG_LEVEL": "INFO",
    }
    done = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "settings: token endpoint 'http://idp.example/token': http sends the client secret in the clear" in (
        done.stderr
    ), done.stderr[-2000:]
    assert "Traceback" not in done.stderr and secret not in done.stderr + done.stdout
    env |= {"PROTEGE_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL": "https://idp.example/token", "PROTEGE_PARTITIONS": "many"}
    done = subprocess.run([sys.executable, *command], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "PROTEGE_PARTITIONS: Input should be a valid integer" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and "many" not in done.stderr and secret not in done.stderr


def test_models_list_shows_the_registry_without_a_broker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = Registry(tmp_path / "registry")
    for tenant, task, name in (
        ("acme", "triage", "v0001-aaaa"),
        ("acme", "triage", "v0002-bbbb"),
        ("beta", "faq", "v0001-cccc"),
    ):
        manifest_only(registry.folder(tenant, task) / name, tenant=tenant, task=task, metrics=METRICS)
    assert registry.tasks() == [("acme", "triage"), ("beta", "faq")]
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path))
    monkeypatch.setenv("PROTEGE_BOOTSTRAP_SERVERS", f"127.0.0.1:{free_port()}")
    listed = CliRunner().invoke(app, ["models", "list"])  # every tenant and task
    assert listed.exit_code == 0, listed.output
    said = " ".join(listed.output.split())
    assert "acme/triage" in said and "beta/faq" in said and "which version serves is not known" in said
    rows = [line for line in listed.output.splitlines() if "│ v000" in line]
    assert len(rows) == 3 and all(row.rstrip("│ ").endswith("?") for row in rows)
    one = CliRunner().invoke(app, ["models", "list", "--tenant", "beta"])
    assert "beta/faq" in one.output and "acme/triage" not in one.output
    none = CliRunner().invoke(app, ["models", "list", "--tenant", "gamma"])
    assert none.exit_code == 0 and "no versions" in " ".join(none.output.split())
