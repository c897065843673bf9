"""Tenant isolation and personal data, end to end on the real broker: two tenants stream at
once; each tenant's harvested cases, student versions and events hold only its own data,
and no e-mail address or card number reaches the harvest, the registry or the logs."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from pathlib import Path

import pytest

from protege.broker.embedded import EmbeddedBroker
from protege.events import HarvestCase, ModelAnnouncement
from protege.generator import generate, write_jsonl
from protege.harness import drive, wait_quiet
from protege.pipeline import LocalPipeline
from protege.state import read_all

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[2]
TASK = "ticket-triage"
TENANTS = {"alpha": "qzalfa", "bravo": "qzbrvo"}  # tenant -> a marker word only its texts contain


def tenant_rows(tenant: str, marker: str, rows: list[dict]) -> list[dict]:
    # every text names the tenant's marker and carries personal data that must never be kept
    return [
        {
            **r,
            "id": f"{marker}{i}",
            "text": f"{r['text']} ref {marker}{i} mail {marker}{i}@{tenant}.example card 4111 1111 1111 1111",
        }
        for i, r in enumerate(rows)
    ]


def test_tenants_are_isolated_and_personal_data_is_redacted(
    kafka: EmbeddedBroker, backbone: Path, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    base = generate(400, seed=77)
    streams = {t: tenant_rows(t, m, base[i * 200 : (i + 1) * 200]) for i, (t, m) in enumerate(TENANTS.items())}
    write_jsonl([r for rows in streams.values() for r in rows], home / "labels.jsonl")
    env = {
        "PROTEGE_TASKS_DIR": str(REPO / "tests" / "tasks"),
        "PROTEGE_STANDIN_LABELS": str(home / "labels.jsonl"),
        "PROTEGE_MIN_CASES": "60",
        "PROTEGE_RETRAIN_EVERY": "1000",
        "PROTEGE_BACKBONE": str(backbone),
        "PROTEGE_THREADS": "1",
        "PROTEGE_TRAINER_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "PROTEGE_LOG_FORMAT": "json",
    }
    with LocalPipeline(home, env=env, bootstrap=kafka.bootstrap, topic_prefix=f"iso{int(time.time())}.") as p:
        settings, t = p.settings, p.settings.topics

        async def both() -> list:
            return list(
                await asyncio.gather(
                    *(
                        drive(settings, rows, tenant=tenant, task=TASK, rate=20, timeout=180)
                        for tenant, rows in streams.items()
                    )
                )
            )

        drives = asyncio.run(both())
        assert asyncio.run(wait_quiet(settings, {"harvester": [t.teacher_results], "trainer": [t.harvest]}))
        deadline = time.time() + 120
        while time.time() < deadline and not all((home / "registry" / tenant / TASK).glob("v*") for tenant in TENANTS):
            time.sleep(1)
        harvest = [HarvestCase.model_validate_json(r.value) for r in asyncio.run(read_all(settings, t.harvest))]
        models = [ModelAnnouncement.model_validate_json(r.value) for r in asyncio.run(read_all(settings, t.models))]
    for d in drives:
        assert all(o.response is not None and o.duplicates == 0 for o in d.outcomes.values())

    for tenant, marker in TENANTS.items():
        others = [m for x, m in TENANTS.items() if x != tenant]
        # harvested cases on Kafka and in the trainer's store: this tenant's texts only, redacted
        mine = [c for c in harvest if c.tenant == tenant]
        assert mine and all(marker in c.text and not any(o in c.text for o in others) for c in mine)
        store = home / "harvest" / tenant / f"{TASK}.jsonl"
        rows = [json.loads(line) for line in store.read_text().splitlines()]
        assert rows and all(marker in r["text"] for r in rows)
        # student versions: trained on exactly this tenant's harvested cases, nothing else in the folder
        versions = sorted((home / "registry" / tenant / TASK).glob("v*"))
        assert versions, f"no student for {tenant}"
        for v in versions:
            manifest = json.loads((v / "manifest.json").read_text())
            assert manifest["tenant"] == tenant
            assert all(r["request_id"].startswith(f"{tenant}-{marker}") for r in rows)
            # the text-bearing file of a version (model.onnx and tokenizer.json are the shared backbone's)
            blob = (v / "manifest.json").read_bytes()
            assert not any(o.encode() in blob for o in others)
        assert all(Path(a.path).resolve().is_relative_to((home / "registry" / a.tenant).resolve()) for a in models)
        # no personal data kept: not in the store, not in any version, not in any log line
        for path in [store, *(f for v in versions for f in v.iterdir()), *(home / "logs").glob("*.log")]:
            data = path.read_bytes()
            assert f"@{tenant}.example".encode() not in data, path
            assert b"4111 1111 1111 1111" not in data, path
        assert all("[EMAIL]" in r["text"] and "[CARD]" in r["text"] for r in rows)
    # the manifests' data hashes are of their own tenant's request ids
    for tenant in TENANTS:
        for v in sorted((home / "registry" / tenant / TASK).glob("v*")):
            manifest = json.loads((v / "manifest.json").read_text())
            store_ids = [
                json.loads(line)["request_id"]
                for line in (home / "harvest" / tenant / f"{TASK}.jsonl").read_text().splitlines()
            ]
            n = manifest["data"]["cases"]
            digest = hashlib.sha256("\n".join(sorted(store_ids[:n])).encode()).hexdigest()
            assert digest == manifest["data"]["request_ids_sha256"]
