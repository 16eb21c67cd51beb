"""Simulated users for demos and benchmarks: they know the reference answer and want it bare.

A user approves an answer that is exactly the bare reference and otherwise edits it to the
reference; with probability ``noise`` they do something careless instead (approve a wrong
answer, or reject a right one), as real users do.

:meth:`SimulatedUser.verdict` is the decision alone (no Kafka), for benchmarks that build
feedback in process; :meth:`SimulatedUser.react` sends it. Both draw from the same seeded
generator, once per task with a reference.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from runtime.producer import EventProducer
from runtime.tasks import Task, is_bare, is_correct
from schemas.models import FeedbackEvent, InteractionEvent

UserVerdict = Literal["approve", "reject", "edit"]


@dataclass
class SimulatedUser:
    noise: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def verdict(self, task: Task, answer: str) -> tuple[UserVerdict, str | None] | None:
        """This user's verdict on ``answer`` and the edited text (for an edit); None for
        tasks without a reference (and then nothing is drawn)."""
        if task.reference is None:
            return None
        perfect = is_correct(task, answer) and is_bare(task, answer)
        if self.rng.random() < self.noise:
            return ("reject" if perfect else "approve"), None
        if perfect:
            return "approve", None
        return "edit", task.reference

    def react(
        self, task: Task, event: InteractionEvent, producer: EventProducer
    ) -> FeedbackEvent | None:
        """Send this user's feedback on ``event``; None for tasks without a reference."""
        decided = self.verdict(task, event.final_answer)
        if decided is None:
            return None
        kind, edited_text = decided
        return producer.record_feedback(
            event.trace_id,
            kind,
            edited_text=edited_text,
            agent_id=event.agent_id,
            user_id="simulated",
        )
