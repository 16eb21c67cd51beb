"""The exactly-once engine under the reward stream, on the real broker: a batch that must wait
(a schema-registry outage) is undone and tried again, so its outputs and its table change land
once, and the group's offsets move past transaction markers (no lag that never clears); a
table is restored from its changelog by the next worker; every offset is processed once
across a rebalance between two workers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from atlas.lag import group_lag
from schemas.codec import RegistryUnavailable
from streams.engine import Batch, StreamEngine, Table
from tests.workers import eventually

PARTITIONS = 3


def topics(kafka_config: dict[str, str], *names: str) -> None:
    admin = AdminClient(kafka_config)
    for future in admin.create_topics([NewTopic(n, PARTITIONS) for n in names]).values():
        future.result(30)


def counting_engine(
    kafka_config: dict[str, str], source: str, out: str, group: str, outages: list[int]
) -> StreamEngine:
    """Counts messages per key in a table and sends ``key -> partition:offset:count`` for
    each; raises a registry outage while ``outages[0]`` > 0."""
    counts = Table(f"{group}-counts-changelog", (source,))

    def count(messages: Sequence[Message], batch: Batch) -> None:
        for message in messages:
            key, partition = message.key(), message.partition()
            seen = int(counts.get(partition, key) or b"0") + 1
            batch.put(counts, partition, key, str(seen).encode())
            batch.send(out, key, f"{partition}:{message.offset()}:{seen}".encode())
        if outages[0] > 0:  # after the table changed: the retry must see it undone
            outages[0] -= 1
            raise RegistryUnavailable("schema registry http://stub unavailable")

    engine = StreamEngine(
        kafka_config,
        group,
        {source: count},
        [counts],
        batch_size=50,
        linger_s=0.05,
        retry_on=(RegistryUnavailable,),
    )
    engine.ensure_topics(PARTITIONS, [])
    return engine


@contextmanager
def running(engine: StreamEngine) -> Iterator[threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(60)
        assert not thread.is_alive()


def produce(
    kafka_config: dict[str, str],
    topic: str,
    keys: list[str],
    transactions: bool = False,
    aborted: tuple[str, ...] = (),
) -> None:
    """``keys`` to ``topic``; with ``transactions``, one transaction per five, then one
    aborted with ``aborted`` in it (markers and aborted records are offsets no reader is
    given)."""
    if not transactions:
        producer = Producer({**kafka_config, "acks": "all"})
        for key in keys:
            producer.produce(topic, key=key.encode(), value=b"x")
        assert producer.flush(30) == 0
        return
    producer = Producer({**kafka_config, "transactional.id": f"test-{uuid.uuid4().hex}"})
    producer.init_transactions(30)
    for start in range(0, len(keys), 5):
        producer.begin_transaction()
        for key in keys[start : start + 5]:
            producer.produce(topic, key=key.encode(), value=b"x")
        producer.commit_transaction(30)
    producer.begin_transaction()
    for key in aborted:
        producer.produce(topic, key=key.encode(), value=b"x")
    producer.flush(30)  # on the broker, or the abort would only drop them here
    producer.abort_transaction(30)


def read_all(kafka_config: dict[str, str], topic: str, wanted: int) -> list[tuple[str, str]]:
    """Every committed output (a read_committed reader: aborted batches are invisible)."""
    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
        }
    )
    consumer.subscribe([topic])
    found: list[tuple[str, str]] = []
    try:

        def enough() -> bool:
            for m in consumer.consume(500, timeout=0.5):
                if m.error() is None:
                    found.append((m.key().decode(), m.value().decode()))
            return len(found) >= wanted

        eventually(enough, 90, f"{wanted} outputs on {topic}", interval=0.1)
        found += [  # and nothing more arrives
            (m.key().decode(), m.value().decode())
            for m in consumer.consume(500, timeout=3.0)
            if m.error() is None
        ]
    finally:
        consumer.close()
    return found


def test_a_waiting_batch_is_undone_and_lands_once(kafka_config: dict[str, str]) -> None:
    run = uuid.uuid4().hex[:8]
    source, out, group = f"engine-in-{run}", f"engine-out-{run}", f"engine-{run}"
    topics(kafka_config, source, out)
    outages = [2]
    keys = [f"k{i % 7}" for i in range(40)]
    with running(counting_engine(kafka_config, source, out, group, outages)):
        produce(kafka_config, source, keys, transactions=True)
        outputs = read_all(kafka_config, out, len(keys))
        # then, with nothing after them, only markers and an aborted record: no lag either
        produce(kafka_config, source, [], transactions=True, aborted=("k0", "k1"))
        eventually(lambda: group_lag(kafka_config, group, (source,)).lag == 0, 30, "no lag")
    assert outages == [0]  # the outage happened, twice
    assert len(outputs) == len(keys)  # once each: the aborted attempts left nothing
    finals = {}
    for key, value in outputs:
        finals[key] = max(finals.get(key, 0), int(value.split(":")[2]))
    assert finals == {k: keys.count(k) for k in set(keys)}  # counts not inflated by retries


def test_a_failed_commit_undoes_the_batch_filled_behind_it_and_both_land_once(
    kafka_config: dict[str, str],
) -> None:
    run = uuid.uuid4().hex[:8]
    source, out, group = f"engine-in-{run}", f"engine-out-{run}", f"engine-{run}"
    topics(kafka_config, source, out)
    engine = counting_engine(kafka_config, source, out, group, [0])
    engine.batch_size = 5
    handle, transact = engine.handlers[source], engine._transact
    fills, failures, filled_behind = [0], [2], []

    def counted(messages: Sequence[Message], batch: Batch) -> None:
        fills[0] += 1
        handle(messages, batch)

    def failing(batch: Batch, offsets: list[TopicPartition]) -> None:
        if failures[0] == 0:
            return transact(batch, offsets)
        failures[0] -= 1
        before = fills[0]
        time.sleep(0.5)  # the next batch is filled meanwhile, on top of this one's changes
        filled_behind.append(fills[0] > before)
        raise KafkaException(KafkaError(KafkaError._TRANSPORT, "injected commit failure"))

    engine.handlers[source] = counted
    engine._transact = failing  # type: ignore[method-assign]
    keys = [f"k{i % 7}" for i in range(40)]
    produce(kafka_config, source, keys)  # all there before the engine starts: batches queue
    with running(engine):
        outputs = read_all(kafka_config, out, len(keys))
    assert failures == [0] and any(filled_behind)
    assert len(outputs) == len(keys)  # once each: both undone batches were done again
    finals = {}
    for key, value in outputs:
        finals[key] = max(finals.get(key, 0), int(value.split(":")[2]))
    assert finals == {k: keys.count(k) for k in set(keys)}  # the later batch's counts undone too


def test_the_next_worker_restores_the_table_and_a_rebalance_loses_nothing(
    kafka_config: dict[str, str],
) -> None:
    run = uuid.uuid4().hex[:8]
    source, out, group = f"engine-in-{run}", f"engine-out-{run}", f"engine-{run}"
    topics(kafka_config, source, out)
    first = [f"k{i % 5}" for i in range(100)]
    with running(counting_engine(kafka_config, source, out, group, [0])):
        produce(kafka_config, source, first)
        read_all(kafka_config, out, len(first))
    # Two workers now: the second joins while messages flow, so the group rebalances.
    second = [f"k{i % 5}" for i in range(400)]
    with running(counting_engine(kafka_config, source, out, group, [0])):
        produce(kafka_config, source, second[:200])
        with running(counting_engine(kafka_config, source, out, group, [0])):
            produce(kafka_config, source, second[200:])
            outputs = read_all(kafka_config, out, len(first) + len(second))
    assert len(outputs) == len(first) + len(second)
    seen = [value for _, value in outputs]
    assert len(set(seen)) == len(seen)  # no source offset handled twice
    finals: dict[str, int] = {}
    for key, value in outputs:
        finals[key] = max(finals.get(key, 0), int(value.split(":")[2]))
    assert finals == {k: (first + second).count(k) for k in set(first)}  # state carried over


class Rebalancing:
    """A consumer whose second ``consume`` goes through a rebalance (as librdkafka runs the
    callbacks inside it) and hands over messages fetched from the new assignment."""

    def __init__(self, engine: StreamEngine) -> None:
        self.engine, self.calls, self.seeks = engine, 0, list[TopicPartition]()

    def consume(self, n: int, timeout: float) -> list[object]:
        self.calls += 1
        if self.calls == 2:
            self.engine._on_revoke(self, [TopicPartition("in", 0)])  # type: ignore[arg-type]
            self.engine._on_assign(self, [TopicPartition("in", 1)])  # type: ignore[arg-type]
        return [FakeMessage(self.calls)]

    def assignment(self) -> list[TopicPartition]:
        return [TopicPartition("in", 1)]

    def memberid(self) -> str:
        return "member-1"

    def committed(self, partitions: list[TopicPartition], timeout: float) -> list[TopicPartition]:
        return [TopicPartition(tp.topic, tp.partition, 7) for tp in partitions]

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append(tp)


class FakeMessage:
    def __init__(self, offset: int) -> None:
        self._offset = offset

    def error(self) -> None:
        return None


def test_a_rebalance_while_taking_a_batch_drops_it_and_goes_back_to_the_commits() -> None:
    engine = StreamEngine({}, "g", {"in": lambda messages, batch: None})
    consumer = Rebalancing(engine)
    engine._consumer = consumer  # type: ignore[assignment]
    assert engine._take() == []  # the first message may be of a partition no longer ours
    assert [(tp.topic, tp.partition, tp.offset) for tp in consumer.seeks] == [("in", 1, 7)]
    assert len(engine._take()) == 2  # no rebalance this time: the batch is handed over
