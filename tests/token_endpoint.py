"""A local OAuth 2.0 token endpoint for tests of SASL/OAUTHBEARER (``protege.oauthbearer``).

``POST /token`` with the client-credentials grant and HTTP Basic auth answers
``{"access_token", "token_type": "Bearer", "expires_in"}``, the token an unsigned JWT (``alg``
``none``, claims ``sub`` = the client id, ``iat``, ``exp``, ``scope``): what Kafka's unsecured
validator (a broker's default for OAUTHBEARER) accepts. A wrong client or secret gets 401 with an
OAuth error body. ``answer`` replaces the answer's body (a test of what a client makes of
nonsense). Every request is recorded in ``requests`` as (client id, secret, form).
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs


def unsigned_jwt(sub: str, lifetime_s: float, scope: str = "", now: float | None = None) -> str:
    """An unsigned JWT as Kafka's unsecured OAUTHBEARER validator accepts it."""
    now = time.time() if now is None else now

    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"sub": sub, "iat": int(now), "exp": int(now + lifetime_s), **({"scope": scope} if scope else {})}
    return f"{part({'alg': 'none'})}.{part(claims)}."


class TokenEndpoint:
    def __init__(self, client_id: str, secret: str, lifetime_s: float = 3600.0) -> None:
        self.client_id, self.secret, self.lifetime_s = client_id, secret, lifetime_s
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.answer: bytes | None = None
        self.server: ThreadingHTTPServer | None = None

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
                if (client, secret) != (endpoint.client_id, endpoint.secret):
                    self.reply(401, {"error": "invalid_client", "error_description": "client authentication failed"})
                elif form.get("grant_type") != ["client_credentials"]:
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
