"""A trace whose stored state cannot be read (a corrupt changelog entry restored into the
reward worker's table) dead-letters the interaction that needed it, with the reason, and the
worker goes on scoring the rest: on the real broker, with the real worker process."""

from __future__ import annotations

import random
import uuid
from pathlib import Path

from confluent_kafka import Producer

from atlas.settings import Settings
from schemas.codec import AvroCodec, DecodeError
from schemas.models import DeadLetter, InteractionEvent, ScoredTrace
from schemas.topics import DEADLETTER, INTERACTIONS, REWARDS
from tests.factories import interaction
from tests.workers import WorkerProcess, eventually, reader_at_end

CHANGELOG = "atlas-rewards-traces-changelog"


def test_an_unreadable_trace_state_is_dead_lettered_and_scoring_goes_on(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    codec, rng, run = AvroCodec(), random.Random(9), uuid.uuid4().hex[:8]
    first = interaction(rng, f"state-{run}")
    again = first.model_copy(update={"event_id": f"again-{run}"})  # the same trace, later
    other = interaction(rng, f"state-{run}")
    reader = reader_at_end(kafka_config, [REWARDS, DEADLETTER])
    producer = Producer({**kafka_config, "acks": "all"})
    landed: dict[str, int] = {}

    def send(topic: str, key: str, value: bytes, partition: int = -1) -> None:
        def delivered(err: object, message: object) -> None:
            landed[key] = message.partition()  # type: ignore[attr-defined]

        producer.produce(
            topic, key=key.encode(), value=value, partition=partition, on_delivery=delivered
        )
        assert producer.flush(30) == 0

    scored: list[str] = []
    dead: list[DeadLetter] = []

    def read() -> None:
        for message in reader.consume(500, timeout=0.5):
            if message.error() is not None:
                continue
            if message.topic() == REWARDS:
                scored.append(codec.decode(message.value(), ScoredTrace).trace_id)
            else:
                dead.append(codec.decode(message.value(), DeadLetter))

    worker = WorkerProcess(stack_settings, "rewards", tmp_path)
    try:
        send(INTERACTIONS, first.trace_id, codec.encode(first))
        eventually(lambda: read() or first.trace_id in scored, 120, "the first score")
    finally:
        worker.stop()
    # The trace's state is in the partition of its interaction; a corrupt entry there is what
    # the next worker restores into its table. The next two interactions wait in that partition,
    # so the worker takes them in one batch, the unreadable one first.
    partition = landed[first.trace_id]
    send(CHANGELOG, first.trace_id, b"not a trace state", partition)
    send(INTERACTIONS, again.trace_id, codec.encode(again), partition)
    send(INTERACTIONS, other.trace_id, codec.encode(other), partition)

    worker = WorkerProcess(stack_settings, "rewards", tmp_path)
    try:

        def letters_for_again() -> list[DeadLetter]:
            # by the event it carries: the first interaction may be delivered again (at least
            # once, if the stopped worker had not committed it) and meet the same state
            return [d for d in dead if d.source_topic == INTERACTIONS and carries_again(d)]

        def carries_again(letter: DeadLetter) -> bool:
            try:
                return codec.decode(letter.original, InteractionEvent).event_id == again.event_id
            except DecodeError:  # another test's hostile message
                return False

        def outcome() -> bool:
            read()
            return other.trace_id in scored and bool(letters_for_again())

        eventually(outcome, 120, "the other trace scored and the unreadable one dead-lettered")
        letters = letters_for_again()
        # one dead letter per source offset: a redelivered one is the same letter again (the
        # store keeps one row per source offset)
        assert len({(d.source_partition, d.source_offset) for d in letters}) == 1
        letter = letters[0]
        assert first.trace_id in letter.reason
        assert "cannot be read" in letter.reason and letter.error_type == "DecodeError"
        assert scored.count(first.trace_id) == 1  # not scored over a state it lost
    finally:
        worker.stop()
        reader.close()
