"""One place handles the commands' stop signals: the first SIGINT or SIGTERM raises
KeyboardInterrupt wherever the main thread is; cleanup in ``deferred()`` is not cut in half;
later signals are ignored while stopping; an inherited "ignore SIGINT" does not swallow it."""

from __future__ import annotations

import logging
import os
import signal
import time

import pytest
from aiokafka.errors import NotEnoughReplicasError, NotLeaderForPartitionError

from protege import metrics, signals
from protege.logs import ExpectedRetries


def deliver(sig: int) -> None:
    os.kill(os.getpid(), sig)
    time.sleep(0.01)  # the handler runs at the next bytecode boundary


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_raises_and_handlers_are_restored(sig: int) -> None:
    before = {s: signal.getsignal(s) for s in signals.STOP_SIGNALS}
    with pytest.raises(KeyboardInterrupt), signals.interruptible():
        deliver(sig)
        pytest.fail("the signal did not interrupt")
    assert {s: signal.getsignal(s) for s in signals.STOP_SIGNALS} == before


def test_an_inherited_ignore_does_not_swallow_ctrl_c() -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(KeyboardInterrupt), signals.interruptible():
            deliver(signal.SIGINT)
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_cleanup_in_deferred_finishes_then_the_held_signal_is_raised() -> None:
    done = []
    with pytest.raises(KeyboardInterrupt), signals.interruptible():
        with signals.deferred():
            deliver(signal.SIGTERM)
            deliver(signal.SIGINT)  # a second one while stopping: ignored
            done.append("cleanup finished")
        pytest.fail("the held signal was not raised")
    assert done == ["cleanup finished"]


def test_signals_after_the_first_are_ignored_while_stopping() -> None:
    with pytest.raises(KeyboardInterrupt), signals.interruptible():
        try:
            deliver(signal.SIGINT)
        finally:
            deliver(signal.SIGTERM)  # during the unwinding: must not raise a second time
            assert signals.received() == signal.SIGINT


def test_deferred_outside_interruptible_is_a_plain_block() -> None:
    with signals.deferred():
        pass
    assert signals.received() is None


def test_expected_produce_retries_are_counted_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    sender = logging.getLogger("aiokafka.producer.sender.test")
    sender.addFilter(ExpectedRetries())
    counter = metrics.PRODUCE_RETRIES.labels("NotEnoughReplicasError")
    before = counter._value.get()
    with caplog.at_level(logging.WARNING):
        for error in (NotEnoughReplicasError, NotLeaderForPartitionError):
            sender.warning("Got error produce response on topic-partition %s, retrying. Error: %s", "tp", error)
    assert counter._value.get() == before + 1
    assert [r.getMessage().split("Error: ")[1] for r in caplog.records] == [str(NotLeaderForPartitionError)]


def test_a_child_started_by_run_never_outlives_the_interrupt() -> None:
    """Interrupted while the child runs, or by a signal that lands while it is being started
    (between fork and exec: ``Popen`` would raise with the child running, owned by nobody):
    the child is killed and reaped."""
    import threading

    started: list[int] = []
    real_popen = signals.subprocess.Popen

    class Started(real_popen):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)
            started.append(self.pid)
            if len(started) == 2:
                deliver(signal.SIGTERM)  # inside Popen, as if between the fork and the exec

    signals.subprocess.Popen = Started  # type: ignore[misc]
    try:
        timer = threading.Timer(0.5, lambda: os.kill(os.getpid(), signal.SIGINT))
        timer.start()
        with pytest.raises(KeyboardInterrupt), signals.interruptible():
            signals.run(["sleep", "30"])
        with pytest.raises(KeyboardInterrupt), signals.interruptible():
            signals.run(["sleep", "30"])
    finally:
        signals.subprocess.Popen = real_popen  # type: ignore[misc]
    assert len(started) == 2
    for pid in started:
        with pytest.raises(ChildProcessError):  # killed and reaped already
            os.waitpid(pid, os.WNOHANG)
    assert signals.run(["echo", "hi"]).stdout == "hi\n"
