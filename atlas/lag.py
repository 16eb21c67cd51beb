"""How far behind each consumer group is: messages not yet committed, and the age of the oldest
of them, per group of the atlas workers. `atlas status` shows it, so an operator sees a stuck
sink (the store is down) long before its topics' retention deletes anything."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from consumers.sink import DEFAULT_TOPICS
from schemas.topics import (
    ALERT_OBSERVATIONS,
    FEEDBACK,
    INTERACTIONS,
    MEMORY_CANDIDATES,
    POLICY_OBSERVATIONS,
    TRIGGERS,
)

COORDINATOR_NOT_READY = {
    KafkaError.NOT_COORDINATOR,
    KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
    KafkaError.COORDINATOR_NOT_AVAILABLE,
}
GROUP_TOPICS: dict[str, tuple[str, ...]] = {
    "atlas-rewards": (
        INTERACTIONS,
        FEEDBACK,
        POLICY_OBSERVATIONS,
        MEMORY_CANDIDATES,
        ALERT_OBSERVATIONS,
    ),
    "atlas-sink": DEFAULT_TOPICS,
    "atlas-gepa": (TRIGGERS,),
    "atlas-grpo": (TRIGGERS,),
}


@dataclass
class GroupLag:
    group: str
    lag: int  # messages after the committed offsets
    oldest_age_s: float | None  # age of the oldest of them (None: nothing waiting)
    committed: bool  # the group has committed offsets at all


def committed_offsets(
    kafka_config: dict[str, str], group: str, partitions: list[TopicPartition], timeout: float
) -> dict[tuple[str, int], int]:
    """The offsets ``group`` committed (-1 where none), read by a consumer that never joins
    the group. Not the admin client's list_consumer_group_offsets: librdkafka 2.x crashes the
    process when the group's coordinator answers NOT_COORDINATOR to it (librdkafka #5040)."""
    reader = Consumer({**kafka_config, "group.id": group, "log_level": 0})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                found = reader.committed(partitions, timeout=timeout)
                break
            except KafkaException as exc:
                error = exc.args[0]
                again = error.retriable() or error.code() in COORDINATOR_NOT_READY
                if not again or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    finally:
        reader.close()
    return {(tp.topic, tp.partition): tp.offset for tp in found}


def group_lags(kafka_config: dict[str, str], timeout: float = 10.0) -> list[GroupLag]:
    probe = Consumer(
        {**kafka_config, "group.id": f"atlas-status-{uuid.uuid4().hex}", "log_level": 0}
    )
    try:
        return [_lag(kafka_config, probe, g, t, timeout) for g, t in GROUP_TOPICS.items()]
    finally:
        probe.close()


def group_lag(
    kafka_config: dict[str, str], group: str, topics: tuple[str, ...], timeout: float = 10.0
) -> GroupLag:
    """How far ``group`` is behind on ``topics`` (partitions it never committed count from
    their start)."""
    probe = Consumer(
        {**kafka_config, "group.id": f"atlas-status-{uuid.uuid4().hex}", "log_level": 0}
    )
    try:
        return _lag(kafka_config, probe, group, topics, timeout)
    finally:
        probe.close()


def _lag(
    kafka_config: dict[str, str],
    probe: Consumer,
    group: str,
    topics: tuple[str, ...],
    timeout: float,
) -> GroupLag:
    metadata = probe.list_topics(timeout=timeout).topics
    partitions = [
        TopicPartition(topic, p)
        for topic in topics
        if topic in metadata
        for p in metadata[topic].partitions
    ]
    committed = committed_offsets(kafka_config, group, partitions, timeout)
    waiting: list[TopicPartition] = []
    lag = 0
    for tp in partitions:
        low, high = probe.get_watermark_offsets(tp, timeout=timeout)
        start = committed.get((tp.topic, tp.partition), -1)
        start = max(start, low) if start >= 0 else low  # nothing committed: from the start
        if high > start:
            lag += high - start
            waiting.append(TopicPartition(tp.topic, tp.partition, start))
    return GroupLag(
        group,
        lag,
        _oldest_age(probe, waiting, timeout),
        any(offset >= 0 for offset in committed.values()),
    )


def _oldest_age(probe: Consumer, waiting: list[TopicPartition], timeout: float) -> float | None:
    """The age of the oldest first-uncommitted message among ``waiting``."""
    if not waiting:
        return None
    probe.assign(waiting)
    oldest: float | None = None
    seen: set[tuple[str, int]] = set()
    deadline = time.monotonic() + timeout
    while len(seen) < len(waiting) and time.monotonic() < deadline:
        for message in probe.consume(len(waiting), timeout=0.5):
            where = (message.topic(), message.partition())
            if message.error() is not None or where in seen:
                continue
            seen.add(where)
            kind, stamp = message.timestamp()
            if kind and stamp > 0:
                oldest = stamp if oldest is None else min(oldest, stamp)
    probe.unassign()
    return None if oldest is None else max(0.0, time.time() - oldest / 1000)
