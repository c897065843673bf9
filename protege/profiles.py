"""Where a service's CPU goes: py-spy's collapsed stacks (``--format raw``) summed by library.

    summary = Profile.read(Path("profiles/scorer.txt"))
    summary.shares()          # {"ONNX Runtime (the model)": 0.41, "aiokafka (Kafka client)": 0.22, ...}

Each sample is charged to the innermost frame that belongs to a known part (the model, the
tokenizer, the Kafka client, pydantic, ...); a sample with none is the service's own code
(``protege``) or the interpreter's (``other``). Start-up (imports, loading a model) and
waiting (the event loop's select) are counted apart, so that the shares describe the work.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

# (part, what a frame's file path contains), tried innermost frame first, in this order.
PARTS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ONNX Runtime (the model)", ("onnxruntime/",)),
    ("tokenizer", ("tokenizers/",)),
    ("numpy (scores, kNN)", ("numpy/",)),
    ("pydantic (decode, encode)", ("pydantic/", "pydantic_core/")),
    ("JSON checks at the edge", ("protege/serde.py",)),
    ("aiokafka (Kafka client)", ("aiokafka/", "kafka/")),
    ("logging", ("structlog/", "logging/", "protege/logs.py")),
    ("metrics", ("prometheus_client/", "protege/metrics.py")),
    ("faust", ("faust/", "mode/")),
    ("anthropic SDK, HTTP", ("anthropic/", "httpx/", "httpcore/", "h11/")),
    ("asyncio event loop", ("asyncio/", "selectors.py")),
    ("protege", ("protege/", "services/", "protege_services/")),
)
# Waiting, not working: the event loop's select (py-spy's idle detection does not see it
# without pausing the process), and threads with no Python frame.
IDLE = "select (selectors.py"
FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]*)(?::\d+)?\)$")


@dataclass
class Profile:
    """Samples of one process, by part."""

    parts: Counter[str] = field(default_factory=Counter)
    leaves: Counter[str] = field(default_factory=Counter)  # innermost frames, for the detail
    startup: int = 0
    idle: int = 0

    @classmethod
    def read(cls, path: Path) -> Profile:
        return cls.parse(path.read_text(errors="replace"))

    @classmethod
    def parse(cls, text: str) -> Profile:
        profile = cls()
        for line in text.splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            frames = stack.split(";")
            if frames[-1].strip() == "" or IDLE in frames[-1]:
                profile.idle += int(count)
                continue
            if any(_startup(f) for f in frames):
                profile.startup += int(count)
                continue
            profile.parts[part_of(frames)] += int(count)
            profile.leaves[frames[-1]] += int(count)
        return profile

    @property
    def samples(self) -> int:
        return sum(self.parts.values())

    def shares(self) -> dict[str, float]:
        """Each part's share of the steady samples, largest first."""
        total = self.samples or 1
        return {part: n / total for part, n in self.parts.most_common()}


def _startup(frame: str) -> bool:
    """Inside an import, or inside loading a student (its ONNX Runtime session)."""
    return frame.startswith("_find_and_load (") or ("__init__ (" in frame and "student/runtime.py" in frame)


def part_of(frames: list[str]) -> str:
    """The part a sample is charged to: its innermost frame in a known part."""
    for frame in reversed(frames):
        m = FRAME.match(frame)
        where = m.group("file") if m else frame
        for part, marks in PARTS:
            if any(mark in where for mark in marks):
                return part
    return "other"
