"""The producer when the broker goes away mid-run: failures are reported, nothing is lost,
and after a restart every event is present exactly once."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer

from atlas.settings import Settings
from atlas.stack import ensure_topics
from deploy.local.kafka import KAFKA_MAIN, KafkaNode, fetch_jars
from deploy.local.processes import free_port, stop_pid
from runtime.producer import EventProducer, ProducerError
from schemas.codec import AvroCodec
from schemas.models import FeedbackEvent
from schemas.topics import FEEDBACK


def _events(n: int, run: str) -> list[FeedbackEvent]:
    return [FeedbackEvent(trace_id=f"{run}-{i}", kind="approve", comment=run) for i in range(n)]


def _read_all(bootstrap: str, run: str) -> list[str]:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"read-{uuid.uuid4()}",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([FEEDBACK])
    codec, seen, idle = AvroCodec(), [], 0
    try:
        while idle < 10:
            message = consumer.poll(0.5)
            if message is None:
                idle += 1
                continue
            if message.error():
                continue
            idle = 0
            event = codec.decode(message.value(), FeedbackEvent)
            if event.comment == run:
                seen.append(event.event_id)
    finally:
        consumer.close()
    return seen


@pytest.mark.integration  # starts and stops a broker of its own
def test_broker_stops_mid_run_then_returns(tmp_path: Path) -> None:
    settings = Settings()
    libs = fetch_jars(settings.cache_dir)
    node = KafkaNode(tmp_path / "kafka", free_port(), free_port())
    process = node.start(libs)
    try:
        node.wait_ready(process)
        ensure_topics({"bootstrap.servers": node.bootstrap}, settings.config_dir)
        run = uuid.uuid4().hex
        before, during = _events(50, run), _events(50, run + "-down")
        for event in during:
            event.comment = run
        producer = EventProducer(
            {"bootstrap.servers": node.bootstrap, "log_level": "0"}, delivery_timeout_s=6
        )
        for event in before:
            producer.send(event)
        assert producer.flush(30) == 50

        stop_pid(process.pid, KAFKA_MAIN)
        for event in during:
            producer.send(event)  # buffered: the broker is gone
        with pytest.raises(ProducerError, match="50 event\\(s\\) not delivered"):
            producer.flush(30)
        assert sorted(e.event_id for e, _ in producer.failed) == sorted(e.event_id for e in during)

        process = node.start(libs)
        node.wait_ready(process)
        assert producer.resend_failed() == 50
        assert producer.flush(60) == 100 and producer.failed == []

        seen = _read_all(node.bootstrap, run)
        assert len(seen) == len(set(seen)) == 100
        assert set(seen) == {e.event_id for e in before + during}
    finally:
        stop_pid(process.pid, KAFKA_MAIN)


@pytest.mark.integration  # starts and stops a broker of its own
def test_events_of_an_agent_stopped_while_kafka_is_down_are_sent_by_the_next_one(
    tmp_path: Path,
) -> None:
    """Spill on: what Kafka did not acknowledge when the producer closed (a full buffer, a
    timed-out delivery, a message still in flight) is on disk, and a producer opened on the
    same file after Kafka is back delivers it first."""
    settings = Settings()
    libs = fetch_jars(settings.cache_dir)
    node = KafkaNode(tmp_path / "kafka", free_port(), free_port())
    process = node.start(libs)
    spill = tmp_path / "spill" / "agent.jsonl"
    try:
        node.wait_ready(process)
        ensure_topics({"bootstrap.servers": node.bootstrap}, settings.config_dir)
        run = uuid.uuid4().hex
        config = {"bootstrap.servers": node.bootstrap, "log_level": "0"}
        before, during = _events(30, run), _events(70, run)
        producer = EventProducer(config, delivery_timeout_s=5, spill_path=spill)
        for event in before:
            producer.send(event)
        producer.flush(30)

        stop_pid(process.pid, KAFKA_MAIN)
        small = EventProducer(
            config, buffer_messages=20, block_seconds=0.5, delivery_timeout_s=60, spill_path=spill
        )
        for event in during:  # 20 fill the buffer, 50 spill at once
            small.send(event)
        small.close(timeout=2)  # the 20 buffered ones are purged into the spill file too
        assert small.spilled == 70 and spill.exists()

        process = node.start(libs)
        node.wait_ready(process)
        resent = EventProducer(config, spill_path=spill)  # sends the spilled events first
        resent.close()
        assert resent.delivered == 70 and not spill.exists()
        assert list(spill.parent.glob("*.resending-*")) == []

        seen = _read_all(node.bootstrap, run)
        assert set(seen) == {e.event_id for e in before + during}
        assert len(seen) == 100  # nothing was in flight at the purge: no duplicates here
    finally:
        stop_pid(process.pid, KAFKA_MAIN)


def test_full_buffer_fails_loudly_instead_of_dropping() -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing listens here
    quiet = {"bootstrap.servers": dead, "log_level": "0"}  # no connection-refused noise
    producer = EventProducer(quiet, buffer_messages=5, block_seconds=1)
    for event in _events(5, "x"):
        producer.send(event)
    with pytest.raises(ProducerError, match="buffer full"):
        producer.send(_events(1, "y")[0])
    assert len(producer) == 5  # the five accepted events are still held, none dropped


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "edit"}, "needs edited_text"),
        ({"kind": "rating"}, "needs rating"),
        ({"kind": "rating", "rating": 9.0}, "outside"),
    ],
)
def test_record_feedback_validates(kwargs: dict[str, object], message: str) -> None:
    producer = EventProducer({"bootstrap.servers": f"127.0.0.1:{free_port()}", "log_level": "0"})
    with pytest.raises(ValueError, match=message):
        producer.record_feedback("t-1", **kwargs)  # type: ignore[arg-type]
