"""protege's Kafka security settings against a secured broker: a second embedded Kafka with
an SSL listener and a SASL_SSL listener (server certificate from a CA made here; SASL/PLAIN
and SASL/SCRAM-SHA-256 users; SASL/OAUTHBEARER tokens from a local OAuth token endpoint or a
file). With only ``PROTEGE_*`` settings, protege's own clients
(admin, a transactional processor with its consumer group, a read_committed reader) work
over each; a wrong password and an unknown CA are refused."""

from __future__ import annotations

import asyncio
import datetime as dt
import gc
import ipaddress
import os
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from protege.broker.embedded import EmbeddedBroker, free_port
from protege.errors import BrokerError
from protege.harness import Probe
from protege.kafka import Out, Processor, Received, Record, ensure_topics, producer
from protege.settings import Settings
from protege.state import read_all
from tests.token_endpoint import TokenEndpoint, client_keys, unsigned_jwt

pytestmark = pytest.mark.kafka

PLAIN_USER, PLAIN_PASSWORD = "protege", "plain-secret-4b1d"
SCRAM_USER, SCRAM_PASSWORD = "protege-scram", "scram-secret-9e2c"
OAUTH_SECRET = "oauth-client-secret-51c0"


def certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey | None,
    *,
    ca: bool,
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    now = dt.datetime.now(dt.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key or key, hashes.SHA256())


def make_ca_and_keystore(folder: Path) -> tuple[Path, Path]:
    """A CA certificate (PEM) and the broker's keystore: its key (PKCS#8) + certificate chain (PEM)."""
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = certificate("protege test CA", ca_key, None, None, ca=True)
    server = certificate("localhost", server_key, ca.subject, ca_key, ca=False)
    pem = serialization.Encoding.PEM
    ca_file, keystore = folder / "ca.pem", folder / "broker-keystore.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    keystore.write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        + server.public_bytes(pem)
        + ca.public_bytes(pem)
    )
    return ca_file, keystore


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[EmbeddedBroker, Path]]:
    home = tmp_path_factory.mktemp("secured")
    ca, keystore = make_ca_and_keystore(home)
    broker = EmbeddedBroker(
        home / "broker",
        heap_mb=384,
        listeners={"SSL": "SSL", "SASL_SSL": "SASL_SSL"},
        properties={
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(keystore),
            "sasl.enabled.mechanisms": "PLAIN,SCRAM-SHA-256,OAUTHBEARER",
            # OAUTHBEARER with the broker's default validator: unsigned JWTs (tests/token_endpoint.py),
            # their sub, exp and iat checked
            "listener.name.sasl_ssl.oauthbearer.sasl.jaas.config": 'org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required unsecuredLoginStringClaim_sub="broker";',
            "listener.name.sasl_ssl.plain.sasl.jaas.config": f'org.apache.kafka.common.security.plain.PlainLoginModule required user_{PLAIN_USER}="{PLAIN_PASSWORD}";',
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config": "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        },
        format_args=("--add-scram", f"SCRAM-SHA-256=[name={SCRAM_USER},password={SCRAM_PASSWORD}]"),
    )
    broker.start()
    try:
        yield broker, ca
    finally:
        broker.stop()


def sasl_ssl_env(broker: EmbeddedBroker, ca: Path, mechanism: str, user: str, password: str) -> dict[str, str]:
    """protege's settings for the SASL_SSL listener."""
    return {
        "PROTEGE_BOOTSTRAP_SERVERS": broker.address("SASL_SSL"),
        "PROTEGE_SECURITY_PROTOCOL": "SASL_SSL",
        "PROTEGE_SASL_MECHANISM": mechanism,
        "PROTEGE_SASL_USERNAME": user,
        "PROTEGE_SASL_PASSWORD": password,
        "PROTEGE_SSL_CAFILE": str(ca),
    }


