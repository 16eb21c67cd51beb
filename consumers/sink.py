"""The ClickHouse sink: Kafka topics into the store, in batches, without loss or duplicates.

* A batch closes at ``batch_size`` messages or ``linger_s`` after its first message,
  whichever comes first: an event waits at most ``linger_s`` for company, and a busy topic
  fills whole batches at once.
* Offsets are committed only after the batch's insert succeeded and its dead letters were
  acknowledged by Kafka; a dead letter that cannot be delivered stops the commit.
* Each insert carries a deduplication token derived from the batch's offset ranges, and the
  tables converge on their keys, so a replayed batch never duplicates a row.
* While ClickHouse is down, the sink pauses its partitions (keeping its group membership),
  retries the same batch with exponential backoff, and skips nothing; when the oldest event it
  holds gets near its topic's retention it says so at ERROR level, before anything expires.
* When the store is up but refuses a batch, the batch is split until the event it refuses is
  found; that event is dead-lettered, the rest is stored: one poison event never blocks a
  partition.
* A tombstone on the compacted memory topic (a null value: an entry removed) is stored as a
  deleted row of ``memory_entries``, never dead-lettered.
* A message that cannot be decoded is dead-lettered (original bytes + reason) if the sink owns
  its topic (``schemas/topics.py``), else only counted: its owner dead-letters it, once.
* With a ``redactor`` (``runtime/redaction.py``), what the sink stores from topics that carry
  raw user text is redacted first under the agent's policy: feedback events (edits, comments,
  user ids) and dead letters (original and reason), and so are its own dead letters. Scored
  traces arrive redacted from the reward processor; interactions are never stored bare.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from clickhouse_connect.driver.client import Client
from confluent_kafka import Consumer, KafkaError, Message, Producer

from consumers.kafka_plumbing import DeadLetterProducer, hold_new_partitions, topic_retention_ms
from runtime.metrics import ConsumerLag, LeftOut, WorkerMetrics
from runtime.redaction import Redactor
from runtime.redaction_events import redact_dead_letter, redact_feedback
from schemas.codec import AvroCodec, RegistryUnavailable
from schemas.models import DeadLetter, FeedbackEvent, MemoryEntry, split_memory_key, utcnow
from schemas.topics import (
    ALERTS,
    CHECKPOINTS,
    DEADLETTER,
    FEEDBACK,
    JOBS,
    MEMORY,
    PROMPTS,
    REWARDS,
    ROLLOUTS,
    TOPICS,
    TRIGGERS,
)
from store.errors import refused_by_store
from store.migrations import migrate
from store.writer import MemoryRow, Stored, StoreWriter

log = logging.getLogger(__name__)
DEFAULT_TOPICS = (
    REWARDS, FEEDBACK, DEADLETTER, PROMPTS, CHECKPOINTS, TRIGGERS, JOBS, MEMORY, ROLLOUTS,
    ALERTS,
)  # fmt: skip
PROCESSOR_NAME = "sink"
RETENTION_ALARM_SHARE = 0.5  # say so loudly once the oldest held event is this far to expiry


@dataclass
class SinkStats:
    batches: int = 0
    rows: int = 0
    messages: int = 0
    dead_letters: int = 0
    skipped: int = 0  # undecodable on a topic another processor owns; a label removed
    insert_failures: int = 0
    refused: int = 0  # events the store refused, dead-lettered
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


def expiry_warnings(
    oldest_ms: dict[str, float], retention_ms: dict[str, int], now_ms: float
) -> list[str]:
    """What to say, per topic, when the oldest event the sink still holds is past
    ``RETENTION_ALARM_SHARE`` of the topic's retention: Kafka deletes it at 100%."""
    warnings = []
    for topic, stamp in sorted(oldest_ms.items()):
        retention, age = retention_ms.get(topic, -1), now_ms - stamp
        if retention > 0 and age > RETENTION_ALARM_SHARE * retention:
            warnings.append(
                f"the store is unavailable and the oldest unstored event of {topic} is"
                f" {age / 3.6e6:.1f}h old; the topic keeps events {retention / 3.6e6:.1f}h:"
                f" they start to expire in {(retention - age) / 3.6e6:.1f}h unless the store"
                " comes back"
            )
    return warnings


class StoreDown(Exception):
    """The store cannot be reached; the batch waits."""


