"""The events on protege's topics, as frozen pydantic models.

``schemas/<name>.v1.schema.json`` is the published contract for each of them (what a
backend or another team codes against). Those files are generated from these models by
``protege schemas export`` and a test fails when the two drift apart, so neither is
maintained by hand twice. Every event is JSON, UTF-8, keyed by its request id (or by
``tenant/task`` for model announcements).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

Verdict = Literal["accept", "escalate", "shadow"]
Route = Literal["student", "teacher"]

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._:@/-]*$"
Id = Annotated[str, Field(min_length=1, max_length=128, pattern=ID_PATTERN)]
MetaKey = Annotated[str, Field(min_length=1, max_length=64)]
MetaValue = Annotated[str, Field(max_length=1024)]
MAX_SAFE_INT = 2**53 - 1  # the largest integer every JSON reader (JavaScript's included) holds exactly


def now_ms() -> int:
    return int(time.time() * 1000)


class Event(BaseModel):
    """Every event: frozen, no unknown fields, JSON on the wire. A subclass names its schema
    title in its class line (``class Decision(Event, title="protege.decision")``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    schema_name: ClassVar[str | None] = None  # validated against this published schema first (from outside)

    def dumps(self) -> bytes:
        return self.model_dump_json(exclude_none=True).encode()

    @property
    def key(self) -> str | None:
        """The Kafka key it is published under: its request id, when it is about one request."""
        return getattr(self, "request_id", None)

    def ids(self) -> dict[str, str | None]:
        """The request id and tenant it is about, for a dead letter (None where it has none)."""
        return {"request_id": getattr(self, "request_id", None), "tenant": getattr(self, "tenant", None)}


class Request(Event, title="protege.request"):
    """What a backend publishes on ``protege.requests``: UTF-8 JSON, at most 1 MiB, nested at
    most 8 deep, no key twice in one object. Without ``request_id``, the record's key is the
    request id (so key each request by its own id); with neither, ingestion stamps one."""

    schema_name: ClassVar[str | None] = "request"

    v: Literal[1] = Field(1, description="Schema version.")
    request_id: Id | None = Field(None, description="The caller's id; else the record key; else stamped by ingestion.")
    tenant: Id = Field(description="Whose traffic this is; data and models never cross tenants.")
    task: Id = Field(description="The task (workflow) name, e.g. ticket-triage.")
    text: str = Field(min_length=1, max_length=100_000, description="The input to classify.")
    metadata: dict[MetaKey, MetaValue] | None = Field(
        None, max_length=32, description="Free-form string fields carried through (at most 32)."
    )
    sent_at_ms: int | None = Field(None, ge=0, le=MAX_SAFE_INT, description="Caller's send time, epoch ms.")


class Ingested(Event, title="protege.ingested"):
    """A valid request, normalised and stamped, on ``protege.ingested``."""

    v: Literal[1] = 1
    request_id: Id = Field(description="Unique request id (the caller's or a stamped one).")
    tenant: Id
    task: Id
    text: str = Field(
        min_length=1, description="Normalised text (NFC, control characters removed, whitespace collapsed)."
    )
    metadata: dict[str, str] = Field(default_factory=dict)
    sent_at_ms: int | None = None
    received_at_ms: int = Field(description="When ingestion accepted it, epoch ms.")
    scored: Literal[True] | None = Field(
        None,
        description="Ingested, scored and decided in one transaction (the one-hop layout, PROTEGE_ONE_HOP): "
        "a scorer passes it by.",
    )


class AboutRequest:
    """For events that carry the ingested request (scored, teacher requests): its ids read as
    the event's own, so keys, dead letters and task checks treat every event alike."""

    if TYPE_CHECKING:  # a field of the event itself; declared here for the type checker only
        request: Ingested

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def tenant(self) -> str:
        return self.request.tenant

    @property
    def task(self) -> str:
        return self.request.task


class AcceptRule(Event, title="protege.accept_rule"):
    """A version's certified acceptance rule: answers with ``confidence >= min_confidence``
    and ``ood <= max_ood`` met the target on held-out data with ``confidence_level``
    confidence (``protege.certify``: Clopper-Pearson bounds, fixed-sequence testing); under a
    false-accept cap an answer in scope may also need ``oos_probability <= max_oos_probability``.
    The target is absolute (``target_accuracy``) or relative to the teacher (``target_margin``)."""

    target_accuracy: float | None = Field(None, gt=0, lt=1, description="Absolute: accepted answers this accurate.")
    target_margin: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="Relative: accepted answers no more than this below the teacher's accuracy on the same requests.",
    )
    confidence_level: float = Field(gt=0, lt=1)
    evidence: Literal["golden", "agreement"] = Field(
        "agreement",
        description="golden: certified against trusted labels (with the teacher's answers on them); agreement: "
        "against the teacher's labels only.",
    )
    min_confidence: float = Field(ge=0, le=1)
    max_ood: float
    max_oos_probability: float | None = Field(
        None,
        ge=0,
        le=1,
        description="An answer in scope is accepted only when the student gives the label oos at most this "
        "probability (chosen under a false-accept cap); None: no such ceiling.",
    )
    oos_past_ood_gate: bool = Field(
        False,
        description="An answer oos is judged on confidence alone: the OOD gate holds back answers in scope only "
        "(an unfamiliar request is what oos names). False: every answer must pass the OOD gate.",
    )
    coverage: float = Field(ge=0, le=1, description="Share of held-out cases the rule accepts.")


