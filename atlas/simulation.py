"""Simulated users for demos and benchmarks: they know the reference answer and want it bare.

A user approves an answer that is exactly the bare reference and otherwise edits it to the
reference; with probability ``noise`` they do something careless instead (approve a wrong
answer, or reject a right one), as real users do.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from runtime.producer import EventProducer
from runtime.tasks import Task, is_bare, is_correct
from schemas.models import FeedbackEvent, InteractionEvent


@dataclass
class SimulatedUser:
    noise: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def react(
        self, task: Task, event: InteractionEvent, producer: EventProducer
    ) -> FeedbackEvent | None:
        """Send this user's feedback on ``event``; None for tasks without a reference."""
        if task.reference is None:
            return None
        answer = event.final_answer
        perfect = is_correct(task, answer) and is_bare(task, answer)
        send = producer.record_feedback
        if self.rng.random() < self.noise:
            kind = "reject" if perfect else "approve"
            return send(event.trace_id, kind, agent_id=event.agent_id, user_id="simulated")
        if perfect:
            return send(event.trace_id, "approve", agent_id=event.agent_id, user_id="simulated")
        return send(
            event.trace_id,
            "edit",
            edited_text=task.reference,
            agent_id=event.agent_id,
            user_id="simulated",
        )
