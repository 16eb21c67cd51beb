"""The engine's tables and batches: key -> bytes state per partition, backed by a compacted
changelog, and what one batch sends and changes (``streams/engine.py`` commits it)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from runtime.metrics import LeftOut
from schemas.topics import DEADLETTER

log = logging.getLogger(__name__)


@dataclass
class Table:
    """Key -> bytes state, partitioned like the source topics it follows and backed by a
    compacted changelog topic (entry in the same partition number; a tombstone deletes)."""

    changelog: str
    follows: tuple[str, ...]
    partitions: dict[int, dict[bytes, bytes]] = field(default_factory=dict)

    def get(self, partition: int, key: bytes) -> bytes | None:
        return self.partitions[partition].get(key)

    def __len__(self) -> int:
        return sum(len(data) for data in self.partitions.values())


@dataclass
class Output:
    topic: str
    key: bytes | None
    value: bytes | None
    partition: int = -1  # -1: the producer's partitioner (by key)
    headers: list[tuple[str, bytes]] | None = None  # a signature, on signed topics

    def send_with(self, producer: Producer) -> None:
        while True:
            try:
                producer.produce(
                    self.topic,
                    key=self.key,
                    value=self.value,
                    partition=self.partition,
                    headers=self.headers,
                )
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.1)


class Batch:
    """What one batch sends and changes, applied in one transaction. ``put`` changes the table
    at once (later events of the batch read it) and remembers the old value, so an aborted
    batch leaves the table as the last committed batch did."""

    def __init__(self) -> None:
        self.outputs: list[Output] = []
        self.dead_letters: list[LeftOut] = []
        self._undo: dict[tuple[int, int, bytes], tuple[Table, bytes | None]] = {}

    def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.outputs.append(Output(topic, key, value, headers=headers))

    def send_dead_letter(self, source_topic: str, reason: str, letter: bytes) -> None:
        """Send an encoded dead letter of an event of ``source_topic`` (keyed by it), counted
        under ``reason`` (its error type) once the batch commits."""
        self.send(DEADLETTER, source_topic.encode(), letter)
        self.dead_letters.append(LeftOut(source_topic, reason))

    def put(self, table: Table, partition: int, key: bytes, value: bytes | None) -> None:
        data = table.partitions[partition]
        self._undo.setdefault((id(table), partition, key), (table, data.get(key)))
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
        self.outputs.append(Output(table.changelog, key, value, partition))

    def undo(self) -> None:
        for (_, partition, key), (table, old) in self._undo.items():
            data = table.partitions.get(partition)
            if data is None:  # revoked meanwhile: nothing to restore
                continue
            if old is None:
                data.pop(key, None)
            else:
                data[key] = old


def ensure_topics(kafka_config: dict[str, str], topics: dict[str, bool], partitions: int) -> None:
    """Create each of ``topics`` (name -> whether compacted) that is missing, with
    ``partitions`` partitions; one another process created meanwhile is left as it is."""
    admin = AdminClient(kafka_config)
    existing = admin.list_topics(timeout=15).topics
    wanted = [
        NewTopic(name, partitions, config={"cleanup.policy": "compact"} if compact else {})
        for name, compact in topics.items()
        if name not in existing
    ]
    for name, future in (admin.create_topics(wanted) if wanted else {}).items():
        try:
            future.result(30)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
            continue
        log.info("created topic %s (%d partitions)", name, partitions)


def restore(
    kafka_config: dict[str, str], group_id: str, table: Table, partitions: list[int]
) -> None:
    """Read the changelog partitions from the beginning to their (committed) end."""
    started = time.monotonic()
    reader = Consumer(
        {
            **kafka_config,
            "group.id": group_id,
            "enable.auto.commit": False,
            "isolation.level": "read_committed",
            "enable.partition.eof": True,
        }
    )
    data: dict[int, dict[bytes, bytes]] = {p: {} for p in partitions}
    open_ = {p for p in partitions if len(set(_watermarks(reader, table.changelog, p))) > 1}
    reader.assign([TopicPartition(table.changelog, p, OFFSET_BEGINNING) for p in open_])
    entries = 0
    try:
        while open_:
            for message in reader.consume(10_000, timeout=1.0):
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        open_.discard(message.partition())
                        continue
                    raise KafkaException(error)
                entries += 1
                key, value = message.key(), message.value()
                if key is None:
                    continue
                if value is None:
                    data[message.partition()].pop(key, None)
                else:
                    data[message.partition()][key] = value
    finally:
        reader.close()
    table.partitions.update(data)
    log.info(
        "restored %d states of %s partitions %s from %d changelog entries in %.2fs",
        sum(len(d) for d in data.values()),
        table.changelog,
        partitions,
        entries,
        time.monotonic() - started,
    )


def _watermarks(reader: Consumer, topic: str, partition: int) -> tuple[int, int]:
    """A changelog partition's low and high offsets. A topic created a moment ago may have no
    leader yet (NOT_LEADER_FOR_PARTITION, seen when the first worker restores the changelogs
    it has just created): asked again for up to a minute."""
    deadline, delay = time.monotonic() + 60, 0.2
    while True:
        try:
            return reader.get_watermark_offsets(TopicPartition(topic, partition), 10)
        except KafkaException as exc:
            if time.monotonic() > deadline:
                raise
            log.info("%s[%d] not readable yet (%s); asking again", topic, partition, exc)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)