class StudentOutput(Event, title="protege.student_output"):
    """The student's answer and the raw signals the verifier judges by."""

    model_version: str = Field(description="Registry version that produced this output.")
    label: str
    confidence: float = Field(ge=0, le=1, description="Calibrated probability of the label.")
    margin: float = Field(ge=0, le=1, description="Top-1 minus top-2 calibrated probability.")
    ood: float = Field(description="Out-of-distribution score on the embedding; larger is stranger.")
    top: list[tuple[str, float]] = Field(description="The three most likely labels and probabilities.")
    oos_probability: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Calibrated probability of the label oos; None when the version has no such label.",
    )
    arm: Literal["canary", "control"] | None = Field(
        None, description="While a canary runs: the canary arm (the candidate) or the control arm (serving)."
    )
    rule: AcceptRule | None = Field(
        None,
        description="The version's certified rule for the task's target accuracy; "
        "None when held-out data could not certify one.",
    )


class Scored(AboutRequest, Event, title="protege.scored"):
    """An ingested request with the student's output (absent before any student exists)."""

    v: Literal[1] = 1
    request: Ingested
    student: StudentOutput | None = Field(None, description="None on cold start or when no model serves the task.")
    student_error: str | None = Field(None, description="Why the student could not answer, when it could not.")
    scored_at_ms: int
    batch_size: int = Field(ge=1, description="Micro-batch this request was scored in.")
    decided: Literal[True] | None = Field(
        None,
        description="Decided by the scorer in the same transaction (the fused layout, PROTEGE_FUSED): "
        "a verifier passes it by.",
    )


class Decision(Event, title="protege.decision"):
    """The verifier's verdict on one request, with everything needed to recompute it."""

    v: Literal[1] = 1
    request_id: Id
    tenant: Id
    task: Id
    verdict: Verdict
    route: Route = Field(description="Who answers: the student (accept) or the teacher.")
    policy: str = Field(description="Routing policy name, e.g. cascade.")
    policy_version: str = Field(description="Content hash of the task's policy section.")
    model_version: str | None = None
    student_label: str | None = None
    signals: dict[str, float] = Field(
        description="confidence, margin, ood as seen by the verifier; oos_probability behind an answer in scope "
        "when the version's rule has a ceiling on it.",
    )
    thresholds: dict[str, float] = Field(description="The thresholds the signals were held to.")
    rules: list[str] = Field(default_factory=list, description="Rule checks that fired.")
    reasons: list[str] = Field(description="Why this verdict; empty reasons only on accept.")
    teacher_check: bool = Field(False, description="ensemble: the teacher checks the student's answer behind it.")
    audit: bool = Field(
        False, description="Audited: the teacher also answers this accepted request behind the response."
    )
    review: bool = Field(
        False,
        description="In the task's review sample (review_rate, a hash of the request id): a person labels it for "
        "the golden set, and it never trains a student. Accepted, it is audited too (the teacher's answer is "
        "the golden row's other half).",
    )
    review_surge: bool = Field(
        False,
        description="In the review sample only because the task's review_surge_rate was in force (no certified rule "
        "let the student answer): its golden row certifies like any other, but reports that estimate what traffic "
        "got leave it out (the review_rate sample alone is a uniform draw of all traffic).",
    )
    decided_at_ms: int


