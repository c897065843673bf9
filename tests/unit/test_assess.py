"""protege assess: each signal's arithmetic and the recommendation (the learning curve on the
real backbone is tests/integration/test_models_cli.py's neighbour below, marked backbone)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from protege.assess import (
    Costs,
    Sample,
    assess,
    narrow,
    recommend,
    samples_from_jsonl,
    stable,
    total_variation,
    verifiable,
    volume,
)
from protege.cli import app
from protege.generator import generate, triage_task, write_jsonl
from protege.task import Check

TASK = triage_task()


def samples(labels: list[str], start_ms: int | None = 0) -> list[Sample]:
    return [
        Sample(f"r{i}", f"text {i}", label, None if start_ms is None else start_ms + i * 60_000)
        for i, label in enumerate(labels)
    ]


def curve(coverage: float, latency_ms: float = 5.0) -> list[dict]:
    return [
        {"fraction": 1.0, "cases": 100, "accuracy": 0.95, "coverage_at_target": coverage, "latency_p50_ms": latency_ms}
    ]


def test_narrow_counts_labels_entropy_and_the_top_share() -> None:
    n = narrow(samples(["a"] * 8 + ["b"] * 2))
    assert (n["labels"], n["passes"]) == (2, True)
    assert n["entropy_bits"] == pytest.approx(0.722, abs=1e-3) and n["entropy_of_uniform_bits"] == 1.0
    assert n["top_10pct_labels_share"] == 0.8
    assert not narrow(samples(["only"] * 5))["passes"]


def test_stable_compares_the_two_halves_in_time() -> None:
    assert total_variation(
        __import__("collections").Counter("aab"), __import__("collections").Counter("abb")
    ) == pytest.approx(1 / 3)
    steady = stable(samples(["a", "b"] * 20))
    assert steady["measured"] and steady["label_shift_tvd"] == 0.0 and steady["passes"]
    drifting = stable(samples(["a"] * 20 + ["b"] * 20))
    assert drifting["label_shift_tvd"] == 1.0 and drifting["passes"] is False
    assert stable(samples(["a"] * 40, start_ms=None)) == {
        "measured": False,
        "passes": None,
        "rule": "cases need times",
        "why": "the cases carry no times",
    }


def test_verifiable_is_the_share_of_traffic_a_check_covers() -> None:
    task = TASK.model_copy(
        update={"policy": TASK.policy.model_copy(update={"checks": [Check(label="refund", require_pattern="order")]})}
    )
    v = verifiable(task, samples(["refund"] * 3 + ["shipping"]))
    assert (v["checks"], v["share_verifiable"], v["passes"]) == (1, 0.75, True)
    assert verifiable(TASK, samples(["refund"]))["share_verifiable"] == 0.0


def test_break_even_follows_the_seeds_formula() -> None:
    # 1,440 requests a day (one a minute); q = 0.2; c_t = $0.01; c_s from 36 ms at $0.10 a core-hour.
    v = volume(samples(["a"] * 1441), Costs(fixed_usd=100.0, core_hour_usd=0.10), 0.01, True, curve(0.8, 36.0))
    c_s = 0.10 * 36 / 3_600_000
    saving = 0.01 - (0.8 * c_s + 0.2 * 0.01)
    assert v["requests_per_day"] == pytest.approx(1440.0) and v["requests_per_day_source"].startswith("measured")
    assert v["c_s_usd"] == pytest.approx(c_s) and v["breakeven_requests"] == pytest.approx(100 / saving, abs=1)
    assert v["breakeven_days"] == pytest.approx(100 / saving / 1440, abs=0.1) and v["passes"]
    never = volume(samples(["a"] * 10), Costs(), 0.01, False, curve(0.0))
    assert never["breakeven_days"] is None and not never["passes"]
    # Served on a GPU: a GPU-hour at the throughput measured there (inputs both), not a core's latency.
    gpu = volume(
        samples(["a"] * 1441), Costs(100.0, gpu_hour_usd=3.6, gpu_requests_per_s=20_000), 0.01, True, curve(0.8, 36.0)
    )
    assert gpu["c_s_usd"] == pytest.approx(3.6 / 3600 / 20_000) and "GPU-hour" in gpu["c_s_source"]
    assert gpu["gpu_hour_usd_input"] == 3.6 and v["gpu_hour_usd_input"] is None and "core-hour" in v["c_s_source"]


def test_recommendation() -> None:
    def signals(**passes: bool | None) -> dict:
        base = {"narrow": True, "stable": True, "high_volume": True, "program_like": True, "verifiable": False}
        return {k: {"passes": v} for k, v in (base | passes).items()}

    assert recommend(signals())[0] == "distill with cascade"
    assert recommend(signals(verifiable=True))[0] == "distill with verification"
    assert recommend(signals(program_like=False))[0] == "keep the teacher"
    assert recommend(signals(high_volume=False))[0] == "keep the teacher"
    assert recommend(signals(narrow=False))[0] == "keep the teacher"
    assert "drift" in recommend(signals(stable=False))[1]


def test_assess_estimates_the_teacher_cost_when_none_is_recorded(tmp_path: Path) -> None:
    rows = [{"id": f"x{i}", "text": "hello there", "label": "a" if i % 2 else "b", "at": i * 1000} for i in range(50)]
    (tmp_path / "cases.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    cases = samples_from_jsonl(tmp_path / "cases.jsonl")
    a = assess(TASK, cases, costs=Costs(), curve=curve(0.9), estimate=lambda text: 0.002)
    assert a["signals"]["high_volume"]["c_t_usd"] == pytest.approx(0.002) and a["signals"]["high_volume"][
        "c_t_source"
    ].startswith("estimated")
    with pytest.raises(ValueError):
        assess(TASK, cases, costs=Costs(), curve=curve(0.9))


@pytest.mark.slow
def test_assess_command_on_generated_tickets(backbone: Path, tmp_path: Path) -> None:
    write_jsonl(generate(600, seed=12), tmp_path / "tickets.jsonl")
    done = CliRunner().invoke(
        app,
        [
            "assess",
            "--task",
            "ticket-triage",
            "--input",
            str(tmp_path / "tickets.jsonl"),
            "--requests-per-day",
            "5000",
            "--json",
            str(tmp_path / "a.json"),
            "--threads",
            "1",
        ],
        env={"PROTEGE_HOME": str(tmp_path / "home")},
    )
    assert done.exit_code == 0, done.output
    a = json.loads((tmp_path / "a.json").read_text())
    points = a["signals"]["program_like"]["curve"]
    assert [p["fraction"] for p in points] == [0.1, 0.3, 1.0] and points[0]["cases"] < points[-1]["cases"]
    assert a["signals"]["narrow"]["labels"] >= 5 and a["signals"]["stable"]["measured"] is False
    assert a["recommendation"] in {"distill with cascade", "distill with verification", "keep the teacher"}
    assert "recommendation:" in done.output
