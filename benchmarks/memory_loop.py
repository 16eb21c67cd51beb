"""The memory's pure logic in process, for the memory benchmarks (``benchmarks/memory.py``,
``benchmarks/memory_retrieval.py``): what the reward worker's memory processor and the agent's
subscriber do through Kafka, applied straight to a ``MemoryIndex``."""

from __future__ import annotations

import re
from collections import Counter

from runtime.memory import MemoryIndex
from runtime.tasks import Task
from schemas.models import FeedbackEvent, ScoredTrace, new_id
from streams.memory import MemoryCandidate, MemoryProcessor, MemoryState, candidate_of
from streams.memory_config import MemoryConfig
from streams.memory_retirement import record_use, use_of

AGENT = "bench"
EXTRACTION_TEMPLATES = (("order", r"^Order #"), ("parcel", r" parcel "), ("deliver", r"^Please"))


def template_of(task: Task) -> str:
    """The family, and for extraction which of its three sentence templates."""
    if task.family == "extraction":
        for name, pattern in EXTRACTION_TEMPLATES:
            if re.search(pattern, task.input):
                return f"extraction/{name}"
    return task.family or "?"


class MemoryLoop:
    """The memory's pure logic in process: scored traces with their verdict in, entries and
    tombstones applied to a ``MemoryIndex`` out (what the reward worker and the agent's
    subscriber do through Kafka)."""

    def __init__(self, config: MemoryConfig):
        self.config = config
        self.processor = MemoryProcessor(config)
        self.state = MemoryState()
        self.index = MemoryIndex()
        self.reasons: Counter[str] = Counter()

    def learn(self, trace: ScoredTrace, feedback: list[FeedbackEvent]) -> None:
        self.state, retired, _ = record_use(self.state, use_of(trace, None), self.config)
        for retirement in retired:
            self.index.remove(retirement.entry_id)
            self.reasons["retired"] += 1
        candidate = candidate_of(trace, feedback)
        if candidate is not None:
            self.decide(candidate)

    def decide(self, candidate: MemoryCandidate) -> None:
        decision = self.processor.decide(self.state, candidate)
        self.state = decision.state
        self.reasons[decision.reason.split(";")[0]] += 1
        for entry_id in decision.tombstones:
            self.index.remove(entry_id)
        if decision.entry is not None:
            self.index.put(decision.entry)

    def teach(self, task: Task) -> None:
        """A user's edit of ``task`` to its reference, as the only thing known of its trace."""
        self.decide(
            MemoryCandidate(
                agent_id=AGENT,
                trace_id=new_id(),
                revision=1,
                input=task.input,
                answer="",
                reward=0.5,
                verdict="edit",
                edited_text=task.reference,
            )
        )