class TeacherRequest(AboutRequest, Event, title="protege.teacher_request"):
    v: Literal[1] = 1
    request: Ingested
    reasons: list[str]
    mode: Literal["answer", "check", "audit"] = Field(
        "answer",
        description="answer: the teacher's label is the response; check: the student already answered "
        "(ensemble) and a disagreement becomes a correction; audit: the student's answer stands and the "
        "teacher's measures it.",
    )
    student_label: str | None = None
    student_confidence: float | None = None
    model_version: str | None = None
    review: bool = Field(False, description="In the review sample: its result goes to people, not to training.")
    attempt: int = Field(0, ge=0, description="Times the teacher was unavailable for it so far.")
    not_before_ms: int | None = Field(None, description="Held in the retry topic until then.")
    held_because: str | None = Field(None, description="Why it was held: teacher_unavailable or over_budget.")
    requested_at_ms: int


class Usage(Event, title="protege.usage"):
    input_tokens: int = Field(ge=0)
    output_tokens: int = Field(ge=0)
    cache_creation_input_tokens: int = Field(0, ge=0)
    cache_read_input_tokens: int = Field(0, ge=0)
    estimated: bool = Field(False, description="True when counted by the offline stand-in, not by the API.")


class TeacherResult(Event, title="protege.teacher_result"):
    v: Literal[1] = 1
    request_id: Id
    tenant: Id
    task: Id
    text: str = Field(description="The request text, for harvesting.")
    label: str
    rationale: str = ""
    teacher: str = Field(description="Teacher model id, or 'standin:<name>' for the offline stand-in.")
    standin: bool = Field(description="True when the offline stand-in answered from labelled data.")
    usage: Usage
    cost_usd: float = Field(ge=0)
    latency_ms: float = Field(ge=0)
    attempts: int = Field(ge=1)
    mode: Literal["answer", "check", "audit"] = "answer"
    fields: dict[str, str] = Field(default_factory=dict, description="Fields the teacher extracted.")
    student_label: str | None = None
    agrees: bool | None = Field(None, description="Whether the student had given the same label.")
    model_version: str | None = None
    review: bool = Field(False, description="In the review sample (from its teacher request).")
    answered_at_ms: int


class Response(Event, title="protege.response"):
    """The one answer to a request, on ``protege.responses``."""

    v: Literal[1] = 1
    request_id: Id
    tenant: Id
    task: Id
    label: str | None = Field(None, description="The answer; None only when status is failed.")
    route: Route
    status: Literal["answered", "degraded", "failed"] = Field(
        "answered",
        description="degraded: the student answered because the teacher was unavailable or over "
        "budget; failed: no valid answer could be given (see error and the dead-letter topic).",
    )
    provisional: bool = Field(False, description="ensemble: the teacher may still send a correction.")
    fields: dict[str, str] = Field(default_factory=dict, description="Extracted fields (teacher answers only).")
    error: str | None = None
    answered_by: str = Field(description="Student model version or teacher model id.")
    standin: bool = Field(False, description="True when the offline teacher stand-in answered.")
    confidence: float | None = None
    sent_at_ms: int | None = None
    received_at_ms: int
    answered_at_ms: int


class Correction(Event, title="protege.correction"):
    """ensemble: the teacher disagreed with the student's provisional answer."""

    v: Literal[1] = 1
    request_id: Id
    tenant: Id
    task: Id
    label: str = Field(description="The teacher's label, which replaces the provisional one.")
    replaces: str = Field(description="The student's provisional label.")
    answered_by: str
    standin: bool = False
    corrected_at_ms: int


class Alert(Event, title="protege.alert"):
    """An operational alarm, e.g. the escalation rate left its band (drift)."""

    v: Literal[1] = 1
    kind: Literal["drift"]
    state: Literal["firing", "resolved"]
    task: Id
    policy_version: str
    rate: float = Field(description="Escalation rate over the window.")
    baseline: float
    band: float
    window: int
    reasons: dict[str, float] = Field(description="Escalation rate per reason over the window.")
    at_ms: int

    @property
    def key(self) -> str:
        return self.task


class Feedback(Event, title="protege.feedback"):
    """A person's label for a request: a correction (an agent fixed the answer; it trains the
    student) or a review (the label of a request in the task's review sample, given without
    seeing the teacher's or the student's; it joins the golden set and never trains)."""

    v: Literal[1] = 1
    request_id: Id
    tenant: Id
    task: Id
    text: str = Field(min_length=1)
    label: str
    source: str = Field("agent", description="Who corrected it.")
    kind: Literal["correction", "review"] = Field(
        "correction",
        description="correction: a fix, learnt from; review: a verdict on a request of the review sample "
        "(protege.review), kept as golden truth.",
    )