def settings_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, env: dict[str, str]) -> Settings:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("PROTEGE_TOPIC_PREFIX", f"sec{time.time_ns()}.")
    monkeypatch.setenv("PROTEGE_HOME", str(tmp_path / "home"))
    return Settings()


async def round_trip(settings: Settings, n: int = 20) -> list[Record]:
    """Create topics, publish ``n`` records, forward them exactly once with a transactional
    Processor (consumer group), read the output read_committed."""
    source, target = f"{settings.topic_prefix}in", f"{settings.topic_prefix}out"
    await ensure_topics(settings, [source, target])
    prod = producer(settings)
    await prod.start()
    try:
        for i in range(n):
            await prod.send(source, Probe(n=i, sent_s=0.0).dumps(), key=f"k{i}".encode())
        await prod.flush()
    finally:
        await prod.stop()

    async def forward(received: Sequence[Received[Probe]]) -> list[Out]:
        return [Out(target, r.value, r.key) for r in received]

    stop = asyncio.Event()
    processor = Processor(settings, "secured-forward", {source: Probe}, forward)
    running = asyncio.create_task(processor.run(stop))
    deadline = time.monotonic() + 60
    while processor.processed < n and time.monotonic() < deadline and not running.done():
        await asyncio.sleep(0.2)
    stop.set()
    await asyncio.wait_for(running, timeout=30)
    return await read_all(settings, target)


