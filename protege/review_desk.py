"""A page for the people who label the review sample: ``protege review serve``.

One request at a time, blind (its text; neither the teacher's nor the student's answer), a
button per answer of the task and one for ``oos``; a label is sent as a review on
protege.feedback before the page moves on, so what the page says was labelled is on the
broker. The same checks as ``protege review submit`` (``policy.refused``), and the page's own:

- only a request that waits in the sample can be labelled, once (a second click, or a request
  id made up in a form, is refused);
- a form needs the token of this run of the desk (a page on another site cannot post one), and
  a request needs a ``Host`` the desk serves (no DNS rebinding onto the ticket texts);
- everything shown is escaped: a ticket's text is the customer's, not ours.

    desk = Desk(task, "acme", source="ana", waiting=lambda: items, send=publish)
    status, headers, body = desk.get("/", host="127.0.0.1:8077")
    status, headers, body = desk.post("/label", form_bytes, host="127.0.0.1:8077")
"""

from __future__ import annotations

import hmac
import html
import secrets
import threading
from collections.abc import Callable, Collection, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from urllib.parse import parse_qs, quote, urlsplit

from protege.events import Feedback, ReviewItem
from protege.policy import refused
from protege.task import OOS, Task

MAX_FORM_BYTES = 16 * 1024  # a label form is a few hundred bytes

