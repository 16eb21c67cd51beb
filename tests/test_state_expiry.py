"""The reward worker's state is bounded: a scored trace's state expires after the feedback
window with a tombstone on its changelog, so it does not come back after a restart, and
feedback that can no longer meet its interaction is dead-lettered, one letter per event under
its own source offset. Real broker, real store, real worker processes."""

from __future__ import annotations

import random
import time
import uuid
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition

from atlas.settings import Settings
from runtime.producer import EventProducer
from store.client import connect
from tests.factories import interaction
from tests.workers import Observed, WorkerProcess, eventually

CHANGELOG = "atlas-rewards-traces-changelog"
WINDOWS = {"ATLAS_FEEDBACK_WINDOW_S": "4", "ATLAS_PENDING_FEEDBACK_TTL_S": "4"}


def changelog_values(kafka_config: dict[str, str], keys: set[bytes]) -> dict[bytes, list]:  # type: ignore[type-arg]
    """Every changelog record of ``keys``, in order, per key (None = tombstone)."""
    consumer = Consumer({**kafka_config, "group.id": f"probe-{uuid.uuid4().hex}"})
    partitions = consumer.list_topics(CHANGELOG, timeout=10).topics[CHANGELOG].partitions
    ends = {
        p: consumer.get_watermark_offsets(TopicPartition(CHANGELOG, p), 10)[1] for p in partitions
    }
    consumer.assign([TopicPartition(CHANGELOG, p, 0) for p in partitions])
    found: dict[bytes, list] = {key: [] for key in keys}  # type: ignore[type-arg]
    done: set[int] = {p for p, end in ends.items() if end == 0}
    deadline = time.monotonic() + 60
    while len(done) < len(ends) and time.monotonic() < deadline:
        for message in consumer.consume(1000, timeout=0.5):
            if message.error():
                continue
            if message.key() in found:
                found[message.key()].append(message.value())
            if message.offset() >= ends[message.partition()] - 1:
                done.add(message.partition())
    consumer.close()
    return found


def test_expired_state_leaves_a_tombstone_and_late_feedback_a_dead_letter(
    stack_settings: Settings, kafka_config: dict[str, str], tmp_path: Path
) -> None:
    agent = f"expiry-{uuid.uuid4().hex[:8]}"
    rng = random.Random(12)
    events = [interaction(rng, agent) for _ in range(50)]
    keys = {e.trace_id.encode() for e in events}
    store = connect(stack_settings.store())

    def stored() -> int:
        return store.query(
            "SELECT count() FROM latest_traces WHERE agent_id = {a:String}", parameters={"a": agent}
        ).result_rows[0][0]

    def orphans() -> list[tuple]:  # type: ignore[type-arg]
        return store.query(
            "SELECT source_partition, source_offset, reason FROM dead_letters FINAL"
            " WHERE error_type = 'OrphanFeedback' AND key IN {keys:Array(String)}",
            parameters={"keys": [k.decode() for k in keys]},
        ).result_rows

    rewards = WorkerProcess(stack_settings, "rewards", tmp_path, env=WINDOWS)
    sink = WorkerProcess(stack_settings, "sink", tmp_path)
    try:
        with EventProducer(kafka_config) as producer:
            for event in events:
                producer.record_interaction(event)
        eventually(lambda: Observed(stored(), 50), 120, "50 traces stored", interval=1)

        def all_tombstoned() -> bool:
            values = changelog_values(kafka_config, keys)
            return all(v and v[-1] is None for v in values.values())

        eventually(all_tombstoned, 60, "a tombstone for every expired trace", interval=2)
        rewards.kill9()  # restore from the changelog: the expired states must stay gone
        rewards = WorkerProcess(stack_settings, "rewards", tmp_path, env=WINDOWS)
        with EventProducer(kafka_config) as producer:
            for event in events[:10]:
                producer.record_feedback(event.trace_id, "approve", agent_id=agent)
        letters = eventually(lambda: len(orphans()) == 10 and orphans(), 120, "10 orphans")
    finally:
        rewards.stop()
        sink.stop()
    assert len({(p, o) for p, o, _ in letters}) == 10 and all(o >= 0 for _, o, _ in letters)
    assert all(
        "never came (or was scored more than the 4s feedback window ago)" in r for *_, r in letters
    )
    revisions = store.query(
        "SELECT max(revision) FROM latest_traces WHERE agent_id = {a:String}",
        parameters={"a": agent},
    ).result_rows[0][0]
    assert revisions == 1  # the late feedback did not resurrect a state and re-score it
