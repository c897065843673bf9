"""A local HTTP server that speaks the Anthropic Messages API, for tests of the real SDK.

It answers ``POST /v1/messages`` with the response shape the API documents: a message
whose content is a ``tool_use`` block calling the requested tool, ``stop_reason``
``tool_use`` and a ``usage`` block that accounts prompt caching (the first request with a
given cached system block writes the cache, later ones read it). Labels come from a
text -> label table; unknown texts get ``oos``.

Faults are injected in order from ``faults``: an HTTP status (429 with ``retry-after``,
500, 529 ``overloaded_error``), ``"invalid_label"`` (a label outside the enum), or
``"slow:<seconds>"``. Every request is recorded in ``requests``.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 429: "rate_limit_error",
               500: "api_error", 529: "overloaded_error"}


class MessagesAPI:
    def __init__(self, labels: dict[str, str] | None = None) -> None:
        self.labels = labels or {}
        self.faults: deque[int | str] = deque()
        self.requests: list[dict[str, Any]] = []
        self.cached: set[str] = set()
        self.answered: Counter[str] = Counter()  # successful calls per metadata.user_id
        self.lock = threading.Lock()
        self.server: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self.lock:
            self.requests.append(body)
            fault = self.faults.popleft() if self.faults else None
        if isinstance(fault, str) and fault.startswith("slow:"):
            time.sleep(float(fault.split(":")[1]))
            fault = None
        if isinstance(fault, int):
            headers = {"retry-after": "0"} if fault == 429 else {}
            kind = ERROR_TYPES.get(fault, "api_error")
            return fault, headers, {"type": "error", "error": {"type": kind, "message": f"injected {kind}"}}
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return 400, {}, {"type": "error", "error": {"type": "invalid_request_error",
                                                           "message": f"{field}: Field required"}}
        system = body.get("system") or []
        system_text = "".join(b.get("text", "") for b in system) if isinstance(system, list) else str(system)
        cacheable = isinstance(system, list) and any("cache_control" in b for b in system)
        system_tokens = len(system_text) // 4
        first = body["messages"][0]["content"]
        text = first if isinstance(first, str) else "".join(b.get("text", "") for b in first if b.get("type") == "text")
        user_tokens = sum(len(json.dumps(m["content"])) for m in body["messages"]) // 4
        with self.lock:
            hit = cacheable and system_text in self.cached
            if cacheable:
                self.cached.add(system_text)
        usage = {
            "input_tokens": user_tokens + (0 if cacheable else system_tokens),
            "output_tokens": 24,
            "cache_creation_input_tokens": system_tokens if cacheable and not hit else 0,
            "cache_read_input_tokens": system_tokens if hit else 0,
        }
        tool = (body.get("tools") or [{}])[0]
        label = "definitely-not-a-label" if fault == "invalid_label" else self.labels.get(text, "oos")
        content = [{"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": tool.get("name", "classify"),
                    "input": {"label": label, "rationale": "local Messages API test server"}}]
        with self.lock:
            self.answered[(body.get("metadata") or {}).get("user_id", "")] += 1
        message = {"id": f"msg_{uuid.uuid4().hex[:24]}", "type": "message", "role": "assistant",
                   "model": body["model"], "content": content, "stop_reason": "tool_use", "stop_sequence": None,
                   "usage": usage}
        return 200, {"request-id": f"req_{uuid.uuid4().hex[:24]}"}, message


@contextmanager
def serve(api: MessagesAPI) -> Iterator[MessagesAPI]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            try:
                body = json.loads(self.rfile.read(length))
            except json.JSONDecodeError:
                status, headers, payload = 400, {}, {"type": "error", "error": {
                    "type": "invalid_request_error", "message": "invalid JSON"}}
            else:
                if self.path.rstrip("/") != "/v1/messages":
                    status, headers, payload = 404, {}, {"type": "error", "error": {
                        "type": "not_found_error", "message": self.path}}
                elif not (self.headers.get("x-api-key") or self.headers.get("authorization", "").startswith("Bearer ")):
                    status, headers, payload = 401, {}, {"type": "error", "error": {
                        "type": "authentication_error", "message": "an x-api-key or bearer authorization is required"}}
                else:
                    status, headers, payload = api.respond(body)
            raw = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(raw)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args: object) -> None:
            pass

    api.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=api.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()
