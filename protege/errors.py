"""protege's exceptions, one tree.

ProtegeError
├── BrokerError          the embedded broker could not be resolved, started or stopped
├── ConfigError          a task file or setting is invalid
├── InvalidEvent         bytes on a topic are not a valid event (carries a reason code)
├── StudentError         a student version cannot be loaded or run
└── TeacherError         the teacher could not give a valid answer
"""

from __future__ import annotations


class ProtegeError(Exception):
    """Base of every error protege raises on purpose."""


class BrokerError(ProtegeError):
    pass


class ConfigError(ProtegeError):
    pass


class InvalidEvent(ProtegeError):
    """An event failed decoding or validation. ``reason`` is a stable machine-readable code."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class StudentError(ProtegeError):
    pass


class TeacherError(ProtegeError):
    pass
