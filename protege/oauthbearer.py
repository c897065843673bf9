"""SASL/OAUTHBEARER tokens for protege's Kafka clients (``PROTEGE_SASL_MECHANISM=OAUTHBEARER``).

Two sources, one of them:

- an OAuth 2.0 token endpoint, by the client-credentials grant
  (``PROTEGE_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL``; the client id and secret are
  ``PROTEGE_SASL_USERNAME`` / ``PROTEGE_SASL_PASSWORD``, sent as HTTP Basic auth, as Kafka's own
  Java client sends them; ``PROTEGE_SASL_OAUTHBEARER_SCOPE`` optional). A token is reused until
  80% of its lifetime has passed (Kafka's default refresh window), then fetched again; every
  client of the process shares it.
  Instead of a secret, the client may prove itself with a JWT it signs with its private key
  (RFC 7523; ``PROTEGE_SASL_OAUTHBEARER_ASSERTION_PRIVATE_KEY_FILE``, RS256 or ES256): sent as
  the client-credentials grant's ``client_assertion`` (``private_key_jwt``, as Microsoft Entra ID
  and Okta take certificate credentials), or as the assertion of the JWT-bearer grant
  (``PROTEGE_SASL_OAUTHBEARER_GRANT=jwt_bearer``, as Kafka 4.1's Java client sends it). A fresh
  assertion, five minutes long with its own ``jti``, is signed for every fetch.
- a file that something else keeps fresh (``PROTEGE_SASL_OAUTHBEARER_TOKEN_FILE``: a sidecar,
  a projected Kubernetes service-account token, a cloud signer's output), read again at every
  connection.

The endpoint's answer is outside input: its size, type and fields are checked, and an endpoint
that refuses says so with its status, never with the secret. A failure is a ``KafkaError``, so a
client logs it as the reason it could not connect, and a service that cannot connect exits with
``BrokerError`` as for a wrong password. A token the broker refuses is refused as RFC 7628 says
(``Rfc7628Authenticator``: aiokafka 0.14 took the refusal for success).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import json
import math
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard, cast
from urllib.parse import urlsplit

import structlog
from aiokafka.abc import AbstractTokenProvider
from aiokafka.conn import AIOKafkaConnection, OAuthAuthenticator
from aiokafka.errors import KafkaError, SaslAuthenticationFailed

REFRESH_AT = 0.8  # of a token's lifetime (sasl.login.refresh.window.factor's default)
DEFAULT_LIFETIME_S = 300.0  # when neither expires_in nor the token's own exp says
MAX_LIFETIME_S = 86_400.0  # whatever the endpoint says: a token is fetched again within a day
MAX_ANSWER_BYTES = 64 * 1024
TIMEOUT_S = 10.0
log = structlog.get_logger()


class TokenError(KafkaError):
    """No token: the endpoint refused or answered nonsense, or the file is missing or empty."""

    retriable = True  # a client tries its connection again; the cause may pass (an endpoint restarting)


def check_endpoint(url: str) -> str:
    """The endpoint, when it may carry a client secret: https, or http on loopback only."""
    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return url
    if parts.scheme == "http" and parts.hostname:
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if loopback:
            return url
        raise ValueError(f"token endpoint {url!r}: http sends the client secret in the clear; use https")
    raise ValueError(f"token endpoint {url!r}: not an http(s) URL")


EXTENSION_KEY = re.compile(r"[A-Za-z]+")  # RFC 7628 section 3.1: key = 1*(ALPHA)
EXTENSION_VALUE = re.compile(r"[\x21-\x7e \t\r\n]*")  # *(VCHAR / SP / HTAB / CR / LF)


def parse_extensions(text: str | None) -> dict[str, str]:
    """SASL extensions sent beside the token (``logicalCluster=lkc-1,identityPoolId=pool-2``, as
    Confluent Cloud asks): RFC 7628's keys and values; ``auth`` is the token's own key."""
    found: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in (text or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or not EXTENSION_KEY.fullmatch(key) or not EXTENSION_VALUE.fullmatch(value):
            raise ValueError(f"SASL extension {item!r}: key=value, the key letters only, the value printable")
        if key == "auth" or key in found:
            raise ValueError(f"SASL extension {key!r}: reserved for the token, or given twice")
        found[key] = value
    return found


CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
ASSERTION_LIFETIME_S = 300
ALGORITHMS = ("RS256", "ES256")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass(frozen=True)
class AssertionSource:
    """Where a client's assertion key comes from (the settings), loaded once per process."""

    key_file: Path
    passphrase: str | None = field(default=None, repr=False)
    algorithm: str = "RS256"
    key_id: str | None = None
    certificate_file: Path | None = None

    def load(self) -> Assertion:
        return Assertion.load(
            self.key_file,
            passphrase=self.passphrase,
            algorithm=self.algorithm,
            key_id=self.key_id,
            certificate_file=self.certificate_file,
        )


