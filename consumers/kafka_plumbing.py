"""Kafka plumbing the long-running consumers share: dead letters with confirmed delivery,
holding partitions while paused, reading a topic's retention."""

from __future__ import annotations

import logging
import threading
import time

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource

from runtime.redaction import Redactor
from runtime.redaction_events import redact_dead_letter
from schemas.codec import AvroCodec
from schemas.deadletter import dead_letter_for
from schemas.topics import DEADLETTER

log = logging.getLogger(__name__)


class DeadLetterProducer:
    """Dead letters for one processor. ``confirm`` returns only once every letter sent so far
    is acknowledged by Kafka (re-sending those that failed), so the caller commits the source
    offsets after it, never before. With a ``redactor``, each letter's original and reason are
    redacted (``runtime/redaction_events.py``) before it is sent."""

    def __init__(
        self,
        producer: Producer,
        codec: AvroCodec,
        processor: str,
        redactor: Redactor | None = None,
    ):
        self.producer = producer
        self.codec = codec
        self.processor = processor
        self.redactor = redactor
        self._failed: list[tuple[bytes, bytes]] = []

    def send(self, message: Message, reason: str, error_type: str) -> None:
        letter = dead_letter_for(message, reason, error_type, self.processor, self.codec.limits)
        if self.redactor is not None:
            letter = redact_dead_letter(self.redactor, letter, self.codec)[0]
        log.warning(
            "dead letter %s[%d]@%d: %s",
            message.topic(),
            message.partition(),
            message.offset(),
            letter.reason[:300],
        )
        self._produce(message.topic().encode(), self.codec.encode(letter))

    def _produce(self, key: bytes, value: bytes) -> None:
        def delivered(err: KafkaError | None, _message: Message) -> None:
            if err is not None:
                log.error("dead letter not delivered (%s); it will be sent again", err)
                self._failed.append((key, value))

        while True:
            try:
                self.producer.produce(DEADLETTER, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:
                self.producer.poll(0.5)
        self.producer.poll(0)

    def confirm(self, stop: threading.Event) -> bool:
        """True once every dead letter is acknowledged; False if ``stop`` came first."""
        delay = 0.5
        while True:
            self.producer.flush(30)
            if not self._failed and len(self.producer) == 0:
                return True
            if stop.is_set():
                return False
            retry, self._failed = self._failed, []
            for key, value in retry:
                self._produce(key, value)
            time.sleep(delay)
            delay = min(delay * 2, 30.0)

    def flush(self, timeout: float) -> int:
        return self.producer.flush(timeout)


def hold_new_partitions(consumer: Consumer, timeout: float) -> None:
    """Poll to stay in the group while paused; a message from a partition assigned meanwhile
    (so not paused) is put back and its partition paused too."""
    message = consumer.poll(timeout)
    if message is not None and message.error() is None:
        partition = TopicPartition(message.topic(), message.partition(), message.offset())
        consumer.seek(partition)
        consumer.pause([partition])


def topic_retention_ms(kafka_config: dict[str, str], topics: list[str]) -> dict[str, int]:
    """retention.ms of each topic as the broker has it (-1: forever); {} if unknown."""
    admin = AdminClient(kafka_config)
    resources = [ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics]
    retention: dict[str, int] = {}
    try:
        for resource, future in admin.describe_configs(resources, request_timeout=15).items():
            entry = future.result(15).get("retention.ms")
            if entry is not None and entry.value is not None:
                retention[resource.name] = int(entry.value)
    except Exception as exc:  # only the retention warning depends on it
        log.warning("cannot read the topics' retention (%s): no expiry warning", exc)
    return retention
