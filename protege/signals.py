"""Signals, handled in one place.

Two kinds of process, two policies:

- A service (``python -m services.<name>``) turns SIGTERM and SIGINT into its stop event:
  it finishes the transaction in hand and exits 0 (``stop_on_signals``).
- A command that runs things (``protege demo``, ``up``, ``bench``) stops at once, whatever
  phase it is in: inside ``interruptible()`` the first SIGINT or SIGTERM raises
  ``KeyboardInterrupt`` in the main thread, wherever it is (an event loop, a broker start,
  a backbone export), so every ``with`` and ``finally`` on the way up stops what it
  started. Cleanup that must not be cut in half runs inside ``deferred()``: a signal that
  arrives there is held and raised when the block ends. Signals after the first are
  ignored: the command is already stopping. The command then exits 130.

Why not ``asyncio.run``'s own SIGINT handling: it only cancels the main task, and any code
below that absorbs a ``CancelledError`` (a ``contextlib.suppress(CancelledError)`` is
enough; aiokafka's client has some) loses the interrupt. Seen here: after a Ctrl-C in its
traffic phase, the demo ran to its end and exited 0. SIGTERM only stopped it because it
had a handler of its own; now both go through this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import threading
from collections.abc import Iterator, Mapping, Sequence
from types import FrameType
from typing import Any

STOP_SIGNALS: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)
INTERRUPTED = 130  # the shell's code for a command stopped by Ctrl-C


def stop_on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """A service: SIGTERM and SIGINT set ``stop``; the loop finishes its batch and returns."""
    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)


class _State:
    def __init__(self) -> None:
        self.received: int | None = None  # the first stop signal, once one arrived
        self.deferring = 0  # depth of deferred() blocks
        self.held = False  # a signal arrived inside deferred(): raise at its end

    def handler(self, signum: int, frame: FrameType | None) -> None:
        if self.received is not None:
            return  # already stopping
        self.received = signum
        if self.deferring:
            self.held = True
            return
        raise KeyboardInterrupt


_state: _State | None = None


@contextlib.contextmanager
def interruptible() -> Iterator[None]:
    """The first SIGINT or SIGTERM in this block raises ``KeyboardInterrupt`` (main thread only)."""
    global _state
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    outer, _state = _state, _State()
    for sig in STOP_SIGNALS:
        signal.signal(sig, _state.handler)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _state = outer


def received() -> int | None:
    """The stop signal received inside the current ``interruptible()`` block, if any."""
    return _state.received if _state is not None else None


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Run a block that must finish (stopping children, a broker) with stop signals held;
    one that arrived meanwhile is raised as ``KeyboardInterrupt`` when the block ends."""
    state = _state
    if state is None:
        yield
        return
    state.deferring += 1
    try:
        yield
    finally:
        state.deferring -= 1
    if state.deferring == 0 and state.held:
        state.held = False
        raise KeyboardInterrupt


def run(
    cmd: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdout: Any = subprocess.PIPE,
    stderr: Any = subprocess.PIPE,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run(cmd, capture_output=True, text=True)`` for a command started inside
    ``interruptible()`` (``stdout``/``stderr``: elsewhere, e.g. a log file). The child starts
    with stop signals held: a ``KeyboardInterrupt`` raised between its fork and its exec
    leaves it running and owned by nobody (seen in CI: the Kafka storage formatter outlived a
    demo stopped while its broker was starting). One that arrives meanwhile, or while it
    runs, kills it and is raised."""
    child: subprocess.Popen[str] | None = None
    try:
        with deferred():
            child = subprocess.Popen(cmd, env=env, stdout=stdout, stderr=stderr, text=True)
        out, err = child.communicate()
    except BaseException:
        if child is not None:
            child.kill()
            child.communicate()  # reaps it and closes its pipes
        raise
    return subprocess.CompletedProcess(list(cmd), child.returncode, out, err)


def forget_interrupt() -> None:
    """Call once a ``KeyboardInterrupt`` from ``interruptible()`` has been handled.

    If the interrupt was raised inside code that Python ran from a string (``exec`` of
    source text: dataclasses, namedtuples and pydantic build methods that way while a
    module imports), CPython marks it "unhandled" even though it was caught, and under
    ``python -m`` the interpreter then kills itself with SIGINT at exit (status -2 instead
    of 130; seen here about one run in ten when the signal landed during an import). The
    mark is cleared at the start of every string evaluation, so one empty one clears it.
    """
    exec("None")
