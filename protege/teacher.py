"""Teachers: Claude through the real ``anthropic`` SDK, or the offline stand-in.

Both answer ``await teacher.label(task, text, request_id)`` with a ``TeacherAnswer``.

- ``AnthropicTeacher`` asks the Messages API to call a ``classify`` tool whose ``label``
  is an enum of the task's answers, so the answer is checked by schema, not parsed from
  prose. The task's instructions sit in a cached system block (prompt caching), and the
  cost comes from the response's ``usage``. The SDK retries 429/5xx/529 and timeouts
  with backoff, honouring ``retry-after``.
- ``StandinTeacher`` answers from labelled data (text -> label), with optional noise and
  latency, and never pretends otherwise: its model id is ``standin:...``, ``standin`` is
  true on every event it produces, and its token counts are estimates. Its noise is
  ``uniform`` (a wrong answer is any other label) or ``confusable`` (a wrong answer is a label
  near the true one, as an LLM confuses similar intents: ``confusions``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from pathlib import Path
from typing import Any, Protocol

from protege.costs import Price, cost_usd, price_for
from protege.errors import TeacherError
from protege.events import Usage
from protege.task import OOS, Task
from protege.text import normalize


@dataclass(frozen=True)
class TeacherAnswer:
    label: str
    rationale: str
    model: str
    standin: bool
    usage: Usage
    cost_usd: float
    latency_ms: float
    attempts: int
    fields: dict[str, str] = dataclass_field(default_factory=dict)


class InvalidAnswer(TeacherError):
    """The teacher answered outside the label set, and again after the repair. Its calls were
    paid for: ``paid`` carries them (``paid.label`` is the last wrong label), so the worker
    counts the spend and journals the outcome instead of paying again after a crash."""

    def __init__(self, message: str, paid: TeacherAnswer) -> None:
        super().__init__(message)
        self.paid = paid


class Teacher(Protocol):
    async def label(self, task: Task, text: str, request_id: str) -> TeacherAnswer: ...

    def estimate_usd(self, task: Task, text: str) -> float:
        """An upper estimate of one call's cost, reserved against a spend cap before calling."""
        ...


def _upper_estimate(task: Task, text: str, price: Price) -> float:
    # ~4 characters a token for the prompt, every allowed output token, no cache discount.
    usage = Usage(input_tokens=(len(system_prompt(task)) + len(text)) // 4 + 50, output_tokens=task.teacher.max_tokens)
    return cost_usd(usage, price)


def system_prompt(task: Task) -> str:
    lines = [task.instructions.strip(), "", "Labels:"]
    lines += [f"- {name}: {desc}" for name, desc in task.labels.items()]
    lines += [f"- {OOS}: the message is outside every label above."]
    lines += ["", "Call the classify tool exactly once with the single best label."]
    return "\n".join(lines)


def classify_tool(task: Task) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "label": {"type": "string", "enum": task.answers, "description": "The best label."},
        "rationale": {"type": "string", "description": "One short sentence."},
    }
    if task.fields:
        properties["fields"] = {
            "type": "object",
            "description": "Values found in the message; leave out what is not there.",
            "properties": {name: {"type": "string", "description": desc} for name, desc in task.fields.items()},
            "additionalProperties": False,
        }
    return {
        "name": "classify",
        "description": "Record the label (and any fields) for the customer message.",
        "input_schema": {"type": "object", "properties": properties, "required": ["label", "rationale"]},
    }


def message_params(task: Task, messages: list[dict[str, Any]], model: str, request_id: str) -> dict[str, Any]:
    """Messages API parameters for one classification (also a Message Batches request's params)."""
    return {
        "model": model,
        "max_tokens": task.teacher.max_tokens,
        "system": [{"type": "text", "text": system_prompt(task), "cache_control": {"type": "ephemeral"}}],
        "tools": [classify_tool(task)],
        "tool_choice": {"type": "tool", "name": "classify"},
        "messages": messages,
        "metadata": {"user_id": hashlib.sha256(request_id.encode()).hexdigest()[:32]},
    }


def read_classification(task: Task, content: list[Any]) -> tuple[str | None, str, Any]:
    """(label if valid else None, rationale, the tool call block) from a message's content."""
    call = next((b for b in content if b.type == "tool_use" and b.name == "classify"), None)
    label = str(call.input.get("label", "")) if call is not None else ""
    rationale = str(call.input.get("rationale", ""))[:500] if call is not None else ""
    return (label if label in task.answers else None), rationale, call


def read_fields(task: Task, call: Any) -> dict[str, str]:
    """The declared fields the teacher filled in (others are ignored)."""
    raw = call.input.get("fields") if call is not None else None
    if not isinstance(raw, dict):
        return {}
    return {k: str(v)[:200] for k, v in raw.items() if k in task.fields and v not in (None, "")}


def usage_of(u: Any) -> Usage:
    return Usage(
        input_tokens=u.input_tokens,
        output_tokens=u.output_tokens,
        cache_creation_input_tokens=u.cache_creation_input_tokens or 0,
        cache_read_input_tokens=u.cache_read_input_tokens or 0,
    )