Reply = tuple[int, dict[str, str], bytes]
HTML_HEADERS = {  # every page: no caching of ticket texts, no framing, no script, forms to the desk only
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "Referrer-Policy": "no-referrer",
}

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;color:#1a202c;max-width:860px;margin:24px auto;padding:0 16px}
h1{font-size:20px;margin:0 0 4px} .sub{color:#4a5568}
blockquote{white-space:pre-wrap;font-size:17px;background:#f7fafc;border-left:4px solid #2b6cb0;margin:16px 0;
padding:12px 16px}
form.labels{display:flex;flex-wrap:wrap;gap:8px} button{font:inherit;padding:6px 12px;border:1px solid #2b6cb0;
border-radius:6px;background:#ebf4ff;cursor:pointer} button.oos{border-color:#c05621;background:#fffaf0}
.done{color:#276749} .error{color:#c53030;font-weight:600} a{color:#2b6cb0}
"""


class Desk:
    """The labelling page's logic, apart from the HTTP server and the broker: ``waiting`` gives
    the sample's requests that still want a label (read from Kafka), ``send`` publishes a review
    and returns once the broker has it (raises if it could not)."""

    def __init__(
        self,
        task: Task,
        tenant: str,
        *,
        source: str,
        waiting: Callable[[], Sequence[ReviewItem]],
        send: Callable[[Feedback], None],
        hosts: Collection[str] = (),
        token: str | None = None,
    ) -> None:
        self.task = task
        self.tenant = tenant
        self.source = source
        self._waiting = waiting
        self.send = send
        self.hosts = {h.lower() for h in hosts}  # Host headers served; empty: any (tests)
        self.token = token or secrets.token_urlsafe(24)
        self.items: dict[str, ReviewItem] = {}  # request id -> item, in the order shown
        self.labelled: dict[str, str] = {}  # request id -> label, sent from this desk
        self.lock = threading.Lock()
        self.refresh()

    def refresh(self) -> None:
        """Read what waits again (others may have labelled some; new requests were sampled)."""
        fresh = [i for i in self._waiting() if (i.tenant, i.task) == (self.tenant, self.task.name)]
        self.items = {i.request_id: i for i in fresh if i.request_id not in self.labelled}

    def get(self, target: str, *, host: str | None) -> Reply:
        with self.lock:
            if not self._host_ok(host):
                return _error(HTTPStatus.MISDIRECTED_REQUEST, f"this desk does not serve the host {host!r}")
            url = urlsplit(target)
            if url.path != "/":
                return _error(HTTPStatus.NOT_FOUND, f"no page {url.path!r}; the desk is at /")
            query = parse_qs(url.query, max_num_fields=4)
            if "refresh" in query:
                try:
                    self.refresh()
                except Exception as e:  # the broker is away: say so, keep what the desk holds
                    return _error(HTTPStatus.SERVICE_UNAVAILABLE, f"could not read what waits: {type(e).__name__}: {e}")
            skip = (query.get("skip") or [""])[0]
            if skip in self.items:  # to the end of the queue, for this desk
                self.items[skip] = self.items.pop(skip)
            done = (query.get("done") or [""])[0]
            note = ""
            if done in self.labelled:
                note = f"<p class='done'>Sent: {_e(done)} labelled {_e(self.labelled[done])}.</p>"
            return HTTPStatus.OK, HTML_HEADERS, self.page(note).encode()

    def post(self, target: str, body: bytes, *, host: str | None) -> Reply:
        with self.lock:
            if not self._host_ok(host):
                return _error(HTTPStatus.MISDIRECTED_REQUEST, f"this desk does not serve the host {host!r}")
            if urlsplit(target).path != "/label":
                return _error(HTTPStatus.NOT_FOUND, "labels are posted to /label")
            if len(body) > MAX_FORM_BYTES:
                return _error(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"a label form is at most {MAX_FORM_BYTES} bytes")
            try:
                form = parse_qs(body.decode(), strict_parsing=True, max_num_fields=8, errors="strict")
            except (UnicodeDecodeError, ValueError) as e:
                return _error(HTTPStatus.BAD_REQUEST, f"not a form: {e}")
            field = {k: v[0] for k, v in form.items() if len(v) == 1}
            if not hmac.compare_digest(field.get("token", ""), self.token):
                return _error(HTTPStatus.FORBIDDEN, "the form is not from this desk (reload the page)")
            request_id, label = field.get("request_id", ""), field.get("label", "")
            if request_id in self.labelled:
                return _error(HTTPStatus.CONFLICT, f"{request_id!r} was labelled already ({self.labelled[request_id]})")
            item = self.items.get(request_id)
            if item is None:
                return _error(HTTPStatus.CONFLICT, f"{request_id!r} does not wait for a label here (reload the page)")
            try:
                review = item.review(label, self.source)
            except ValueError as e:
                return _error(HTTPStatus.BAD_REQUEST, f"not a review: {e}")
            why = refused(review, self.task)
            if why is not None:
                return _error(HTTPStatus.BAD_REQUEST, why[1])
            try:
                self.send(review)
            except Exception as e:  # the broker did not take it: nothing is marked done
                return _error(HTTPStatus.SERVICE_UNAVAILABLE, f"not sent, try again: {type(e).__name__}: {e}")
            self.labelled[request_id] = label
            del self.items[request_id]
            return HTTPStatus.SEE_OTHER, {"Location": f"/?done={quote(request_id)}"}, b""

    def page(self, note: str = "") -> str:
        head = (
            f"<h1>Review: {_e(self.tenant)}/{_e(self.task.name)}</h1><p class='sub'>{len(self.items):,} waiting, "
            f"{len(self.labelled):,} labelled here as {_e(self.source)}. Label what the message asks for; the "
            "answers of the teacher and the student are not shown, so that yours is your own.</p>"
        )
        if not self.items:
            body = "<p>Nothing waits for a label. <a href='/?refresh=1'>Look again</a>.</p>"
            return _document(self.task.name, head + note + body)
        item = next(iter(self.items.values()))
        buttons = "".join(
            f"<button name='label' value='{_e(name)}' title='{_e(desc)}'>{_e(name)}</button>"
            for name, desc in self.task.labels.items()
        )
        buttons += f"<button class='oos' name='label' value='{OOS}' title='none of the labels'>{OOS}</button>"
        form = (
            f"<blockquote id='text'>{_e(item.text)}</blockquote>"
            f"<form class='labels' method='post' action='/label'>"
            f"<input type='hidden' name='request_id' value='{_e(item.request_id)}'>"
            f"<input type='hidden' name='token' value='{_e(self.token)}'>{buttons}</form>"
            f"<p class='sub'>{_e(item.request_id)} · <a href='/?skip={quote(item.request_id)}'>skip</a> · "
            "<a href='/?refresh=1'>look again for new requests</a></p>"
        )
        return _document(self.task.name, head + note + form)

    def _host_ok(self, host: str | None) -> bool:
        return not self.hosts or (host or "").lower() in self.hosts


def serve(desk: Desk, host: str, port: int) -> HTTPServer:
    """An HTTP server for ``desk`` on (host, port), not yet serving: ``serve_forever()`` it.
    One request at a time: a desk is for a few people, and a label is sent before the next."""

    class Handler(BaseHTTPRequestHandler):
        server_version = "protege-review"

        def do_GET(self) -> None:
            self._reply(desk.get(self.path, host=self.headers.get("Host")))

        def do_POST(self) -> None:
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_FORM_BYTES:
                self._reply(
                    _error(
                        HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"a label form has a Content-Length of at most {MAX_FORM_BYTES} bytes",
                    )
                )
                return
            self._reply(desk.post(self.path, self.rfile.read(length), host=self.headers.get("Host")))

        def _reply(self, reply: Reply) -> None:
            status, headers, body = reply
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # the CLI says what was sent

    return HTTPServer((host, port), Handler)


def _e(text: str) -> str:
    return html.escape(text, quote=True)


def _document(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>review · {_e(title)}</title><style>{STYLE}</style></head><body>{body}</body></html>"
    )


def _error(status: HTTPStatus, message: str) -> Reply:
    body = _document(
        "error", f"<p class='error'>{status.value} {_e(status.phrase)}: {_e(message)}</p><p><a href='/'>Back</a></p>"
    ).encode()
    return status.value, HTML_HEADERS, body
