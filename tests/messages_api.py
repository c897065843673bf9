"""A local HTTP server that speaks the Anthropic Messages API, for tests of the real SDK.

It answers ``POST /v1/messages`` with the response shape the API documents: a message
whose content is a ``tool_use`` block calling the requested tool, ``stop_reason``
``tool_use`` and a ``usage`` block that accounts prompt caching (the first request with a
given cached system block writes the cache, later ones read it). Labels come from a
text -> label table; unknown texts get ``oos``.

It also speaks the Message Batches API: ``POST /v1/messages/batches`` creates a batch;
each ``GET /v1/messages/batches/{id}`` processes up to half of what is left (so a poller
sees progress) and returns the batch with its ``request_counts``; once it has ended,
``results_url`` points at ``GET .../results``, a JSON Lines stream of individual results.

Faults are injected in order from ``faults``: an HTTP status (429 with ``retry-after``,
500, 529 ``overloaded_error``), ``"invalid_label"`` (a label outside the enum), or
``"slow:<seconds>"``, or ``"ok"`` (no fault: spaces the others out). ``delays`` holds
seconds per request text (that text's call takes that long, whenever it comes), and
``latency`` draws every call's time (a load test's distribution). Every request is
recorded in ``requests``; ``in_flight`` holds the calls being answered right now (by
``metadata.user_id``), so a test that kills a caller knows which calls it cut off.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


class MessagesAPI:
    def __init__(self, labels: dict[str, str] | None = None, latency: Callable[[], float] | None = None) -> None:
        self.labels = labels or {}
        self.delays: dict[str, float] = {}
        self.latency = latency
        self.faults: deque[int | str] = deque()
        self.requests: list[dict[str, Any]] = []
        self.cached: set[str] = set()
        self.answered: Counter[str] = Counter()  # successful calls per metadata.user_id
        self.lock = threading.Lock()
        self.keys_seen: set[str] = set()  # the API keys callers sent (to check a key arrives, and only here)
        self.server: ThreadingHTTPServer | None = None
        self.batches: dict[str, dict[str, Any]] = {}
        self.in_flight: dict[int, tuple[str, float]] = {}  # call -> (user_id, started)

    def calls_in_flight(self, older_than_s: float = 0.0) -> list[str]:
        """user_ids of the calls in progress that started at least ``older_than_s`` ago."""
        now = time.monotonic()
        with self.lock:
            return [uid for uid, t in self.in_flight.values() if now - t >= older_than_s]

    @property
    def url(self) -> str:
        assert self.server is not None
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def respond(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        call = id(body)
        with self.lock:
            self.in_flight[call] = ((body.get("metadata") or {}).get("user_id", ""), time.monotonic())
        try:
            return self._respond(body)
        finally:
            with self.lock:
                self.in_flight.pop(call, None)

    def _respond(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        with self.lock:
            self.requests.append(body)
            fault = self.faults.popleft() if self.faults else None
        if isinstance(fault, str) and fault.startswith("slow:"):
            time.sleep(float(fault.split(":")[1]))
            fault = None
        if self.latency is not None:
            time.sleep(self.latency())
        if isinstance(fault, int):
            headers = {"retry-after": "0"} if fault == 429 else {}
            kind = ERROR_TYPES.get(fault, "api_error")
            return fault, headers, {"type": "error", "error": {"type": kind, "message": f"injected {kind}"}}
        for field in ("model", "max_tokens", "messages"):
            if field not in body:
                return (
                    400,
                    {},
                    {
                        "type": "error",
                        "error": {"type": "invalid_request_error", "message": f"{field}: Field required"},
                    },
                )
        system = body.get("system") or []
        system_text = "".join(b.get("text", "") for b in system) if isinstance(system, list) else str(system)
        cacheable = isinstance(system, list) and any("cache_control" in b for b in system)
        system_tokens = len(system_text) // 4
        first = body["messages"][0]["content"]
        text = first if isinstance(first, str) else "".join(b.get("text", "") for b in first if b.get("type") == "text")
        if text in self.delays:
            time.sleep(self.delays[text])
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
        answer: dict[str, Any] = {"label": label, "rationale": "local Messages API test server"}
        declared = tool.get("input_schema", {}).get("properties", {}).get("fields", {}).get("properties", {})
        if declared:  # "extract" each declared field: the first token with a digit, when there is one
            found = re.search(r"[#A-Z]*-?\d[\w-]*", text)
            answer["fields"] = {name: found.group(0) for name in declared} if found else {}
        content = [
            {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:24]}",
                "name": tool.get("name", "classify"),
                "input": answer,
            }
        ]
        with self.lock:
            self.answered[(body.get("metadata") or {}).get("user_id", "")] += 1
        message = {
            "id": f"msg_{uuid.uuid4().hex[:24]}",
            "type": "message",
            "role": "assistant",
            "model": body["model"],
            "content": content,
            "stop_reason": "tool_use",
            "stop_sequence": None,
            "usage": usage,
        }
        return 200, {"request-id": f"req_{uuid.uuid4().hex[:24]}"}, message

    def create_batch(self, body: dict[str, Any]) -> tuple[int, dict[str, str], dict[str, Any]]:
        requests = body.get("requests")
        if not isinstance(requests, list) or not requests:
            return (
                400,
                {},
                {
                    "type": "error",
                    "error": {"type": "invalid_request_error", "message": "requests: must be a non-empty list"},
                },
            )
        batch_id = f"msgbatch_{uuid.uuid4().hex[:24]}"
        with self.lock:
            self.batches[batch_id] = {"requests": requests, "results": [], "created_at": _iso(time.time())}
        return 200, {}, self.batch_object(batch_id)

    def batch_object(self, batch_id: str) -> dict[str, Any]:
        b = self.batches[batch_id]
        results = b["results"]
        ok = sum(r["result"]["type"] == "succeeded" for r in results)
        ended = len(results) == len(b["requests"])
        return {
            "id": batch_id,
            "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {
                "processing": len(b["requests"]) - len(results),
                "succeeded": ok,
                "errored": len(results) - ok,
                "canceled": 0,
                "expired": 0,
            },
            "created_at": b["created_at"],
            "expires_at": _iso(time.time() + 86400),
            "ended_at": _iso(time.time()) if ended else None,
            "cancel_initiated_at": None,
            "archived_at": None,
            "results_url": f"{self.url}/v1/messages/batches/{batch_id}/results" if ended else None,
        }

    def advance_batch(self, batch_id: str) -> tuple[int, dict[str, str], dict[str, Any]]:
        if batch_id not in self.batches:
            return 404, {}, {"type": "error", "error": {"type": "not_found_error", "message": batch_id}}
        b = self.batches[batch_id]
        todo = b["requests"][len(b["results"]) :]
        for req in todo[: max(1, len(todo) // 2)]:
            status, _, payload = self.respond(req["params"])
            result = (
                {"type": "succeeded", "message": payload} if status == 200 else {"type": "errored", "error": payload}
            )
            b["results"].append({"custom_id": req["custom_id"], "result": result})
        return 200, {}, self.batch_object(batch_id)


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


@contextmanager
def serve(api: MessagesAPI) -> Iterator[MessagesAPI]:
    class Handler(BaseHTTPRequestHandler):
        def authorised(self) -> bool:
            key = self.headers.get("x-api-key") or self.headers.get("authorization", "").removeprefix("Bearer ")
            if key:
                api.keys_seen.add(key)
            return bool(self.headers.get("x-api-key") or self.headers.get("authorization", "").startswith("Bearer "))

        def reply(self, status: int, headers: dict[str, str], payload: dict[str, Any] | bytes) -> None:
            raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json" if isinstance(payload, dict) else "application/binary")
            self.send_header("content-length", str(len(raw)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:
            length = int(self.headers.get("content-length", 0))
            path = self.path.split("?")[0].rstrip("/")
            try:
                body = json.loads(self.rfile.read(length))
            except json.JSONDecodeError:
                return self.reply(
                    400, {}, {"type": "error", "error": {"type": "invalid_request_error", "message": "invalid JSON"}}
                )
            if not self.authorised():
                return self.reply(
                    401,
                    {},
                    {
                        "type": "error",
                        "error": {
                            "type": "authentication_error",
                            "message": "an x-api-key or bearer authorization is required",
                        },
                    },
                )
            if path == "/v1/messages":
                return self.reply(*api.respond(body))
            if path == "/v1/messages/batches":
                return self.reply(*api.create_batch(body))
            return self.reply(404, {}, {"type": "error", "error": {"type": "not_found_error", "message": path}})

        def do_GET(self) -> None:
            parts = self.path.split("?")[0].strip("/").split("/")
            if not self.authorised():
                return self.reply(
                    401,
                    {},
                    {
                        "type": "error",
                        "error": {
                            "type": "authentication_error",
                            "message": "an x-api-key or bearer authorization is required",
                        },
                    },
                )
            if parts[:3] == ["v1", "messages", "batches"] and len(parts) == 4:
                return self.reply(*api.advance_batch(parts[3]))
            if parts[:3] == ["v1", "messages", "batches"] and len(parts) == 5 and parts[4] == "results":
                b = api.batches.get(parts[3])
                if b is None or len(b["results"]) < len(b["requests"]):
                    return self.reply(
                        404, {}, {"type": "error", "error": {"type": "not_found_error", "message": "no results yet"}}
                    )
                lines = "".join(json.dumps(r) + "\n" for r in reversed(b["results"]))  # any order
                return self.reply(200, {}, lines.encode())
            return self.reply(404, {}, {"type": "error", "error": {"type": "not_found_error", "message": self.path}})

        def log_message(self, *args: object) -> None:
            pass

    class Server(ThreadingHTTPServer):
        daemon_threads = True

        def handle_error(self, request: object, client_address: object) -> None:
            pass  # a client that timed out and hung up mid-answer is part of the test

    api.server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=api.server.serve_forever, daemon=True)
    thread.start()
    try:
        yield api
    finally:
        api.server.shutdown()
        api.server.server_close()