class AnthropicTeacher:
    def __init__(self, client: Any, model: str | None = None, prices: dict[str, Price] | None = None) -> None:
        self.client = client  # anthropic.AsyncAnthropic
        self.model = model
        self.prices = prices

    def estimate_usd(self, task: Task, text: str) -> float:
        return _upper_estimate(task, text, price_for(self.model or task.teacher.model, self.prices))

    async def label(self, task: Task, text: str, request_id: str) -> TeacherAnswer:
        model = self.model or task.teacher.model
        messages: list[dict[str, Any]] = [{"role": "user", "content": text}]
        started = time.perf_counter()
        totals = Usage(input_tokens=0, output_tokens=0)
        for attempt in (1, 2):  # the second attempt repairs an answer outside the label set
            msg = await self.client.messages.create(**message_params(task, messages, model, request_id))
            u = usage_of(msg.usage)
            totals = Usage(
                input_tokens=totals.input_tokens + u.input_tokens,
                output_tokens=totals.output_tokens + u.output_tokens,
                cache_creation_input_tokens=totals.cache_creation_input_tokens + u.cache_creation_input_tokens,
                cache_read_input_tokens=totals.cache_read_input_tokens + u.cache_read_input_tokens,
            )
            label, rationale, call = read_classification(task, msg.content)
            wrong = str(call.input.get("label", "")) if call is not None else "(no tool call)"
            paid = TeacherAnswer(
                label=label if label is not None else wrong,
                rationale=rationale,
                model=msg.model,
                standin=False,
                usage=totals,
                cost_usd=cost_usd(totals, price_for(model, self.prices)),
                latency_ms=(time.perf_counter() - started) * 1000,
                attempts=attempt,
                fields=read_fields(task, call),
            )
            if label is not None:
                return paid
            messages = [
                *messages,
                {"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in msg.content]},
                {
                    "role": "user",
                    "content": [
                        *(
                            [
                                {
                                    "type": "tool_result",
                                    "tool_use_id": call.id,
                                    "is_error": True,
                                    "content": f"{wrong!r} is not a valid label.",
                                }
                            ]
                            if call is not None
                            else []
                        ),
                        {"type": "text", "text": f"Answer with exactly one of: {', '.join(task.answers)}."},
                    ],
                },
            ]
        raise InvalidAnswer(f"invalid_label: the teacher answered {wrong!r} twice, outside {task.answers}", paid)


Confusions = dict[str, list[tuple[str, float]]]  # label -> [(a label it is mistaken for, weight)]


def confusions(labels: list[str], embeddings: Any, *, nearest: int = 5, temperature: float = 0.05) -> Confusions:
    """Which labels each label is mistaken for, and how often: its ``nearest`` labels by the
    cosine similarity of their mean embeddings (rows of ``embeddings`` are unit vectors, one
    per entry of ``labels``), weighted by a softmax of the similarity at ``temperature``."""
    import numpy as np

    names = sorted(set(labels))
    emb = np.asarray(embeddings, dtype=np.float64)
    index = np.asarray([names.index(label) for label in labels])
    centroids = np.stack([emb[index == i].mean(axis=0) for i in range(len(names))])
    centroids /= np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
    sims = centroids @ centroids.T
    table: Confusions = {}
    for i, name in enumerate(names):
        order = [j for j in np.argsort(-sims[i]) if j != i][:nearest]
        weights = np.exp((sims[i, order] - sims[i, order].max()) / temperature)
        table[name] = [(names[j], round(float(w / weights.sum()), 6)) for j, w in zip(order, weights, strict=True)]
    return table


class StandinTeacher:
    """The offline stand-in: answers from labelled data. Named as such everywhere."""

    def __init__(
        self,
        labelled: dict[str, str],
        *,
        noise: float = 0.0,
        confused: Confusions | None = None,
        latency_ms: float = 0.0,
        priced_as: str = "claude-sonnet-4-6",
        seed: int = 0,
        prices: dict[str, Price] | None = None,
    ) -> None:
        self.labelled = {normalize(text): label for text, label in labelled.items()}
        self.noise = noise
        self.confused = confused  # None: uniform noise
        self.latency_ms = latency_ms
        self.priced_as = priced_as
        self.price = price_for(priced_as, prices)
        self.seed = seed
        self.model = f"standin:{priced_as}"

    @classmethod
    def from_jsonl(cls, path: Path, **kw: Any) -> StandinTeacher:
        labelled = {}
        with open(path) as f:
            for line in f:
                if line.strip():
                    row = json.loads(line)
                    labelled[row["text"]] = str(row["label"])
        return cls(labelled, **kw)

    def estimate_usd(self, task: Task, text: str) -> float:
        return cost_usd(self.usage_for(task, text), self.price)

    def mistake(self, task: Task, label: str, rng: random.Random) -> str:
        """A wrong answer for ``label``: one it is confused with (weighted), else any other."""
        near = [(other, w) for other, w in (self.confused or {}).get(label, []) if other in task.answers]
        if near:
            return rng.choices([other for other, _ in near], weights=[w for _, w in near])[0]
        return rng.choice([a for a in task.answers if a != label])

    def usage_for(self, task: Task, text: str) -> Usage:
        # Estimated at ~4 characters a token: the prompt is the system block plus the text.
        return Usage(input_tokens=(len(system_prompt(task)) + len(text)) // 4 + 20, output_tokens=40, estimated=True)

    async def label(self, task: Task, text: str, request_id: str) -> TeacherAnswer:
        started = time.perf_counter()
        if self.latency_ms:
            await asyncio.sleep(self.latency_ms / 1000)
        label = self.labelled.get(normalize(text), OOS)
        if label not in task.answers:
            label = OOS
        rng = random.Random(f"{self.seed}:{request_id}")
        if self.noise and rng.random() < self.noise:
            label = self.mistake(task, label, rng)
        usage = self.usage_for(task, text)
        return TeacherAnswer(
            label=label,
            rationale="offline stand-in: answered from labelled data",
            model=self.model,
            standin=True,
            usage=usage,
            cost_usd=cost_usd(usage, self.price),
            latency_ms=(time.perf_counter() - started) * 1000,
            attempts=1,
        )
