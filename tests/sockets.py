"""Which test left a socket open: ``python -m pytest -p tests.sockets tests/integration``.

A socket a test leaves unclosed is reported by Python when the garbage collector takes it, in
whatever test runs then (stop 38: a CI run failed ``test_state.py`` on a connection that
``test_secured_broker.py``'s doctor check had left, stop 39). Loaded, this plugin records for
every socket the test that made it and where, and at the end of the run lists the ones
collected unclosed (with the test that was running then) and the ones still open after the
test that made them (a module or session fixture's server is among those, and is no leak).
Not loaded by default: it wraps ``socket.socket``'s constructor and close for the session."""

from __future__ import annotations

import gc
import socket
import traceback
import weakref
from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass
class Tracker:
    running: str = "<collection>"
    open: dict[int, tuple[weakref.ref[socket.socket], str, str]] = field(default_factory=dict)
    leaked: list[str] = field(default_factory=list)
    left_open: list[str] = field(default_factory=list)

    def made(self, sock: socket.socket) -> None:
        key = id(sock)
        where = "".join(traceback.format_stack(limit=16)[:-2])
        self.open[key] = (weakref.ref(sock, lambda _: self.collected(key)), self.running, where)

    def closed(self, sock: socket.socket) -> None:
        self.open.pop(id(sock), None)

    def collected(self, key: int) -> None:
        if (entry := self.open.pop(key, None)) is not None:
            _, test, where = entry
            self.leaked.append(f"made in {test}, collected unclosed during {self.running}:\n{where}")


TRACKER = Tracker()
_init, _real_close, _detach = socket.socket.__init__, socket.socket._real_close, socket.socket.detach


def _tracked_init(self: socket.socket, *args: Any, **kwargs: Any) -> None:
    _init(self, *args, **kwargs)
    TRACKER.made(self)


def _tracked_real_close(self: socket.socket, *args: Any, **kwargs: Any) -> None:
    TRACKER.closed(self)
    _real_close(self, *args, **kwargs)


def _tracked_detach(self: socket.socket) -> int:
    TRACKER.closed(self)
    return _detach(self)


def pytest_configure(config: pytest.Config) -> None:
    socket.socket.__init__ = _tracked_init  # type: ignore[method-assign]
    socket.socket._real_close = _tracked_real_close  # type: ignore[attr-defined]
    socket.socket.detach = _tracked_detach  # type: ignore[method-assign]


def pytest_unconfigure(config: pytest.Config) -> None:
    socket.socket.__init__ = _init  # type: ignore[method-assign]
    socket.socket._real_close = _real_close  # type: ignore[attr-defined]
    socket.socket.detach = _detach  # type: ignore[method-assign]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    TRACKER.running = item.nodeid


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    gc.collect()
    for ref, test, _ in list(TRACKER.open.values()):
        if test == item.nodeid and (sock := ref()) is not None:
            TRACKER.left_open.append(f"{test}: {sock!r}")


def pytest_terminal_summary(terminalreporter: Any) -> None:
    write = terminalreporter.write_line
    terminalreporter.section("sockets (tests.sockets)")
    write(f"{len(TRACKER.leaked)} collected unclosed" + (":" if TRACKER.leaked else ""))
    for entry in TRACKER.leaked:
        write(entry)
    write(f"{len(TRACKER.left_open)} still open after the test that made them (fixtures' servers among them)")
    for entry in TRACKER.left_open:
        write(f"  {entry}")