class ClickHouseSink:
    def __init__(
        self,
        kafka_config: dict[str, str],
        connect_store: Callable[[], Client],
        topics: Sequence[str] = DEFAULT_TOPICS,
        group_id: str = "atlas-sink",
        batch_size: int = 5000,
        linger_s: float = 0.005,
        max_backoff_s: float = 30.0,
        codec: AvroCodec | None = None,
        redactor: Redactor | None = None,
        cluster: str | None = None,
    ):
        unknown = [t for t in topics if t not in TOPICS]
        if unknown:
            raise ValueError(f"not atlas topics: {', '.join(unknown)}")
        self.kafka_config = kafka_config
        self.connect_store = connect_store
        self.topics = list(topics)
        self.cluster = cluster
        self.group_id = group_id
        self.batch_size = batch_size
        self.linger_s = linger_s
        self.max_backoff_s = max_backoff_s
        self.codec = codec or AvroCodec()
        self.redactor = redactor
        self.stats = SinkStats()
        self._client: Client | None = None
        self._store_writer: StoreWriter | None = None  # kept with its client (insert contexts)
        self._consumer = Consumer(
            {
                **kafka_config,
                "group.id": group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "max.poll.interval.ms": 600_000,
            }
        )
        self._dead = DeadLetterProducer(
            Producer({**kafka_config, "acks": "all", "enable.idempotence": True}),
            self.codec,
            PROCESSOR_NAME,
            redactor,
        )
        self._retention_ms = topic_retention_ms(kafka_config, self.topics)
        self.metrics = WorkerMetrics(PROCESSOR_NAME)
        self._lag = ConsumerLag(kafka_config, group_id)

    def _writer(self) -> StoreWriter:
        if self._client is None:
            self._client = self.connect_store()
            migrate(self._client, self.cluster)
            self._store_writer = StoreWriter(self._client)
        assert self._store_writer is not None
        return self._store_writer

    def run(self, stop: threading.Event | None = None) -> SinkStats:
        stop = stop or threading.Event()
        self._consumer.subscribe(self.topics)
        self._lag.start()
        try:
            while not stop.is_set():
                batch = self._poll_batch(stop)
                if batch:
                    self._sink(batch, stop)
        finally:
            self._lag.close()
            self._consumer.close()
            self._dead.flush(10)
        return self.stats

    def _poll_batch(self, stop: threading.Event) -> list[Message]:
        batch: list[Message] = []
        deadline = None  # the linger starts at the batch's first message
        while len(batch) < self.batch_size and not stop.is_set():
            self._lag.watch(self._consumer)
            # consume(n) waits out its whole timeout unless n messages come: before the first
            # message ask for one, so it is taken the moment it arrives.
            wanted = 1 if deadline is None else min(self.batch_size - len(batch), 1000)
            remaining = 0.5 if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                break
            for message in self._consumer.consume(wanted, timeout=min(remaining, 0.5)):
                error = message.error()
                if error is None:
                    batch.append(message)
                    if deadline is None:
                        deadline = time.monotonic() + self.linger_s
                elif error.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer error: %s", error)
        return batch

    def _decode(
        self, batch: Sequence[Message], left_out: list[LeftOut]
    ) -> list[tuple[Message, Stored]]:
        decoded: list[tuple[Message, Stored]] = []
        for message in batch:
            contract = TOPICS[message.topic()]
            try:
                if message.topic() == MEMORY:
                    decoded.append((message, self._memory_row(message)))
                    continue
                if message.topic() == PROMPTS and message.value() is None:
                    self.stats.skipped += 1  # a label removed: the store keeps versions only
                    left_out.append(LeftOut(PROMPTS, "LabelRemoved", False))
                    continue
                event = self.codec.decode(message.value() or b"", contract.event_type)
                decoded.append((message, self._redacted(event)))
            except RegistryUnavailable:
                raise  # not the message's fault: the batch waits
            except Exception as exc:  # any failure on one message is that message's alone
                self._refuse(message, f"{exc}", type(exc).__name__, left_out)
        return decoded

    def _redacted(self, event: Stored) -> Stored:
        """Feedback and dead letters redacted (with a redactor); anything else as it is."""
        if self.redactor is None:
            return event
        if isinstance(event, FeedbackEvent):
            return redact_feedback(self.redactor, event)[0]
        if isinstance(event, DeadLetter):
            return redact_dead_letter(self.redactor, event, self.codec)[0]
        return event

    def _memory_row(self, message: Message) -> MemoryRow:
        """A message of the memory topic as its row. A tombstone (null value) names its entry
        only by its key and is stored as a deleted row; the row's version is the message's
        timestamp, so the store orders an entry's rows as the topic does."""
        kind, stamp = message.timestamp()
        version = datetime.fromtimestamp(stamp / 1000, UTC) if kind and stamp > 0 else utcnow()
        value = message.value()
        if value is not None:
            return MemoryRow.of(self.codec.decode(value, MemoryEntry), version)
        agent_id, role, entry_id = split_memory_key((message.key() or b"").decode())
        return MemoryRow(agent_id, role, entry_id, None, version)

    def _refuse(
        self, message: Message, reason: str, error_type: str, left_out: list[LeftOut]
    ) -> None:
        if message.topic() == DEADLETTER:
            self.stats.skipped += 1
            left_out.append(LeftOut(DEADLETTER, "UnreadableDeadLetter", False))
            log.error(
                "unreadable dead letter at %s[%d]@%d skipped: %s",
                message.topic(),
                message.partition(),
                message.offset(),
                reason,
            )
        elif TOPICS[message.topic()].owner != PROCESSOR_NAME:
            self.stats.skipped += 1  # its owner dead-letters it
            left_out.append(LeftOut(message.topic(), "OwnerDeadLetters", False))
        else:
            self.stats.dead_letters += 1
            self._dead.send(message, reason, error_type)
            left_out.append(LeftOut(message.topic(), error_type, True))

    def _sink(self, batch: list[Message], stop: threading.Event) -> None:
        """Decode, insert, confirm dead letters, commit. While the schema registry or the
        store is away, the partitions wait (paused, the group keeping this member) and the
        same batch is tried again; stopping meanwhile commits nothing (the next run replays
        it; a dead letter sent before may be sent twice, the store keeps one per source
        offset)."""
        started = time.monotonic()
        decoded: list[tuple[Message, Stored]] = []
        decoding: list[LeftOut] = []  # of the last try of each step: a retry starts them over
        inserting: list[LeftOut] = []

        def decode() -> None:
            decoding.clear()
            decoded.extend(self._decode(batch, decoding))

        def insert() -> None:
            inserting.clear()
            self._insert(decoded, inserting)

        def store_down(exc: Exception, backoff: float) -> None:
            self.stats.insert_failures += 1
            self.stats.last_error = str(exc)
            log.warning("store unavailable (%s); retrying in %.1fs", exc, backoff)
            self._warn_near_retention(batch)

        def registry_down(exc: Exception, backoff: float) -> None:
            log.error("%s; retrying in %.1fs, the partitions wait", exc, backoff)

        if not self._until_done(decode, (RegistryUnavailable,), registry_down, stop):
            return
        # keep the batch, retry, skip nothing (a dead letter for an event the store refused
        # may need the schema registry)
        if not self._until_done(insert, (StoreDown, RegistryUnavailable), store_down, stop):
            return
        if not self._dead.confirm(stop):  # dead letters durable before their offsets commit
            return
        self._consumer.commit(asynchronous=False)
        now = time.time() * 1000
        self.stats.lag_ms.extend(now - m.timestamp()[1] for m in batch if m.timestamp()[1] > 0)
        self.stats.batches += 1
        self.stats.messages += len(batch)
        stored = Counter(message.topic() for message, _ in decoded)
        stored.subtract(left.topic for left in inserting)  # the store refused them
        self.metrics.committed(batch, started, stored.elements(), [*decoding, *inserting])

    def _until_done(
        self,
        attempt: Callable[[], None],
        transient: tuple[type[Exception], ...],
        failed: Callable[[Exception, float], None],
        stop: threading.Event,
    ) -> bool:
        """``attempt()`` until it succeeds; after each ``transient`` failure (told to
        ``failed`` with the next backoff) the partitions pause and it waits. False if
        ``stop`` came first."""
        backoff, tries = 0.5, 0
        while True:
            try:
                attempt()
                break
            except transient as exc:
                failed(exc, backoff)
                if not tries:
                    self._consumer.pause(self._consumer.assignment())
                tries += 1
                self._wait(backoff, stop)
                if stop.is_set():
                    return False
                backoff = min(backoff * 2, self.max_backoff_s)
        if tries:
            log.info("batch handled after %d failed tries; partitions resumed", tries)
            self._consumer.resume(self._consumer.assignment())
        return True

    def _insert(self, decoded: list[tuple[Message, Stored]], left_out: list[LeftOut]) -> None:
        """Insert the events; StoreDown if the store cannot be reached. A batch the store
        refuses while it is up is halved until the refused event is found and dead-lettered."""
        if not decoded:
            return
        token = dedup_token(self.group_id, [m for m, _ in decoded])
        try:
            self.stats.rows += self._writer().write([e for _, e in decoded], dedup_token=token)
            return
        except Exception as exc:
            error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
            if not refused_by_store(exc) or not self._store_is_up():
                self._client = None
                raise StoreDown(error) from exc
        if len(decoded) == 1:
            message, _ = decoded[0]
            self.stats.refused += 1
            log.error("the store refused %s@%d: %s", message.topic(), message.offset(), error)
            self._refuse(message, f"the store refused the event: {error}", "StoreRefused", left_out)
            return
        middle = len(decoded) // 2
        self._insert(decoded[:middle], left_out)
        self._insert(decoded[middle:], left_out)

    def _store_is_up(self) -> bool:
        try:
            return self._client is not None and bool(self._client.ping())
        except Exception:
            return False

    def _warn_near_retention(self, batch: Sequence[Message]) -> None:
        now_ms = time.time() * 1000
        oldest: dict[str, float] = {}
        for message in batch:
            kind, stamp = message.timestamp()
            if kind and stamp > 0:
                oldest[message.topic()] = min(oldest.get(message.topic(), now_ms), stamp)
        for warning in expiry_warnings(oldest, self._retention_ms, now_ms):
            log.error(warning)

    def _wait(self, seconds: float, stop: threading.Event) -> None:
        """Sleep while still polling, so the group does not consider this member dead."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not stop.is_set():
            self._lag.watch(self._consumer)
            hold_new_partitions(self._consumer, min(0.5, max(deadline - time.monotonic(), 0)))