@dataclass(frozen=True, eq=False)
class Assertion:
    """A JWT the client signs with its private key to prove who it is (RFC 7523): ``iss`` and
    ``sub`` the client id, ``aud`` the token endpoint (or ``audience``), five minutes long, a new
    ``jti`` each time. ``kid`` names the key; a certificate adds its thumbprints (``x5t``,
    ``x5t#S256``), which Microsoft Entra ID asks for."""

    key: Any = field(repr=False)  # an RSA or EC private key (cryptography)
    algorithm: str = "RS256"
    key_id: str | None = None
    thumbprints: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        key_file: Path,
        *,
        passphrase: str | None = None,
        algorithm: str = "RS256",
        key_id: str | None = None,
        certificate_file: Path | None = None,
    ) -> Assertion:
        """The key (PEM, PKCS#8 or traditional, encrypted with ``passphrase`` or not) and the
        certificate, checked against the algorithm: a ``ValueError`` that says what is wrong."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec, rsa

        if algorithm not in ALGORITHMS:
            raise ValueError(f"assertion algorithm {algorithm!r}: one of {', '.join(ALGORITHMS)}")
        try:
            data = key_file.read_bytes()
            key = serialization.load_pem_private_key(data, passphrase.encode() if passphrase else None)
        except OSError as e:
            raise ValueError(f"assertion private key {key_file}: {type(e).__name__}: {e.strerror or e}") from None
        except (ValueError, TypeError) as e:  # not PEM, a wrong or missing passphrase; the key's bytes in no message
            raise ValueError(f"assertion private key {key_file}: cannot be read ({e})") from None
        if algorithm == "RS256" and not (isinstance(key, rsa.RSAPrivateKey) and key.key_size >= 2048):
            raise ValueError(f"assertion private key {key_file}: RS256 needs an RSA key of 2048 bits or more")
        if algorithm == "ES256" and not (isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1"):
            raise ValueError(f"assertion private key {key_file}: ES256 needs an EC key on P-256")
        thumbprints = {}
        if certificate_file is not None:
            try:
                cert = x509.load_pem_x509_certificate(certificate_file.read_bytes())
            except (OSError, ValueError) as e:
                raise ValueError(f"assertion certificate {certificate_file}: cannot be read ({e})") from None
            spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
            if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
                raise ValueError(f"assertion certificate {certificate_file}: not the private key's certificate")
            thumbprints = {
                "x5t": b64url(cert.fingerprint(hashes.SHA1())),  # the header as RFC 7515 defines it
                "x5t#S256": b64url(cert.fingerprint(hashes.SHA256())),
            }
        return cls(key, algorithm, key_id, thumbprints)

    def sign(self, client_id: str, audience: str, now: float | None = None) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        now = int(time.time() if now is None else now)
        header = {
            "alg": self.algorithm,
            "typ": "JWT",
            **({"kid": self.key_id} if self.key_id else {}),
            **self.thumbprints,
        }
        claims = {
            "iss": client_id,
            "sub": client_id,
            "aud": audience,
            "iat": now,
            "nbf": now - 60,  # a token endpoint's clock a little behind
            "exp": now + ASSERTION_LIFETIME_S,
            "jti": uuid.uuid4().hex,
        }
        signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
        if self.algorithm == "RS256":
            signature = self.key.sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
        else:  # ES256: the raw r || s of RFC 7518, not DER
            r, s = decode_dss_signature(self.key.sign(signed.encode(), ec.ECDSA(hashes.SHA256())))
            signature = r.to_bytes(32, "big") + s.to_bytes(32, "big")
        return f"{signed}.{b64url(signature)}"


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` claim (epoch s) of a JWT, None when the token is not one or carries none."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (binascii.Error, ValueError, RecursionError):
        return None
    exp = payload.get("exp") if isinstance(payload, dict) else None
    return float(exp) if finite(exp) else None


def finite(value: object) -> TypeGuard[int | float]:
    """A JSON number that means one (not a bool, not NaN or Infinity, which Python's json reads)."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class EndpointTokens(AbstractTokenProvider):
    """Tokens from an OAuth 2.0 token endpoint, reused until 80% of their lifetime has passed:
    the client-credentials grant with the client secret (HTTP Basic) or a signed assertion, or
    the JWT-bearer grant (``grant`` ``jwt_bearer``, an assertion needed)."""

    url: str
    client_id: str
    client_secret: str | None = field(default=None, repr=False)
    scope: str | None = None
    sasl_extensions: dict[str, str] = field(default_factory=dict)
    assertion: Assertion | None = None
    grant: str = "client_credentials"  # client_credentials | jwt_bearer
    audience: str | None = None  # the assertion's aud (default: the endpoint's URL)
    fetched: int = 0  # tokens fetched so far (tests; the log)
    _token: str | None = field(default=None, init=False, repr=False)
    _refresh_at: float = field(default=0.0, init=False, repr=False)
    # one lock per event loop (a lock serves the loop it was first contended on)
    _locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = field(
        default_factory=weakref.WeakKeyDictionary, init=False, repr=False
    )

    def extensions(self) -> dict[str, str]:
        return self.sasl_extensions

    async def token(self) -> str:
        if self._token is not None and time.monotonic() < self._refresh_at:
            return self._token
        lock = self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:  # several connections at once: one fetch
            if self._token is None or time.monotonic() >= self._refresh_at:
                self._token, lifetime = await self.fetch()
                self._refresh_at = time.monotonic() + REFRESH_AT * lifetime
                self.fetched += 1
            return self._token

    async def fetch(self) -> tuple[str, float]:
        status, body = await asyncio.to_thread(self.post)
        if status != 200:
            said = body[:300].decode("utf-8", "replace")
            said = said.replace(self.client_secret, "***") if self.client_secret else said
            raise TokenError(f"token endpoint {self.url} refused client {self.client_id!r}: HTTP {status} {said}")
        if len(body) > MAX_ANSWER_BYTES:
            raise TokenError(f"token endpoint {self.url}: an answer over {MAX_ANSWER_BYTES} bytes")
        try:
            answer = json.loads(body)
        except (ValueError, RecursionError) as e:
            raise TokenError(f"token endpoint {self.url}: the answer is not JSON") from e
        token = answer.get("access_token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise TokenError(f"token endpoint {self.url}: no access_token in the answer")
        expires_in = answer.get("expires_in")
        if finite(expires_in) and expires_in > 0:
            return token, min(float(expires_in), MAX_LIFETIME_S)
        exp = jwt_expiry(token)
        return token, min(max(1.0, exp - time.time()), MAX_LIFETIME_S) if exp is not None else DEFAULT_LIFETIME_S

    def post(self) -> tuple[int, bytes]:
        """The grant, posted (blocking: in a worker thread); the status and at most one byte more
        than an answer may hold. Redirects are not followed: the secret goes to this URL only."""
        form: dict[str, str] = {"grant_type": "client_credentials"}
        headers = {"Accept": "application/json", "Content-Type": "application/x-www-form-urlencoded"}
        signed = self.assertion.sign(self.client_id, self.audience or self.url) if self.assertion else None
        if self.grant == "jwt_bearer":
            assert signed is not None
            form = {"grant_type": JWT_BEARER_GRANT, "assertion": signed}
        elif signed is not None:  # private_key_jwt: the assertion instead of the secret
            form |= {
                "client_id": self.client_id,
                "client_assertion_type": CLIENT_ASSERTION_TYPE,
                "client_assertion": signed,
            }
        if self.client_secret is not None:
            basic = base64.b64encode(f"{self.client_id}:{self.client_secret}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        form |= {"scope": self.scope} if self.scope else {}
        request = urllib.request.Request(
            self.url, data=urllib.parse.urlencode(form).encode(), method="POST", headers=headers
        )
        try:
            with _OPENER.open(request, timeout=TIMEOUT_S) as r:
                return int(r.status), r.read(MAX_ANSWER_BYTES + 1)
        except urllib.error.HTTPError as e:  # an answer all the same: its status says why
            with e:
                return int(e.code), e.read(MAX_ANSWER_BYTES + 1)
        except (urllib.error.URLError, OSError) as e:
            raise TokenError(f"token endpoint {self.url}: {type(e).__name__}: {e}") from e


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kw: Any) -> None:
        return None  # the 3xx reaches the caller as an HTTPError: a refusal with its status


_OPENER = urllib.request.build_opener(_NoRedirects)


@dataclass
class FileTokens(AbstractTokenProvider):
    """The token in a file something else refreshes, read again at every connection."""

    path: Path
    sasl_extensions: dict[str, str] = field(default_factory=dict)

    def extensions(self) -> dict[str, str]:
        return self.sasl_extensions

    async def token(self) -> str:
        try:
            with self.path.open("rb") as f:
                data = f.read(MAX_ANSWER_BYTES + 1)
            text = data.decode("utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise TokenError(f"token file {self.path}: {type(e).__name__}: {e}") from e
        if len(data) > MAX_ANSWER_BYTES:
            raise TokenError(f"token file {self.path}: over {MAX_ANSWER_BYTES} bytes, not a token")
        if not text or any(c.isspace() for c in text):
            raise TokenError(f"token file {self.path}: empty, or not one token")
        return text


class Rfc7628Authenticator(OAuthAuthenticator):
    """aiokafka's OAUTHBEARER exchange, with RFC 7628's failure (section 3.2.2). A broker that
    refuses a token (expired, wrong audience, bad signature) answers the client's first message
    with an error JSON and no error code; the client answers 0x01, and the broker then fails the
    exchange with SASL_AUTHENTICATION_FAILED. aiokafka 0.14 took the JSON for success: the
    connection then failed later with an empty metadata answer and no reason. Kafka's own Java
    client answers as here."""

    def __init__(self, *, sasl_oauth_token_provider: AbstractTokenProvider) -> None:
        super().__init__(sasl_oauth_token_provider=sasl_oauth_token_provider)
        self._refused: bytes | None = None

    async def step(self, payload: bytes | None) -> tuple[bytes, bool] | None:
        if not self._token_sent:
            return cast(tuple[bytes, bool], await super().step(payload))
        if self._refused is None and payload:  # the broker's error JSON: the token was refused
            self._refused = payload
            log.warning("token_refused", mechanism="OAUTHBEARER", broker_said=payload[:300].decode("utf-8", "replace"))
            return b"\x01", True
        if self._refused is not None:  # it answered the 0x01 without failing: a refusal all the same
            raise SaslAuthenticationFailed(f"the broker refused the token: {self._refused[:300]!r}")
        return None


def use_rfc7628_failures() -> None:
    """Every aiokafka connection of this process runs the OAUTHBEARER exchange above (the one
    place aiokafka makes the authenticator: ``AIOKafkaConnection.authenticator_oauth``)."""

    def authenticator_oauth(conn: AIOKafkaConnection) -> Rfc7628Authenticator:
        return Rfc7628Authenticator(sasl_oauth_token_provider=conn._sasl_oauth_token_provider)

    AIOKafkaConnection.authenticator_oauth = authenticator_oauth


_shared: dict[tuple[object, ...], AbstractTokenProvider] = {}


def provider(
    *,
    url: str | None,
    client_id: str | None,
    client_secret: str | None,
    scope: str | None,
    file: Path | None,
    extensions: str | None = None,
    assertion: AssertionSource | None = None,
    grant: str = "client_credentials",
    audience: str | None = None,
) -> AbstractTokenProvider:
    """The process's provider for these settings: every client shares its token (and every
    connection answers a refusal as RFC 7628 asks: ``Rfc7628Authenticator``). ``extensions``:
    SASL extensions sent with the token (``parse_extensions``); ``assertion``: the client's signed
    JWT, instead of or beside its secret."""
    use_rfc7628_failures()
    key = (url, client_id, client_secret, scope, file, extensions, assertion, grant, audience)
    if key not in _shared:
        extra = parse_extensions(extensions)
        if file is not None:
            _shared[key] = FileTokens(file, extra)
        else:
            assert url is not None and client_id is not None and (client_secret is not None or assertion is not None)
            signer = assertion.load() if assertion is not None else None
            _shared[key] = EndpointTokens(
                check_endpoint(url), client_id, client_secret, scope, extra, signer, grant, audience
            )
    return _shared[key]