def refused(settings: Settings) -> BrokerError:
    """The error a service gets at start when the broker turns it away."""

    async def attempt() -> BrokerError:
        try:
            await asyncio.wait_for(ensure_topics(settings, [f"{settings.topic_prefix}x"]), timeout=60)
        except BrokerError as e:
            await asyncio.sleep(0.2)  # the failed connections finish closing before the loop ends
            return e
        raise AssertionError("the broker let it in")

    error = asyncio.run(attempt())
    gc.collect()  # a connection left open would warn here, in this test, not in a later one
    return error


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
def test_sasl_ssl_with_protege_settings(
    secured: tuple[EmbeddedBroker, Path], mechanism: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broker, ca = secured
    user, password = (PLAIN_USER, PLAIN_PASSWORD) if mechanism == "PLAIN" else (SCRAM_USER, SCRAM_PASSWORD)
    settings = settings_from_env(
        monkeypatch,
        tmp_path,
        sasl_ssl_env(broker, ca, mechanism, user, password),
    )
    out = asyncio.run(round_trip(settings))
    gc.collect()  # every client closed: nothing warns
    assert sorted(Probe.model_validate_json(r.value).n for r in out) == list(range(20))
    assert password not in repr(settings)  # a SecretStr: never printed with the settings


def oauth_env(broker: EmbeddedBroker, ca: Path, **source: str) -> dict[str, str]:
    """protege's settings for OAUTHBEARER on the SASL_SSL listener; ``source``: where tokens come from."""
    return {
        "PROTEGE_BOOTSTRAP_SERVERS": broker.address("SASL_SSL"),
        "PROTEGE_SECURITY_PROTOCOL": "SASL_SSL",
        "PROTEGE_SASL_MECHANISM": "OAUTHBEARER",
        "PROTEGE_SSL_CAFILE": str(ca),
        **{f"PROTEGE_SASL_{k.upper()}": v for k, v in source.items()},
    }


def endpoint_env(broker: EmbeddedBroker, ca: Path, endpoint: TokenEndpoint, secret: str, **more: str) -> dict[str, str]:
    """OAUTHBEARER with tokens from ``endpoint``, asked as client protege-client with ``secret``."""
    return oauth_env(
        broker, ca, oauthbearer_token_endpoint_url=endpoint.url, username="protege-client", password=secret, **more
    )


def test_sasl_oauthbearer_from_a_token_endpoint(
    secured: tuple[EmbeddedBroker, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A token from the client-credentials grant: the broker admits it, and every client of the
    process (admin, producers, the transactional processor's consumer and producers, a reader)
    connects with the one token fetched."""
    broker, ca = secured
    with TokenEndpoint("protege-client", OAUTH_SECRET) as endpoint:
        env = endpoint_env(broker, ca, endpoint, OAUTH_SECRET, oauthbearer_scope="kafka")
        settings = settings_from_env(monkeypatch, tmp_path, env)
        out = asyncio.run(round_trip(settings))
        gc.collect()
        assert sorted(Probe.model_validate_json(r.value).n for r in out) == list(range(20))
        assert len(endpoint.requests) == 1 and endpoint.requests[0][2]["scope"] == ["kafka"]
    assert OAUTH_SECRET not in repr(settings)


def test_sasl_oauthbearer_from_a_token_file(
    secured: tuple[EmbeddedBroker, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A token a sidecar keeps in a file: admitted while fresh; an expired one is refused by the
    broker itself (its validator checks exp), and the service says why."""
    broker, ca = secured
    token = tmp_path / "token"
    token.write_text(unsigned_jwt("protege-sidecar", 600))
    env = oauth_env(
        broker, ca, oauthbearer_token_file=str(token), oauthbearer_extensions="logicalCluster=lkc-1,identityPoolId=p-2"
    )
    settings = settings_from_env(monkeypatch, tmp_path, env)  # extensions as Confluent Cloud asks for them
    out = asyncio.run(round_trip(settings, n=5))
    gc.collect()
    assert len(out) == 5
    token.write_text(unsigned_jwt("protege-sidecar", 600, now=time.time() - 3600))  # expired 50 minutes ago
    assert "over SASL_SSL, SASL OAUTHBEARER" in str(refused(settings))
    assert "SaslAuthenticationFailed" in caplog.text


def test_sasl_oauthbearer_with_a_signed_client_assertion(
    secured: tuple[EmbeddedBroker, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """No secret: the client signs a JWT with its private key (the JWT-bearer grant, as Kafka 4.1's
    Java client asks; the certificate's thumbprint in its header) and the endpoint, checking it
    against the client's registered key, issues the token the broker admits."""
    broker, ca = secured
    keys = client_keys(tmp_path, passphrase=b"key-passphrase")
    with TokenEndpoint("protege-client", None, public_key=keys["rsa"].public_key()) as endpoint:
        env = oauth_env(
            broker,
            ca,
            oauthbearer_token_endpoint_url=endpoint.url,
            username="protege-client",
            oauthbearer_grant="jwt_bearer",
            oauthbearer_assertion_private_key_file=str(tmp_path / "rsa.pem"),
            oauthbearer_assertion_private_key_passphrase="key-passphrase",
            oauthbearer_assertion_certificate_file=str(tmp_path / "rsa.crt"),
        )
        settings = settings_from_env(monkeypatch, tmp_path, env)
        out = asyncio.run(round_trip(settings, n=5))
        gc.collect()
        assert len(out) == 5
        [(header, claims)] = endpoint.assertions  # one token for every client of the process
        assert header["alg"] == "RS256" and "x5t#S256" in header and claims["sub"] == "protege-client"
        assert endpoint.requests[0][2]["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
    assert "key-passphrase" not in repr(settings)


def test_a_token_endpoint_that_refuses_the_client_is_the_reason_given(
    secured: tuple[EmbeddedBroker, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, ca = secured
    with TokenEndpoint("protege-client", OAUTH_SECRET) as endpoint:
        settings = settings_from_env(monkeypatch, tmp_path, endpoint_env(broker, ca, endpoint, "not-the-secret"))
        assert "over SASL_SSL, SASL OAUTHBEARER as 'protege-client'" in str(refused(settings))
    assert "refused client 'protege-client': HTTP 401" in caplog.text and "invalid_client" in caplog.text
    assert "not-the-secret" not in caplog.text


def test_ssl_with_protege_settings(
    secured: tuple[EmbeddedBroker, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    broker, ca = secured
    settings = settings_from_env(
        monkeypatch,
        tmp_path,
        {
            "PROTEGE_BOOTSTRAP_SERVERS": broker.address("SSL"),
            "PROTEGE_SECURITY_PROTOCOL": "SSL",
            "PROTEGE_SSL_CAFILE": str(ca),
        },
    )
    out = asyncio.run(round_trip(settings, n=5))
    gc.collect()
    assert len(out) == 5


def test_wrong_password_is_refused(
    secured: tuple[EmbeddedBroker, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, ca = secured
    settings = settings_from_env(
        monkeypatch,
        tmp_path,
        sasl_ssl_env(broker, ca, "PLAIN", PLAIN_USER, "not-the-password"),
    )
    assert "over SASL_SSL, SASL PLAIN as 'protege'" in str(refused(settings))
    assert "SaslAuthenticationFailed" in caplog.text  # the reason, in the service's log
    assert "not-the-password" not in caplog.text


def test_unknown_ca_is_refused(
    secured: tuple[EmbeddedBroker, Path],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker, _ = secured
    other_ca, _ = make_ca_and_keystore(tmp_path)  # a CA that did not sign the broker's certificate
    settings = settings_from_env(
        monkeypatch,
        tmp_path,
        {
            "PROTEGE_BOOTSTRAP_SERVERS": broker.address("SSL"),
            "PROTEGE_SECURITY_PROTOCOL": "SSL",
            "PROTEGE_SSL_CAFILE": str(other_ca),
        },
    )
    assert "over SSL" in str(refused(settings))
    assert "CERTIFICATE_VERIFY_FAILED" in caplog.text


@pytest.mark.slow
def test_the_monitor_over_sasl_ssl(
    secured: tuple[EmbeddedBroker, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """faust-streaming gets the same settings as protege's own clients (SCRAM over SSL): it
    joins its group, keeps its tables and counts decisions on /metrics."""
    from tests.integration.test_monitor import decision, scrape, send, start, stop, wait_for

    broker, ca = secured
    secured_env = sasl_ssl_env(broker, ca, "SCRAM-SHA-256", SCRAM_USER, SCRAM_PASSWORD)
    settings = settings_from_env(monkeypatch, tmp_path, secured_env)
    asyncio.run(ensure_topics(settings))
    asyncio.run(
        send(settings, [Out.of(settings.topics.decisions, decision(i)) for i in range(30)], int(time.time() * 1000))
    )
    port = free_port()
    env = {
        **os.environ,
        **secured_env,
        "PROTEGE_TOPIC_PREFIX": settings.topic_prefix,
        "PROTEGE_HOME": str(settings.home),
        "PROTEGE_METRICS_PORT": str(port),
    }
    monitor = start(env, tmp_path / "monitor.log")
    try:
        wait_for(port, {"decided": 30, "escalated": 10})
    finally:
        stop(monitor)
    assert scrape(port) == {} and SCRAM_PASSWORD not in (tmp_path / "monitor.log").read_text()


def test_doctor_checks_the_broker_with_the_security_settings(
    secured: tuple[EmbeddedBroker, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from protege.doctor import check_broker

    broker, ca = secured
    env = sasl_ssl_env(broker, ca, "SCRAM-SHA-256", SCRAM_USER, SCRAM_PASSWORD)
    check = check_broker(settings_from_env(monkeypatch, tmp_path, env))
    assert check.status == "ok" and "SASL_SSL/SCRAM-SHA-256" in check.detail, check
    env["PROTEGE_SASL_PASSWORD"] = "not-the-password"
    check = check_broker(settings_from_env(monkeypatch, tmp_path, env), timeout_s=20)
    gc.collect()
    assert check.status == "fail" and "PROTEGE_SASL_" in check.fix, check
    assert "not-the-password" not in check.detail + check.fix
