"""The ClickHouse sink: Kafka topics into the store, in batches, without loss or duplicates.

* A batch closes at ``batch_size`` messages or ``batch_seconds``, whichever comes first.
* Offsets are committed only after the batch's insert succeeded.
* Each insert carries a deduplication token derived from the batch's offset ranges, and the
  tables converge on their keys, so a replayed batch never duplicates a row.
* While ClickHouse is down, the sink pauses its partitions (keeping its group membership),
  retries the same batch with exponential backoff, and skips nothing.
* A message that cannot be decoded is dead-lettered (original bytes + reason) and skipped.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from schemas.codec import AvroCodec, DecodeError
from schemas.models import DeadLetter, Event
from schemas.topics import (
    CHECKPOINTS,
    DEADLETTER,
    FEEDBACK,
    JOBS,
    PROMPTS,
    REWARDS,
    TOPICS,
    TRIGGERS,
)
from store.migrations import migrate
from store.writer import StoreWriter

log = logging.getLogger(__name__)
DEFAULT_TOPICS = (REWARDS, FEEDBACK, DEADLETTER, PROMPTS, CHECKPOINTS, TRIGGERS, JOBS)


@dataclass
class SinkStats:
    batches: int = 0
    rows: int = 0
    messages: int = 0
    dead_letters: int = 0
    insert_failures: int = 0
    last_error: str | None = None
    lag_ms: deque[float] = field(default_factory=lambda: deque(maxlen=100_000))


def dedup_token(group: str, messages: Sequence[Message]) -> str:
    """Names the batch by its offset ranges: the same batch replayed gets the same token."""
    ranges: dict[tuple[str, int], list[int]] = {}
    for message in messages:
        ranges.setdefault((message.topic(), message.partition()), []).append(message.offset())
    spec = ",".join(
        f"{topic}/{partition}/{min(offsets)}-{max(offsets)}"
        for (topic, partition), offsets in sorted(ranges.items())
    )
    return f"{group}:{hashlib.sha1(spec.encode()).hexdigest()}"


class ClickHouseSink:
    def __init__(
        self,
        kafka_config: dict[str, str],
        connect_store: Callable[[], Client],
        topics: Sequence[str] = DEFAULT_TOPICS,
        group_id: str = "atlas-sink",
        batch_size: int = 5000,
        batch_seconds: float = 1.0,
        max_backoff_s: float = 30.0,
        codec: AvroCodec | None = None,
    ):
        unknown = [t for t in topics if t not in TOPICS]
        if unknown:
            raise ValueError(f"not atlas topics: {', '.join(unknown)}")
        self.kafka_config = kafka_config
        self.connect_store = connect_store
        self.topics = list(topics)
        self.group_id = group_id
        self.batch_size = batch_size
        self.batch_seconds = batch_seconds
        self.max_backoff_s = max_backoff_s
        self.codec = codec or AvroCodec()
        self.stats = SinkStats()
        self._client: Client | None = None
        self._consumer = Consumer(
            {
                **kafka_config,
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "max.poll.interval.ms": 600_000,
            }
        )
        self._producer = Producer({**kafka_config, "acks": "all", "enable.idempotence": True})

    def _writer(self) -> StoreWriter:
        if self._client is None:
            self._client = self.connect_store()
            migrate(self._client)
        return StoreWriter(self._client)

    def run(self, stop: threading.Event | None = None) -> SinkStats:
        stop = stop or threading.Event()
        self._consumer.subscribe(self.topics)
        try:
            while not stop.is_set():
                batch = self._poll_batch(stop)
                if batch:
                    self._sink(batch, stop)
        finally:
            self._consumer.close()
            self._producer.flush(10)
        return self.stats

    def _poll_batch(self, stop: threading.Event) -> list[Message]:
        batch: list[Message] = []
        deadline = time.monotonic() + self.batch_seconds
        while len(batch) < self.batch_size and not stop.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for message in self._consumer.consume(
                min(self.batch_size - len(batch), 1000), timeout=min(remaining, 0.5)
            ):
                error = message.error()
                if error is None:
                    batch.append(message)
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", error)
        return batch

    def _decode(self, batch: Sequence[Message]) -> list[Event]:
        events: list[Event] = []
        for message in batch:
            event_type = TOPICS[message.topic()].event_type
            try:
                events.append(self.codec.decode(message.value() or b"", event_type))
            except DecodeError as exc:
                self._dead_letter(message, str(exc))
        return events

    def _dead_letter(self, message: Message, reason: str) -> None:
        self.stats.dead_letters += 1
        if message.topic() == DEADLETTER:
            log.error(
                "unreadable dead letter at %s[%d]@%d skipped: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                reason,
            )
            return
        letter = DeadLetter(
            source_topic=message.topic(),
            source_partition=message.partition(),
            source_offset=message.offset(),
            key=message.key(),
            original=message.value() or b"",
            reason=reason,
            error_type="DecodeError",
            processor="sink",
        )
        self._producer.produce(
            DEADLETTER, value=self.codec.encode(letter), key=message.topic().encode()
        )
        self._producer.poll(0)

    def _sink(self, batch: list[Message], stop: threading.Event) -> None:
        events = self._decode(batch)
        token = dedup_token(self.group_id, batch)
        backoff = 0.5
        paused: list[TopicPartition] = []
        while True:
            try:
                if events:
                    self.stats.rows += self._writer().write(events, dedup_token=token)
                break
            except Exception as exc:  # any store failure: keep the batch, retry, skip nothing
                self.stats.insert_failures += 1
                self.stats.last_error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                log.warning("insert failed (%s); retrying in %.1fs", self.stats.last_error, backoff)
                self._client = None
                if not paused:
                    paused = self._consumer.assignment()
                    self._consumer.pause(paused)
                self._wait(backoff, stop)
                if stop.is_set():
                    return  # not committed: the next run replays this batch
                backoff = min(backoff * 2, self.max_backoff_s)
        if paused:
            log.info("store is back: batch of %d messages inserted", len(batch))
            self._consumer.resume(self._consumer.assignment())
        self._producer.flush(30)  # dead letters durable before their offsets are committed
        self._consumer.commit(asynchronous=False)
        now = time.time() * 1000
        self.stats.lag_ms.extend(now - m.timestamp()[1] for m in batch if m.timestamp()[1] > 0)
        self.stats.batches += 1
        self.stats.messages += len(batch)

    def _wait(self, seconds: float, stop: threading.Event) -> None:
        """Sleep while still polling, so the group does not consider this member dead."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop.is_set():
            message = self._consumer.poll(min(0.5, max(deadline - time.monotonic(), 0)))
            if message is not None and message.error() is None:
                # From a partition assigned during the outage: put it back, hold it too.
                partition = TopicPartition(message.topic(), message.partition(), message.offset())
                self._consumer.seek(partition)
                self._consumer.pause([partition])
