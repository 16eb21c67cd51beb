"""Simulated users for demos and benchmarks: they know the reference answer and want it bare.

A user approves an answer that is exactly the bare reference and otherwise edits it to the
reference; with probability ``noise`` they do something careless instead (approve a wrong
answer, or reject a right one), as real users do.

:meth:`SimulatedUser.verdict` is the decision alone (no Kafka), for benchmarks that build
feedback in process; :meth:`SimulatedUser.react` sends it. Both draw from the same seeded
generator, once per task with a reference.

:class:`ScriptedAgent` answers built-in tasks without a model, right or wrong and bare or
wordy at set rates per task family, so the judges and the simulated users can be compared on
many traces in seconds (``benchmarks/calibration.py``, the calibration tests).
"""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from typing import Literal

from runtime.producer import EventProducer
from runtime.tasks import CITIES, Task, is_bare, is_correct
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


@dataclass
class ScriptedAgent:
    """Answers a built-in task right with probability ``correct[family]`` and as the bare
    value with probability ``bare[family]`` (else in a sentence); families not listed are
    answered right half the time, in a sentence. Seeded: the same tasks get the same answers."""

    correct: dict[str, float]
    bare: dict[str, float]
    seed: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    def answer(self, task: Task) -> str:
        if task.reference is None:
            raise ValueError("a scripted agent answers only tasks with a reference")
        family = task.family or ""
        value = task.reference
        if self.rng.random() >= self.correct.get(family, 0.5):
            if task.answer_format == "integer":
                value = str(int(task.reference) + self.rng.choice([-3, -2, -1, 1, 2, 10]))
            else:
                value = self.rng.choice([c for c in CITIES if c != task.reference])
        if self.rng.random() < self.bare.get(family, 0.0):
            return value
        return self.rng.choice(
            [f"The answer is {value}.", f"It is {value}, as the task says.", f"{value}, I think."]
        )

    def interaction(self, agent_id: str, task: Task) -> InteractionEvent:
        """One auto-mode interaction of ``agent_id`` answering ``task``."""
        return InteractionEvent(
            trace_id=str(uuid.UUID(int=self.rng.getrandbits(128), version=4)),  # seeded too
            agent_id=agent_id,
            task_id=task.task_id,
            task_family=task.family,
            task_input=task.input,
            reference=task.reference,
            mode="auto",
            final_answer=self.answer(task),
            metadata={"simulated": "scripted"},
        )
