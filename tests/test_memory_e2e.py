"""The memory topic end to end on the real broker and store, with the real worker processes
(`atlas worker rewards` and `atlas worker sink`): a user's edit becomes an entry on
atlas.memory.v1 and a row of memory_entries; a later reject of the same input tombstones it on
the topic and marks the row deleted; an entry whose use lowers reward is retired with its
figures."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from atlas.settings import Settings
from runtime.producer import EventProducer
from schemas.codec import AvroCodec
from schemas.models import MemoryEntry
from schemas.topics import MEMORY
from store.client import connect
from tests.factories import interaction
from tests.workers import WorkerProcess, eventually, reader_at_end

pytestmark = pytest.mark.integration


def next_memory_message(consumer: Any, agent: str, timeout: float) -> tuple[bytes, bytes | None]:
    """(key, value) of the next message on the memory topic for ``agent`` (value None: a
    tombstone); AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is None or message.error():
            continue
        if (message.key() or b"").startswith(f"{agent}/".encode()):
            return message.key(), message.value()
    raise AssertionError(f"no memory message for {agent} within {timeout}s")


def test_an_edit_becomes_a_memory_entry_and_a_later_reject_tombstones_it(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    run = uuid.uuid4().hex[:10]
    agent = f"memory-{run}"
    codec = AvroCodec()
    store = connect(stack_settings.store())
    first = interaction(random.Random(11), agent)
    again = interaction(random.Random(11), agent)  # the same task asked again: a new trace
    assert first.task_input == again.task_input and first.trace_id != again.trace_id

    def rows() -> list[tuple[Any, ...]]:
        return store.query(
            "SELECT entry_id, output, source, source_trace_id, deleted FROM memory_entries FINAL"
            " WHERE agent_id = {a:String}",
            parameters={"a": agent},
        ).result_rows

    reader = reader_at_end(kafka_config, [MEMORY])
    rewards = WorkerProcess(stack_settings, "rewards", tmp_path)
    sink = WorkerProcess(stack_settings, "sink", tmp_path)
    try:
        started = time.monotonic()
        with EventProducer(kafka_config) as producer:
            producer.record_interaction(first)
            producer.record_feedback(
                first.trace_id, "edit", edited_text="The answer is 42.", agent_id=agent
            )
        key, value = next_memory_message(reader, agent, timeout=180)
        assert value is not None
        entry = codec.decode(value, MemoryEntry)
        assert key == entry.key.encode() == f"{agent}/student/{entry.entry_id}".encode()
        assert (entry.input, entry.output, entry.source) == (
            first.task_input,
            "The answer is 42.",
            "edit",
        )
        assert entry.source_trace_id == first.trace_id and "apples" in entry.terms
        on_topic_s = time.monotonic() - started
        stored = [(entry.entry_id, "The answer is 42.", "edit", first.trace_id, 0)]
        eventually(lambda: rows() == stored, 60, "the entry in memory_entries", interval=0.5)

        with EventProducer(kafka_config) as producer:
            producer.record_interaction(again)
            producer.record_feedback(again.trace_id, "reject", agent_id=agent)
        tombstone_key, tombstone = next_memory_message(reader, agent, timeout=120)
        assert (tombstone_key, tombstone) == (key, None)
        deleted = eventually(
            lambda: [r for r in rows() if r[4] == 1], 60, "the deleted row", interval=0.5
        )
        assert [r[0] for r in deleted] == [entry.entry_id] and len(rows()) == 1
        print(f"\n[memory-e2e] edit -> entry on {MEMORY} in {on_topic_s:.1f}s (workers starting)")
    finally:
        reader.close()
        rewards.stop()
        sink.stop()


def test_an_edit_is_retrieved_by_a_following_agent_and_named_in_its_stored_trace(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    """Item 2 end to end: a runtime following the topic (live) gets the entry an edit made
    within seconds, shows it for the same task asked again (a scripted student that copies
    a shown answer, so no model is needed), and its InteractionEvent, scored and stored, names
    the entry in scored_traces.memory_entries."""
    from runtime.core import Runtime
    from runtime.memory import MemoryPolicy, MemorySubscriber
    from runtime.prompts import StaticPrompts
    from runtime.tasks import Task
    from tests.fakes import ScriptedBackend

    run = uuid.uuid4().hex[:10]
    agent = f"recall-{run}"
    store = connect(stack_settings.store())
    first = interaction(random.Random(13), agent)
    corrected = f"The answer is {first.reference}."

    def copy_a_shown_answer(conversation: Any) -> str:
        shown = [m["content"] for m in conversation[1:-1] if m["role"] == "assistant"]
        return shown[-1] if shown else "I do not know."

    memory = MemorySubscriber(kafka_config, agent).start()
    rewards = WorkerProcess(stack_settings, "rewards", tmp_path)
    sink = WorkerProcess(stack_settings, "sink", tmp_path)
    try:
        with EventProducer(kafka_config) as producer:
            producer.record_interaction(first)
            producer.record_feedback(first.trace_id, "edit", edited_text=corrected, agent_id=agent)
        edited = time.monotonic()
        eventually(
            lambda: len(memory.index) == 1, 180, "the entry at the following agent", interval=0.2
        )
        followed_s = time.monotonic() - edited
        [entry] = memory.index.entries()
        assert (entry.input, entry.output, entry.source_trace_id) == (
            first.task_input,
            corrected,
            first.trace_id,
        )
        with MemorySubscriber(kafka_config, agent).start() as replayed:  # replay at start
            assert [e.entry_id for e in replayed.index.entries()] == [entry.entry_id]

        student = ScriptedBackend("scripted-student", copy_a_shown_answer)
        teacher = ScriptedBackend("scripted-teacher", lambda _c: "PASS")
        texts = {"student": "Solve it.", "teacher": "Review."}
        prompts = StaticPrompts(texts, memory=MemoryPolicy(enabled=True))
        runtime = Runtime(agent, student, teacher, prompts, memory=memory)
        again = runtime.run(Task(first.task_input, "again", "arithmetic", first.reference), "auto")
        assert again.memory_entries == [entry.entry_id] and again.final_answer == corrected
        assert again.trace_id != first.trace_id
        with EventProducer(kafka_config) as producer:
            producer.record_interaction(again)
        stored = eventually(
            lambda: (
                store.query(
                    "SELECT memory_entries FROM scored_traces FINAL WHERE trace_id = {t:String}",
                    parameters={"t": again.trace_id},
                ).result_rows
            ),
            120,
            "the scored trace in the store",
            interval=0.5,
        )
        assert stored == [([entry.entry_id],)]
        print(
            f"\n[memory-e2e] edit -> entry at the following agent in {followed_s:.1f}s;"
            f" lookup {memory.stats.summary()}"
        )
    finally:
        memory.close()
        rewards.stop()
        sink.stop()


def test_an_entry_whose_use_lowers_reward_is_retired_with_its_figures(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    """Item 3's retirement end to end (configs/memory.yaml: 10 tasks per arm, alpha 0.1): an
    edit makes an entry; 30 similar tasks it was held back from are answered right and rated
    5, 30 shown it answer wrong and are rated 1 (each rating re-scores its trace: revision 2
    replaces revision 1); the entry is published again retired, with its figures, and the store
    keeps them while memory_current drops it."""
    from streams.memory import entry_id_of

    run = uuid.uuid4().hex[:10]
    agent = f"retire-{run}"
    codec = AvroCodec()
    store = connect(stack_settings.store())
    first = interaction(random.Random(17), agent)
    entry_id = entry_id_of(agent, "student", first.task_input)
    others = [interaction(random.Random(1000 + i), agent) for i in range(80)]
    others = [e for e in others if e.task_input != first.task_input][:60]
    held_back = [e.model_copy(update={"memory_held_back": [entry_id]}) for e in others[:30]]
    used = [
        e.model_copy(update={"final_answer": "I do not know.", "memory_entries": [entry_id]})
        for e in others[30:]
    ]
    reader = reader_at_end(kafka_config, [MEMORY])
    rewards = WorkerProcess(stack_settings, "rewards", tmp_path)
    sink = WorkerProcess(stack_settings, "sink", tmp_path)
    try:
        with EventProducer(kafka_config) as producer:
            producer.record_interaction(first)
            producer.record_feedback(first.trace_id, "edit", edited_text="Ask me.", agent_id=agent)
        key, value = next_memory_message(reader, agent, timeout=180)
        assert value is not None and codec.decode(value, MemoryEntry).entry_id == entry_id
        with EventProducer(kafka_config) as producer:
            for event, rating in [*((e, 5.0) for e in held_back), *((e, 1.0) for e in used)]:
                producer.record_interaction(event)
                producer.record_feedback(event.trace_id, "rating", rating=rating, agent_id=agent)
        key_again, retired_value = next_memory_message(reader, agent, timeout=180)
        assert key_again == key and retired_value is not None
        retired = codec.decode(retired_value, MemoryEntry)
        assert retired.retired_reason and retired.output == "Ask me."
        assert retired.reward_when_used is not None and retired.reward_when_not_used is not None
        assert retired.reward_when_not_used - retired.reward_when_used > 0.5

        def stored() -> list[tuple[Any, ...]]:
            return store.query(
                "SELECT retired_reason, uses FROM memory_entries FINAL"
                " WHERE agent_id = {a:String} AND retired_reason IS NOT NULL",
                parameters={"a": agent},
            ).result_rows

        eventually(
            lambda: stored() == [(retired.retired_reason, retired.uses)], 60, "the retired row"
        )
        current = store.query(
            "SELECT count() FROM memory_current WHERE agent_id = {a:String}",
            parameters={"a": agent},
        ).result_rows
        assert current == [(0,)]
        print(f"\n[memory-e2e] retired: {retired.retired_reason}")
    finally:
        reader.close()
        rewards.stop()
        sink.stop()
