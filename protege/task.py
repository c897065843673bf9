"""Tasks: one YAML file each, holding everything that defines one workflow.

name: ticket-triage
labels: {billing: "charges, refunds, invoices", ...}   # the teacher may also answer `oos`
instructions: "You triage customer support tickets ..."
policy: {name: cascade, thresholds: {...}, always_escalate_labels: [...], ...}
teacher: {model: claude-sonnet-4-6, max_tokens: 256}
student: {max_length: 128}
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from protege.errors import ConfigError

if TYPE_CHECKING:
    from protege.certify import Goal
    from protege.events import AcceptRule

OOS = "oos"


class Thresholds(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    min_confidence: float = Field(0.8, ge=0, le=1)
    min_margin: float = Field(0.2, ge=0, le=1)
    max_ood: float = Field(0.6, description="Largest OOD score still accepted.")


class Check(BaseModel):
    """A cheap check the student's answer must pass under ``distill_verify``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str = Field(description="The label it applies to; '*' for every label.")
    require_pattern: str = Field(description="A regex the text must match for the student's answer to stand.")
    reason: str = Field("check_failed", pattern=r"^[a-z0-9_]+$", description="Reason code when it fails.")

    @field_validator("require_pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        return _compiled(pattern)


class Drift(BaseModel):
    """The escalation rate is the leading indicator of drift: alarm when it rises past the band."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: int = Field(500, ge=20, description="Decisions per measurement window.")
    band: float = Field(0.15, gt=0, le=1, description="Allowed rise above the baseline rate.")
    baseline: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Expected rate; None: learned (the first full window's, lower as the student improves).",
    )


class Policy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: Literal["cascade", "distill_verify", "ensemble", "shadow"] = Field(
        "cascade",
        description="cascade: student if its signals pass; distill_verify: student if its checks pass; "
        "ensemble: student at once, teacher checks behind; shadow: teacher answers, student "
        "recorded beside it.",
    )
    thresholds: Thresholds = Thresholds()
    checks: list[Check] = Field(default_factory=list, description="distill_verify's checks.")
    always_escalate_labels: list[str] = Field(default_factory=list, description="Policy-sensitive labels.")
    escalate_patterns: list[str] = Field(default_factory=list, description="Regexes that always escalate.")
    vip_tenants: list[str] = Field(default_factory=list, description="Tenants that always get the teacher.")
    fields_required_for: list[str] = Field(
        default_factory=list,
        description="Labels whose answer needs the task's extracted fields; the student only "
        "classifies, so these always escalate to the teacher.",
    )
    on_teacher_unavailable: Literal["hold", "degrade"] = Field(
        "hold",
        description="hold: keep the request in the retry topic until the teacher can answer; degrade: answer "
        "with the student's label flagged degraded (held when there is none).",
    )
    drift: Drift = Drift()
    target_accuracy: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep accepted answers at least this accurate: cascade then uses the serving "
        "version's certified rule (thresholds chosen on held-out data) instead of "
        "`thresholds`, and escalates when the version has none.",
    )
    target_margin: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="A target relative to the teacher (instead of target_accuracy): accepted answers no more "
        "than this below the teacher's accuracy on the same requests, so the whole cascade stays within it of "
        "all-teacher. Certified on the task's golden set (trusted labels with the teacher's answers; "
        "`golden`), or without one on agreement (the student's disagreement with the teacher must stay under it).",
    )
    target_confidence: float = Field(0.95, gt=0.5, lt=1, description="Statistical confidence of that guarantee.")
    max_false_accepts: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Also cap the out-of-scope requests the student answers with an in-scope label: a version's "
        "rule stops at the threshold where more than this share of the golden set's `oos` cases would be "
        "accepted, and may defer in-scope answers behind which the student gives `oos` more than a ceiling "
        "(`max_oos_probability`, chosen among a few with the accuracy guarantee kept by Bonferroni). A point "
        "estimate on the golden set, not part of the certified guarantee (a golden set holds too few "
        "out-of-scope cases to bound a few percent); the price is in-scope requests deferred "
        "(benchmarks/coverage_levers.py). Needs a golden set with `oos` cases; ignored otherwise.",
    )
    oos_past_ood_gate: bool = Field(
        False,
        description="Under a target: a version's rule judges an answer `oos` on confidence alone, the OOD gate "
        "holding back answers in scope only (an unfamiliar request is what `oos` names; such answers are "
        "certified with the rest, an `oos` given to a request in scope counting as wrong). False: every "
        "answer must pass the OOD gate, so out-of-scope requests unlike the golden set's go to the teacher "
        "(the default: the easy oos answers also leave the rule room for more wrong answers in scope; "
        "docs/benchmarks.md, stop 46).",
    )
    audit_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of accepted student answers (by a stable hash of the request id) the teacher "
        "also answers behind the response: the unbiased sample that measures the student's live accuracy.",
    )

    @field_validator("escalate_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return [_compiled(p) for p in patterns]

    @model_validator(mode="after")
    def _one_target(self) -> Policy:
        if self.target_accuracy is not None and self.target_margin is not None:
            raise ValueError(
                "a target is absolute (target_accuracy) or relative to the teacher (target_margin), not both"
            )
        return self

    @property
    def targeted(self) -> bool:
        """Whether accepted answers are held to a certified target (the version's rule decides)."""
        return self.target_accuracy is not None or self.target_margin is not None

    def certified_by(self, rule: AcceptRule | None) -> bool:
        """Whether a version's rule certifies this policy's target: the same kind and value, at
        least its confidence, and answers ``oos`` past the OOD gate only where the policy lets them."""

        def same(a: float | None, b: float | None) -> bool:
            return (a is None and b is None) or (a is not None and b is not None and abs(a - b) < 1e-9)

        return (
            rule is not None
            and same(rule.target_accuracy, self.target_accuracy)
            and same(rule.target_margin, self.target_margin)
            and rule.confidence_level >= self.target_confidence - 1e-9
            # a rule that lets answers oos past the OOD gate, where the policy no longer allows it
            and (self.oos_past_ood_gate or not rule.oos_past_ood_gate)
        )

    def goal(self, default_accuracy: float) -> Goal:
        """The target as ``protege.certify`` tests it (``default_accuracy`` when the task sets none:
        the coverage a version reports)."""
        from protege.certify import Goal

        kind = (
            Goal(margin=self.target_margin)
            if self.target_margin is not None
            else Goal(accuracy=self.target_accuracy or default_accuracy)
        )
        return replace(
            kind,
            confidence=self.target_confidence,
            max_false_accepts=self.max_false_accepts,
            oos_past_ood_gate=self.oos_past_ood_gate,
        )

    @property
    def version(self) -> str:
        """Content hash: any change to the policy section is a new policy version (a policy
        without audits, a relative target or a false-accept cap, with answers oos past the OOD
        gate, hashes as it did before they existed)."""
        data = self.model_dump(mode="json")
        if not data["audit_rate"]:
            del data["audit_rate"]
        if data["target_margin"] is None:
            del data["target_margin"]
        if data["max_false_accepts"] is None:
            del data["max_false_accepts"]
        if not data["oos_past_ood_gate"]:
            del data["oos_past_ood_gate"]
        blob = json.dumps(data, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def _compiled(pattern: str) -> str:
    try:
        re.compile(pattern)
    except re.error as e:
        raise ValueError(f"pattern {pattern!r} does not compile: {e}") from e
    return pattern


class TeacherConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = "claude-sonnet-4-6"
    max_tokens: int = Field(256, ge=16)
    spend_cap_usd_per_hour: float | None = Field(
        None, gt=0, description="Per tenant; over it, the policy's on_teacher_unavailable applies."
    )


class Gates(BaseModel):
    """Release gates: a version that fails one is kept in the registry but does not serve."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_accuracy: float = Field(
        0.5,
        ge=0,
        le=1,
        description="Golden-set accuracy floor (below min_golden cases: fails only when significantly below it).",
    )
    min_macro_f1: float = Field(0.0, ge=0, le=1, description="Golden-set macro-F1 floor (from min_golden cases).")
    min_class_recall: float = Field(0.0, ge=0, le=1, description="Recall floor for every class with enough support.")
    min_class_support: int = Field(5, ge=1, description="Golden cases a class needs before its recall is judged.")
    max_ece: float = Field(0.2, gt=0, le=1, description="Calibration error ceiling (after temperature scaling).")
    min_coverage: float = Field(0.0, ge=0, le=1, description="Coverage floor at the target accuracy.")
    max_latency_ms: float = Field(1000.0, gt=0, description="p95 of one-request scoring on the trainer's machine.")
    tolerance: float = Field(
        0.01,
        ge=0,
        le=1,
        description="How much worse than the serving version a candidate may "
        "be (accuracy, macro-F1, coverage; on the trusted rows where the task has them, "
        "else on the golden split) before it is held back.",
    )
    min_golden: int = Field(
        100,
        ge=1,
        description="Golden cases needed for the statistical gates (calibration "
        "error, comparison with the serving version); below it only the "
        "accuracy, macro-F1, recall, coverage and latency floors apply.",
    )


class Canary(BaseModel):
    """A version that passes its gates first serves ``share`` of requests; the audits decide
    (``protege.canary``). share 0: it serves all traffic at once."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    share: float = Field(0.0, ge=0, le=0.5, description="Requests the candidate answers while on trial (0: no canary).")
    audit_rate: float = Field(
        0.25, gt=0, le=1, description="Audits of accepted answers in the canary and control arms."
    )
    min_audits: int = Field(30, ge=5, description="Audits each side needs before a verdict.")
    max_audits: int = Field(400, ge=10, description="Volume limit: decide on the point estimate at this many.")
    max_minutes: float = Field(60.0, gt=0, description="Time limit: decide on the point estimate after this.")
    margin: float = Field(0.02, ge=0, le=1, description="How much less accurate than the serving version it may be.")
    escalation_margin: float = Field(
        0.05, ge=0, le=1, description="How much higher a share of requests than the serving version it may escalate."
    )
    confidence: float = Field(0.99, gt=0.5, lt=1, description="Of each look's interval (raised: repeated looks).")


class StudentConfig(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    max_length: int = Field(128, ge=8, le=512)
    int8: bool | Literal["auto"] = Field(
        "auto",
        description="Serve the dynamically int8-quantised graph: auto (each version's gate decides: int8 when its "
        "golden accuracy is within gates.tolerance of the fp32 graph's), true (always), false (never).",
    )
    vote: float = Field(
        0.3,
        ge=0,
        le=1,
        description="Share of the student's probabilities from its 5 nearest fit cases' labels (a kNN vote beside "
        "the head; it ranks the traffic better, so the certified rule covers more: benchmarks/coverage_levers.py; "
        "0.3 against 0.5: alike on BANKING77, more coverage and fewer out-of-scope requests let through on "
        "CLINC150). 0: the head's alone.",
    )
    learn_accepted: float = Field(
        1.0,
        ge=0,
        le=1,
        description="Share of the answers the student gives under its certified rule that the verifier hands the "
        "trainer as cases (label source student; sampled by a hash of the request id). They are fit, never "
        "calibration or gates: the next version learns the easy traffic too, not only what the teacher answered "
        "(benchmarks/self_training.py). 0: the trainer learns from teacher and people alone.",
    )
    gates: Gates = Gates()
    canary: Canary = Canary()


class Task(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    description: str = ""
    labels: dict[str, str] = Field(min_length=2, description="Label -> what it covers.")
    instructions: str = Field(min_length=1)
    fields: dict[str, str] = Field(default_factory=dict, description="Fields the teacher extracts: name -> what it is.")
    golden: str | None = Field(
        None,
        description="A golden set with trusted labels: JSON Lines {id, text, label, teacher} (label: a person's; "
        "teacher: the teacher's answer, from `protege label --golden`), relative to the tasks folder. Kept out of "
        "training; every version is measured on it, and rules are certified on it.",
    )
    review_rate: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of all requests (by a hash of the request id, accepted and escalated alike) sent to "
        "people for a label (protege.review; `protege review pull`/`submit`): with the teacher's answer on each, "
        "they join the golden set, a uniform sample of live traffic that grows with it. Kept out of training; an "
        "accepted one is audited too. 0: the golden set is the file alone.",
    )
    review_surge_rate: float | None = Field(
        None,
        ge=0,
        le=1,
        description="Under a target: the share of requests sent to people while no certified rule lets the student "
        "answer (before its first rule, and after a check marked a shift and the rows since certified nothing), "
        "until one does: more rows of today's traffic, sooner, where the student is shut out and every request is a "
        "teacher call. The same hash as review_rate, so the review_rate sample is the part of it reports estimate "
        "from (a uniform draw of all traffic; the surge's extra rows certify, they are not a uniform draw). "
        "None: review_rate always.",
    )
    review_overlap: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of the review sample (by another hash of the request id) that a second person labels "
        "too: `protege report` measures how often people agree (and Fleiss' kappa), and a row two people label "
        "differently is disputed, kept out of the golden set until a third label gives it a majority. 0: one "
        "person a request.",
    )
    review_window: int = Field(
        0,
        ge=0,
        description="Measure and certify each version on the newest N reviewed rows only (in the order people "
        "completed them; 0: every reviewed row). Under a shift the golden set then follows today's traffic, not the "
        "traffic of months ago; fewer rows certify less. The golden file's rows always count.",
    )
    policy: Policy = Policy()
    teacher: TeacherConfig = TeacherConfig()
    student: StudentConfig = StudentConfig()

    @model_validator(mode="after")
    def _surge_above_rate(self) -> Task:
        if self.review_surge_rate is not None and self.review_surge_rate < self.review_rate:
            raise ValueError(
                f"review_surge_rate {self.review_surge_rate:g} is below review_rate {self.review_rate:g}: a surge "
                "samples more requests for review, not fewer"
            )
        return self

    @property
    def review_ceiling(self) -> float:
        """The largest share of requests ever sent to review (the surge's, else ``review_rate``):
        a review of a request outside it is not one of the sample's."""
        return max(self.review_rate, self.review_surge_rate or 0.0)

    @property
    def surge_rate(self) -> float:
        """The review sample's rate while no certified rule lets the student answer: the surge's
        under a target (only a target shuts the student out for want of a rule), else ``review_rate``."""
        return self.review_ceiling if self.policy.targeted else self.review_rate

    @property
    def answers(self) -> list[str]:
        """Every valid teacher answer: the labels plus ``oos`` (out of scope)."""
        return [*self.labels, OOS] if OOS not in self.labels else list(self.labels)


def load_task(path: Path) -> Task:
    try:
        data: Any = yaml.safe_load(path.read_text())
        return Task.model_validate(data)
    except (OSError, yaml.YAMLError, ValidationError) as e:
        raise ConfigError(f"task file {path}: {e}") from e


def load_tasks(folder: Path) -> dict[str, Task]:
    tasks = {}
    for path in sorted(folder.glob("*.yaml")):
        task = load_task(path)
        if task.name in tasks:
            raise ConfigError(f"task {task.name!r} is defined twice (in {path})")
        tasks[task.name] = task
    if not tasks:
        raise ConfigError(f"no task files (*.yaml) in {folder}")
    return tasks


def write_task(task: Task, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(task.model_dump(mode="json"), sort_keys=False, allow_unicode=True))
