"""A local file for events Kafka did not acknowledge, so an agent that stops while Kafka is away
loses nothing: the next producer with the same file sends them again.

Each line is one encoded message (topic, key and value as base64), appended and fsynced under
an inter-process lock; several producers may share one file. ``take`` moves the file aside
atomically before reading it, and ``done`` removes what was taken once it is delivered, so a
crash while resending leaves the file to be taken again (at-least-once: downstream
deduplicates by event id).
"""

from __future__ import annotations

import base64
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from filelock import FileLock

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Spilled:
    topic: str
    key: bytes | None
    value: bytes


class SpillFile:
    def __init__(self, path: Path):
        self.path = path
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = FileLock(str(path) + ".lock")

    def append(self, messages: list[Spilled]) -> None:
        lines = "".join(
            json.dumps(
                {
                    "topic": m.topic,
                    "key": None if m.key is None else base64.b64encode(m.key).decode(),
                    "value": base64.b64encode(m.value).decode(),
                }
            )
            + "\n"
            for m in messages
        )
        with self._lock, self.path.open("a") as out:
            out.write(lines)
            out.flush()
            os.fsync(out.fileno())

    def take(self) -> tuple[list[Spilled], list[Path]]:
        """Every spilled message (also those of a resend that crashed), and the files they
        came from, to pass to ``done`` once they are delivered."""
        with self._lock:
            if self.path.exists():
                self.path.replace(self.path.with_name(f"{self.path.name}.resending-{os.getpid()}"))
            taken = sorted(self.path.parent.glob(f"{self.path.name}.resending-*"))
        messages = []
        for part in taken:
            for line in part.read_text().splitlines():
                if not line.strip():
                    continue  # a torn last line of a crash: nothing was acknowledged for it
                try:
                    raw = json.loads(line)
                    key = None if raw["key"] is None else base64.b64decode(raw["key"])
                    messages.append(Spilled(raw["topic"], key, base64.b64decode(raw["value"])))
                except (ValueError, KeyError, TypeError):
                    log.error("%s: skipped a torn line (a crash while spilling)", part)
        return messages, taken

    @staticmethod
    def done(taken: list[Path]) -> None:
        for part in taken:
            part.unlink(missing_ok=True)
