"""SASL/OAUTHBEARER tokens (``protege.oauthbearer``) against a local OAuth 2.0 token endpoint
(real HTTP on loopback; no broker: tests/integration/test_secured_broker.py has the broker)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from protege.oauthbearer import (
    Assertion,
    AssertionSource,
    EndpointTokens,
    FileTokens,
    Rfc7628Authenticator,
    TokenError,
    b64url,
    check_endpoint,
    jwt_expiry,
    parse_extensions,
)
from protege.settings import Settings, env_for_children
from tests.token_endpoint import TokenEndpoint, client_keys, unsigned_jwt

CLIENT, SECRET = "protege-client", "client-secret-7f3a"


def test_one_token_is_fetched_shared_and_fetched_again_when_80_percent_of_its_life_has_passed() -> None:
    with TokenEndpoint(CLIENT, SECRET, lifetime_s=600) as endpoint:
        tokens = EndpointTokens(endpoint.url, CLIENT, SECRET, scope="kafka")

        async def many() -> list[str]:
            return await asyncio.gather(*(tokens.token() for _ in range(8)))  # connections at once: one fetch

        first = asyncio.run(many())
        assert len(set(first)) == 1 and tokens.fetched == 1 and len(endpoint.requests) == 1
        client, secret, form = endpoint.requests[0]
        assert (client, secret) == (CLIENT, SECRET)  # HTTP Basic, as Kafka's Java client sends them
        assert form == {"grant_type": ["client_credentials"], "scope": ["kafka"]}
        assert 0.8 * 600 - 5 < tokens._refresh_at - time.monotonic() <= 0.8 * 600
        assert asyncio.run(tokens.token()) == first[0] and tokens.fetched == 1  # another event loop: reused
        tokens._refresh_at = time.monotonic() - 1  # as if 480 s had passed
        asyncio.run(tokens.token())
        assert tokens.fetched == 2 and len(endpoint.requests) == 2


def test_a_lifetime_that_is_no_number_is_five_minutes_and_a_long_one_a_day_at_most() -> None:
    with TokenEndpoint(CLIENT, SECRET) as endpoint:
        for said, most in ((b"1e300", 86_400), (b"Infinity", 300), (b"NaN", 300), (b"true", 300), (b"-5", 300)):
            endpoint.answer = b'{"access_token": "opaque-token", "expires_in": ' + said + b"}"
            tokens = EndpointTokens(endpoint.url, CLIENT, SECRET)
            asyncio.run(tokens.token())
            assert most * 0.8 - 5 < tokens._refresh_at - time.monotonic() <= most * 0.8, said


def test_a_token_without_expires_in_lives_until_its_own_exp() -> None:
    token = unsigned_jwt("x", 100)
    assert jwt_expiry(token) == pytest.approx(time.time() + 100, abs=2)
    assert jwt_expiry("not-a-jwt") is None and jwt_expiry("a.!!!.b") is None
    with TokenEndpoint(CLIENT, SECRET) as endpoint:
        endpoint.answer = f'{{"access_token": "{token}"}}'.encode()
        tokens = EndpointTokens(endpoint.url, CLIENT, SECRET)
        assert asyncio.run(tokens.token()) == token
        assert 75 < tokens._refresh_at - time.monotonic() <= 80


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        (b"<html>maintenance</html>", "not JSON"),
        (b'{"token_type": "Bearer"}', "no access_token"),
        (b'{"access_token": ""}', "no access_token"),
        (b'{"access_token": "two words"}', "no access_token"),
        (b'{"access_token": 42}', "no access_token"),
        (b"[1, 2]", "no access_token"),
        (b'{"access_token": "' + b"x" * 70_000 + b'"}', "over 65536 bytes"),
        (b"[" * 60_000, "not JSON"),  # nested past Python's recursion limit
    ],
)
def test_an_answer_that_is_not_a_token_is_an_error_that_says_so(answer: bytes, said: str) -> None:
    with TokenEndpoint(CLIENT, SECRET) as endpoint:
        endpoint.answer = answer
        with pytest.raises(TokenError, match=said):
            asyncio.run(EndpointTokens(endpoint.url, CLIENT, SECRET).token())


def test_a_refusal_names_the_client_and_status_never_the_secret() -> None:
    with TokenEndpoint(CLIENT, "the-right-one") as endpoint, pytest.raises(TokenError) as e:
        asyncio.run(EndpointTokens(endpoint.url, CLIENT, SECRET).token())
    assert "refused client 'protege-client': HTTP 401" in str(e.value) and "invalid_client" in str(e.value)
    assert SECRET not in str(e.value)
    with pytest.raises(TokenError, match="URLError"):  # nothing listens there now
        asyncio.run(EndpointTokens(endpoint.url, CLIENT, SECRET).token())


def test_a_token_file_is_read_at_every_connection(tmp_path: Path) -> None:
    path = tmp_path / "token"
    tokens = FileTokens(path)
    with pytest.raises(TokenError, match="FileNotFoundError"):
        asyncio.run(tokens.token())
    path.write_text(unsigned_jwt("a", 60) + "\n")
    assert asyncio.run(tokens.token()) == path.read_text().strip()
    path.write_text(second := unsigned_jwt("b", 60))  # a sidecar refreshed it
    assert asyncio.run(tokens.token()) == second
    path.write_text("  \n")
    with pytest.raises(TokenError, match="empty"):
        asyncio.run(tokens.token())
    path.write_bytes(b"x" * 1_000_000)  # read no further than a token can reach
    with pytest.raises(TokenError, match="not a token"):
        asyncio.run(tokens.token())
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(TokenError, match="UnicodeDecodeError"):
        asyncio.run(tokens.token())


def test_the_settings_name_one_token_source_and_keep_secrets_off_plain_http(tmp_path: Path) -> None:
    base = {"sasl_mechanism": "OAUTHBEARER", "security_protocol": "SASL_SSL"}
    with pytest.raises(ValidationError, match="from one place"):
        Settings(**base)  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="from one place"):
        Settings(
            **base,  # type: ignore[arg-type]
            sasl_oauthbearer_token_endpoint_url="https://idp.example/token",
            sasl_oauthbearer_token_file=tmp_path / "t",
        )
    with pytest.raises(ValidationError, match="needs PROTEGE_SASL_USERNAME"):
        Settings(**base, sasl_oauthbearer_token_endpoint_url="https://idp.example/token")  # type: ignore[arg-type]
    with pytest.raises(ValidationError, match="in the clear"):
        Settings(
            **base,  # type: ignore[arg-type]
            sasl_oauthbearer_token_endpoint_url="http://idp.example/token",
            sasl_username=CLIENT,
            sasl_password=SECRET,
        )
    assert check_endpoint("http://127.0.0.1:8080/token") and check_endpoint("http://localhost/t")
    with pytest.raises(ValueError, match="not an http"):
        check_endpoint("file:///etc/passwd")
    s = Settings(
        **base,  # type: ignore[arg-type]
        sasl_oauthbearer_token_endpoint_url="https://idp.example/token",
        sasl_username=CLIENT,
        sasl_password=SECRET,
    )
    kw = s.kafka_kwargs()
    assert kw["sasl_mechanism"] == "OAUTHBEARER" and "sasl_plain_password" not in kw
    assert kw["sasl_oauth_token_provider"] is s.kafka_kwargs()["sasl_oauth_token_provider"]  # one per process
    assert SECRET not in repr(s) and SECRET not in repr(kw["sasl_oauth_token_provider"])
    from protege_services.monitor.app import credentials

    from protege.settings import MonitorSettings

    creds = credentials(MonitorSettings(**s.model_dump()))
    assert type(creds).__name__ == "OAuthCredentials"  # faust's clients get the same tokens


def test_sasl_extensions_go_with_the_token_and_bad_ones_are_refused_at_start(tmp_path: Path) -> None:
    assert parse_extensions("logicalCluster=lkc-1, identityPoolId=pool-2") == {
        "logicalCluster": "lkc-1",
        "identityPoolId": "pool-2",
    }
    assert parse_extensions(None) == {} and parse_extensions("") == {}
    for bad in ("auth=x", "a=1,a=2", "no-equals", "key2=x", "k=\x01", "=v"):
        with pytest.raises(ValueError, match="SASL extension"):
            parse_extensions(bad)
    path = tmp_path / "token"
    path.write_text(token := unsigned_jwt("a", 60))
    sent = Rfc7628Authenticator(sasl_oauth_token_provider=FileTokens(path, {"logicalCluster": "lkc-1"}))
    first = asyncio.run(sent.step(None))
    assert first is not None
    message, expects_answer = first
    assert message == f"n,,\x01auth=Bearer {token}\x01logicalCluster=lkc-1\x01\x01".encode() and expects_answer
    with pytest.raises(ValidationError, match="SASL extension"):
        Settings(
            sasl_mechanism="OAUTHBEARER",
            sasl_oauthbearer_token_file=path,
            sasl_oauthbearer_extensions="auth=stolen",
        )


def test_a_refusal_answered_as_rfc_7628_asks(tmp_path: Path) -> None:
    """The broker's error JSON is answered with 0x01 (the broker then fails the exchange with an
    error code); a second answer without one is a refusal all the same, never a success."""
    from aiokafka.errors import SaslAuthenticationFailed

    path = tmp_path / "token"
    path.write_text(unsigned_jwt("a", 60))
    auth = Rfc7628Authenticator(sasl_oauth_token_provider=FileTokens(path))
    asyncio.run(auth.step(None))
    assert asyncio.run(auth.step(b'{"status":"invalid_token"}')) == (b"\x01", True)
    with pytest.raises(SaslAuthenticationFailed, match="invalid_token"):
        asyncio.run(auth.step(b""))
    accepted = Rfc7628Authenticator(sasl_oauth_token_provider=FileTokens(path))
    asyncio.run(accepted.step(None))
    assert asyncio.run(accepted.step(b"")) is None  # an empty answer: authenticated


def test_a_client_proves_itself_with_a_signed_assertion_instead_of_a_secret(tmp_path: Path) -> None:
    """private_key_jwt (RFC 7523 section 2.2): the client-credentials grant with a JWT the client
    signed, checked by the endpoint against the key registered for it; no secret is sent."""
    from cryptography.hazmat.primitives import hashes

    k = client_keys(tmp_path)
    signer = Assertion.load(tmp_path / "rsa.pem", key_id="key-1", certificate_file=tmp_path / "rsa.crt")
    with TokenEndpoint(CLIENT, None, public_key=k["rsa"].public_key()) as endpoint:
        tokens = EndpointTokens(endpoint.url, CLIENT, None, scope="kafka", assertion=signer)
        assert asyncio.run(tokens.token()).count(".") == 2
        basic, secret, form = endpoint.requests[0]
        assert (basic, secret) == ("", "")  # no HTTP Basic: the assertion is the credential
        assert form["grant_type"] == ["client_credentials"] and form["client_id"] == [CLIENT]
        assert form["client_assertion_type"] == ["urn:ietf:params:oauth:client-assertion-type:jwt-bearer"]
        assert form["scope"] == ["kafka"]
        header, claims = endpoint.assertions[0]
        assert header["alg"] == "RS256" and header["kid"] == "key-1"
        assert header["x5t#S256"] == b64url(k["cert"].fingerprint(hashes.SHA256()))  # Entra ID's thumbprint
        assert claims["aud"] == endpoint.url and claims["exp"] - claims["iat"] == 300
        tokens._refresh_at = time.monotonic() - 1
        asyncio.run(tokens.token())
        assert len(endpoint.assertions) == 2 and endpoint.assertions[1][1]["jti"] != claims["jti"]  # signed afresh
        # A key the provider does not know for this client: refused, and the refusal says why.
        other = EndpointTokens(
            endpoint.url, CLIENT, None, assertion=Assertion.load(tmp_path / "ec.pem", algorithm="ES256")
        )
        with pytest.raises(TokenError, match=r"HTTP 401 .*client assertion refused: bad signature"):
            asyncio.run(other.token())


def test_the_jwt_bearer_grant_with_an_encrypted_ec_key(tmp_path: Path) -> None:
    """RFC 7523 section 2.1 (Kafka 4.1's jwt-bearer): the signed assertion is the grant itself."""
    k = client_keys(tmp_path, passphrase=b"open sesame")
    signer = AssertionSource(tmp_path / "ec.pem", "open sesame", "ES256").load()
    audience = "https://idp.example/oauth2/default"
    with TokenEndpoint(CLIENT, None, public_key=k["ec"].public_key(), audience=audience) as endpoint:
        tokens = EndpointTokens(endpoint.url, CLIENT, None, assertion=signer, grant="jwt_bearer", audience=audience)
        asyncio.run(tokens.token())
        _, _, form = endpoint.requests[0]
        assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"] and "client_id" not in form
        header, claims = endpoint.assertions[0]
        assert header["alg"] == "ES256" and claims["aud"] == audience and claims["sub"] == CLIENT
        wrong_audience = EndpointTokens(endpoint.url, CLIENT, None, assertion=signer, grant="jwt_bearer")
        with pytest.raises(TokenError, match="client assertion refused: aud"):
            asyncio.run(wrong_audience.token())


def test_a_key_that_cannot_sign_stops_the_settings_at_start_saying_why(tmp_path: Path) -> None:
    client_keys(tmp_path, passphrase=b"open sesame")
    base = {
        "sasl_mechanism": "OAUTHBEARER",
        "security_protocol": "SASL_SSL",
        "sasl_oauthbearer_token_endpoint_url": "https://idp.example/token",
        "sasl_username": CLIENT,
    }
    ok = Settings(
        **base,  # type: ignore[arg-type]
        sasl_oauthbearer_assertion_private_key_file=tmp_path / "rsa.pem",
        sasl_oauthbearer_assertion_private_key_passphrase="open sesame",
        sasl_oauthbearer_assertion_certificate_file=tmp_path / "rsa.crt",
    )
    provider = ok.kafka_kwargs()["sasl_oauth_token_provider"]
    assert isinstance(provider, EndpointTokens) and provider.assertion is not None and provider.client_secret is None
    children = env_for_children(ok)
    assert "open sesame" not in children.values() and "**********" not in children.values()
    for bad, said in (
        ({"sasl_oauthbearer_assertion_private_key_file": tmp_path / "missing.pem"}, "FileNotFoundError"),
        ({"sasl_oauthbearer_assertion_private_key_file": tmp_path / "rsa.crt"}, "cannot be read"),
        ({"sasl_oauthbearer_assertion_private_key_file": tmp_path / "rsa.pem"}, "cannot be read"),  # no passphrase
        (
            {
                "sasl_oauthbearer_assertion_private_key_file": tmp_path / "rsa.pem",
                "sasl_oauthbearer_assertion_private_key_passphrase": "wrong",
            },
            "cannot be read",
        ),
        (
            {
                "sasl_oauthbearer_assertion_private_key_file": tmp_path / "ec.pem",
                "sasl_oauthbearer_assertion_private_key_passphrase": "open sesame",
            },
            "RS256 needs an RSA key",
        ),
        (
            {
                "sasl_oauthbearer_assertion_private_key_file": tmp_path / "ec.pem",
                "sasl_oauthbearer_assertion_private_key_passphrase": "open sesame",
                "sasl_oauthbearer_assertion_algorithm": "ES256",
                "sasl_oauthbearer_assertion_certificate_file": tmp_path / "rsa.crt",
            },
            "not the private key's certificate",
        ),
        ({"sasl_oauthbearer_grant": "jwt_bearer", "sasl_password": SECRET}, "jwt_bearer grant needs"),
        ({}, "or PROTEGE_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_FILE"),
    ):
        with pytest.raises(ValidationError, match=said) as e:
            Settings(**base, **bad)  # type: ignore[arg-type]
        assert "open sesame" not in str(e.value) and "-----BEGIN" not in str(e.value)
