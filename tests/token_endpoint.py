"""A local OAuth 2.0 token endpoint for tests of SASL/OAUTHBEARER (``protege.oauthbearer``).

``POST /token`` with the client-credentials grant and HTTP Basic auth answers
``{"access_token", "token_type": "Bearer", "expires_in"}``, the token an unsigned JWT (``alg``
``none``, claims ``sub`` = the client id, ``iat``, ``exp``, ``scope``): what Kafka's unsecured
validator (a broker's default for OAUTHBEARER) accepts. A wrong client or secret gets 401 with an
OAuth error body. ``answer`` replaces the answer's body (a test of what a client makes of
nonsense). Every request is recorded in ``requests`` as (client id, secret, form).

With ``public_key`` (the client's, as registered at an identity provider) it also takes a client
that proves itself with a signed JWT (RFC 7523), by either form: the client-credentials grant with
``client_assertion`` (private_key_jwt), or the JWT-bearer grant with ``assertion``. It checks the
assertion as a provider does — the signature against ``public_key`` for the header's ``alg``
(RS256, ES256), ``iss`` and ``sub`` the client, ``aud`` this URL (or ``audience``), ``exp`` not past,
``nbf`` not ahead, a ``jti`` not seen before — and refuses with 401 ``invalid_client`` saying which
check failed. ``assertions`` keeps each verified (header, claims).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs


def unsigned_jwt(sub: str, lifetime_s: float, scope: str = "", now: float | None = None) -> str:
    """An unsigned JWT as Kafka's unsecured OAUTHBEARER validator accepts it."""
    now = time.time() if now is None else now

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"sub": sub, "iat": int(now), "exp": int(now + lifetime_s), **({"scope": scope} if scope else {})}
    return f"{part({'alg': 'none'})}.{part(claims)}."


CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


class TokenEndpoint:
    def __init__(
        self,
        client_id: str,
        secret: str | None,
        lifetime_s: float = 3600.0,
        *,
        public_key: Any = None,
        audience: str | None = None,
    ) -> None:
        self.client_id, self.secret, self.lifetime_s = client_id, secret, lifetime_s
        self.public_key, self.audience = public_key, audience
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.assertions: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.answer: bytes | None = None
        self.server: ThreadingHTTPServer | None = None

    def verify(self, jwt: str) -> str | None:
        """Why the assertion is refused, or None when it proves the client."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        if self.public_key is None:
            return "no key registered for the client"
        try:
            head, body, sig = jwt.split(".")
            header, claims, signature = json.loads(_b64decode(head)), json.loads(_b64decode(body)), _b64decode(sig)
        except ValueError:
            return "not a JWT"
        try:
            signed = f"{head}.{body}".encode()
            if header.get("alg") == "RS256":
                self.public_key.verify(signature, signed, padding.PKCS1v15(), hashes.SHA256())
            elif header.get("alg") == "ES256" and len(signature) == 64:
                der = encode_dss_signature(int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big"))
                self.public_key.verify(der, signed, ec.ECDSA(hashes.SHA256()))
            else:
                return f"alg {header.get('alg')!r}"
        except (InvalidSignature, TypeError, AttributeError):
            return "bad signature"
        now = time.time()
        if claims.get("iss") != self.client_id or claims.get("sub") != self.client_id:
            return "iss/sub is not the client"
        if claims.get("aud") != (self.audience or self.url):
            return f"aud {claims.get('aud')!r}"
        if not claims.get("exp", 0) > now or claims.get("nbf", 0) > now + 5:
            return "expired, or not yet valid"
        if any(c.get("jti") == claims.get("jti") for _, c in self.assertions) or not claims.get("jti"):
            return "jti replayed"
        self.assertions.append((header, claims))
        return None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.server_address[1]}/token"

    def __enter__(self) -> TokenEndpoint:
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length", 0))).decode())
                auth = self.headers.get("Authorization", "")
                client, _, secret = (
                    base64.b64decode(auth[6:]).decode().partition(":") if auth.startswith("Basic ") else ("", "", "")
                )
                endpoint.requests.append((client, secret, form))
                grant = form.get("grant_type", [""])[0]
                signed = (
                    form.get("assertion", [""])[0]
                    if grant == JWT_BEARER_GRANT
                    else form.get("client_assertion", [""])[0]
                    if form.get("client_assertion_type") == [CLIENT_ASSERTION_TYPE]
                    else None
                )
                why = endpoint.verify(signed) if signed is not None else None
                if signed is not None:
                    client = endpoint.client_id if why is None else client
                if why is not None or (signed is None and (client, secret) != (endpoint.client_id, endpoint.secret)):
                    said = f"client assertion refused: {why}" if why else "client authentication failed"
                    self.reply(401, {"error": "invalid_client", "error_description": said})
                elif grant not in ("client_credentials", JWT_BEARER_GRANT):
                    self.reply(400, {"error": "unsupported_grant_type"})
                elif endpoint.answer is not None:
                    self.reply(200, endpoint.answer)
                else:
                    scope = form.get("scope", [""])[0]
                    token = unsigned_jwt(client, endpoint.lifetime_s, scope)
                    self.reply(
                        200, {"access_token": token, "token_type": "Bearer", "expires_in": int(endpoint.lifetime_s)}
                    )

            def reply(self, status: int, body: dict[str, Any] | bytes) -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()


def client_keys(folder: Path, passphrase: bytes | None = None) -> dict[str, Any]:
    """An RSA key with its self-signed certificate and an EC P-256 key, as PEM files."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    crypt = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    for name, key in (("rsa.pem", rsa_key), ("ec.pem", ec_key)):
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, crypt)
        (folder / name).write_bytes(pem)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "protege-client")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(rsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .sign(rsa_key, hashes.SHA256())
    )
    (folder / "rsa.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return {"rsa": rsa_key, "ec": ec_key, "cert": cert}
