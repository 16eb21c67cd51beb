"""Where the engine's consumer stands and goes: offsets to commit after a batch, and seeks
back to a batch's first messages or to the group's committed offsets."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Message, TopicPartition

log = logging.getLogger(__name__)


def positions_after(consumer: Consumer, messages: list[Message]) -> list[TopicPartition]:
    """Where each partition of ``messages`` goes on: past its last message, and past the
    transaction markers after it that the consumer has passed too (a topic written in
    transactions, like our own, would otherwise always show a lag of one per marker)."""
    ends: dict[tuple[str, int], int] = {}
    for message in messages:
        ends[(message.topic(), message.partition())] = message.offset() + 1
    positions = consumer.position([TopicPartition(t, p) for t, p in ends])
    return [
        TopicPartition(tp.topic, tp.partition, max(ends[(tp.topic, tp.partition)], tp.offset))
        for tp in positions
    ]


def passed(consumer: Consumer, commits: dict[tuple[str, int], int]) -> list[TopicPartition]:
    """Assigned partitions whose position is past what was committed (``commits``) without a
    message: markers and aborted records of transactions, which otherwise show as lag."""
    return [
        tp
        for tp in consumer.position(consumer.assignment())
        if tp.offset >= 0 and tp.offset > commits.get((tp.topic, tp.partition), -1)
    ]


def rewind(consumer: Consumer, messages: Iterable[Message]) -> None:
    """Each partition of ``messages`` back to its first message among them."""
    firsts: dict[tuple[str, int], int] = {}
    for message in messages:
        firsts.setdefault((message.topic(), message.partition()), message.offset())
    _seek(consumer, [TopicPartition(t, p, offset) for (t, p), offset in firsts.items()])


def reset_to_committed(consumer: Consumer) -> None:
    """Every assigned partition back to the group's committed offset (its start if none)."""
    committed = consumer.committed(consumer.assignment(), timeout=30)
    for tp in committed:
        if tp.offset < 0:
            tp.offset = OFFSET_BEGINNING
    _seek(consumer, committed)


def _seek(consumer: Consumer, targets: list[TopicPartition]) -> None:
    for tp in targets:
        try:
            consumer.seek(tp)
        except KafkaException as exc:
            # no longer ours (its next owner starts over), or not fetching yet (it starts
            # from the committed offset anyway)
            log.info("not seeking %s[%d]: %s", tp.topic, tp.partition, exc)
