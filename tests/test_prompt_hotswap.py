"""A running agent picks up a newly published prompt on its next task, through the real
compacted prompts topic, and no task ever mixes two versions."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Sequence

from runtime.backends.base import Message
from runtime.core import Runtime
from runtime.producer import EventProducer
from runtime.prompts import PromptSubscriber, StaticPrompts
from runtime.tasks import Task
from schemas.models import InteractionEvent, PromptVersion
from tests.fakes import ScriptedBackend

SEEDS = StaticPrompts({"student": "seed student", "teacher": "seed teacher"})


def echo_system(conversation: Sequence[Message]) -> str:
    return conversation[0]["content"]  # the prompt text this call really used


def publish(kafka_config: dict[str, str], agent: str, role: str, version: int, text: str) -> None:
    with EventProducer(kafka_config) as producer:
        producer.send(
            PromptVersion(agent_id=agent, role=role, version=version, text=text, source="manual")
        )


def test_new_version_takes_effect_on_the_next_task(kafka_config: dict[str, str]) -> None:
    agent = f"agent-{uuid.uuid4().hex[:8]}"
    texts = {1: "student prompt v1", 2: "student prompt v2"}
    publish(kafka_config, agent, "student", 1, texts[1])
    publish(kafka_config, agent, "teacher", 1, "teacher prompt v1")

    with PromptSubscriber(kafka_config, SEEDS).start() as prompts:
        # Replayed from the beginning of the compacted topic at start:
        assert prompts.snapshot(agent)["student"].version == 1
        student = ScriptedBackend("s", echo_system)
        teacher = ScriptedBackend("t", lambda c: "PASS")
        runtime = Runtime(agent, student, teacher, prompts)
        events: list[InteractionEvent] = []
        stop, enough_before, enough_after = threading.Event(), threading.Event(), threading.Event()
        swapped_at: list[int] = []

        def agent_loop() -> None:
            task = Task("What is 2 + 2?", "t", None, "4", "integer")
            while not stop.is_set():
                events.extend(runtime.run_many([task, task], mode="paired"))
                if len(events) >= 10:
                    enough_before.set()
                if swapped_at and len(events) >= swapped_at[0] + 10:
                    enough_after.set()

        loop = threading.Thread(target=agent_loop)
        loop.start()
        try:
            assert enough_before.wait(30)
            publish(kafka_config, agent, "student", 2, texts[2])
            assert prompts.wait_for(agent, "student", 2, timeout=30)
            swapped_at.append(len(events))
            assert enough_after.wait(30)
        finally:
            stop.set()
            loop.join(30)

    versions = [{r.role: r.version for r in e.prompt_versions} for e in events]
    student_versions = [v["student"] for v in versions]
    assert student_versions == sorted(student_versions), "a task went back to an old version"
    assert student_versions[0] == 1
    # Every task that started after the subscriber saw v2 carries v2 (one batch may straddle).
    assert all(v == 2 for v in student_versions[swapped_at[0] + 2 :])
    assert all(v["teacher"] == 1 for v in versions)
    for event, version in zip(events, student_versions, strict=True):
        used = {s.content for s in event.steps if s.role == "student"}
        assert used == {texts[version]}, "the recorded version is not the text the task used"


def test_unpublished_roles_fall_back_to_the_seeds(kafka_config: dict[str, str]) -> None:
    with PromptSubscriber(kafka_config, SEEDS).start() as prompts:
        snapshot = prompts.snapshot(f"never-published-{uuid.uuid4().hex[:6]}")
    assert {r: (p.version, p.text) for r, p in snapshot.items()} == {
        "student": (0, "seed student"),
        "teacher": (0, "seed teacher"),
    }
