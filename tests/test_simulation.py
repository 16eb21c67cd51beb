"""The simulated user's verdict (pure) and its react (sends the same verdict)."""

from __future__ import annotations

import random

from atlas.simulation import SimulatedUser
from runtime.tasks import Task, generate
from schemas.models import FeedbackEvent
from tests.factories import interaction


class RecordingProducer:
    def __init__(self) -> None:
        self.sent: list[FeedbackEvent] = []

    def record_feedback(self, trace_id: str, kind: str, **fields: object) -> FeedbackEvent:
        event = FeedbackEvent(trace_id=trace_id, kind=kind, **fields)  # type: ignore[arg-type]
        self.sent.append(event)
        return event


def test_verdict_without_noise() -> None:
    user = SimulatedUser(noise=0.0, seed=1)
    task = generate("arithmetic", "train", 1)[0]
    assert user.verdict(task, task.reference or "") == ("approve", None)
    assert user.verdict(task, f"The answer is {task.reference}.") == ("edit", task.reference)
    assert user.verdict(task, "no idea") == ("edit", task.reference)
    assert user.verdict(Task("no reference"), "x") is None


def test_noise_is_careless() -> None:
    user = SimulatedUser(noise=1.0, seed=1)
    task = generate("extraction", "train", 1)[0]
    assert user.verdict(task, task.reference or "") == ("reject", None)
    assert user.verdict(task, "somewhere") == ("approve", None)


def test_react_sends_the_verdict_of_a_same_seeded_user() -> None:
    tasks = generate("arithmetic", "train", 30, seed=4)
    answers = [t.reference if i % 3 else f"so {t.reference} apples" for i, t in enumerate(tasks)]
    pure, sending = SimulatedUser(0.3, seed=9), SimulatedUser(0.3, seed=9)
    producer = RecordingProducer()
    rng = random.Random(0)
    for task, answer in zip(tasks, answers, strict=True):
        event = interaction(rng).model_copy(update={"final_answer": answer})
        sent = sending.react(task, event, producer)  # type: ignore[arg-type]
        assert sent is not None and sent.trace_id == event.trace_id
        assert (sent.kind, sent.edited_text) == pure.verdict(task, answer or "")
        assert sent.user_id == "simulated" and sent.agent_id == event.agent_id
    assert {e.kind for e in producer.sent} >= {"approve", "edit"}
