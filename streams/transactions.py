"""The stream engine's transactional producer: commits a batch's outputs with its source
offsets, and says for sure whether a commit that ended in doubt landed.

* A failed or hung commit drops the producer; the next one, with the same transactional id,
  fences it and ends the transaction it left open.
* The commit runs on a thread with a deadline, because librdkafka can hang in
  ``send_offsets_to_transaction`` after its group coordinator went away (seen here after a
  broker restart; librdkafka issue #5511) whatever timeout it is given.
* A commit that failed or hung after its offsets were sent may still have landed: the group's
  committed offsets, read once a new producer has fenced the old one, say which (they are
  part of the transaction). Until Kafka answers, nothing goes on from a state it may not have.
"""

from __future__ import annotations

import logging
import threading

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from streams.tables import Batch

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 30.0
# Long enough for a batch, short enough that a killed worker's open transaction, which holds
# back every read_committed reader of its partitions, is aborted before the group moves on.
TRANSACTION_TIMEOUT_MS = 10_000
TRANSACTION_DEADLINE_S = 90.0  # a commit still running after this is given up


class TransactionStuck(RuntimeError):
    """librdkafka did not end a transaction in time; the producer is replaced."""


class Transactor:
    """One transactional producer at a time, under ``transactional_id``."""

    def __init__(self, kafka_config: dict[str, str], transactional_id: str):
        self.kafka_config, self.transactional_id = kafka_config, transactional_id
        self.stop = threading.Event()  # set by the engine: stop waiting for Kafka's answer
        self._producer: Producer | None = None

    def connect(self) -> None:
        self._producer = self._new_producer()

    def _new_producer(self) -> Producer:
        """A transactional producer; the same transactional id fences (and aborts the open
        transaction of) the one it replaces."""
        producer = Producer(
            {
                **self.kafka_config,
                "transactional.id": self.transactional_id,
                "transaction.timeout.ms": TRANSACTION_TIMEOUT_MS,
                "linger.ms": 5,
                "compression.type": "lz4",
            }
        )
        producer.init_transactions(60)
        return producer

    def commit(self, batch: Batch, offsets: list[TopicPartition], consumer: Consumer) -> None:
        """Commit ``batch`` with ``offsets`` of ``consumer``'s group; returns once it landed,
        raises if it did not."""
        if self._producer is None:
            self._producer = self._new_producer()
        producer, outcome, done = self._producer, list[BaseException | None](), threading.Event()
        group = consumer.consumer_group_metadata()
        committing = threading.Event()

        def commit() -> None:
            try:
                producer.begin_transaction()
                for output in batch.outputs:
                    output.send_with(producer)
                if offsets:
                    producer.send_offsets_to_transaction(offsets, group, 30)
                committing.set()
                producer.commit_transaction(30)
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)
            finally:
                done.set()

        threading.Thread(target=commit, name="transaction", daemon=True).start()
        if done.wait(TRANSACTION_DEADLINE_S) and outcome[0] is None:
            return
        self._producer = None  # a hung one is abandoned to its thread
        failure = (
            outcome[0]
            if outcome
            else TransactionStuck(
                f"a transaction of {len(batch.outputs)} messages did not end within"
                f" {TRANSACTION_DEADLINE_S:.0f}s; replacing the producer"
            )
        )
        if committing.is_set() and offsets and self._landed(offsets, consumer):
            log.warning("a batch landed although its commit said %s", failure)
            return
        raise failure

    def _landed(self, offsets: list[TopicPartition], consumer: Consumer) -> bool:
        """Whether a transaction that ended in doubt committed ``offsets``: asked once a new
        producer has fenced the old one (which completes or aborts its transaction)."""
        delay = 0.5
        while True:  # in-memory tables must not go on from a state Kafka may not have
            try:
                self._producer = self._new_producer()
                committed = consumer.committed(
                    [TopicPartition(tp.topic, tp.partition) for tp in offsets], timeout=30
                )
                return [tp.offset for tp in committed] == [tp.offset for tp in offsets]
            except KafkaException as exc:
                if self.stop.is_set():  # the next owner restores from what Kafka has
                    raise
                log.warning("cannot tell yet whether a batch landed (%s)", exc)
                self.stop.wait(delay)
                delay = min(delay * 2, MAX_BACKOFF_S)

    def close(self) -> None:
        if self._producer is not None:
            self._producer.flush(10)
