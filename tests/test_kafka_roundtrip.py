"""Every event type through the real broker, encoded and decoded by the codec."""

from __future__ import annotations

import random
import uuid

import pytest
from confluent_kafka import Producer

from consumers.jobs import TransactionalProducer, read_job_reports
from schemas.codec import AvroCodec
from schemas.limits import EventLimits, LimitError
from schemas.models import JobStatus
from schemas.topics import TOPICS, key_of, topic_of
from tests.factories import one_of_each
from tests.workers import reader_at_end


def test_every_event_type_round_trips_through_kafka(kafka_config: dict[str, str]) -> None:
    codec = AvroCodec()
    events = one_of_each(random.Random(21))
    run = uuid.uuid4().hex  # tags this run's messages: the topics are shared by the session
    consumer = reader_at_end(kafka_config, [topic_of(e) for e in events])
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


def test_a_transaction_that_fails_on_any_error_publishes_nothing(
    kafka_config: dict[str, str],
) -> None:
    """Not only a broker error: an event that cannot be encoded midway aborts the transaction,
    so the reports before it in the same transaction never become visible."""
    run = uuid.uuid4().hex[:8]
    codec = AvroCodec(limits=EventLimits(max_field_bytes=4096))
    producer = TransactionalProducer(kafka_config, f"test-abort-{run}", codec)

    def status(seq: int, message: str = "") -> JobStatus:
        return JobStatus(
            job_id=f"job-{run}",
            trigger_id="t",
            kind="gepa",
            agent_id="a",
            state="RUNNING",
            seq=seq,
            message=message,
        )

    with pytest.raises(LimitError):
        producer.send([status(1), status(2, "x" * 10_000)])
    producer.send([status(3)])  # the producer is usable again
    seen = [r.seq for r in read_job_reports(kafka_config, AvroCodec()) if r.job_id == f"job-{run}"]
    assert seen == [3]