class ReviewItem(Event, title="protege.review_item"):
    """A request of the task's review sample, waiting for a person's label, on ``protege.review``.
    Blind: it carries the text, not the teacher's or the student's answer, so the reviewer's
    label is not anchored on either (``protege review pull`` / ``protege review submit``)."""

    v: Literal[1] = 1
    request_id: Id
    tenant: Id
    task: Id
    text: str
    sampled_at_ms: int

    def review(self, label: str, source: str) -> Feedback:
        """A person's label for this request, as the review it is sent as (``ValueError`` if not one)."""
        return Feedback(
            request_id=self.request_id,
            tenant=self.tenant,
            task=self.task,
            text=self.text,
            label=label,
            source=source,
            kind="review",
        )


class HarvestCase(Event, title="protege.harvest_case"):
    """A case to learn from: one the student missed, doubted or got wrong, labelled by the
    teacher or a person; or one it answered under its certified rule (reason ``accepted``,
    label source ``student``: the verifier's sample of accepted answers, ``student.learn_accepted``),
    which the trainer fits on but never calibrates or gates on."""

    v: Literal[1] = 1
    request_id: Id
    tenant: Id
    task: Id
    text: str
    label: str = Field(description="The label to learn (the teacher's, a person's, or the student's accepted answer).")
    label_source: Literal["teacher", "standin", "feedback", "student"]
    student_label: str | None = None
    model_version: str | None = None
    reason: Literal["escalated", "disagreement", "feedback", "audit", "accepted", "review"] = Field(
        description="review: one half of a golden row (the teacher's answer, or a person's review label), "
        "kept apart from training."
    )
    labelled_by: str | None = Field(
        None,
        description="review: who gave a person's label (the review's source): two people's labels of one request "
        "are a second opinion, not a change of mind.",
    )
    harvested_at_ms: int

    @property
    def key(self) -> str:
        """One tenant's task in one partition, in order."""
        return f"{self.tenant}/{self.task}"


class ModelAnnouncement(Event, title="protege.model_announcement"):
    """A student version ready to serve a tenant's task, on ``protege.models``."""

    v: Literal[1] = 1
    tenant: Id
    task: Id
    version: str
    path: str = Field(description="Registry folder holding model.onnx, tokenizer and manifest.")
    labels: list[str]
    metrics: dict[str, float]
    trained_on: int = Field(ge=1, description="Number of harvested cases it was trained on.")
    source: Literal["trainer", "operator", "monitor"] = Field(
        "trainer", description="Who announced it (the monitor: a canary's verdict)."
    )
    pin: bool = Field(False, description="operator: keep serving this version; the trainer's are ignored until unpin.")
    action: Literal["serve", "unpin", "canary", "abort"] = Field(
        "serve",
        description="unpin: resume serving the trainer's versions; canary: serve a share of requests on trial; "
        "abort: end its trial (rolled back).",
    )
    share: float | None = Field(None, ge=0, le=0.5, description="canary: the share of requests it answers.")
    reason: str | None = Field(None, description="Why: a canary's verdict, with the numbers in evidence.")
    evidence: dict[str, float] = Field(default_factory=dict, description="The numbers behind the reason.")
    announced_at_ms: int

    @property
    def key(self) -> str:
        """One tenant's task in one partition, in order."""
        return f"{self.tenant}/{self.task}"


class DeadLetter(Event, title="protege.dead_letter"):
    """Bytes a service could not accept, with the reason; nothing is dropped silently."""

    v: Literal[1] = 1
    reason: str = Field(description="Stable machine-readable code, e.g. invalid_json, schema_violation.")
    detail: str = Field(description="Human-readable explanation.")
    service: str
    topic: str
    partition: int
    offset: int
    key_b64: str | None = None
    value_b64: str = Field(description="The original bytes, base64.")
    request_id: str | None = None
    tenant: str | None = None
    at_ms: int


EVENTS: dict[str, type[Event]] = {
    "request": Request,
    "ingested": Ingested,
    "scored": Scored,
    "decision": Decision,
    "teacher_request": TeacherRequest,
    "teacher_result": TeacherResult,
    "response": Response,
    "feedback": Feedback,
    "review_item": ReviewItem,
    "correction": Correction,
    "alert": Alert,
    "harvest_case": HarvestCase,
    "model_announcement": ModelAnnouncement,
    "dead_letter": DeadLetter,
}


def schema_of(name: str) -> dict[str, Any]:
    model = EVENTS[name]
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://protege.dev/schemas/{name}.v1.schema.json"
    return schema
