"""Every event type through the real broker, encoded and decoded by the codec."""

from __future__ import annotations

import random
import uuid

from confluent_kafka import Consumer, Producer

from schemas.codec import AvroCodec
from schemas.topics import TOPICS, key_of, topic_of
from tests.factories import one_of_each


def test_every_event_type_round_trips_through_kafka(kafka_config: dict[str, str]) -> None:
    codec = AvroCodec()
    events = one_of_each(random.Random(21))
    run = uuid.uuid4().hex  # tags this run's messages: the topics are shared by the session
    producer = Producer({**kafka_config, "acks": "all", "enable.idempotence": True})
    failures: list[str] = []

    def delivered(err: object, _msg: object) -> None:
        if err is not None:
            failures.append(str(err))

    for event in events:
        producer.produce(
            topic_of(event),
            value=codec.encode(event),
            key=key_of(event),
            headers={"run": run},
            on_delivery=delivered,
        )
    assert producer.flush(30) == 0
    assert failures == []

    consumer = Consumer(
        {
            **kafka_config,
            "group.id": f"roundtrip-{run}",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic_of(e) for e in events])
    received = {}
    try:
        for _ in range(300):
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            if dict(message.headers() or []).get("run") != run.encode():
                continue
            event_type = TOPICS[message.topic()].event_type
            event = codec.decode(message.value(), event_type)
            assert message.key() == key_of(event)
            received[message.topic()] = event
            if len(received) == len(events):
                break
    finally:
        consumer.close()
    assert received == {topic_of(e): e for e in events}
