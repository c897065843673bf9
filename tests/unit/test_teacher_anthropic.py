"""The real anthropic SDK against our local Messages API server: tool-use answers,
prompt-cache accounting, retries on 429/529/500, and one repair of an invalid label."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import anthropic
import pytest

from protege.costs import cost_usd, price_for
from protege.errors import TeacherError
from protege.generator import triage_task
from protege.teacher import AnthropicTeacher, InvalidAnswer
from tests.messages_api import MessagesAPI, serve

TASK = triage_task()


@pytest.fixture
def api() -> Iterator[MessagesAPI]:
    with serve(MessagesAPI({"where is my order": "shipping", "refund please": "refund"})) as a:
        yield a


def teacher(api: MessagesAPI, retries: int = 3) -> AnthropicTeacher:
    client = anthropic.AsyncAnthropic(api_key="test-key", base_url=api.url, max_retries=retries, timeout=10)
    return AnthropicTeacher(client)


def ask(t: AnthropicTeacher, text: str):
    return asyncio.run(t.label(TASK, text, "req-1"))


def test_answer_comes_from_the_tool_call_with_cached_instructions(api: MessagesAPI) -> None:
    t = teacher(api)
    first, second = ask(t, "where is my order"), ask(t, "refund please")
    assert (first.label, second.label) == ("shipping", "refund")
    assert not first.standin and first.model == TASK.teacher.model and first.attempts == 1
    body = api.requests[0]
    assert body["tool_choice"] == {"type": "tool", "name": "classify"}
    assert body["tools"][0]["input_schema"]["properties"]["label"]["enum"] == TASK.answers
    assert body["system"][0]["cache_control"] == {"type": "ephemeral"}
    assert first.usage.cache_creation_input_tokens > 0 and second.usage.cache_read_input_tokens > 0
    assert first.cost_usd == pytest.approx(cost_usd(first.usage, price_for(TASK.teacher.model)))
    assert second.cost_usd < first.cost_usd


@pytest.mark.parametrize("status", [429, 500, 529])
def test_transient_errors_are_retried(api: MessagesAPI, status: int) -> None:
    api.faults.extend([status, status])
    assert ask(teacher(api), "where is my order").label == "shipping"
    assert len(api.requests) == 3


def test_retries_exhausted_raise(api: MessagesAPI) -> None:
    api.faults.extend([529] * 5)
    with pytest.raises(anthropic.InternalServerError):
        ask(teacher(api, retries=1), "where is my order")


def test_invalid_label_is_repaired_once_then_fails(api: MessagesAPI) -> None:
    api.faults.append("invalid_label")
    a = ask(teacher(api), "where is my order")
    assert a.label == "shipping" and a.attempts == 2
    repair = api.requests[-1]["messages"]
    assert repair[1]["role"] == "assistant" and repair[2]["content"][0]["type"] == "tool_result"
    api.faults.extend(["invalid_label", "invalid_label"])
    with pytest.raises(TeacherError, match="invalid_label") as failed:
        ask(teacher(api), "where is my order")
    assert isinstance(failed.value, InvalidAnswer)  # both calls were paid for, and say what they cost
    paid = failed.value.paid
    assert paid.attempts == 2 and paid.label not in TASK.answers and not paid.standin
    assert paid.usage.input_tokens > 0 and paid.cost_usd == pytest.approx(
        cost_usd(paid.usage, price_for(TASK.teacher.model))
    )


def test_message_batches_label_a_set_at_half_price(api: MessagesAPI) -> None:
    from protege.labelling import label_with_batches

    rows = [
        {"id": "g1", "text": "where is my order"},
        {"id": "g2", "text": "refund please"},
        {"id": "g3", "text": "something else"},
        {"id": "g4", "text": "where is my order"},
    ]
    api.faults.extend([529, "invalid_label"])  # the first request errors, the second answers off the label set
    client = anthropic.AsyncAnthropic(api_key="test-key", base_url=api.url, max_retries=0)
    seen: list[str] = []
    report = asyncio.run(label_with_batches(client, TASK, rows, poll_s=0.01, progress=seen.append))
    assert len(report.batch_ids) == 1 and any("processing" in line for line in seen)
    assert {r["id"]: r["error"] for r in report.failed} == {"g1": "errored", "g2": "invalid_label"}
    assert {r["id"]: r["label"] for r in report.labelled} == {"g3": "oos", "g4": "shipping"}
    live = cost_usd(report.usage, price_for(TASK.teacher.model))
    assert report.cost_usd == pytest.approx(live / 2)
    params = api.batches[report.batch_ids[0]]["requests"][0]["params"]
    assert params["tool_choice"] == {"type": "tool", "name": "classify"} and params["system"][0]["cache_control"]


def test_batch_ids_must_be_valid_custom_ids(api: MessagesAPI) -> None:
    from protege.labelling import label_with_batches

    client = anthropic.AsyncAnthropic(api_key="test-key", base_url=api.url)
    with pytest.raises(ValueError, match="custom_ids"):
        asyncio.run(label_with_batches(client, TASK, [{"id": "has space", "text": "x"}]))


def test_label_command_writes_labels_and_errors(api: MessagesAPI, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    import subprocess
    import sys

    from protege.generator import write_jsonl

    write_jsonl([{"id": "a", "text": "where is my order"}, {"id": "b", "text": "refund please"}], tmp_path / "in.jsonl")
    env = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": api.url, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "protege.cli",
            "label",
            "--task",
            "ticket-triage",
            "--input",
            str(tmp_path / "in.jsonl"),
            "--output",
            str(tmp_path / "out.jsonl"),
            "--poll",
            "0.01",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    out = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert {r["id"]: r["label"] for r in out} == {"a": "shipping", "b": "refund"}
    assert "labelled 2/2" in done.stderr


def test_declared_fields_are_extracted_by_the_tool_call(api: MessagesAPI) -> None:
    task = TASK.model_copy(update={"fields": {"order_id": "the order number, e.g. #48213"}})
    api.labels["refund for order #48213"] = "refund"
    a = asyncio.run(teacher(api).label(task, "refund for order #48213", "req-f"))
    assert (a.label, a.fields) == ("refund", {"order_id": "#48213"})
    schema = api.requests[-1]["tools"][0]["input_schema"]["properties"]["fields"]
    assert schema["properties"]["order_id"]["type"] == "string" and schema["additionalProperties"] is False
    assert asyncio.run(teacher(api).label(TASK, "refund please", "req-g")).fields == {}  # none declared


def test_timeouts_are_retried(api: MessagesAPI) -> None:
    api.faults.append("slow:1.5")
    client = anthropic.AsyncAnthropic(api_key="test-key", base_url=api.url, max_retries=2, timeout=0.5)
    a = asyncio.run(AnthropicTeacher(client).label(TASK, "where is my order", "req-t"))
    assert a.label == "shipping" and len(api.requests) == 2


def test_label_command_measures_the_teacher_on_a_golden_set(api: MessagesAPI, tmp_path) -> None:
    """--golden keeps the trusted label, adds the teacher's answer, and says how often they agree;
    a row whose trusted label the task does not know stops it before any call."""
    import json
    import subprocess
    import sys

    from protege.generator import write_jsonl

    def label(rows: list[dict[str, str]]) -> subprocess.CompletedProcess[str]:
        write_jsonl(rows, tmp_path / "golden-in.jsonl")
        env = {"ANTHROPIC_API_KEY": "test-key", "ANTHROPIC_BASE_URL": api.url, "PATH": "/usr/bin:/bin"}
        argv = ["label", "--task", "ticket-triage", "--input", str(tmp_path / "golden-in.jsonl")]
        argv += ["--output", str(tmp_path / "golden.jsonl"), "--poll", "0.01", "--golden"]
        return subprocess.run(
            [sys.executable, "-m", "protege.cli", *argv], capture_output=True, text=True, env=env, timeout=120
        )

    # the server answers "refund please" with refund; a person says it was about billing
    done = label(
        [
            {"id": "a", "text": "where is my order", "label": "shipping"},
            {"id": "b", "text": "refund please", "label": "billing"},
        ]
    )
    assert done.returncode == 0, done.stderr
    out = {r["id"]: r for r in map(json.loads, (tmp_path / "golden.jsonl").read_text().splitlines())}
    assert {k: (r["label"], r["teacher"]) for k, r in out.items()} == {
        "a": ("shipping", "shipping"),
        "b": ("billing", "refund"),
    }
    assert "answered 1/2 golden rows as the trusted label: accuracy 50.0%" in " ".join(done.stderr.split())
    calls = len(api.batches)
    refused = label([{"id": "c", "text": "where is my order", "label": "no-such-queue"}])
    assert refused.returncode != 0 and "no-such-queue" not in refused.stdout and len(api.batches) == calls
    assert "without a label among the task's answers" in " ".join(refused.stderr.split())
